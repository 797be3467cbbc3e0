"""
MetaAligner ("MetaAligner: Conditional Weak-to-Strong Correction for Generalizable Multi-Objective
Alignment of Language Models", arXiv:2403.17141; docs/methods.md#metaaligner): a small model that
edits ANY policy's answer towards the objectives you name, without touching the policy's weights.

Data (the paper's Algorithm 1). A row is (q, y1, y2, R) with one label per objective,
R_j in {"1" (y1 better), "2" (y2 better), "equal"}, and a text marker per objective:
    {"prompt": q, "chosen": y1, "rejected": y2, "labels": {"correct": "1", "format": "equal"},
     "objectives": {"correct": "the sum is right", "format": "ends with a period"}}
(the built-in task emits exactly this, task.preference_rows). With O+ / O- / O= the objectives where
y1 wins / y2 wins / they tie, each shuffled with a seeded RNG:
    O+ non-empty:  D_p += (T(q, y2, O+, "better"), y1)
    O- non-empty:  D_p += (T(q, y1, O-, "better"), y2)
    O= non-empty:  D_e += (T(q, y2, O=, "equal"),  y1)
    T(q, y, O, t) = "Edit the following Question-Answer pair to make it {t} considering the following
                     objectives: {name: description; ...} | Question: {q} | Answer: {y} | Edit:"
A conversational (TRL-style) row keeps its whole conversation in {q}: the system message and every
turn, each with its role name ("System: ...\nUser: ...\nAssistant: ...\nUser: ..."), as the judge
reads one; {y} is the answer's text (a message-list response: its assistant message). Training and
inference (`correct`) build the prompt with the same `template`.

Training: plain SFT on the target, prompt masked, in three stages (--meta_stage, or 'all' = the
three in sequence, each starting from the previous one's checkpoint, in out_dir/<stage>):
    warmup      a random subset (--meta_warmup_frac) of D_e with the target = the input answer
                (identity mapping, "a prelude proven effective in residual correction")
    equal       D_e
    preference  D_p
--meta_holdout name drops an objective from training entirely (the paper's zero-shot test).

Inference: `sample.py --aligner DIR --objectives correct,format:"ends with a period"` corrects
answers from any source (nanoalign.meta_aligner.correct). A run keeps the objectives it trained on
with its checkpoints (objectives.json): sample.py corrects towards those unless --objectives says.
"""
import dataclasses
import os
import random
import shlex
from dataclasses import dataclass

from model.files import CheckpointError, atomic_write_json, read_json
from model.generate import generate
from model.tokenizer import answer_text
from nanoalign import dist
from nanoalign.checkpoint import RUN_CONFIG, saved_step
from nanoalign.common import Method, option, register
from nanoalign.judge import parse_named, prompt_text
from nanoalign.rows import check_labels
from nanoalign.sft import METRICS, sft_loss
from nanoalign.suggest import did_you_mean
from nanoalign.textfile import DataError

PROMPT = ("Edit the following Question-Answer pair to make it {t} considering the following "
          "objectives: {objectives} | Question: {q} | Answer: {y} | Edit:")
STAGES = ("warmup", "equal", "preference")
OBJECTIVES_FILE = "objectives.json"  # {name: description} of the training rows, the held-out ones left
                                     # out: kept with every checkpoint, what sample.py corrects towards


@dataclass
class MetaOptions:
    meta_stage: str = option("all", "'warmup' (the answer as its own edit, on --meta_warmup_frac of "
                             "the equal set), 'equal' (edits where the answers tie), 'preference' (the "
                             "worse answer edited into the better), or 'all' (the three in sequence, "
                             "each in out_dir/<stage> from the one before; the warm-up trains "
                             "max(1, max_steps // 5) steps, the others max_steps)",
                             choices=STAGES + ("all",))
    meta_warmup_frac: float = option(0.1, "fraction of the equal set used for the warm-up, at least "
                                     "--batch_size rows (0 = one micro-batch)", minimum=0.0, maximum=1.0)
    meta_holdout: str = option("", "comma-separated objectives left out of training (the paper's "
                               "zero-shot test); '' = none")


def render_objectives(objs):
    """[(name, description), ...] -> 'name: description; name: description'."""
    return "; ".join(f"{n}: {d}" for n, d in objs)


def template(q, y, objs, t):
    """T(q, y, O, t): q a string or a conversation (every turn kept, with role names), y an answer
    string or a message list (its assistant message's text)."""
    return PROMPT.format(t=t, objectives=render_objectives(objs), q=prompt_text(q), y=answer_text(y))


def build_sets(rows, seed, holdout=()):
    """Algorithm 1: (D_p, D_e), lists of {prompt, response, input}."""
    rng = random.Random(f"meta-{seed}")
    d_p, d_e = [], []
    for r in rows:
        where = r.get("_where", "row")        # each built row names the line it came from
        r = check_labels(r, where)
        q, y1, y2 = r["prompt"], r["chosen"], r["rejected"]
        groups = {"1": [], "2": [], "equal": []}
        for k, v in r["labels"].items():
            if k not in holdout:
                groups[v].append((k, r["objectives"][k]))
        for g in groups.values():
            rng.shuffle(g)
        if groups["1"]:
            d_p.append({"prompt": template(q, y2, groups["1"], "better"), "response": y1, "input": y2,
                        "_where": where})
        if groups["2"]:
            d_p.append({"prompt": template(q, y1, groups["2"], "better"), "response": y2, "input": y1,
                        "_where": where})
        if groups["equal"]:
            d_e.append({"prompt": template(q, y2, groups["equal"], "equal"), "response": y1, "input": y2,
                        "_where": where})
    return d_p, d_e


def stage_rows(rows, cfg, split, run=None):
    """The SFT rows of one stage; the training split's objectives are kept with the checkpoint."""
    holdout = tuple(x for x in cfg.meta_holdout.split(",") if x)
    labelled = {k for r in rows for k in r.get("labels") or {}}
    for name in holdout:     # a misspelt name would hold nothing out, and the zero-shot test be no test
        if split == "train" and name not in labelled:
            raise DataError(f"--meta_holdout {name!r}: no training row labels this objective; the rows "
                            f"label {', '.join(sorted(labelled))}" + did_you_mean(name, labelled))
    d_p, d_e = build_sets(rows, cfg.seed, holdout)
    if split == "train" and run is not None:
        run.checkpoint_files[OBJECTIVES_FILE] = {k: r["objectives"][k] for r in rows for k in r["labels"]
                                                 if k not in holdout}
    if cfg.meta_stage == "warmup":
        rng = random.Random(f"meta-warmup-{cfg.seed}")
        k = min(len(d_e), max(cfg.batch_size, int(len(d_e) * cfg.meta_warmup_frac)))  # >= one batch
        sub = rng.sample(d_e, k)
        return [{**e, "response": e["input"]} for e in sub]          # identity mapping
    return d_e if cfg.meta_stage == "equal" else d_p


def run_stages(cfg, train_fn):
    """--meta_stage all: warmup -> equal -> preference, each a run of its own in out_dir/<stage> from
    the previous stage's checkpoint; one stage: one train_fn call. Returns the last checkpoint.

    The chain keeps its config and the stages it has finished in out_dir/run_config.json, so that
    `--out_dir DIR --resume` (config.resume_config reads that file) skips the finished stages,
    resumes the one that was stopped and runs the rest afresh. A stage counts as finished only if
    this chain wrote so (also when it was stopped after its checkpoint at its last step was in place):
    a complete checkpoint an older chain left in DIR is replaced, not skipped."""
    if cfg.meta_stage != "all":
        train_fn(cfg)
        return os.path.join(cfg.out_dir, "ckpt")
    record = os.path.join(cfg.out_dir, RUN_CONFIG)
    finished = read_json(record).get("stages_done", []) if cfg.resume else []
    init, steps, ran = cfg.init_from, {"warmup": max(1, cfg.max_steps // 5)}, False
    for st in STAGES:
        c = dataclasses.replace(cfg, meta_stage=st, out_dir=os.path.join(cfg.out_dir, st),
                                init_from=init, max_steps=steps.get(st, cfg.max_steps), final_eval=False)
        init = os.path.join(c.out_dir, "ckpt")
        done = saved_step(init) if cfg.resume and not ran else 0   # after a stage ran, the rest start afresh
        if st in finished and done >= c.max_steps:
            print(f"== MetaAligner stage '{st}' -> {c.out_dir}: done at step {done}, skipped")
            continue
        print(f"== MetaAligner stage '{st}' -> {c.out_dir}"
              + (f" (resumed at step {done})" if 0 < done < c.max_steps else ""))
        finished = finished[:STAGES.index(st)]                     # the ones before it, all skipped
        _write_record(record, cfg, finished)
        before = _stamp(init)
        try:
            train_fn(dataclasses.replace(c, resume=0 < done < c.max_steps))
        except (SystemExit, KeyboardInterrupt) as e:   # Ctrl-C or SIGTERM: SystemExit(128 + signal)
            resume = f"  python train.py --out_dir {shlex.quote(cfg.out_dir)} --resume"
            # stopped in its last step or its end-of-run save, after this run's last checkpoint was in
            # place (not an older chain's, left in DIR: it may come from other settings)
            if _stamp(init) != before and saved_step(init) >= c.max_steps:
                _write_record(record, cfg, finished + [st])      # the resume takes it, not retrains it
                print(f"stage '{st}' is complete, and with it the chain: the aligner is {init}"
                      if st == STAGES[-1] else          # nothing after it: no --resume to offer
                      f"stage '{st}' is complete; to resume the chain (the stages after it):\n{resume}")
            elif isinstance(e, KeyboardInterrupt):      # before its first step, or a second signal (Abort):
                print(f"to resume the chain (this stage, then the rest):\n{resume}")   # no command yet
            elif isinstance(e.code, int) and e.code >= 128:   # the stage printed its own --resume
                print(f"that resumes stage '{st}' alone; to resume the chain (this stage, then the "
                      f"rest):\n{resume}")
            raise
        finished, ran = finished + [st], True
        _write_record(record, cfg, finished)
    if not ran:
        raise CheckpointError(f"the chain in {cfg.out_dir} has finished all its stages: nothing to "
                              f"resume; raise --max_steps to train on")
    return init


def _stamp(ckpt):
    """Which checkpoint is in `ckpt` now: a save renames a new directory into place (a new inode)."""
    state = os.path.join(ckpt, "state.json")
    return (os.stat(state).st_ino, os.stat(state).st_mtime_ns) if os.path.exists(state) else None


def sample_flags(cfg, ckpt):
    """sample.py's flags that use a trained aligner: it corrects a policy's answers (towards the
    objectives it trained on, which sample.py reads from its objectives.json). The policy is the
    run's start where that is one (the chain's, or the warm-up stage's); a later stage starts from an
    aligner, so the policy is yours to name."""
    policy = cfg.init_from if cfg.meta_stage in ("all", "warmup") and os.path.isdir(cfg.init_from) \
        else "POLICY_DIR"
    return f"--init_from {shlex.quote(policy)} --aligner {shlex.quote(ckpt)}"   # a path may hold a space


def _write_record(path, cfg, finished):
    if dist.is_main():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_json({"config": dataclasses.asdict(cfg), "cwd": os.getcwd(),   # as a checkpoint's
                           "stages_done": finished}, path)


def parse_objectives(spec, known=None):
    """'correct,format:ends with a period, nothing else' -> [(name, description)], the syntax of
    --principles (judge.parse_named: descriptions may hold commas); a name without a description
    takes it from `known` (the built-in task's objectives)."""
    out = []
    for name, desc in parse_named(spec, "--objectives", bare=True):
        desc = desc or (known or {}).get(name)
        if not desc:   # a typo of a known name reads as a new objective: say which was close
            raise ValueError(f"objective '{name}' needs a description: --objectives {name}:<description>"
                             + did_you_mean(name, known or {}))
        out.append((name, desc))
    if not out:
        raise ValueError("name at least one objective")
    return out


def correct(aligner, tok, prompts, answers, objectives, max_new_tokens=48, batch_size=64):
    """Corrected answers (strings) for (prompt, answer) pairs, aligned on `objectives`."""
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [tok.encode_prompt(template(q, y, objectives, "better"))
               for q, y in zip(prompts[i:i + batch_size], answers[i:i + batch_size])]
        gen = generate(aligner, ids, max_new_tokens, tok.stop_ids, temperature=0,
                       pad_id=tok.pad_id or 0)
        out += [tok.decode(g).strip() for g in gen]
    return out


register(Method(name="meta_aligner", reads="pref", eats="sft", unit="n_tokens", loss=sft_loss,
                help="MetaAligner: SFT an aligner that edits answers towards named objectives "
                     "(--meta_stage warmup|equal|preference|all)",
                options=MetaOptions, prepare=stage_rows, check_row=lambda cfg: check_labels,
                main=run_stages, sample_flags=sample_flags,
                metrics=METRICS))
