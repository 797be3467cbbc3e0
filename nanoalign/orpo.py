"""
ORPO ("ORPO: Monolithic Preference Optimization without Reference Model", arXiv:2403.07691; the
baseline of the MO-ORPO paper, eq. 1-4; docs/methods.md#orpo).

    logp_mean   = (1/m) sum_t lp_t over the m response tokens         (kernels.sequence_logprob, 'mean')
    log_odds    = logp_mean - log(1 - exp(logp_mean))                  (eq. 2)
    z           = log_odds(y_w) - log_odds(y_l)                        (eq. 3, the "log odds ratio")
    L_OR        = -log sigmoid(z)                                      (eq. 3; kernels.odds_ratio_loss)
    L_SFT       = -logp_mean(y_w)                                      (eq. 1's NLL, per example)
    L_ORPO      = L_SFT + lam * L_OR,  lam = 0.1 by default             (eq. 4)

Both terms are per-example means over response tokens, and the loop averages over the examples of
the effective batch. `--prompt_loss` also counts the chosen prompt's tokens in L_SFT (the official
ORPO code does this; docs/methods.md#orpo); it stays a per-example mean over the example's prompt and
response tokens, where TRL pools the tokens of the whole batch. Off by default.
"""
from dataclasses import dataclass

import torch

from kernels import odds_ratio_loss
from nanoalign.common import Method, batch_logps, option, register


@dataclass
class ORPOOptions:
    orpo_lambda: float = option(0.1, "weight of the odds-ratio term (ORPO's lambda, paper 0.1)",
                                minimum=0.0)
    prompt_loss: bool = option(False, "also count the chosen prompt's tokens in L_SFT, as the official "
                               "ORPO code does; each example's term stays a mean over its own prompt "
                               "and response tokens (TRL instead pools tokens over the batch)")


def odds_ratio(logp_w, logp_l):
    """(L_OR per example, z): the pure function the tests drive; see kernels/odds_ratio.py."""
    return odds_ratio_loss(logp_w, logp_l)


def orpo_terms(model, batch, cfg):
    """Per-example (L_SFT, L_OR, z, logp_w, logp_l) for a preference batch (chosen rows first)."""
    B = batch["n_examples"]
    lp = batch_logps(model, batch, "mean")                            # (2B,)
    lp_w, lp_l = lp[:B], lp[B:]
    l_or, z = odds_ratio(lp_w, lp_l)
    if cfg.prompt_loss:  # NLL over prompt + response of the chosen rows (official ORPO / TRL)
        m = batch["attn"][:B, 1:].float()
        m = torch.cat([m, torch.zeros(B, 1, device=m.device)], 1)
        full = torch.cat([m, torch.zeros_like(batch["mask"][B:])], 0)
        l_sft = -batch_logps(model, batch, "mean", mask=full)[:B]
    else:
        l_sft = -lp_w
    return l_sft, l_or, z, lp_w, lp_l


def orpo_loss(model, batch, run, cfg):
    l_sft, l_or, z, lp_w, lp_l = orpo_terms(model, batch, cfg)
    loss = (l_sft + cfg.orpo_lambda * l_or).sum()
    return loss, {"z": z.mean().item(), "L_SFT": l_sft.mean().item(), "L_OR": l_or.mean().item(),
                  "logp_w": lp_w.mean().item(), "logp_l": lp_l.mean().item()}


register(Method(name="orpo", reads="pref", eats="pref", unit="n_examples", loss=orpo_loss,
                help="ORPO: SFT on chosen + lambda * odds-ratio loss (no reference model)",
                options=ORPOOptions,
                metrics={"z": "log odds ratio of chosen over rejected (eq. 3)", "L_SFT": "NLL of the "
                         "chosen response per token", "L_OR": "odds-ratio loss -log sigmoid(z)",
                         "logp_w": "mean token log-prob of chosen", "logp_l": "of rejected"}))
