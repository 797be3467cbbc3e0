"""
The configuration of a run: one flat dataclass per (method, task), built from three declarations,

    SharedConfig            below: what every run has (data, optimizer, schedule, scale, logging)
    the method's options    its file in nanoalign/ (e.g. nanoalign/osp.py OSPOptions)
    the task's options      its module in nanoalign/tasks/ (e.g. nanoalign/tasks/arith.py Options)

read from flags, a JSON file (--config) or the checkpoint of the run being resumed. Every value is
checked against its declaration (type, choices, bounds) wherever it came from; an unknown key is an
error naming the flag, or the file and key, with the closest known one where one is close, or the
methods or tasks it is an option of. The flags are read by nanoalign/cli.py (parse_config);
tests and experiments/ build a config with make_config; what a config decides in the loop
(autocast, packing, checkpointing, AdamW) is nanoalign/compute.py.
"""
import dataclasses
import math
import operator
import os
from dataclasses import dataclass

from model.chat_template import CHAT_FORMAT_HELP, CHAT_FORMATS
from model.checkpoint import CheckpointError, read_json
from model.lora import parse_targets
from model.model import PRESETS
from nanoalign import DEFAULT_METHOD, REGISTRY
from nanoalign.checkpoint import DATA_FILE, RUN_CONFIG, data_fingerprint
from nanoalign.common import option
from nanoalign.compute import AUTO_LR, FAST_MIN_PARAMS
from nanoalign.suggest import did_you_mean
from nanoalign.tasks import TASKS, get_task

# what --resume may change; every other setting comes from the checkpoint, and a different value is
# refused (a resumed run must be the run it continues). grad_checkpoint changes no number (bitwise
# the same gradients), only memory and time
RESUMABLE = ("resume", "max_steps", "log_every", "eval_every", "eval_batches", "ckpt_every",
             "final_eval", "device", "skip_bad_rows", "grad_checkpoint")
# the options that name a file or directory, and the words they take that name none. A relative path
# is read from the working directory, which a checkpoint records ("cwd" beside its config): --resume
# from another directory reads the run's files from the one it started in (from_start)
PATHS = ("init_from", "train_data", "val_data", "judge_from", "task_data")
NOT_PATHS = ("", "auto", "builtin", "default", "scratch")
ON_POLICY = ", ".join(n for n, m in REGISTRY.items() if m.rollout)   # they sample: no held-out loss


def _rate(x):
    """A learning rate as the docs write it: 3e-4, not 0.0003 or 3e-04."""
    mantissa, exp = f"{x:e}".split("e")
    return f"{float(mantissa):g}e{int(exp)}"


@dataclass
class SharedConfig:
    """The options every method has; a method adds its own (its file's options dataclass)."""
    method: str = option(DEFAULT_METHOD, "which method to train; 'list' prints each method with its "
                         "options")
    init_from: str = option("default", "'default' = the --task's start: for arith an SFT warm-up, "
                            "trained once and cached in out/_warm/ under --model_preset, --seed, "
                            "--n_warm, --warm_steps, --warm_lr and where it trains (--device's kind, the "
                            "torchrun ranks); for instruct SmolLM2-135M-Instruct in "
                            "checkpoints/smollm2-135m. 'scratch' = a fresh model of --model_preset; or "
                            "a checkpoint directory (Hugging Face layout, or a LoRA run's adapters)")
    model_preset: str = option("tiny", "the model of --init_from scratch and of the arith warm-up "
                               "(model/model.py PRESETS): 'tiny' (0.77M parameters, the arith task's); "
                               "'smollm2-135m', 'mistral-7b', 'llama3-8b' = those shapes with random "
                               "weights (tests, benchmarks); all with the byte-level tokenizer",
                               choices=tuple(PRESETS))
    chat_format: str = option("", CHAT_FORMAT_HELP + ". Not with --init_from scratch, whose byte "
                              "tokenizer speaks selfjudge", choices=CHAT_FORMATS)
    train_data: str = option("builtin", "'builtin' (the rows of the built-in --task) or a JSONL file "
                             "of the rows the method reads")
    task: str = option("arith", "the built-in task (nanoalign/tasks/): 'arith' (What is 17 + 8?, a "
                       "tiny model) or 'instruct' (questions with format instructions, for "
                       "SmolLM2-135M-Instruct); its options follow the method's", choices=tuple(TASKS))
    val_data: str = option("auto", "a JSONL file for the held-out loss; 'builtin' = the built-in "
                           "task's; 'auto' = the built-in task's when training on it, none otherwise; "
                           f"'' = none. The on-policy methods ({ON_POLICY}) have none: 'auto' or '' only")
    out_dir: str = option("", "run directory: checkpoint in out_dir/ckpt, metrics in "
                          "out_dir/metrics.jsonl; '' means out/<method>")
    resume: bool = option(False, "continue the run in out_dir from its last checkpoint, with its "
                          "settings: only " + ", ".join(f"--{k}" for k in RESUMABLE[1:]) + " may "
                          "change (another setting given must equal the run's; a path may name the "
                          "run's file by another path, --train_data a copy of its rows). Its relative "
                          "paths are read from the directory the run started in, so it resumes from "
                          "any directory")
    max_steps: int = option(300, "optimizer steps", minimum=1)
    batch_size: int = option(16, "examples per micro-batch (an on-policy method's are prompts); per "
                             "process under torchrun", minimum=1)
    grad_accum: int = option(1, "micro-batches per optimizer step (the loss is normalized over all)",
                             minimum=1)
    lr: float = option(0.0, f"peak learning rate; 0 = auto: {_rate(AUTO_LR['small'])} for a model "
                       f"under {FAST_MIN_PARAMS // 10**6}M parameters (the arith task's); for a "
                       "larger, pretrained one (the instruct task's SmolLM2-135M too) the default of "
                       f"TRL's trainer of the same loss: {_rate(AUTO_LR['sft'])} for SFT (sft, jsft, "
                       f"pref_aug, meta_aligner, osp --pairing raft), {_rate(AUTO_LR['online'])} for "
                       f"on-policy DPO (self_judge, osp's pair losses), {_rate(AUTO_LR['preference'])} "
                       "for every other method (offline DPO, IPO, ORPO and MO-ORPO, and "
                       "self_judge_offpolicy, whose pairs are sampled once)", minimum=0.0)
    min_lr_ratio: float = option(0.1, "cosine decay ends at lr * min_lr_ratio (1 = a constant rate "
                                 "after the warm-up; TRL's trainers decay linearly to 0, with no "
                                 "warm-up)", minimum=0.0, maximum=1.0)
    warmup_steps: int = option(20, "linear warm-up steps (a run of fewer --max_steps never "
                                   "reaches the peak rate; its start says so)", minimum=0)
    weight_decay: float = option(0.0, "AdamW weight decay", minimum=0.0)
    beta1: float = option(0.9, "AdamW beta1", minimum=0.0, below=1.0)
    beta2: float = option(0.95, "AdamW beta2 (TRL's trainers take transformers' 0.999; 0.95 forgets a "
                          "spike in the gradients' scale sooner, as nanoGPT and Llama's recipe do)",
                          minimum=0.0, below=1.0)
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 = off)", minimum=0.0)
    max_length: int = option(0, "tokens per sequence; responses are cut from the right; a prompt "
                             "that leaves no room for a response is a bad row (an error, or skipped "
                             "with --skip_bad_rows); a judgment target that does not fit is dropped "
                             "and counted. 0 = auto: 1024 (TRL's DPO, ORPO and SFT default), or the "
                             "model's context where that is shorter", minimum=0)
    skip_bad_rows: bool = option(False, "skip bad data rows instead of stopping (counted, the first "
                                        "three named)")
    seed: int = option(1337, "random seed (data order, init, sampling; the arith warm-up is cached "
                       "per seed)")
    deterministic: bool = option(True, "on CUDA, use torch's deterministic algorithms, so that a "
                                 "rerun or a resume can repeat a run bit for bit (somewhat slower; "
                                 "an op that has none stops the run with its name: false runs on)")
    log_every: int = option(10, "print and record metrics every N steps", minimum=1)
    eval_every: int = option(100, "held-out loss every N steps (0 = only at the end; it always runs "
                             "at the end when there is validation data)", minimum=0)
    eval_batches: int = option(8, "micro-batches of held-out data per evaluation (the same examples each "
                               "time, spread evenly over the data)", minimum=1)
    ckpt_every: int = option(0, "checkpoint every N steps (0 = only at the end)", minimum=0)
    final_eval: bool = option(True, "on the built-in task, end with the table of greedy answers "
                              "before and after (a resumed run too, from its start, which --resume "
                              "needs where it was); not on your own data, or for meta_aligner (an "
                              "aligner edits answers)")
    device: str = option("auto", "'cpu', 'cuda', or 'auto' = 'cuda' where torch sees a GPU, else 'cpu'. "
                         "Under torchrun each rank takes its own GPU, or all run on the CPU where "
                         "there are fewer GPUs than ranks", choices=("auto", "cpu", "cuda"))
    dtype: str = option("auto", "compute dtype of the forwards: 'float32'; 'bfloat16' is autocast "
                        "(float32 master weights and AdamW state, log-sum-exp and losses in float32); "
                        "'auto' = bfloat16 on a GPU of sm_80 or later, and on a CPU whose bf16 matmuls "
                        "outrun float32's (AMX, or AVX512-BF16 on AMD) for a model of "
                        f"{FAST_MIN_PARAMS // 10**6}M parameters or more, else float32",
                        choices=("auto", "float32", "bfloat16"))
    packed: str = option("auto", "padding-free batches ('true' / 'false'): each micro-batch's rows "
                         "back to back, no matmul on a pad (the padded batch is the reference); "
                         f"'auto' = on for a model of {FAST_MIN_PARAMS // 10**6}M parameters or more",
                         choices=("auto", "true", "false"))
    # scale: LoRA, activation checkpointing, several processes (launch with torchrun)
    lora_r: int = option(0, "LoRA rank; 0 = train every weight. With LoRA, checkpoints hold the "
                         "adapters only (python -m model.lora merges them) and a method's reference "
                         "model is the base with adapters off", minimum=0)
    lora_alpha: float = option(16.0, "LoRA alpha: the adapter update is scaled by alpha / r",
                               above=0.0)
    lora_dropout: float = option(0.05, "LoRA dropout on the adapters' input", minimum=0.0,
                                 below=1.0)
    lora_targets: str = option("q,k,v,o,gate,up,down", "comma-separated projections that get "
                               "adapters, from q,k,v,o,gate,up,down")
    grad_checkpoint: str = option("auto", "activation checkpointing: blocks keep only their input and "
                                  "run again in backward. 'true' = every block (least memory; TRL's default; "
                                  "a CPU step took 1.06-1.45x the time of none in the side-by-side runs "
                                  "of docs/performance.md), 'half' = every other block (1.02-1.24x; on "
                                  "a GPU not measured yet), 'false' = none; "
                                  "'auto' = 'half' for a model of "
                                  f"{FAST_MIN_PARAMS // 10**6}M parameters or more (as lean as TRL's "
                                  "default, docs/performance.md), else 'false'",
                                  choices=("auto", "false", "half", "true"))
    parallel: str = option("ddp", "under torchrun: 'ddp' (weights replicated) or 'fsdp' (FSDP2 "
                           "fully_shard: weights, grads and AdamW state sharded; not for the "
                           f"on-policy methods, {ON_POLICY}); --batch_size is per process",
                           choices=("ddp", "fsdp"))


def config_class(method, task=SharedConfig.task):
    """The config dataclass of one method on one task: SharedConfig's fields, the method's options,
    the task's options."""
    m = REGISTRY[method]
    for f in dataclasses.fields(m.options):     # make_dataclass: only 'Field name duplicated'
        if f.name in SHARED:
            raise SystemExit(f"error: --method {method}: option '{f.name}' of {m.options.__name__} is a shared "
                             f"option (nanoalign/config.py SharedConfig), which every method has as it "
                             f"is: give the method's option a name of its own")
    fields = []
    for f in (dataclasses.fields(SharedConfig) + dataclasses.fields(m.options)
              + dataclasses.fields(get_task(task).Options)):
        default = method if f.name == "method" else f.default
        fields.append((f.name, f.type, dataclasses.field(default=default, metadata=f.metadata)))
    return dataclasses.make_dataclass(f"{method}_{task}_config", fields, frozen=False)


SHARED = {f.name for f in dataclasses.fields(SharedConfig)}


def known_keys():
    """Every option of any method or task: an old checkpoint's config holds all methods' knobs."""
    keys = {f.name for f in dataclasses.fields(SharedConfig)}
    for m in REGISTRY.values():
        keys |= {f.name for f in dataclasses.fields(m.options)}
    for t in TASKS:
        keys |= {f.name for f in dataclasses.fields(get_task(t).Options)}
    return keys


def owners(name):
    """'--method orpo, sj_sft' or '--task arith': whose own option `name` is; '' for a shared or
    unknown name. Each method's parser has only its own options, so another's is no typo to guess at."""
    methods = [n for n, m in REGISTRY.items() if name in {f.name for f in dataclasses.fields(m.options)}]
    tasks = [t for t in TASKS if name in {f.name for f in dataclasses.fields(get_task(t).Options)}]
    return " and ".join(f"--{what} {', '.join(names)}"
                        for what, names in (("method", methods), ("task", tasks)) if names)


def tname(f):
    return f.type if isinstance(f.type, str) else f.type.__name__


def listed(choices):
    """Choices for a message: the empty string shown as '', the rest bare (`one of '', chatml, ...`)."""
    return ", ".join(c if c else "''" for c in choices)


BOUNDS = (("minimum", ">=", operator.ge), ("above", ">", operator.gt),
          ("maximum", "<=", operator.le), ("below", "<", operator.lt))


def bounds(f):
    """[(">=", 0.0, operator.ge), ...]: the bounds an option declares (nanoalign/common.option)."""
    return [(op, f.metadata[k], holds) for k, op, holds in BOUNDS if f.metadata.get(k) is not None]


def check_value(f, v, where):
    """Type, choices and bounds of one option value; an error names the flag, or the file and key."""
    t, name = tname(f), f"--{f.name}" if where == "flags" else f"{where}: '{f.name}'"
    want = {"int": int, "float": (int, float), "bool": bool, "str": str}[t]
    if not isinstance(v, want) or (t in ("int", "float") and isinstance(v, bool)):
        raise SystemExit(f"error: {name} must be {t}, got {type(v).__name__} {v!r}")
    if t == "float" and not math.isfinite(v):
        raise SystemExit(f"error: {name} must be a finite number, got {v!r}")
    ch = f.metadata.get("choices")
    if ch and v not in ch:
        raise SystemExit(f"error: {name} must be one of {listed(ch)}, got {v!r}"
                         + (did_you_mean(v, ch) if isinstance(v, str) else ""))
    for op, bound, holds in bounds(f):
        if not holds(v, bound):
            raise SystemExit(f"error: {name} must be {op} {bound}, got {v!r}")


def config_from_dict(d, where, saved=False):
    """The method's config from a dict; unknown keys, wrong types and values outside an option's
    choices are errors naming `where`. A key of another method's options is an error too, except in
    a saved config (saved=True): old checkpoints recorded every method's knobs, and those are dropped.
    A switch (a str option with 'true' and 'false' among its choices) takes a bool as that string."""
    method, task = d.get("method", SharedConfig.method), d.get("task", SharedConfig.task)
    if method not in REGISTRY:
        raise SystemExit(f"error: {where}: method '{method}' is unknown; choose from {', '.join(REGISTRY)}"
                         + did_you_mean(method, REGISTRY))
    if task not in TASKS:
        raise SystemExit(f"error: {where}: task '{task}' is unknown; choose from {', '.join(TASKS)}"
                         + did_you_mean(task, TASKS))
    cls, known = config_class(method, task), known_keys()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in d:
        if k not in known:
            raise SystemExit(f"error: {where}: unknown config key '{k}'" + did_you_mean(
                k, known, show=lambda c: repr(c) + ("" if c in fields else f" (an option of {owners(c)})")))
        if k not in fields and not saved:
            raise SystemExit(f"error: {where}: '{k}' is not an option of --method {method} on --task "
                             f"{task} (python train.py --method list shows each method's); it is an "
                             f"option of {owners(k)}")
    kept = {k: v for k, v in d.items() if k in fields}
    for k, v in kept.items():        # a switch's bool (--grad_checkpoint was one until 2026-12-06)
        if isinstance(v, bool) and is_switch(fields[k]):
            kept[k] = "true" if v else "false"
    for k, v in kept.items():
        check_value(fields[k], v, where)
    cfg = cls(**kept)
    if REGISTRY[method].start_defaults:    # '' = the value a checkpoint records (the judge's template)
        cfg = dataclasses.replace(cfg, **REGISTRY[method].start_defaults(cfg))
    if REGISTRY[method].check_config and (why := REGISTRY[method].check_config(cfg)):
        raise SystemExit(f"error: {where}: {why}")
    try:
        parse_targets(cfg.lora_targets)
    except ValueError as e:
        raise SystemExit(f"error: {where}: {e}")
    return cfg


def make_config(**kw):
    """A checked config from keyword arguments (tests, experiments/): make_config(method=NAME, beta=0.2)."""
    return config_from_dict(kw, "config")


def is_switch(f):
    """A str option whose choices include 'true' and 'false' beside others ('auto', 'half')."""
    return tname(f) == "str" and {"true", "false"} <= set(f.metadata.get("choices") or ())


def resume_config(given, where="flags"):
    """The checkpoint's config, with only RESUMABLE settings taken from `given`; any other setting
    given with a different value than the run used is refused, naming it. The out_dir is the one
    given, never the one saved: a copied or moved run directory resumes from and writes into itself.
    The run's relative paths are read from the directory it started in (from_start); a path given
    again is read from here, and is the run's if it names the same file (or, for train_data, a copy
    of the same rows)."""
    method = given.get("method", SharedConfig.method)
    out_dir = given.get("out_dir") or os.path.join("out", method)
    path = saved_config(out_dir)
    if not os.path.exists(path):
        raise SystemExit(f"error: --resume: {path} does not exist; is --out_dir the run's directory?")
    record = read_json(path)
    saved_cfg = config_from_dict(record["config"], path, saved=True)
    started_in = record.get("cwd")     # None: a checkpoint from before it was recorded
    paths = {k: from_start(getattr(saved_cfg, k), started_in) for k in PATHS if hasattr(saved_cfg, k)}
    # a start beside the run's directory (MetaAligner's stages: DIR/equal from DIR/warmup/ckpt)
    # moves with it: the copy resumes from the copy's (both saved paths read from where the run was)
    run_dir = os.path.join(started_in or "", saved_cfg.out_dir)
    start = beside(os.path.join(started_in or "", saved_cfg.init_from), run_dir) \
        if saved_cfg.out_dir else None
    moves = {"init_from": given["init_from"]} if start and given.get("init_from") \
        and start == beside(given["init_from"], out_dir) else {}
    for k, v in given.items():         # a path given again, read from here: the run's file?
        if k in paths and k not in moves and v not in NOT_PATHS and (
                same_file(v, paths[k]) or k == "train_data" and same_rows(v, out_dir)):
            moves[k] = v
    same = moves.keys() | filled_at_start(saved_cfg, given)
    for k, v in given.items():
        if k not in RESUMABLE and k != "out_dir" and k not in same and hasattr(saved_cfg, k) \
                and paths.get(k, getattr(saved_cfg, k)) != v:
            was, got = (in_full(paths[k]), in_full(v)) if k in paths else (getattr(saved_cfg, k), v)
            raise SystemExit(f"error: --resume: '{k}' was {was!r} in this run ({path}), got {got!r}; "
                             f"a resumed run keeps its settings except {', '.join(RESUMABLE)}. "
                             f"Start a new --out_dir to change it")
        if k not in RESUMABLE and k != "out_dir" and not hasattr(saved_cfg, k):
            raise SystemExit(f"error: --resume: '{k}' is not an option of --method "
                             f"{saved_cfg.method}, which this run ({path}) trains")
    keep = {k: v for k, v in given.items() if k in RESUMABLE}
    cfg = dataclasses.replace(saved_cfg, **{**paths, **keep, **moves, "out_dir": out_dir})
    # the step's weights come from the checkpoint, but the run builds its start again first: the
    # tokenizer, a LoRA run's base, the frozen reference of a method that has one
    if cfg.init_from != "scratch" and not os.path.isdir(cfg.init_from):
        raise SystemExit(f"error: --resume: this run ({path}) started from --init_from {cfg.init_from}, "
                         f"which is not there; a resumed run loads its start again (the tokenizer, a "
                         f"LoRA base, a method's frozen reference): put the start back at that path")
    return cfg


def filled_at_start(saved_cfg, given):
    """The options `given` as '' that the run's method fills from its start (Method.start_defaults:
    an on-policy judge's template and rule): '' asks for what the run filled in when it began, which
    its saved config holds, so the first command with --resume added is no change of setting."""
    fill = REGISTRY[saved_cfg.method].start_defaults
    blank = {k: "" for k, v in given.items() if v == "" and hasattr(saved_cfg, k)}
    return set(fill(dataclasses.replace(saved_cfg, **blank))) if fill and blank else set()


def from_start(path, started_in):
    """A relative path of a run's saved config as the run meant it: from `started_in`, the directory
    it started in, where the file is there; else (the project moved with its runs) from here, as a
    checkpoint that did not record that directory reads it. From the same directory: as saved."""
    if not started_in or started_in == os.getcwd() or os.path.isabs(path) or path in NOT_PATHS:
        return path
    there = os.path.join(started_in, path)
    return path if os.path.exists(path) and not os.path.exists(there) else there


def in_full(path):
    """A path as an absolute one, for a message; a word that names no file (scratch, builtin) as is."""
    return path if path in NOT_PATHS else os.path.abspath(path)


def same_file(a, b):
    """Whether paths `a` and `b` name one file or directory (b through a symlink, say)."""
    return os.path.abspath(a) == os.path.abspath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def same_rows(path, out_dir):
    """Whether the file `path` holds the rows the run in out_dir trained on: the sha256 its checkpoint
    keeps (a copy of the run's --train_data)."""
    kept = os.path.join(out_dir, "ckpt", DATA_FILE)
    return os.path.isfile(path) and os.path.exists(kept) and \
        read_json(kept)["sha256"] == data_fingerprint(path)["sha256"]


def beside(path, out_dir):
    """`path` relative to out_dir's parent directory, or None where it is not inside it."""
    rel = os.path.relpath(path, os.path.dirname(os.path.abspath(out_dir)))
    return None if rel == ".." or rel.startswith(".." + os.sep) else rel


def saved_config(out_dir):
    """The file that holds the config of the run in out_dir: its checkpoint's state.json, or, for a run
    of several trainings (MetaAligner's --meta_stage all), its RUN_CONFIG. Where both are there, the
    newer: a chain never replaces the ckpt/ an earlier run left in its out_dir (both runs' default
    out_dir is out/meta_aligner), nor a run the RUN_CONFIG of a chain."""
    state, chain = os.path.join(out_dir, "ckpt", "state.json"), os.path.join(out_dir, RUN_CONFIG)
    if not is_chain_record(chain):
        return state
    return chain if not os.path.exists(state) or os.path.getmtime(chain) > os.path.getmtime(state) else state


def is_chain_record(path):
    """Whether `path` is a chain's RUN_CONFIG, not a file of the same name that is not one (the user's
    own --config, kept with a run). An unreadable one is, so that --resume's error names it."""
    try:
        d = read_json(path) if os.path.exists(path) else None
    except CheckpointError:
        return True
    return isinstance(d, dict) and "stages_done" in d


def shared_options(cfg):
    """The run's shared and task options as a dict (what a task's warm_start reads its own settings from)."""
    names = [f.name for f in dataclasses.fields(SharedConfig) + dataclasses.fields(get_task(cfg.task).Options)]
    return {k: getattr(cfg, k) for k in names}


def options_of(cfg, options):
    """An options dataclass (a task's Options) filled from the run's flat config."""
    return options(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(options)})
