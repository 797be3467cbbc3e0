"""
Multi-objective ORPO with self-judgement (mo-orpo-self-judgement.txt; METHODS.md "Multi-objective
ORPO" and "Self-judgement data").

Two tasks, both trained with the ORPO loss (nanoalign/orpo.py, eq. 1-4), from the same rows:
  alignment        (x, y_w, y_l)                        the user's preference data
  self-judgement   (x', c, r) = judge.sj_triple(row)    x' shows x and both responses (rejected first
                   in 55% of rows, one of 50 prompt variations); c names the better one, r the worse.
The SJ task adds no information: every SJ triple derives from the alignment triple beside it in the
batch, and both are scored in the same step, so z_sj below belongs to the same example as z_align.

Per example, with L_task = L_SFT + lam * L_OR and z = the task's log odds ratio:

  scalarization   L = w1 * L_align + (1 - w1) * L_sj                            (sec. 3.2; w1 = 0.6)
  conjoined       L = w1 * (L_SFT_align + lam * -logsigmoid(z_align - sg(z_sj))) + w2 * L_sj
                                                                (eq. 6; w1 = 0.7, w2 = 0.3)
                  d/dz_align of the OR term = -(1 + exp(z_align - z_sj))^-1: alignment examples get
                  a bigger push when the SJ task is already well fit (z_sj large). sg() = detach:
                  no gradient reaches the SJ log-probs through this term.
  conditional     L = w1 * L_align + w2 * L_sj  if z_sj < 0,  else L_align       (Algorithm 1, an
                  epsilon-constraint: stop training SJ once it is "solved"; w1 = 0.9, w2 = 0.1).
                  Metric sj_active = fraction of examples whose SJ term was on.
  epoch_by_epoch  L_align on even epochs, L_sj on odd ones                      (Table 2, w = 1/1)
  task_by_task    L_sj for the first half of the run's epochs, then L_align      (Table 2, w = 1/1)
  sj_sft          scalarization with L_sj = L_SFT_sj alone (no odds ratio): the paper's control
  orpo            the baseline, L_align alone (nanoalign/orpo.py; scalarization with w1 = 1)

Metrics every step: z_align, z_sj, each task's L_SFT and L_OR, L_align, L_sj (the right panel of
Figure 3 plots final L_align against final L_sj: `python -m nanoalign.plot`).
"""
import torch
import torch.nn.functional as F

from nanoalign.common import Method, batch_logps
from nanoalign.judge import attach_sj
from nanoalign.orpo import orpo_terms


def task_terms(model, batch, cfg):
    """Per-example ORPO pieces of one task's preference batch."""
    l_sft, l_or, z, lp_w, lp_l = orpo_terms(model, batch, cfg)
    return {"L_SFT": l_sft, "L_OR": l_or, "z": z, "L": l_sft + cfg.orpo_lambda * l_or}


def conjoined_or(z_align, z_sj):
    """Eq. 6's alignment odds-ratio term, per example: -logsigmoid(z_align - sg(z_sj))."""
    return F.softplus(-(z_align - z_sj.detach()))


def weighted(L_align, L_sj, w1, w2):
    return w1 * L_align + w2 * L_sj


def conditional(L_align, L_sj, z_sj, w1, w2):
    """Algorithm 1 per example: (loss, active) with active = z_sj < 0 (SJ not yet fit)."""
    active = z_sj.detach() < 0
    return torch.where(active, weighted(L_align, L_sj, w1, w2), L_align), active


def phase(kind, epoch, epochs):
    """Which task the epoch-wise schedules train now: 'align' or 'sj'. epoch is fractional."""
    if kind == "epoch_by_epoch":
        return "align" if int(epoch) % 2 == 0 else "sj"
    return "sj" if epoch < epochs / 2 else "align"


def mo_loss(kind, a, s, cfg, ctx=None):
    """(per-example loss, extra metrics) from the two tasks' terms (a: alignment, s: SJ; either may
    be None when the schedule does not train it this step)."""
    if kind == "scalarization":
        return weighted(a["L"], s["L"], cfg.w1, 1 - cfg.w1), {}
    if kind == "sj_sft":
        return weighted(a["L"], s["L_SFT"], cfg.w1, 1 - cfg.w1), {}
    if kind == "conjoined":
        l_or = conjoined_or(a["z"], s["z"])
        la = a["L_SFT"] + cfg.orpo_lambda * l_or
        return weighted(la, s["L"], cfg.w1, cfg.w2), {"L_OR_conjoined": l_or.mean().item()}
    if kind == "conditional":
        loss, active = conditional(a["L"], s["L"], s["z"], cfg.w1, cfg.w2)
        return loss, {"sj_active": active.float().mean().item()}
    which = phase(kind, ctx["epoch"], ctx["epochs"])
    return (a if which == "align" else s)["L"], {"task_sj": float(which == "sj")}


def _needs(kind, ctx):
    if kind in ("epoch_by_epoch", "task_by_task"):
        which = phase(kind, ctx["epoch"], ctx["epochs"])
        return which == "align", which == "sj"
    return True, True


def _loss(kind):
    def loss(model, batch, ctx, cfg):
        need_a, need_s = _needs(kind, ctx)
        a = task_terms(model, batch["align"], cfg) if need_a else None
        s = task_terms(model, batch["sj"], cfg) if need_s else None
        per_ex, mets = mo_loss(kind, a, s, cfg, ctx)
        for name, t in (("align", a), ("sj", s)):
            if t is not None:
                mets.update({f"z_{name}": t["z"].mean().item(), f"L_{name}": t["L"].mean().item(),
                             f"L_SFT_{name}": t["L_SFT"].mean().item(),
                             f"L_OR_{name}": t["L_OR"].mean().item()})
        return per_ex.sum(), mets
    return loss


@torch.no_grad()
def judge_accuracy(model, batches):
    """Self-judgement accuracy on held-out SJ preference batches: the fraction of judge prompts where
    the model gives the answer naming the better response (c) a higher log-prob than the one naming
    the worse (r). Both answers share everything but the name, so this is the model's verdict."""
    hits = n = 0
    for b in batches:
        B = b["n_examples"]
        lp = batch_logps(model, b, "sum")
        hits += int((lp[:B] > lp[B:]).sum())
        n += B
    return hits / max(n, 1)


def effective_weights(name, cfg):
    """(w1, w2) as the paper's tables write them, for reports."""
    return {"orpo": (1.0, 0.0), "epoch_by_epoch": (1.0, 1.0), "task_by_task": (1.0, 1.0),
            "scalarization": (cfg.w1, 1 - cfg.w1), "sj_sft": (cfg.w1, 1 - cfg.w1)}.get(name, (cfg.w1, cfg.w2))


def _prepare(rows, cfg, split, tok):
    return attach_sj(rows, cfg.seed, split)


_HELP = {
    "scalarization": "MO-ORPO: w1 * L_align + (1 - w1) * L_sj (--w1, paper 0.6)",
    "conjoined": "MO-ORPO eq. 6: alignment OR term -logsig(z_align - sg(z_sj)) (--w1 0.7 --w2 0.3)",
    "conditional": "MO-ORPO Alg. 1: add w2 * L_sj only where z_sj < 0 (--w1 0.9 --w2 0.1)",
    "epoch_by_epoch": "MO-ORPO: alternate whole epochs between the alignment and SJ tasks",
    "task_by_task": "MO-ORPO: SJ task for the first half of the epochs, then alignment",
    "sj_sft": "MO-ORPO control: scalarization with plain SFT on the SJ answer (--w1, 0.6)",
}
_DEFAULTS = {"scalarization": {"w1": 0.6}, "conjoined": {"w1": 0.7, "w2": 0.3},
             "conditional": {"w1": 0.9, "w2": 0.1}, "sj_sft": {"w1": 0.6}}
METHODS = [Method(k, "mo", "n_examples", _loss(k), v, source="pref", prepare=_prepare,
                  defaults=_DEFAULTS.get(k, {})) for k, v in _HELP.items()]
