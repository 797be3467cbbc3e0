"""
Multi-objective ORPO with self-judgement ("Multi-Objective Alignment of LLMs with ORPO using
Self-Judgement", an anonymous double-blind submission without an arXiv id; docs/methods.md#multi-objective-orpo
and docs/methods.md#self-judgement-data).

Two tasks, both trained with the ORPO loss (nanoalign/orpo.py, eq. 1-4: docs/methods.md#orpo), from
the same rows:
  alignment        (x, y_w, y_l)                        the user's preference data
  self-judgement   (x', c, r) = sj_triple(row)         x' shows x and both responses (rejected first
                   in 55% of rows, one of 50 prompt variations); c names the better one, r the worse.
The SJ task adds no information: every SJ triple derives from the alignment triple beside it in the
batch, and both are scored in the same step, so z_sj below belongs to the same example as z_align.

Per example, with L_task = L_SFT + lam * L_OR (lam = --orpo_lambda, 0.1) and z = the task's log odds
ratio (--prompt_loss counts the alignment prompt in L_SFT_align, never the SJ prompt, which shows
both responses):

  scalarization   L = w1 * L_align + (1 - w1) * L_sj                 (sec. 3.2.1, eq. 5; w1 = 0.6)
  conjoined       L = w1 * (L_SFT_align + lam * -logsigmoid(z_align - sg(z_sj))) + w2 * L_sj
                                                      (sec. 3.2.2, eq. 6; w1 = 0.7, w2 = 0.3)
                  d/dz_align of the OR term = -(1 + exp(z_align - z_sj))^-1: alignment examples get
                  a bigger push when the SJ task is already well fit (z_sj large). sg() = detach:
                  no gradient reaches the SJ log-probs through this term.
  conditional     L = w1 * L_align + w2 * L_sj  if z_sj < 0,  else L_align  (sec. 3.2.3, Algorithm 1,
                  an epsilon-constraint: stop training SJ once it is "solved"; w1 = 0.9, w2 = 0.1).
                  Metric sj_active = fraction of examples whose SJ term was on.
  epoch_by_epoch  L_align and L_sj on alternate epochs, the last one L_align    (Table 2, w = 1/1)
  task_by_task    L_sj for the first half of the run's epochs, then L_align      (Table 2, w = 1/1)
  sj_sft          scalarization with L_sj = L_SFT_sj alone (no odds ratio): the paper's control
                  (docs/methods.md#sj-sft-control)
  orpo            the baseline, L_align alone (nanoalign/orpo.py; scalarization with w1 = 1)

Metrics every step: z_align, z_sj, each task's L_SFT and L_OR, L_align, L_sj (a schedule logs only
the task it trains that step), and the variant's own (L_OR_conjoined, sj_active, task_sj). The right
panel of Figure 3 plots final L_align against final L_sj: `python -m experiments.plot`.
"""
import dataclasses
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.tokenizer import answer_text
from nanoalign import dist
from nanoalign.common import Method, batch_logps, evaluating, option, register, with_defaults
from nanoalign.data import KINDS, Kind, add_kind
from nanoalign.judge import JudgeTemplate, render
from nanoalign.orpo import ORPOOptions, orpo_terms


# -- the self-judgement data (MO-ORPO Fig. 1, section 4) ---------------------------------------------
# MO-ORPO self-judgement prompts: 5 wordings x 5 name pairs x 2 instruction orders = 50 variations.
# The paper's "about 50" came from five prompts it does not print: these five wordings are ours.
_SJ_WORDINGS = [
    ("Which {noun} answers the question better?", "{noun} {x} is better."),
    ("Compare the two {noun}s and pick the better one.", "The better one is {noun} {x}."),
    ("You are a fair judge. Which {noun} is of higher quality?", "{noun} {x}."),
    ("Decide which {noun} a careful expert would prefer.", "I prefer {noun} {x}."),
    ("Pick the more helpful {noun}.", "{noun} {x} is more helpful."),
]
_SJ_NAMES = [("Response", "A", "B"), ("Answer", "1", "2"), ("Reply", "X", "Y"),
             ("Output", "(a)", "(b)"), ("Option", "I", "II")]


def _sj_templates():
    """The 50 JudgeTemplates. The user message keeps {prompt}, {a}, {b} for judge.render to fill;
    the answer keeps {label}, which sj_triple fills with the better (c) or the worse (r) name."""
    out = []
    for wi, (ask, ans) in enumerate(_SJ_WORDINGS):
        for noun, x1, x2 in _SJ_NAMES:
            body = "Question: {prompt}\n" + f"{noun} {x1}: {{a}}\n{noun} {x2}: {{b}}"
            for order in ("first", "last"):
                q = ask.format(noun=noun.lower())
                user = f"{q}\n{body}" if order == "first" else f"{body}\n{q}"
                out.append(JudgeTemplate(f"sj{wi}-{noun}-{order}", user,
                                         ans.format(noun=noun, x="{label}"), labels=(x1, x2)))
    return out


SJ_TEMPLATES = _sj_templates()
REJECTED_FIRST = 0.55  # MO-ORPO section 4: position-bias correction


def sj_triple(row, rng):
    """MO-ORPO Fig. 1: the self-judgement triple (x', c, r) of one alignment row. x' shows x and both
    responses (rejected first with probability 0.55); c names the better one, r the worse."""
    t = SJ_TEMPLATES[rng.randrange(len(SJ_TEMPLATES))]
    rej_first = rng.random() < REJECTED_FIRST
    a, b = (row["rejected"], row["chosen"]) if rej_first else (row["chosen"], row["rejected"])
    msgs, ans = render(t, row["prompt"], answer_text(a), answer_text(b))
    win, lose = (t.labels[1], t.labels[0]) if rej_first else t.labels
    return {"prompt": msgs, "chosen": ans.format(label=win), "rejected": ans.format(label=lose),
            "template": t.name, "rejected_first": rej_first}


def attach_sj(rows, seed, split):
    """Every alignment row gets its self-judgement triple in row['sj'] (seeded, reproducible)."""
    rng = random.Random(f"sj-{seed}-{split}")
    return [{**r, "sj": sj_triple(r, rng)} for r in rows]


# MO-ORPO's own example kind, 'mo' (nanoalign/data.py add_kind): a row's two pairs, side by side
def mo_example(tok, row, limits, where):
    """The alignment triple and its self-judgement triple row['sj'], each tokenized as a preference
    pair. The SJ triple is never cut (its label is what is scored): one over sj_max_length (else
    max_length) drops the whole example, counted (the MO-ORPO paper filtered its data to fit the
    judge prompt)."""
    pair = KINDS["pref"].tokenize
    align = pair(tok, row, limits, where)
    sj_limits = {**limits, "max_length": limits.get("sj_max_length") or limits["max_length"]}
    sj = pair(tok, {**row["sj"], "keep_whole": True}, sj_limits, where)
    return {"align": align, "sj": sj, "row": row, "cut": align["cut"]}


def mo_batch(examples, pad_id, device):
    """Two preference batches, 'align' and 'sj', padded separately (the judge prompts are several
    times longer); row i of one is the twin of row i of the other."""
    pairs = KINDS["pref"].batch
    al = pairs([e["align"] for e in examples], pad_id, device)
    sj = pairs([e["sj"] for e in examples], pad_id, device)
    return {"align": al, "sj": sj, "n_examples": len(examples), "n_tokens": al["n_tokens"],
            "n_seen": al["n_seen"] + sj["n_seen"], "examples": examples}


add_kind("mo", Kind(read=None, tokenize=mo_example, batch=mo_batch,
                    summary="bad rows, or a self-judgement prompt + answer over --sj_max_length"))


# -- the options and the losses ----------------------------------------------------------------------
@dataclass
class SJOptions(ORPOOptions):
    """Every variant: ORPO's options for both tasks, and the length limit of the SJ task."""
    sj_max_length: int = option(384, "token limit of a self-judgement prompt + answer; a longer one "
                                "drops its whole example, the alignment pair too (counted)", minimum=2)


@dataclass
class OneWeight(SJOptions):
    """scalarization, sj_sft: w1 for the alignment task, 1 - w1 for the SJ task."""
    w1: float = option(0.6, "weight of the alignment task; the SJ task gets 1 - w1 (paper 0.6)",
                       minimum=0.0, maximum=1.0)


@dataclass
class TwoWeights(SJOptions):
    """conjoined, conditional: a weight for each task (paper: 0.7 / 0.3 and 0.9 / 0.1)."""
    w1: float = option(0.7, "weight of the alignment task (conditional: where the SJ term is on; "
                            "elsewhere L_align alone, weight 1)", minimum=0.0)
    w2: float = option(0.3, "weight of the self-judgement task", minimum=0.0)


def task_terms(model, batch, cfg):
    """Per-example ORPO pieces of one task's preference batch: L_SFT, L_OR, z and L, each (B,)."""
    l_sft, l_or, z, lp_w, lp_l = orpo_terms(model, batch, cfg)
    return {"L_SFT": l_sft, "L_OR": l_or, "z": z, "L": l_sft + cfg.orpo_lambda * l_or}


def conjoined_or(z_align, z_sj):
    """Eq. 6's alignment odds-ratio term, per example: -logsigmoid(z_align - sg(z_sj))
    (docs/methods.md#conjoined). softplus(-u) is -logsigmoid(u)."""
    return F.softplus(-(z_align - z_sj.detach()))


def weighted(L_align, L_sj, w1, w2):
    return w1 * L_align + w2 * L_sj


def conditional(L_align, L_sj, z_sj, w1, w2):
    """Algorithm 1 per example: (loss, active) with active = z_sj < 0 (SJ not yet fit;
    docs/methods.md#conditional)."""
    active = z_sj.detach() < 0
    return torch.where(active, weighted(L_align, L_sj, w1, w2), L_align), active


def round_epochs(epochs):
    """The whole epochs epoch_by_epoch alternates: a last part under half an epoch joins the one before."""
    return max(1, math.floor(epochs + 0.5))


def phase(kind, epoch, epochs):
    """Which task the epoch-wise schedules train now: 'align' or 'sj'. epoch is fractional. Both
    end on the alignment task, the one that is evaluated: epoch_by_epoch alternates whole epochs of
    data backwards from the last (with an even count it starts with SJ; the results table's runs,
    150 steps of 16 over 600 rows, 37 batches an epoch, are 4.05 epochs: four, the last 2 steps
    joining the fourth), task_by_task trains SJ first. docs/methods.md#epoch-by-epoch-and-task-by-task"""
    if kind == "epoch_by_epoch":
        n = round_epochs(epochs)
        return "align" if (n - 1 - min(int(epoch), n - 1)) % 2 == 0 else "sj"
    return "sj" if epoch < epochs / 2 else "align"


def mo_loss(kind, a, s, cfg, run=None):
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
    which = phase(kind, run.epoch, run.epochs)
    return (a if which == "align" else s)["L"], {"task_sj": float(which == "sj")}


def _needs(kind, run):
    """(score the alignment task?, score the SJ task?) this step: a schedule scores only its task."""
    if kind in ("epoch_by_epoch", "task_by_task"):
        if kind == "epoch_by_epoch" and round_epochs(run.epochs) == 1 and not run.memory.get("one_epoch_said"):
            run.memory["one_epoch_said"] = True      # said once, at its first step: otherwise ORPO, silently
            if dist.rank() == 0:
                print(f"note: epoch_by_epoch alternates whole epochs and this run is {run.epochs:.2f} "
                      f"epochs, which count as one: it trains the alignment task alone (plain ORPO); "
                      f"give it at least 1.5 (--max_steps) for an SJ epoch")
        which = phase(kind, run.epoch, run.epochs)
        return which == "align", which == "sj"
    return True, True


def _loss(kind):
    def loss(model, batch, run, cfg):
        # batch["align"] and batch["sj"] are two preference batches, row i of one the twin of row i of
        # the other (mo_batch)
        need_a, need_s = _needs(kind, run)
        a = task_terms(model, batch["align"], cfg) if need_a else None
        # --prompt_loss is the alignment task's: the SJ prompt x' holds both responses, so counting
        # it in L_SFT_sj would train the model to write the rejected one
        sj_cfg = dataclasses.replace(cfg, prompt_loss=False) if cfg.prompt_loss else cfg
        s = task_terms(model, batch["sj"], sj_cfg) if need_s else None
        per_ex, mets = mo_loss(kind, a, s, cfg, run)
        for name, t in (("align", a), ("sj", s)):
            if t is not None:
                mets.update({f"z_{name}": t["z"].mean().item(), f"L_{name}": t["L"].mean().item(),
                             f"L_SFT_{name}": t["L_SFT"].mean().item(),
                             f"L_OR_{name}": t["L_OR"].mean().item()})
        return per_ex.sum(), mets          # a sum: the loop divides by the effective batch's examples
    return loss


def judge_accuracy(model, batches):
    """Self-judgement accuracy on held-out SJ preference batches: the fraction of judge prompts where
    the model gives the answer naming the better response (c) a higher log-prob than the one naming
    the worse (r); a tie counts as a miss. Both answers share everything but the name, so this is
    the model's verdict. It compares summed log-probs, where training moves z_sj, built on per-token
    means: where the two names differ in length ("Option I" / "Option II"), a model with no
    preference still prefers the shorter one, so the metric and z_sj can disagree. Scored in eval
    mode (a LoRA model's dropout off), the model's mode restored after."""
    hits = n = 0
    with evaluating(model):
        for b in batches:
            B = b["n_examples"]
            lp = batch_logps(model, b, "sum")
            hits += int((lp[:B] > lp[B:]).sum())
            n += B
    return hits / max(n, 1)


def _prepare(rows, cfg, split, run):
    return attach_sj(rows, cfg.seed, split)


_HELP = {
    "scalarization": "MO-ORPO: w1 * L_align + (1 - w1) * L_sj (--w1, paper 0.6)",
    "conjoined": "MO-ORPO eq. 6: alignment OR term -logsig(z_align - sg(z_sj)) (--w1 0.7 --w2 0.3)",
    "conditional": "MO-ORPO Alg. 1: add w2 * L_sj only where z_sj < 0 (--w1 0.9 --w2 0.1)",
    "epoch_by_epoch": "MO-ORPO: alternate whole epochs between the alignment and SJ tasks (a run under "
                      "1.5 epochs is one: ORPO alone)",
    "task_by_task": "MO-ORPO: SJ task for the first half of the epochs, then alignment",
    "sj_sft": "MO-ORPO control: scalarization with plain SFT on the SJ answer (--w1, 0.6)",
}
METRICS = {"z_align": "log odds ratio of the alignment pair", "z_sj": "of the self-judgement pair",
           "L_align": "alignment ORPO loss", "L_sj": "self-judgement ORPO loss",
           "L_SFT_align": "alignment NLL per token", "L_OR_align": "alignment odds-ratio loss",
           "L_SFT_sj": "self-judgement NLL per token", "L_OR_sj": "self-judgement odds-ratio loss",
           "L_OR_conjoined": "eq. 6's alignment term -log sigmoid(z_align - sg(z_sj))",
           "sj_active": "fraction of examples whose SJ term was on (conditional)",
           "task_sj": "1 when this step trained the SJ task (schedules)"}
OWN_METRIC = {"conjoined": "L_OR_conjoined", "conditional": "sj_active", "epoch_by_epoch": "task_sj",
              "task_by_task": "task_sj"}   # the one a variant logs beside both tasks' terms (mo_loss)


def legend(kind):
    """METRICS less the other variants' own: the log's legend names what this variant logs."""
    return {k: v for k, v in METRICS.items() if k not in OWN_METRIC.values() or OWN_METRIC.get(kind) == k}


_OPTIONS = {"scalarization": OneWeight, "sj_sft": OneWeight,
            "conjoined": with_defaults(TwoWeights, "ConjoinedOptions", w1=0.7, w2=0.3),
            "conditional": with_defaults(TwoWeights, "ConditionalOptions", w1=0.9, w2=0.1),
            "epoch_by_epoch": SJOptions, "task_by_task": SJOptions}
register(*[Method(name=k, reads="pref", eats="mo", unit="n_examples", loss=_loss(k), help=v,
                  options=_OPTIONS[k], prepare=_prepare, metrics=legend(k),
                  tokenize_options=lambda cfg: {"sj_max_length": cfg.sj_max_length})
           for k, v in _HELP.items()])
