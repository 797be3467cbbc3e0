"""
DPO ("Direct Preference Optimization", arXiv:2305.18290) and IPO ("A General Theoretical Paradigm
to Understand Learning from Human Preferences", arXiv:2310.12036) against a frozen reference
(docs/methods.md#dpo-and-ipo).

    h      = (logp_sum_pol(y_w) - logp_sum_ref(y_w)) - (logp_sum_pol(y_l) - logp_sum_ref(y_l))
    DPO    = -log sigmoid(beta * h)            d/d h = -beta * sigmoid(-beta * h)
    IPO    = (h - 1 / (2 * beta))^2            minimized at h = 1 / (2 * beta)
                                               (h of summed log-probs; TRL's ipo averages per token)

The pure functions take the four log-prob tensors so tests can drive them; the reference log-probs
come from `run.ref`, a frozen copy of the starting model (nanoalign.common.frozen_copy).
The metrics are the usual ones: reward margin beta * h and reward accuracy (h > 0).
"""
from dataclasses import dataclass

import torch.nn.functional as F

from nanoalign.common import Method, batch_logps, option, reference_logps, register


@dataclass
class DPOOptions:
    beta: float = option(0.1, "strength of the pull towards the reference (DPO / IPO beta)", above=0.0)


def log_ratio_diff(pol_w, pol_l, ref_w, ref_l):
    return (pol_w - ref_w) - (pol_l - ref_l)


def dpo_loss(pol_w, pol_l, ref_w, ref_l, beta):
    """Per-example DPO loss."""
    return -F.logsigmoid(beta * log_ratio_diff(pol_w, pol_l, ref_w, ref_l))


def ipo_loss(pol_w, pol_l, ref_w, ref_l, beta):
    """Per-example IPO loss."""
    return (log_ratio_diff(pol_w, pol_l, ref_w, ref_l) - 1 / (2 * beta)) ** 2


def pair_losses(fn, model, batch, ref, beta):
    """(per-pair loss fn(pol_w, pol_l, ref_w, ref_l, beta), h detached) of a preference batch
    (chosen rows first). Shared by every method that trains on pairs against a reference (DPO, IPO,
    Self-Judge, OSP)."""
    B = batch["n_examples"]
    pol = batch_logps(model, batch, "sum")                       # (2B,)
    rl = reference_logps(ref, batch, "sum")                      # (2B,)
    losses = fn(pol[:B], pol[B:], rl[:B], rl[B:], beta)
    return losses, log_ratio_diff(pol[:B], pol[B:], rl[:B], rl[B:]).detach()


def pair_metrics(h, beta):
    """The usual ones: reward margin beta * h and reward accuracy (h > 0)."""
    return {"margin": (beta * h).mean().item(), "reward_acc": (h > 0).float().mean().item()}


METRICS = {"margin": "reward margin beta * h, h = (pol_w - ref_w) - (pol_l - ref_l)",
           "reward_acc": "fraction of pairs with h > 0"}


def pairs_loss(fn):
    """The loss of a method that trains on preference pairs against run.ref with fn (DPO, IPO, and
    Self-Judge on its rollout's pairs): (sum of per-pair losses, margin metrics)."""
    def loss(model, batch, run, cfg):
        losses, h = pair_losses(fn, model, batch, run.ref, cfg.beta)
        return losses.sum(), pair_metrics(h, cfg.beta)
    return loss


register(
    Method(name="dpo", reads="pref", eats="pref", unit="n_examples", loss=pairs_loss(dpo_loss),
           help="DPO against a frozen copy of the starting model (--beta)", options=DPOOptions,
           needs_ref=True, metrics=METRICS),
    Method(name="ipo", reads="pref", eats="pref", unit="n_examples", loss=pairs_loss(ipo_loss),
           help="IPO: squared loss towards a log-ratio margin of 1/(2 beta)", options=DPOOptions,
           needs_ref=True, metrics=METRICS),
)
