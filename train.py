"""
One training loop for every nanoalign method.

    python train.py --method NAME                 # built-in task: SFT warm-up (cached), NAME, table
    python train.py --method list                 # every method with its options
    python train.py --method NAME --help          # the shared options and NAME's own
    python train.py --method NAME --init_from DIR --train_data prefs.jsonl --val_data val.jsonl
    python train.py --config run.json --lr 1e-5   # a JSON config, then flags on top

The loop knows no method by name: a method (a file in nanoalign/ that registers itself) says which
rows it reads, which examples its loss eats, its options, and turns a micro-batch into (loss summed
over its units, metrics). Order of one step, always the same: learning rate -> grad_accum
micro-batches (forward, backward) -> clip -> finite check -> AdamW -> log / evaluate / checkpoint.
Ctrl-C finishes the step in flight, writes a checkpoint, prints the command that resumes it and exits;
`--resume` continues it exactly (model, AdamW state, RNG states, data position, step).
"""
import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from experiments.evaluate import format_table, oracle_eval
from experiments.tasks import TASKS, get_task
from model.chat_template import FORMATS
from model.checkpoint import CheckpointError, atomic_write_json, load, read_json, save_adapters, save_model
from model.lora import AdaptersOff, apply_lora, merge, parse_targets
from model.model import Transformer, config_from_preset
from nanoalign import DEFAULT_METHOD, REGISTRY, dist
from nanoalign.common import Run, frozen_copy, option
from nanoalign.data import KINDS, BatchOrder, DataError, make_batch, read_jsonl, tokenize_rows
from nanoalign.judge import JudgeError
from nanoalign.onpolicy import inherited


# --dtype auto and --packed auto, by model size (docs/performance.md#bf16-and-padding-free-batches-on-the-cpu):
# bf16 pays on SmolLM2-135M (1.5-2x a float32 step) and not on the built-in task's 0.77M model
# (3-18% slower: its matmuls are too small to win back the casts). Packing measured ~8% faster on
# the 0.77M model too, but other matmul shapes round differently, and the default run's printed
# table must stay as it is; so both start between the sizes measured
FAST_MIN_PARAMS = 20_000_000


@dataclass
class SharedConfig:
    """The options every method has; a method adds its own (its file's options dataclass)."""
    method: str = option(DEFAULT_METHOD, "which method to train; 'list' prints each method with its "
                         "options")
    init_from: str = option("default", "'default' (the cached SFT warm-up on the built-in task), "
                            "'scratch' (a fresh model of --model_preset), or a Hugging Face checkpoint "
                            "directory")
    model_preset: str = option("tiny", "model config for --init_from scratch (model/model.py PRESETS)")
    chat_format: str = option("", "'' = the checkpoint's own chat template; or a named format for a "
                              "checkpoint that has none (model/chat_template.py FORMATS)",
                              choices=("",) + tuple(FORMATS))
    train_data: str = option("builtin", "'builtin' (the rows of the built-in --task) or a JSONL file "
                             "of the rows the method reads")
    task: str = option("arith", "the built-in task (experiments/tasks.py): 'arith' (What is 17 + 8?, a "
                       "tiny model) or 'instruct' (questions with format instructions, for "
                       "SmolLM2-135M-Instruct)", choices=tuple(TASKS))
    task_data: str = option("", "the instruct task's on-policy preference data, a directory built by "
                            "python -m experiments.instruct build")
    val_data: str = option("auto", "a JSONL file for the held-out loss; 'builtin'; 'auto' = the "
                           "built-in task's when training on it, none otherwise; '' = none")
    out_dir: str = option("", "run directory: checkpoint in out_dir/ckpt, metrics in "
                          "out_dir/metrics.jsonl; '' means out/<method>")
    resume: bool = option(False, "continue the run in out_dir from its last checkpoint (only the "
                          "settings in RESUMABLE may change)")
    max_steps: int = option(300, "optimizer steps", minimum=1)
    batch_size: int = option(16, "examples per micro-batch", minimum=1)
    grad_accum: int = option(1, "micro-batches per optimizer step (the loss is normalized over all)",
                             minimum=1)
    lr: float = option(3e-4, "peak learning rate")
    min_lr_ratio: float = option(0.1, "cosine decay ends at lr * min_lr_ratio", minimum=0.0)
    warmup_steps: int = option(20, "linear warm-up steps", minimum=0)
    weight_decay: float = option(0.0, "AdamW weight decay", minimum=0.0)
    beta1: float = option(0.9, "AdamW beta1", minimum=0.0)
    beta2: float = option(0.95, "AdamW beta2", minimum=0.0)
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 = off)", minimum=0.0)
    max_length: int = option(128, "tokens per sequence; responses are cut from the right; a prompt "
                             "that leaves no room for a response is a bad row (an error, or skipped "
                             "with --skip_bad_rows); a judgment target that does not fit is dropped "
                             "and counted", minimum=2)
    skip_bad_rows: bool = option(False, "skip (and count) bad data rows instead of stopping")
    seed: int = option(1337, "random seed (data order, init, sampling)")
    deterministic: bool = option(True, "on CUDA, use torch's deterministic algorithms where they "
                                 "exist, so that a rerun or a resume can repeat a run bit for bit "
                                 "(somewhat slower)")
    log_every: int = option(10, "print and record metrics every N steps", minimum=1)
    eval_every: int = option(100, "held-out loss every N steps (0 = only at the end; it always runs "
                             "at the end when there is validation data)", minimum=0)
    eval_batches: int = option(8, "micro-batches of held-out data per evaluation", minimum=1)
    ckpt_every: int = option(0, "checkpoint every N steps (0 = only at the end)", minimum=0)
    final_eval: bool = option(True, "on the built-in task, end with the table of greedy answers "
                              "before and after (never on your own data)")
    device: str = option("auto", "'auto', 'cpu' or 'cuda'", choices=("auto", "cpu", "cuda"))
    dtype: str = option("auto", "compute dtype of the forwards: 'bfloat16' is autocast (float32 "
                        "master weights and AdamW state, log-sum-exp and losses in float32); 'auto' "
                        "= bfloat16 on CUDA, and on a CPU with bf16 instructions for a model of "
                        f"{FAST_MIN_PARAMS // 10**6}M parameters or more, else float32",
                        choices=("auto", "float32", "bfloat16"))
    packed: str = option("auto", "padding-free batches: each micro-batch's rows back to back, no "
                         "matmul on a pad (the padded batch is the reference); 'auto' = on for a "
                         f"model of {FAST_MIN_PARAMS // 10**6}M parameters or more",
                         choices=("auto", "true", "false"))
    # scale: LoRA, activation checkpointing, several processes (launch with torchrun)
    lora_r: int = option(0, "LoRA rank; 0 = train every weight. With LoRA, checkpoints hold the "
                         "adapters only (python -m model.lora merges them) and a method's reference "
                         "model is the base with adapters off", minimum=0)
    lora_alpha: float = option(16.0, "LoRA alpha: the adapter update is scaled by alpha / r")
    lora_dropout: float = option(0.05, "LoRA dropout on the adapters' input", minimum=0.0)
    lora_targets: str = option("q,k,v,o,gate,up,down", "projections that get adapters, from "
                               "q,k,v,o,gate,up,down")
    grad_checkpoint: bool = option(False, "activation checkpointing: recompute each block in backward")
    parallel: str = option("ddp", "under torchrun: 'ddp' (weights replicated) or 'fsdp' (FSDP2 "
                           "fully_shard: weights, grads and AdamW state sharded); --batch_size is "
                           "per process", choices=("ddp", "fsdp"))
    # the built-in task's sizes
    n_train: int = option(4000, "built-in task: training rows", minimum=1)
    n_val: int = option(256, "built-in task: validation rows", minimum=1)
    n_warm: int = option(4000, "built-in task: SFT rows of the warm-up for --init_from default", minimum=1)
    warm_steps: int = option(800, "built-in task: SFT warm-up steps for --init_from default", minimum=1)
    warm_lr: float = option(2e-3, "built-in task: SFT warm-up learning rate")


# what --resume may change; every other setting comes from the checkpoint, and a different value is
# refused (a resumed run must be the run it continues)
RESUMABLE = ("resume", "max_steps", "log_every", "eval_every", "eval_batches", "ckpt_every",
             "final_eval", "device", "skip_bad_rows")


# -- config: one dataclass per method (shared options + the method's), flags, files, checks ---------
def config_class(method):
    """The config dataclass of one method: SharedConfig's fields, then the method's options; the
    method's `defaults` change shared defaults (JSFT's longer max_length)."""
    m = REGISTRY[method]
    fields = []
    for f in dataclasses.fields(SharedConfig) + dataclasses.fields(m.options):
        default = (m.defaults or {}).get(f.name, method if f.name == "method" else f.default)
        fields.append((f.name, f.type, dataclasses.field(default=default, metadata=f.metadata)))
    return dataclasses.make_dataclass(f"{method}_config", fields, frozen=False)


def _known_keys():
    """Every option of any method: an old checkpoint's config holds all methods' knobs."""
    keys = {f.name for f in dataclasses.fields(SharedConfig)}
    for m in REGISTRY.values():
        keys |= {f.name for f in dataclasses.fields(m.options)}
    return keys


def _tname(f):
    return f.type if isinstance(f.type, str) else f.type.__name__


def check_value(f, v, where):
    """Type, choices and minimum of one option value; an error names the flag, or the file and key."""
    t, name = _tname(f), f"--{f.name}" if where == "flags" else f"{where}: '{f.name}'"
    want = {"int": int, "float": (int, float), "bool": bool, "str": str}[t]
    if not isinstance(v, want) or (t in ("int", "float") and isinstance(v, bool)):
        raise SystemExit(f"error: {name} must be {t}, got {type(v).__name__} {v!r}")
    ch, lo = f.metadata.get("choices"), f.metadata.get("minimum")
    if ch and v not in ch:
        raise SystemExit(f"error: {name} must be one of {', '.join(ch)}, got {v!r}")
    if lo is not None and v < lo:
        raise SystemExit(f"error: {name} must be >= {lo}, got {v!r}")


def config_from_dict(d, where, saved=False):
    """The method's config from a dict; unknown keys, wrong types and values outside an option's
    choices are errors naming `where`. A key of another method's options is an error too, except in
    a saved config (saved=True): old checkpoints recorded every method's knobs, and those are dropped."""
    method = d.get("method", SharedConfig.method)
    if method not in REGISTRY:
        raise SystemExit(f"error: {where}: method '{method}' is unknown; choose from {', '.join(REGISTRY)}")
    cls, known = config_class(method), _known_keys()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in d:
        if k not in known:
            raise SystemExit(f"error: {where}: unknown config key '{k}'")
        if k not in fields and not saved:
            raise SystemExit(f"error: {where}: '{k}' is not an option of --method {method} "
                             f"(python train.py --method list shows each method's)")
    kept = {k: v for k, v in d.items() if k in fields}
    for k, v in kept.items():
        check_value(fields[k], v, where)
    cfg = cls(**kept)
    try:
        parse_targets(cfg.lora_targets)
    except ValueError as e:
        raise SystemExit(f"error: {where}: {e}")
    return cfg


def make_config(**kw):
    """A checked config from keyword arguments (tests, experiments/): make_config(method=NAME, beta=0.2)."""
    return config_from_dict(kw, "config")


def _bool(s):
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def describe(name):
    """One method and its options, for --method list."""
    m = REGISTRY[name]
    lines = [f"{name:22s} {m.help}"]
    for f in dataclasses.fields(m.options):
        lines.append(f"    --{f.name} (default {f.default!r}): {f.metadata['help']}")
    return "\n".join(lines)


def parse_config(argv=None):
    """Flags -> the chosen method's config. First the method (from --method, the --config file or
    the checkpoint being resumed), then a parser of its options, so --help shows exactly them."""
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--method")
    pre.add_argument("--out_dir")
    pre.add_argument("--resume", nargs="?", const="true")
    early, _ = pre.parse_known_args(argv)
    saved = os.path.join(early.out_dir or "", "ckpt", "state.json")
    try:
        d = read_json(early.config) if early.config else {}
        if not early.method and early.resume not in (None, "false") and os.path.exists(saved):
            d = {**d, "method": read_json(saved)["config"]["method"]}   # resume: the run's method
    except CheckpointError as e:
        pre.exit(2, f"error: {e}\n")
    method = early.method or d.get("method", SharedConfig.method)
    if method == "list":
        print("\n\n".join(describe(n) for n in REGISTRY))
        sys.exit(0)
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        epilog=f"These are the options of --method {method} (the shared ones first). "
               f"`python train.py --method NAME --help` shows another method's.")
    if method not in REGISTRY:
        ap.error(f"--method {method!r} is unknown; choose from {', '.join(REGISTRY)} (or 'list')")
    ap.add_argument("--config", default=None, help="a JSON file of config values (flags override)")
    conv = {"int": int, "float": float, "bool": _bool, "str": str}
    for f in dataclasses.fields(config_class(method)):
        kw = dict(nargs="?", const=True) if _tname(f) == "bool" else {}
        ch = f.metadata.get("choices")
        ap.add_argument(f"--{f.name}", type=conv[_tname(f)], default=None, metavar=_tname(f).upper(),
                        help=f"{f.metadata['help']} (default: {f.default!r}"
                             + (f"; one of {', '.join(ch)})" if ch else ")"), **kw)
    a = ap.parse_args(argv)
    flags = {k: v for k, v in vars(a).items() if k != "config" and v is not None}
    given = {**d, **flags}
    try:
        out_dir = given.get("out_dir") or os.path.join("out", method)
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise SystemExit(f"error: --out_dir {out_dir} exists and is not a directory")
        if d:
            config_from_dict({**d, "method": method}, a.config)
        if given.get("resume"):
            return resume_config(given, a.config or "flags")
        cfg = config_from_dict({**given, "method": method}, "flags")
    except SystemExit as e:   # one line, exit code 2, as argparse does for a bad flag
        ap.exit(2, f"{e}\n")
    if cfg.parallel == "fsdp" and REGISTRY[cfg.method].eats == "prompt":
        ap.error(f"--method {cfg.method} samples on-policy, and under FSDP every forward is a "
                 f"collective: ranks sampling different lengths would hang. Use --parallel ddp "
                 f"(with --lora_r for a large model)")
    return dataclasses.replace(cfg, out_dir=cfg.out_dir or os.path.join("out", cfg.method))


def resume_config(given, where="flags"):
    """The checkpoint's config, with only RESUMABLE settings taken from `given`; any other setting
    given with a different value than the run used is refused, naming it. The out_dir is the one
    given, never the one saved: a copied or moved run directory resumes from and writes into itself."""
    method = given.get("method", SharedConfig.method)
    out_dir = given.get("out_dir") or os.path.join("out", method)
    path = os.path.join(out_dir, "ckpt", "state.json")
    if not os.path.exists(path):
        raise SystemExit(f"error: --resume: {path} does not exist; is --out_dir the run's directory?")
    saved = read_json(path)["config"]
    saved_cfg = config_from_dict(saved, path, saved=True)
    for k, v in given.items():
        if k not in RESUMABLE and k != "out_dir" and hasattr(saved_cfg, k) and getattr(saved_cfg, k) != v:
            raise SystemExit(f"error: --resume: '{k}' was {getattr(saved_cfg, k)!r} in this run "
                             f"({path}), got {v!r}; a resumed run keeps its settings except "
                             f"{', '.join(RESUMABLE)}. Start a new --out_dir to change it")
        if k not in RESUMABLE and k != "out_dir" and not hasattr(saved_cfg, k):
            raise SystemExit(f"error: --resume: '{k}' is not an option of --method "
                             f"{saved_cfg.method}, which this run ({path}) trains")
    keep = {k: v for k, v in given.items() if k in RESUMABLE}
    return dataclasses.replace(saved_cfg, **keep, out_dir=out_dir)


# -- the pieces the loop calls, in the order it calls them ---------------------------------------
def pick_device(cfg):
    return ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device


def shared_options(cfg):
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SharedConfig)}


def warm_checkpoint(cfg):
    """The built-in task's start: the arithmetic task's cached SFT warm-up (experiments/task.py
    warm_start, trained by this loop), the instruct task's real checkpoint."""
    return get_task(cfg.task).warm_start(shared_options(cfg), lambda **kw: train(make_config(**kw)))


def init_model(cfg, device):
    if cfg.init_from == "scratch":
        torch.manual_seed(cfg.seed)
        model = Transformer(config_from_preset(cfg.model_preset)).to(device)
        tok = get_task(cfg.task).build_tokenizer()
    else:
        model, tok = load(cfg.init_from, torch.float32, device, cfg.chat_format or None)
    if getattr(model, "lora", None):   # starting from a LoRA run: its adapters become the base
        merge(model)
    if cfg.lora_r:
        apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    return model, tok


def val_source(cfg):
    if cfg.val_data == "auto":
        return "builtin" if cfg.train_data == "builtin" else ""
    return cfg.val_data


def load_split(cfg, method, split, run):
    """Tokenized examples of one split: the built-in task's rows or a JSONL file's, read as the
    method's row kind, turned into what its loss eats by method.prepare (if any), then tokenized."""
    src = cfg.train_data if split == "train" else val_source(cfg)
    if not src:
        return []
    if src == "builtin":
        n = cfg.n_train if split == "train" else cfg.n_val
        samples = {"samples": cfg.task_data} if cfg.task_data else {}   # instruct: on-policy data
        rows = get_task(cfg.task).rows(method.reads, n, cfg.seed, split, **samples)
        skipped = 0
    else:
        rows, skipped = read_jsonl(src, method.reads, cfg.skip_bad_rows)
    if method.prepare:
        rows = method.prepare(rows, cfg, split, run)
    ex, dropped = tokenize_rows(rows, run.tok, method.eats, cfg.max_length, cfg.skip_bad_rows,
                                getattr(cfg, "sj_max_length", None))
    if skipped or dropped:
        print(f"{src} [{split}]: dropped {skipped + dropped} of {len(rows) + skipped} rows "
              f"({KINDS[method.eats].summary})")
    if not ex:
        raise DataError(f"{src} [{split}]: no usable examples left")
    return ex


def lr_at(step, cfg):
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(path, model, tok, opt, cfg, step, order, run):
    """Model in the HF layout (or LoRA adapters) + train state (safetensors + JSON), written to a
    temp dir then renamed. Under FSDP every rank helps gather the full state; rank 0 writes."""
    msd, sd = dist.full_state(model, opt) if dist.is_fsdp(model) else (None, opt.state_dict())
    model = dist.unwrapped(model)
    if dist.is_main():
        tmp, old = path + ".tmp", path + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(model, "lora", None):
            save_adapters(model, tmp, tok, cfg.init_from, msd)
        else:
            save_model(model, tmp, tok, state=msd)
        tensors = {f"opt.{pid}.{k}": v for pid, st in sd["state"].items() for k, v in st.items()}
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        save_file(tensors, os.path.join(tmp, "train_state.safetensors"))
        for name, value in run.keep.items():    # what the method asked to keep with its model
            atomic_write_json(value, os.path.join(tmp, name))
        atomic_write_json({"step": step, "data_pos": order.pos, "config": dataclasses.asdict(cfg),
                           "param_groups": sd["param_groups"]}, os.path.join(tmp, "state.json"))
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()   # nobody reads the checkpoint before rank 0 has finished writing it


def load_train_state(path, model, opt):
    st = read_json(os.path.join(path, "state.json"))
    f = os.path.join(path, "train_state.safetensors")
    try:
        t = load_file(f)
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing, so this run cannot resume exactly (AdamW state, RNG); "
                              f"start from its weights with --init_from {path} instead") from None
    except Exception as e:   # safetensors raises its own error types for a cut or damaged file
        raise CheckpointError(f"{f}: not a readable safetensors file ({e}); was the checkpoint cut "
                              f"short? Start from its weights with --init_from {path} instead") from None
    state = {}
    for k, v in t.items():
        if k.startswith("opt."):   # opt.<param index or, from FSDP, parameter name>.<AdamW field>
            pid, name = k[4:].rsplit(".", 1)
            state.setdefault(int(pid) if pid.isdigit() else pid, {})[name] = v
    osd = {"state": state, "param_groups": st["param_groups"]}
    if dist.is_fsdp(model):
        dist.load_full_optimizer(model, opt, osd)
    else:
        opt.load_state_dict(osd)
    torch.set_rng_state(t["rng.torch"])
    if "rng.cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["rng.cuda"])
    return st["step"], st["data_pos"]


def cpu_has_bf16():
    """bf16 dot-product instructions (AVX512-BF16, or AMX on Intel): oneDNN's bf16 GEMMs then run at
    about twice float32's rate; without them bf16 is emulated and slower than float32. (torch's
    own checks are private: a torch without them counts as a CPU without the instructions.)"""
    return any(getattr(torch.cpu, f, lambda: False)()
               for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_dtype(cfg, model):
    """--dtype as the autocast dtype of the forwards: torch.bfloat16, or None (plain float32)."""
    if cfg.dtype != "auto":
        return torch.bfloat16 if cfg.dtype == "bfloat16" else None
    p = next(model.parameters())
    big = sum(q.numel() for q in model.parameters()) >= FAST_MIN_PARAMS
    return torch.bfloat16 if p.is_cuda or (big and cpu_has_bf16()) else None


def packed_batches(cfg, model):
    """--packed: whether micro-batches are made padding-free (nanoalign/data.py pack)."""
    if cfg.packed != "auto":
        return cfg.packed == "true"
    return sum(q.numel() for q in model.parameters()) >= FAST_MIN_PARAMS


def make_optimizer(model, cfg):
    """AdamW over the trained weights. Fused (one kernel for all parameters instead of a loop of
    foreach launches, and none of foreach's parameter-sized temporaries) on CUDA, and on the CPU for
    a model of FAST_MIN_PARAMS or more; a smaller one keeps foreach's arithmetic, the one the
    built-in task's printed table was made with."""
    p = next(model.parameters())
    big = sum(q.numel() for q in model.parameters()) >= FAST_MIN_PARAMS
    return torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                             fused=p.is_cuda or big)


def accumulate_gradients(model, method, micro, run, cfg):
    """Backward through every micro-batch, each loss divided by the units (tokens or examples) of
    the whole effective batch: N micro-steps give the gradient of one step on their concatenation."""
    # with W processes: the units of the global batch, times W because DDP / FSDP average over ranks
    denom = dist.all_sum(sum(b[method.unit] for b in micro)) / dist.world()
    loss_total, mets = 0.0, {}
    dev, dt = next(model.parameters()).device.type, autocast_dtype(cfg, model)
    for i, b in enumerate(micro):
        # autocast (--dtype): the weights and AdamW stay float32, matmuls run in dt
        with dist.no_sync(model, last=i == len(micro) - 1):
            with torch.autocast(dev, dtype=dt or torch.bfloat16, enabled=dt is not None):
                loss_sum, m = method.loss(model, b, run, cfg)
            (loss_sum / denom).backward()
        loss_total += loss_sum.item() / denom
        for k, v in m.items():
            mets[k] = mets.get(k, 0.0) + v / len(micro)
    return dist.all_sum(loss_total) / dist.world(), dist.mean_metrics(mets)


@torch.no_grad()
def held_out_loss(model, method, val, run, cfg):
    model.eval()
    tot, units = 0.0, 0
    dev, dt = next(model.parameters()).device, autocast_dtype(cfg, model)
    for i in range(max(1, min(cfg.eval_batches, len(val) // cfg.batch_size))):
        b = make_batch(val[i * cfg.batch_size:(i + 1) * cfg.batch_size], method.eats, run.tok.pad_id,
                       dev, packed_batches(cfg, model))
        with torch.autocast(dev.type, dtype=dt or torch.bfloat16, enabled=dt is not None):
            loss, _ = method.loss(model, b, run, cfg)
        tot, units = tot + loss.item(), units + b[method.unit]
    model.train()
    return tot / max(units, 1)


def peak_memory(device):
    """Peak memory of this process so far, in MiB: CUDA max allocated, or peak RSS on the CPU."""
    if str(device).startswith("cuda"):
        return {"peak_cuda_alloc_mib": torch.cuda.max_memory_allocated() / 2**20}
    import resource
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux


class StopFlag:
    """First Ctrl-C: finish this step, checkpoint, exit. Second Ctrl-C: stop at once."""

    def __init__(self):
        self.hit = False
        self.prev = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, *_):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        print("\nCtrl-C: finishing this step and writing a checkpoint (Ctrl-C again to abort)")

    def restore(self):
        signal.signal(signal.SIGINT, self.prev)


LOOP_METRICS = {"loss": "the method's loss, averaged over the effective batch", "lr": "learning rate",
                "grad_norm": "gradient norm before clipping", "step_s": "seconds for this step",
                "tok_per_s": "tokens through the model per second since the last log line"}


def legend(method):
    """What each logged number means: printed once at the start of a run."""
    items = {**LOOP_METRICS, **(method.metrics or {})}
    return "metrics: " + "; ".join(f"{k} = {v}" for k, v in items.items())


# -- the loop ------------------------------------------------------------------------------------
def train(cfg, stop_at=None):
    """Run (or resume) one training run; returns the per-step losses. `stop_at` is for tests: it
    stops after that step exactly as Ctrl-C does (checkpoint, then return)."""
    method = REGISTRY[cfg.method]
    device = dist.setup(pick_device(cfg))   # joins the torchrun group, if launched by torchrun
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    if cfg.resume:  # the saved config wins; only RESUMABLE settings may change
        cfg = resume_config(dataclasses.asdict(cfg))
    elif cfg.init_from == "default":
        cfg = dataclasses.replace(cfg, init_from=warm_checkpoint(cfg))
    if cfg.lora_r and cfg.init_from == "scratch":
        raise CheckpointError("--lora_r needs a base checkpoint to adapt (--init_from DIR or default), "
                              "not --init_from scratch: a LoRA checkpoint stores the adapters only")
    if torch.device(device).type == "cuda":
        # CUDA ops built on atomic adds sum in a new order on every run, so two GPU runs drift
        # apart in the last bits; an exact resume needs one order. warn_only: an op with no
        # deterministic version warns (naming itself) instead of stopping the run. cuBLAS needs the
        # workspace setting too, read when its handle is first made.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    torch.manual_seed(cfg.seed)
    model, tok = init_model(cfg, device)
    # the built-in task lends its oracle to the methods' metrics; on your own data there is none
    task = get_task(cfg.task) if cfg.train_data == "builtin" else None
    run = Run(tok=tok, task=task)
    run.keep.update(inherited(cfg.init_from))    # a judge's principles travel with what derives from it
    if method.needs_ref and not cfg.lora_r:
        run.ref = dist.shard_frozen(frozen_copy(model), cfg.parallel)   # the start, frozen
    if getattr(cfg, "judge_from", ""):           # a judge of its own: weights, tokenizer, chat template
        judge, run.judge_tok = load(cfg.judge_from, torch.float32, device)
        run.judge = frozen_copy(judge)
    if cfg.resume:
        model, _ = load(ckpt, torch.float32, device)
    if method.needs_ref and cfg.lora_r:
        run.ref = AdaptersOff(model)             # the same weights with the adapters switched off
    model.grad_checkpoint = cfg.grad_checkpoint
    model = dist.wrap(model, cfg.parallel)       # DDP / FSDP2 under torchrun, else the model itself
    if dist.world() > 1:                         # each rank samples its own prompts differently
        torch.manual_seed(cfg.seed + 1000 * dist.rank())
    train_ex = load_split(cfg, method, "train", run)
    val_ex = load_split(cfg, method, "val", run) if method.eats != "prompt" else []
    opt = make_optimizer(model, cfg)
    step, pos = load_train_state(ckpt, model, opt) if cfg.resume else (0, 0)
    # one order of global batches; rank r takes rows [r*B, (r+1)*B) of each
    order = BatchOrder(len(train_ex), cfg.batch_size * dist.world(), cfg.seed, pos)
    rows = slice(dist.rank() * cfg.batch_size, (dist.rank() + 1) * cfg.batch_size)
    os.makedirs(cfg.out_dir, exist_ok=True)
    metrics_f = open(os.path.join(cfg.out_dir, "metrics.jsonl") if dist.is_main() else os.devnull, "a")
    table = cfg.final_eval and task is not None
    before = oracle_eval(dist.unwrapped(model), tok, task=task) if table and not cfg.resume else None
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{cfg.method}: {dist.unwrapped(model).num_params() / 1e6:.2f}M params "
          f"({n_train / 1e6:.3g}M trained) on {device} x{dist.world()}, {len(train_ex)} train "
          f"examples, {cfg.max_steps} steps of {cfg.batch_size}x{cfg.grad_accum}x{dist.world()}")
    packed, dt = packed_batches(cfg, model), autocast_dtype(cfg, model)
    print(f"compute: {'bfloat16 autocast' if dt else 'float32'}, {'packed' if packed else 'padded'} "
          f"batches (--dtype {cfg.dtype}, --packed {cfg.packed})")
    print(legend(method))
    model.train()
    stop, t0, tokens, last_log = StopFlag(), time.time(), 0, time.time()
    history, val_step = [], None
    try:
        while step < cfg.max_steps and not stop.hit:
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            # where the run is, for methods that schedule over epochs
            run.step, run.epoch = step, order.pos / order.per_epoch
            run.epochs = cfg.max_steps * cfg.grad_accum / order.per_epoch
            t_step = time.time()
            micro = [make_batch([train_ex[i] for i in order.next()[rows]], method.eats, tok.pad_id,
                                device, packed) for _ in range(cfg.grad_accum)]
            loss_total, mets = accumulate_gradients(model, method, micro, run, cfg)
            tokens += sum(b["n_seen"] for b in micro)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if not (math.isfinite(loss_total) and math.isfinite(gnorm.item())):
                raise FloatingPointError(f"loss {loss_total} / grad norm {gnorm.item()} at step {step}")
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            history.append(loss_total)
            stop.hit = stop.hit or step == stop_at
            if dist.world() > 1:   # every rank stops after the same step, or the others would hang
                stop.hit = dist.all_sum(stop.hit) > 0
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                el = time.time() - t0
                rec = {"step": step, "split": "train", "loss": loss_total, "lr": lr,
                       "grad_norm": gnorm.item(), **mets, "step_s": time.time() - t_step,
                       "tok_per_s": tokens / max(time.time() - last_log, 1e-9), "elapsed": el}
                tokens, last_log = 0, time.time()
                eta = el / max(step - (pos // cfg.grad_accum), 1) * (cfg.max_steps - step)
                extra = " ".join(f"{k} {v:.4f}" for k, v in mets.items())
                print(f"step {step:5d} | loss {loss_total:.4f} | {extra} | {rec['tok_per_s']:.0f} tok/s"
                      f" | {el:.0f}s elapsed, eta {eta:.0f}s")
                metrics_f.write(json.dumps(rec) + "\n")
                metrics_f.flush()
            if val_ex and cfg.eval_every and step % cfg.eval_every == 0:
                vl, val_step = held_out_loss(model, method, val_ex, run, cfg), step
                print(f"step {step:5d} | val loss {vl:.4f}")
                metrics_f.write(json.dumps({"step": step, "split": "val", "loss": vl}) + "\n")
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                save_checkpoint(ckpt, model, tok, opt, cfg, step, order, run)
        if val_ex and val_step != step:   # every run with validation data ends with its loss
            vl = held_out_loss(model, method, val_ex, run, cfg)
            print(f"step {step:5d} | val loss {vl:.4f} (end of run)")
            metrics_f.write(json.dumps({"step": step, "split": "val", "loss": vl}) + "\n")
    except FloatingPointError as e:
        sys.exit(f"error: non-finite {e}; stopped without updating. The last good checkpoint "
                 f"(if any) is intact in {ckpt}")
    finally:
        stop.restore()
        metrics_f.close()
    save_checkpoint(ckpt, model, tok, opt, cfg, step, order, run)
    peak = peak_memory(device)
    print(f"checkpoint: {ckpt} (step {step}); peak memory of this process: "
          + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    if dist.is_main():
        with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "split": "end", **peak}) + "\n")
    if stop.hit:
        print(f"stopped at step {step} of {cfg.max_steps}; to continue exactly:\n"
              f"  python train.py --method {cfg.method} --out_dir {cfg.out_dir} --resume")
        if stop_at is not None:
            return history
        sys.exit(130)
    if before is not None:
        after = oracle_eval(dist.unwrapped(model), tok, task=task)
        name = "" if cfg.task == "arith" else f" '{cfg.task}'"
        print(f"\nBuilt-in task{name}, greedy answers to 200 test prompts ({cfg.method}, "
              f"{time.time() - t0:.0f}s):")
        print(format_table(before, after))
        for p, a in after["examples"]:
            print(f"  {p!r} -> {a!r}")
    example = task.test_prompts(1)[0] if task is not None else "your prompt"
    print(f"\nsample from it:\n  python sample.py --init_from {ckpt} --prompt \"{example}\"")
    return history


def main(argv=None):
    """The command line: parse, then train (or the method's own driver, e.g. several stages)."""
    cfg = parse_config(argv)
    method = REGISTRY[cfg.method]
    try:
        if method.main:
            method.main(cfg, train)
        else:
            train(cfg)
    except (CheckpointError, DataError, JudgeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        dist.cleanup()


if __name__ == "__main__":
    main()
