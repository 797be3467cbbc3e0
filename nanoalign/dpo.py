"""
DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023) against a frozen reference (METHODS.md).

    h      = (logp_sum_pol(y_w) - logp_sum_ref(y_w)) - (logp_sum_pol(y_l) - logp_sum_ref(y_l))
    DPO    = -log sigmoid(beta * h)            d/d h = -beta * sigmoid(-beta * h)
    IPO    = (h - 1 / (2 * beta))^2            minimized at h = 1 / (2 * beta)

The pure functions take the four log-prob tensors so tests can drive them; the reference log-probs
come from `ctx["ref"]`, a frozen copy of the starting model (nanoalign.common.frozen_copy).
The metrics are the usual ones: reward margin beta * h and reward accuracy (h > 0).
"""
import torch.nn.functional as F

from nanoalign.common import Method, batch_logps, reference_logps


def log_ratio_diff(pol_w, pol_l, ref_w, ref_l):
    return (pol_w - ref_w) - (pol_l - ref_l)


def dpo_loss(pol_w, pol_l, ref_w, ref_l, beta):
    """Per-example DPO loss."""
    return -F.logsigmoid(beta * log_ratio_diff(pol_w, pol_l, ref_w, ref_l))


def ipo_loss(pol_w, pol_l, ref_w, ref_l, beta):
    """Per-example IPO loss."""
    return (log_ratio_diff(pol_w, pol_l, ref_w, ref_l) - 1 / (2 * beta)) ** 2


def _pairwise(fn):
    def loss(model, batch, ctx, cfg):
        B = batch["n_examples"]
        pol = batch_logps(model, batch, "sum")                       # (2B,)
        ref = reference_logps(ctx["ref"], batch, "sum")              # (2B,)
        losses = fn(pol[:B], pol[B:], ref[:B], ref[B:], cfg.beta)
        h = log_ratio_diff(pol[:B], pol[B:], ref[:B], ref[B:]).detach()
        return losses.sum(), {"margin": (cfg.beta * h).mean().item(),
                              "reward_acc": (h > 0).float().mean().item()}
    return loss


METHODS = [
    Method("dpo", "pref", "n_examples", _pairwise(dpo_loss),
           "DPO against a frozen copy of the starting model (--beta)", needs_ref=True),
    Method("ipo", "pref", "n_examples", _pairwise(ipo_loss),
           "IPO: squared loss towards a log-ratio margin of 1/(2 beta)", needs_ref=True),
]
