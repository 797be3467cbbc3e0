"""
The on-policy round shared by Self-Judge (nanoalign/self_judge.py) and OSP (nanoalign/osp.py):

    sample -> judge -> pairs        a method's `rollout`, which the loop calls with no gradients
    -> update                       its `loss`, on those pairs

1. sample      n responses per prompt from the policy, one batched KV-cached generate call
2. judge       p(a > b) for response pairs, by a judge model scoring the two label tokens in both
               position orders, by its paper's likelihood rule (nanoalign/judge.py judge_pairs), in
               eval mode; a --judge_from judge reads the decoded texts with its own tokenizer.
               The template and rule are by default those the judge's checkpoint records (a JSFT
               run's: judging_defaults), else 'compact' and the method's paper's rule
3. pairs       a preference batch of the prompt ids + response ids, never re-tokenized. Self-Judge
               (and OSP's dpo / ipo ablations) orient each pair by the judge (p >= 1/2: a is the
               chosen one); OSP's SPCE keeps its pairs as drawn, rank order or random, with the soft
               p as its target (p < 1/2 pushes toward b); OSP's RAFT keeps one winner per prompt
4. update      the method's loss: a pairwise loss against the frozen reference (nanoalign/dpo.py
               pair_losses) for the pair methods, SFT on the winners for RAFT. train.py rolls out all
               of a step's micro-batches first (no gradients), then takes their losses

Only the methods' choices differ (how many samples, which pairs, which loss), so each method file
reads as its paper's algorithm and this file holds the plumbing once. `judge_probs` is the one
place where a judge is asked: tests replace it with a known rule.

Before the round, after the options, sits the other side of judging, the judgment data a judge
trains on (template_of to judgment_data): JSFT (nanoalign/self_judge.py) and OSP's preference
augmentation (nanoalign/osp.py) build their rows there, with the template options and label checks
the round uses too, so a judge learns in the template it is later asked in.
"""
import dataclasses
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from model.checkpoint import CheckpointError, load, read_json
from model.model import TooLongForContext
from nanoalign.common import REGISTRY, evaluating, frozen_copy, option
from nanoalign.checkpoint import trained_config
from nanoalign.compute import FAST_MIN_PARAMS, is_large
from nanoalign.data import make_batch
from nanoalign.dpo import DPOOptions
from nanoalign.judge import (JUDGE_TEMPLATE, JUDGING, LIKELIHOOD, LIKELIHOODS, TEMPLATES, JudgeError,
                             check_template, judge_pairs, judging, judgment_rows, parse_principles,
                             recorded_judging)
from nanoalign.rows import check_labels
from nanoalign.textfile import DataError

PRINCIPLES_FILE = "principles.json"   # {name: description}, kept with every checkpoint derived from a
                                      # principle-aware judge (its JSFT data's, or those it judged under)
# --gen_max_tokens 0 (auto): the arith task's answers fit in 32 tokens (and every documented table of
# it was made with 32); a pretrained chat model's answers do not, and 32 would train it on answers cut
# mid-sentence: it samples as many as TRL's OnlineDPOConfig (trl 1.16.0: max_new_tokens 64)
AUTO_NEW_TOKENS = {"small": 32, "large": 64}
LIKELIHOOD_HELP = ("how the judge's two label probabilities become p(a > b), a choice between the "
                   "papers' rules: 'vocab' = " + LIKELIHOODS["vocab"] + "; 'pair' = " +
                   LIKELIHOODS["pair"] + ". A JSFT / pref_aug model records it for when it judges "
                   "later (sample.py --best_of, an on-policy run that judges with it)")
TEMPLATE_HELP = ("judgment template (nanoalign/judge.py TEMPLATES): 'compact' fits the built-in task's "
                 "tiny model ('compact_principle': per principle, 'compact_rationale': per principle "
                 "with a rationale); 'ultrafeedback', 'hh', 'principle', 'principle_rationale' are the "
                 "Self-Judge paper's")


@dataclass
class JudgeTemplateOptions:
    judge_template: str = option(JUDGE_TEMPLATE, TEMPLATE_HELP, choices=tuple(TEMPLATES))
    likelihood: str = option(LIKELIHOOD, LIKELIHOOD_HELP, choices=tuple(LIKELIHOODS))


def judge_likelihood(rule, paper):
    """An on-policy method's --likelihood: '' (the judge's recorded rule) by default, else `rule`."""
    return option("", LIKELIHOOD_HELP + ". '' = the rule the judge's checkpoint records (the "
                  "--judge_from checkpoint's state.json, else --init_from's; saved with the run as "
                  "--judge_template's ''), else '" + rule + "' (" + paper + ")",
                  choices=("",) + tuple(LIKELIHOODS))


@dataclass
class OnPolicyOptions(DPOOptions, JudgeTemplateOptions):
    # '' by default, filled in by the config (judging_defaults): a JSFT judge asked in a template
    # it never trained on judges near chance, and nothing in the run would show it
    judge_template: str = option("", TEMPLATE_HELP + ". '' = the template the judge trained on, as "
                                 "its checkpoint records it (the --judge_from checkpoint's "
                                 "state.json, else --init_from's: a JSFT or pref_aug run's), else '"
                                 + JUDGE_TEMPLATE + "'. A run saves the one it takes (a "
                                 "--resume judges as it began), and one given another than the "
                                 "judge's own says so in a note as it starts",
                                 choices=("",) + tuple(TEMPLATES))
    likelihood: str = judge_likelihood(LIKELIHOOD, "Self-Judge's")
    judge_from: str = option("", "a checkpoint directory to judge with, read with its own "
                             "tokenizer and chat template (an option of nanoalign's, not a setting "
                             "of either paper); '' = the frozen start (the papers' choice)")
    gen_max_tokens: int = option(0, "max new tokens per sample; 0 = auto: "
                                 f"{AUTO_NEW_TOKENS['small']} for a model under "
                                 f"{FAST_MIN_PARAMS // 10**6}M parameters (the arith task's answers "
                                 f"are short), {AUTO_NEW_TOKENS['large']} for a larger one (TRL "
                                 "OnlineDPOConfig's max_new_tokens); the run's start prints the "
                                 "number. A sample follows its prompt "
                                 "(which --max_length bounds), so a trained sequence is at most "
                                 "--max_length - 1 + this", minimum=0)
    principles: str = option("", "for a principle template: 'name:description,...' to judge under "
                             "(each judged, then combined: the win rate for Self-Judge, the mean for OSP); "
                             "a description may hold commas, only a comma followed by a new 'name:' "
                             "starts the next principle (a name is letters, digits, _ and -); "
                             "'' = the principles kept in the judge's checkpoint (principles.json)")


def judge_checkpoint(cfg):
    """The checkpoint whose model judges: --judge_from, else the start (the frozen reference, and
    under self_judge --judge policy the policy, which starts there)."""
    return cfg.judge_from or cfg.init_from


def judging_defaults(rule):
    """An on-policy method's Method.start_defaults: its --judge_template and --likelihood left '',
    those its judge's checkpoint records, else 'compact' and `rule` (the method's paper's)."""
    def fill(cfg):
        given = {k: getattr(cfg, k) for k in JUDGING}
        try:      # a template renamed since the judge's run: refused here, not a KeyError mid-run
            used = judging(judge_checkpoint(cfg), given, rule)
        except JudgeError as e:
            raise SystemExit(f"error: {e}") from None
        return {k: v for k, v in used.items() if not given[k]}
    return fill


def judging_said(cfg):
    """The line a run starts with on how it judges: the template and rule, and whose they are, or
    the note `judging_overridden` writes. A judge whose checkpoint records neither never trained to
    judge (an SFT warm-up, a downloaded model): the papers start from a trained judge (Self-Judge
    from JSFT, OSP from preference augmentation), and a small model judging zero-shot is near
    chance, which would leave the run training on noise without a word."""
    src = judge_checkpoint(cfg)
    rec, used = recorded_judging(src), {k: getattr(cfg, k) for k in JUDGING}
    said = judging_overridden(src, rec, used) or (
        "judges with " + " ".join(f"--{k} {v}" for k, v in used.items())
        + (f", as the judge {src} records" if rec else ""))
    saved = trained_config(src)
    m = REGISTRY.get(saved.get("method"))          # a judge-training method's run whose options
    if m is not None and m.trains_judge is not None:   # trained none (JSFT with --jsft_judge false)
        cfg_then = SimpleNamespace(**({f.name: f.default for f in dataclasses.fields(m.options)} | saved))
        untrained = not m.trains_judge(cfg_then)
    else:
        untrained = False
    why = (f"is a {m.name} run that trained no judgments (its config, in state.json)" if untrained else
           "records no judge template (a jsft or pref_aug run's checkpoint does)" if not rec else None)
    return said + (f"\nnote: the judge {src} {why}: a model that never trained to judge (an SFT "
                   f"warm-up, a downloaded model) judges zero-shot, near chance for a small one; train "
                   f"a judge with --method jsft (Self-Judge) or pref_aug (OSP) and start from it"
                   if why else "")


def judging_overridden(src, rec, used):
    """Where a flag gave another template or rule (`used`: {judge_template, likelihood}) than the
    judge's checkpoint `src` records (`rec`, recorded_judging's), a note saying so: obeyed, but a
    judge asked in a template it did not train on may judge near chance (sample.py --best_of prints
    it too). Else None."""
    other = [k for k, v in rec.items() if used[k] != v]
    if not other:
        return None
    return (f"note: the judge {src} records " + " ".join(f"--{k} {rec[k]}" for k in other)
            + " (its state.json); this run judges with " + " ".join(f"--{k} {used[k]}" for k in other)
            + ", as given")


def template_of(cfg, tok):
    """The judge template, checked against this tokenizer (labels must be single tokens)."""
    return check_template(tok, TEMPLATES[cfg.judge_template])


def principles_for(t, given, ckpt_dir):
    """[(name, description)] judge template t judges under: `given` (--principles, 'name:description,...'),
    else the principles kept with the judge's checkpoint `ckpt_dir` (kept_principles); None for a
    template without principles, where --principles is refused: it would be ignored, the pairs
    judged under none of the principles it names. The on-policy methods, sample.py --best_of and the
    judge's command line all ask this."""
    if "{principle}" not in t.user:
        if given:
            names = ", ".join(n for n, x in TEMPLATES.items() if "{principle}" in x.user)
            raise JudgeError(f"--principles applies to a principle template ({names}); judge template "
                             f"'{t.name}' judges without principles")
        return None
    if given:
        return parse_principles(given)
    return kept_principles(t, ckpt_dir)


def principles_of(cfg, t):
    """The principles an on-policy run judges under: its judge's (--judge_from, else --init_from)."""
    return principles_for(t, cfg.principles, cfg.judge_from or cfg.init_from)


def kept_principles(t, ckpt_dir):
    """The principles kept with a checkpoint (its principles.json): those its JSFT data was built
    from, or those its self-training judged under."""
    path = os.path.join(ckpt_dir, PRINCIPLES_FILE)
    if not os.path.exists(path):
        raise JudgeError(f"judge template '{t.name}' judges under principles: name them with "
                         f"--principles name:description,... ({path} does not exist)")
    return list(read_json(path).items())


def inherited(ckpt_dir):
    """{file: JSON value} that a run keeps from the checkpoint it starts from: the principles of a
    principle-aware judge travel with every checkpoint derived from it (a method that judges or
    builds judge data under other principles replaces them)."""
    path = os.path.join(ckpt_dir, PRINCIPLES_FILE)
    return {PRINCIPLES_FILE: read_json(path)} if os.path.exists(path) else {}


def labelled(row, where, t):
    """A row a principle template judges: its per-objective labels, checked (rows.check_labels)."""
    if not ("labels" in row and "objectives" in row):
        raise DataError(f"{where}: judge template '{t.name}' is principle-aware and needs 'labels' and "
                        f"'objectives' fields on every row")
    return check_labels(row, where)


def label_check(cfg):
    """JSFT's / pref_aug's Method.check_row: under a principle template every row read needs its
    labels, checked as it is read (a row without them skipped and counted with --skip_bad_rows);
    None for a template without principles."""
    t = TEMPLATES[cfg.judge_template]
    if "{principle}" not in t.user:
        return None
    return lambda row, where: labelled(row, where, t)


def judgment_data(rows, t, run, split="train"):
    """The judge's training rows (JSFT, OSP's augmentation): each pair judged in both orders. A
    principle template needs labels per objective on every row, and the training split's principles
    are kept with the checkpoint (principles.json), so the trained judge later judges under the same
    ones (a validation split of other objectives does not replace them)."""
    aware = "{principle}" in t.user
    if aware:                            # JSON's 1 read as "1"; a label of no meaning an error
        rows = [labelled(r, r.get("_where", "row"), t) for r in rows]
    if t.rationale and run.task is None:
        raise DataError(f"judge template '{t.name}' trains on rationales, which only a built-in "
                        f"task's oracle writes; choose a template without rationale")
    if aware and split == "train":
        run.checkpoint_files[PRINCIPLES_FILE] = {k: r["objectives"][k] for r in rows for k in r["labels"]}
    return judgment_rows(rows, t, aware, run.task and run.task.rationale)


def setup(run, cfg, device):
    """Start-up of an on-policy method, before any data is read: a --judge_from judge loaded with its
    own tokenizer and chat template; the judge template checked against every tokenizer that reads
    it (a bad one fails now, not mid-run); the principles it judges under (run.principles), kept with
    the run's checkpoints, so that its self-rejection later judges under the same ones."""
    if cfg.judge_from:
        try:
            judge, run.judge_tok = load(cfg.judge_from, torch.float32, device)
        except CheckpointError as e:     # its message begins with the path: say which flag gave it
            raise CheckpointError(f"--judge_from {e}") from None
        run.judge = frozen_copy(judge)
    t = template_of(cfg, run.tok)
    if run.judge_tok is not None:
        check_template(run.judge_tok, t)
    run.principles = principles_of(cfg, t)
    if run.principles is not None:
        run.checkpoint_files[PRINCIPLES_FILE] = dict(run.principles)


# -- 1. sample -----------------------------------------------------------------------------------------
def new_tokens(cfg, model):
    """--gen_max_tokens, or for 0 (auto) AUTO_NEW_TOKENS by the model's size."""
    return cfg.gen_max_tokens or AUTO_NEW_TOKENS["large" if is_large(model) else "small"]


def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator=None, top_k=None):
    """n samples per prompt (lists of token ids); [[sample 0, ..., sample n-1] per prompt]. Samples
    end at an end-of-turn token (kept, so it is scored) or at max_new_tokens. Uses torch's global RNG
    unless a generator is given, so a resumed run samples the same."""
    from model.generate import generate
    flat = generate(model, [p for p in prompts for _ in range(n)], max_new_tokens,
                    tok.stop_ids, temperature, top_k, top_p, generator,
                    tok.pad_id or 0)
    return [[s if s else [tok.eos_id] for s in flat[i * n:(i + 1) * n]] for i in range(len(prompts))]


# -- 2. judge ------------------------------------------------------------------------------------------
def judge_of(run, fallback):
    """(judge model, its tokenizer): a --judge_from checkpoint with its own tokenizer and chat
    template, else `fallback` (the frozen start, or the policy) with the run's tokenizer."""
    if run.judge is not None:
        return run.judge, run.judge_tok or run.tok
    return fallback, run.tok


def judge_probs(judge, tok, template, prompts, a, b, principles=None, likelihood="vocab",
                combine="win_rate"):
    """p(a_i > b_i | prompt_i) for text pairs, position-swapped, the judge in eval mode, reading the
    texts with `tok` (the judge's own tokenizer); label probabilities by `likelihood`, and under a
    principle template one judgment per principle combined by `combine` (nanoalign/judge.py
    judge_pairs)."""
    try:
        with evaluating(judge):
            return judge_pairs(judge, tok, template, list(zip(prompts, a, b)), principles,
                               likelihood=likelihood, combine=combine)
    except TooLongForContext as e:   # the model's refusal, said of the judge: what to change
        raise JudgeError(f"judge template '{template.name}': a judge prompt of {e.n} tokens is longer than "
                         f"the judge's context ({e.context} tokens); it holds the prompt, two samples and "
                         f"the template, so a shorter one (a 'compact' template), --max_length or "
                         f"--gen_max_tokens brings it in") from None


# -- 3. pairs ------------------------------------------------------------------------------------------
def orient(first, second, p):
    """(wins, losses): each pair ordered by the judge; p >= 1/2 means `first` is the better one."""
    prefer_first = [float(q) >= 0.5 for q in p]
    wins = [a if f else b for a, b, f in zip(first, second, prefer_first)]
    losses = [b if f else a for a, b, f in zip(first, second, prefer_first)]
    return wins, losses


def pair_batch(prompts, wins, losses, pad_id, device, packed=False):
    """A preference batch (chosen rows first) from prompt ids and response ids, no re-tokenizing.
    packed: padding-free too (train.py --packed, compute.packed_batches): the loop makes every other
    micro-batch, but a rollout makes the batch its loss eats, so it must ask for the layout itself."""
    ex = [{"chosen": p + w, "n_prompt_chosen": len(p), "rejected": p + l, "n_prompt_rejected": len(p)}
          for p, w, l in zip(prompts, wins, losses)]
    return make_batch(ex, "pref", pad_id, device, packed)


def response_batch(prompts, responses, pad_id, device, packed=False):
    """An SFT batch from prompt ids and response ids (packed: as pair_batch's)."""
    return make_batch([{"ids": p + r, "n_prompt": len(p)} for p, r in zip(prompts, responses)],
                      "sft", pad_id, device, packed)


# -- metrics -------------------------------------------------------------------------------------------
def agreement(task, prompts, a, b, p):
    """{'judge_agree': ..., 'judge_pairs': n}: how often the judge's choice (p >= 1/2: a) matches a
    built-in task's oracle, over the n pairs the oracle does not tie; {} without a task or without
    such pairs. Ties are common, so n varies between micro-batches and ranks of equal examples:
    the loop weighs each judge_agree by its n (WEIGHTS). The oracle is a metric only: it never
    decides a pair."""
    if task is None:
        return {}
    hits = []
    for x, ya, yb, q in zip(prompts, a, b, p):
        try:
            sa, sb = task.oracle_scores(x, ya)["overall"], task.oracle_scores(x, yb)["overall"]
        except ValueError:   # not one of the task's prompts
            continue
        if sa != sb:
            hits.append(float((sa > sb) == (float(q) >= 0.5)))
    return {"judge_agree": sum(hits) / len(hits), "judge_pairs": float(len(hits))} if hits else {}


class Clock:
    """Where an on-policy step's time goes: clock.lap('t_sample') after sampling, and so on."""

    def __init__(self):
        self.t, self.laps = time.time(), {}

    def lap(self, name):
        now = time.time()
        self.laps[name] = now - self.t
        self.t = now


def cost(samples, clock, n_drawn):
    """Mean sample length, samples drawn per second of sampling, and the clock's laps."""
    m = {"sample_len": sum(map(len, samples)) / len(samples), **clock.laps}
    if n_drawn:
        m["samples_per_s"] = n_drawn / max(clock.laps.get("t_sample", 0.0), 1e-9)
    return m


# how the loop combines these over a step's micro-batches, then its ranks (runlog.step_metrics); any
# other metric of a rollout is the mean weighted by each micro-batch's examples
TIMES = ("t_sample", "t_judge")        # a rank's seconds in the step: summed over its micro-batches
COUNTS = ("judge_pairs",)              # summed over micro-batches and over ranks
WEIGHTS = {"judge_agree": "judge_pairs",    # the fraction of all the pairs the oracle ranked
           "samples_per_s": "t_sample"}     # a rank's samples drawn over its seconds of sampling
RATES = ("samples_per_s",)             # the run's: summed over ranks, which sample side by side
METRICS = {"judge_agree": "judge's choice = the built-in task's oracle, on pairs it does not tie",
           "judge_pairs": "pairs the oracle does not tie in this step, all ranks (judge_agree's)",
           "sample_len": "mean sample length (tokens)",
           "samples_per_s": "samples drawn per second of sampling, all ranks",
           "t_sample": "seconds sampling in this step", "t_judge": "seconds judging in this step (the rest "
           "of step_s is the update)"}
