"""
One training loop for every nanoalign method.

    python train.py --method orpo              # built-in task: SFT warm-up (cached), ORPO, table
    python train.py --method list              # the registry
    python train.py --method dpo --init_from DIR --train_data prefs.jsonl --val_data val.jsonl
    python train.py --config run.json --lr 1e-5   # a JSON config, then flags on top

The loop knows nothing method-specific: a method (nanoalign/) says which rows it eats and turns a
micro-batch into (loss summed over its units, metrics). Order of one step, always the same:
learning rate -> grad_accum micro-batches (forward, backward) -> clip -> finite check -> AdamW ->
log / evaluate / checkpoint. Ctrl-C finishes the step in flight, writes a checkpoint and exits;
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
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, atomic_write_json, load, read_json, save_adapters, save_model
from model.lora import AdaptersOff, apply_lora, merge, parse_targets
from model.model import Transformer, config_from_preset
from nanoalign import REGISTRY, dist, task
from nanoalign.common import frozen_copy
from nanoalign.data import BatchOrder, DataError, make_batch, read_jsonl, tokenize_rows
from nanoalign.evaluate import format_table, oracle_eval
from nanoalign.judge import JudgeError, TEMPLATES


def h(text, **kw):  # a config field with its --help line
    return field(metadata={"help": text}, **kw)


def _tname(f):
    return f.type if isinstance(f.type, str) else f.type.__name__


@dataclass
class TrainConfig:
    method: str = h("which method to train; 'list' prints them", default="orpo")
    init_from: str = h("'default' (the cached SFT warm-up on the built-in task), 'scratch' (a fresh "
                       "model of --model_preset), or a Hugging Face checkpoint directory",
                       default="default")
    model_preset: str = h("model config for --init_from scratch (see model/model.py PRESETS)",
                          default="tiny")
    train_data: str = h("'builtin' or a JSONL file (preference or SFT rows, as the method needs)",
                        default="builtin")
    val_data: str = h("'builtin' or a JSONL file for the held-out loss; '' to skip", default="builtin")
    out_dir: str = h("run directory: checkpoint in out_dir/ckpt, metrics in out_dir/metrics.jsonl; "
                     "'' means out/<method>", default="")
    resume: bool = h("continue the run in out_dir from its last checkpoint", default=False)
    max_steps: int = h("optimizer steps", default=300)
    batch_size: int = h("examples per micro-batch", default=16)
    grad_accum: int = h("micro-batches per optimizer step (the loss is normalized over all)",
                        default=1)
    lr: float = h("peak learning rate", default=3e-4)
    min_lr_ratio: float = h("cosine decay ends at lr * min_lr_ratio", default=0.1)
    warmup_steps: int = h("linear warm-up steps", default=20)
    weight_decay: float = h("AdamW weight decay", default=0.0)
    beta1: float = h("AdamW beta1", default=0.9)
    beta2: float = h("AdamW beta2", default=0.95)
    grad_clip: float = h("clip the gradient norm to this (0 = off)", default=1.0)
    max_length: int = h("tokens per sequence; prompts are cut from the left, responses from the "
                        "right; a prompt that leaves no room for a response is a bad row",
                        default=128)
    skip_bad_rows: bool = h("skip (and count) bad data rows instead of stopping", default=False)
    seed: int = h("random seed (data order, init, sampling)", default=1337)
    deterministic: bool = h("on CUDA, use torch's deterministic algorithms where they exist, so "
                            "that a rerun or a resume can repeat a run bit for bit (somewhat "
                            "slower)", default=True)
    log_every: int = h("print and record metrics every N steps", default=10)
    eval_every: int = h("held-out loss every N steps (0 = only at the end)", default=100)
    eval_batches: int = h("micro-batches of held-out data per evaluation", default=8)
    ckpt_every: int = h("checkpoint every N steps (0 = only at the end)", default=0)
    final_eval: bool = h("end with the oracle table on the built-in task", default=True)
    device: str = h("'auto', 'cpu' or 'cuda'", default="auto")
    # scale: LoRA, activation checkpointing, several processes (launch with torchrun)
    lora_r: int = h("LoRA rank; 0 = train every weight. With LoRA, checkpoints hold the adapters "
                    "only (python -m model.lora merges them) and the reference model of DPO / "
                    "Self-Judge / OSP is the base with adapters off", default=0)
    lora_alpha: float = h("LoRA alpha: the adapter update is scaled by alpha / r", default=16.0)
    lora_dropout: float = h("LoRA dropout on the adapters' input", default=0.05)
    lora_targets: str = h("projections that get adapters, from q,k,v,o,gate,up,down",
                          default="q,k,v,o,gate,up,down")
    grad_checkpoint: bool = h("activation checkpointing: recompute each block in backward",
                              default=False)
    parallel: str = h("under torchrun: 'ddp' (weights replicated) or 'fsdp' (FSDP2 fully_shard: "
                      "weights, grads and AdamW state sharded); --batch_size is per process",
                      default="ddp")
    # method hyper-parameters
    orpo_lambda: float = h("ORPO: weight of the odds-ratio term", default=0.1)
    prompt_loss: bool = h("ORPO: count prompt tokens in L_SFT, as the official code and TRL do",
                          default=False)
    beta: float = h("DPO / IPO: beta", default=0.1)
    w1: float = h("MO-ORPO: weight of the alignment task (each method's paper default unless set: "
                  "scalarization 0.6, conjoined 0.7, conditional 0.9, sj_sft 0.6)", default=0.6)
    w2: float = h("MO-ORPO: weight of the self-judgement task in conjoined / conditional (defaults "
                  "0.3 / 0.1); scalarization and sj_sft use 1 - w1", default=0.4)
    sj_max_length: int = h("MO-ORPO: token limit of a self-judgement prompt + answer; longer "
                           "examples are dropped and counted", default=384)
    judge_template: str = h("Self-Judge / OSP: judgment template (nanoalign/judge.py TEMPLATES: "
                             "'compact' fits the built-in task; 'ultrafeedback', 'hh', 'principle', "
                             "'principle_rationale' are the paper's appendix A.5)", default="compact")
    jsft_judge: bool = h("JSFT: add the judgment instructions (false = SFT on chosen only)", default=True)
    judge: str = h("Self-Judge: who judges the samples, 'ref' (frozen JSFT model) or 'policy'",
                   default="ref")
    gen_max_tokens: int = h("on-policy methods: max new tokens per sample", default=32)
    osp_k: int = h("OSP: samples per prompt (K//2 pairs)", default=7)
    osp_loss: str = h("OSP: 'spce' (soft targets), 'dpo' or 'ipo' (hard labels)", default="spce")
    pairing: str = h("OSP: 'ranked' (best with worst), 'random', or 'raft' (SFT on the best sample)",
                     default="ranked")
    meta_stage: str = h("MetaAligner: 'warmup', 'equal', 'preference', or 'all' (the three in sequence "
                        "in out_dir/<stage>; warm-up gets max_steps // 5)", default="all")
    meta_warmup_frac: float = h("MetaAligner: fraction of the equal set used for the warm-up",
                                default=0.1)
    meta_holdout: str = h("MetaAligner: comma-separated objectives left out of training (zero-shot "
                          "test)", default="")
    # built-in task sizes
    n_train: int = h("built-in task: training rows", default=4000)
    n_val: int = h("built-in task: validation rows", default=256)
    n_warm: int = h("built-in task: SFT rows of the warm-up for --init_from default", default=4000)
    warm_steps: int = h("built-in task: SFT warm-up steps for --init_from default", default=800)
    warm_lr: float = h("built-in task: SFT warm-up learning rate", default=2e-3)


# -- config: flags, files, checks ----------------------------------------------------------------
def _bool(s):
    if isinstance(s, bool):
        return s
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def config_from_dict(d, where):
    """A TrainConfig from a dict; unknown keys and wrong types are errors naming `where`."""
    kinds = {f.name: _tname(f) for f in dataclasses.fields(TrainConfig)}
    for k, v in d.items():
        if k not in kinds:
            raise SystemExit(f"error: {where}: unknown config key '{k}'")
        want = {"int": int, "float": (int, float), "bool": bool, "str": str}[kinds[k]]
        if not isinstance(v, want) or (kinds[k] == "int" and isinstance(v, bool)):
            raise SystemExit(f"error: {where}: '{k}' must be {kinds[k]}, got {type(v).__name__}")
    return TrainConfig(**d)


def parse_config(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="a JSON file of config values (flags override)")
    conv = {"int": int, "float": float, "bool": _bool, "str": str}
    for f in dataclasses.fields(TrainConfig):
        kw = dict(nargs="?", const=True) if _tname(f) == "bool" else {}
        ap.add_argument(f"--{f.name}", type=conv[_tname(f)], default=None,
                        help=f"{f.metadata['help']} (default: {f.default})", **kw)
    a = ap.parse_args(argv)
    d = read_json(a.config) if a.config else {}
    cfg = config_from_dict(d, a.config or "config")
    flags = {k: v for k, v in vars(a).items() if k != "config" and v is not None}
    cfg = dataclasses.replace(cfg, **flags)
    if cfg.method in REGISTRY:  # the method's own defaults, where neither file nor flag set a value
        own = {k: v for k, v in (REGISTRY[cfg.method].defaults or {}).items()
               if k not in d and k not in flags}
        cfg = dataclasses.replace(cfg, **own)
    if cfg.method == "list":
        for name, m in REGISTRY.items():
            print(f"{name:14s} {m.help}")
        sys.exit(0)
    if cfg.method not in REGISTRY:
        ap.error(f"--method {cfg.method!r} is unknown; choose from {', '.join(REGISTRY)} "
                 f"(or 'list')")
    for k in ("max_steps", "batch_size", "grad_accum", "max_length"):
        if getattr(cfg, k) < 1:
            ap.error(f"--{k} must be >= 1, got {getattr(cfg, k)}")
    if cfg.judge_template not in TEMPLATES:
        ap.error(f"--judge_template {cfg.judge_template!r} is unknown; choose from {', '.join(TEMPLATES)}")
    for k, ok in (("judge", ("ref", "policy")), ("osp_loss", ("spce", "dpo", "ipo")),
                  ("parallel", ("ddp", "fsdp")),
                  ("meta_stage", ("warmup", "equal", "preference", "all")),
                  ("pairing", ("ranked", "random", "raft"))):
        if getattr(cfg, k) not in ok:
            ap.error(f"--{k} must be one of {', '.join(ok)}, got {getattr(cfg, k)!r}")
    if cfg.osp_k < 2:
        ap.error(f"--osp_k must be >= 2, got {cfg.osp_k}")
    if not cfg.lr > 0:
        ap.error(f"--lr must be > 0, got {cfg.lr}")
    if cfg.lora_r < 0:
        ap.error(f"--lora_r must be >= 0, got {cfg.lora_r}")
    try:
        parse_targets(cfg.lora_targets)
    except ValueError as e:
        ap.error(str(e))
    if cfg.parallel == "fsdp" and REGISTRY[cfg.method].data == "prompt":
        ap.error(f"--method {cfg.method} samples on-policy, and under FSDP every forward is a "
                 f"collective: ranks sampling different lengths would hang. Use --parallel ddp "
                 f"(with --lora_r for a large model)")
    return dataclasses.replace(cfg, out_dir=cfg.out_dir or os.path.join("out", cfg.method))


# -- the pieces the loop calls, in the order it calls them ---------------------------------------
def pick_device(cfg):
    return ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device


def warm_checkpoint(cfg):
    """The built-in task's SFT start, trained once and cached under out/_warm (keyed by its config)."""
    key = f"{cfg.model_preset}-s{cfg.seed}-n{cfg.n_warm}-w{cfg.warm_steps}-lr{cfg.warm_lr:g}"
    path = os.path.join("out", "_warm", key)
    if not os.path.exists(os.path.join(path, "ckpt", "config.json")):
        print(f"== SFT warm-up of a '{cfg.model_preset}' model on the built-in task -> {path}")
        train(dataclasses.replace(cfg, method="sft", init_from="scratch", out_dir=path, n_train=cfg.n_warm,
                                  max_steps=cfg.warm_steps, lr=cfg.warm_lr, final_eval=False,
                                  resume=os.path.exists(os.path.join(path, "ckpt", "state.json")),
                                  warmup_steps=20, train_data="builtin", val_data="builtin"))
        print("== warm-up done")
    return os.path.join(path, "ckpt")


def init_model(cfg, device):
    if cfg.init_from == "scratch":
        torch.manual_seed(cfg.seed)
        model, tok = Transformer(config_from_preset(cfg.model_preset)).to(device), task.build_tokenizer()
    else:
        model, tok = load(cfg.init_from, torch.float32, device)
    if getattr(model, "lora", None):   # starting from a LoRA run: its adapters become the base
        merge(model)
    if cfg.lora_r:
        apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    return model, tok


def load_split(cfg, method, split, tok):
    """Tokenized examples of one split; the built-in task or a JSONL file, read as the method's
    source kind, then turned into what its loss eats by method.prepare (if any)."""
    src = cfg.train_data if split == "train" else cfg.val_data
    if not src:
        return []
    kind = method.source or method.data
    if src == "builtin":
        n = cfg.n_train if split == "train" else cfg.n_val
        rows = (task.sft_rows if kind == "sft" else task.preference_rows)(n, cfg.seed, split)
        skipped = 0
    else:
        rows, skipped = read_jsonl(src, kind, cfg.skip_bad_rows)
    if method.prepare:
        rows = method.prepare(rows, cfg, split, tok)
    ex, dropped = tokenize_rows(rows, tok, method.data, cfg.max_length, cfg.skip_bad_rows,
                                cfg.sj_max_length)
    if skipped or dropped:
        why = " (bad rows, --skip_bad_rows)" if method.data != "mo" else \
            f" (bad rows, or a self-judgement prompt over --sj_max_length={cfg.sj_max_length})"
        print(f"{src} [{split}]: dropped {skipped + dropped} of {len(rows) + skipped} rows{why}")
    if not ex:
        raise DataError(f"{src} [{split}]: no usable examples left")
    return ex


def lr_at(step, cfg):
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(path, model, tok, opt, cfg, step, order):
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
        atomic_write_json({"step": step, "data_pos": order.pos, "config": dataclasses.asdict(cfg),
                           "param_groups": sd["param_groups"]}, os.path.join(tmp, "state.json"))
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()   # nobody reads the checkpoint before rank 0 has finished writing it


def load_train_state(path, model, opt):
    st = read_json(os.path.join(path, "state.json"))
    t = load_file(os.path.join(path, "train_state.safetensors"))
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


def accumulate_gradients(model, method, micro, ctx, cfg):
    """Backward through every micro-batch, each loss divided by the units (tokens or examples) of
    the whole effective batch: N micro-steps give the gradient of one step on their concatenation."""
    # with W processes: the units of the global batch, times W because DDP / FSDP average over ranks
    denom = dist.all_sum(sum(b[method.unit] for b in micro)) / dist.world()
    loss_total, mets = 0.0, {}
    on_cuda = next(model.parameters()).is_cuda
    for i, b in enumerate(micro):
        # bf16 autocast on CUDA; float32 on the CPU (CPU bf16 matmuls are slow and the tests exact)
        with dist.no_sync(model, last=i == len(micro) - 1):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
                loss_sum, m = method.loss(model, b, ctx, cfg)
            (loss_sum / denom).backward()
        loss_total += loss_sum.item() / denom
        for k, v in m.items():
            mets[k] = mets.get(k, 0.0) + v / len(micro)
    return dist.all_sum(loss_total) / dist.world(), dist.mean_metrics(mets)


@torch.no_grad()
def held_out_loss(model, method, val, ctx, cfg, pad_id):
    model.eval()
    tot, units = 0.0, 0
    for i in range(min(cfg.eval_batches, len(val) // cfg.batch_size)):
        b = make_batch(val[i * cfg.batch_size:(i + 1) * cfg.batch_size], method.data, pad_id,
                       next(model.parameters()).device)
        loss, _ = method.loss(model, b, ctx, cfg)
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


# -- the loop ------------------------------------------------------------------------------------
def train(cfg, stop_at=None):
    """Run (or resume) one training run; returns the per-step losses. `stop_at` is for tests: it
    stops after that step exactly as Ctrl-C does (checkpoint, then return)."""
    method = REGISTRY[cfg.method]
    device = dist.setup(pick_device(cfg))   # joins the torchrun group, if launched by torchrun
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    if cfg.resume:  # the saved config wins; only resume/max_steps/logging may change
        saved = read_json(os.path.join(ckpt, "state.json"))["config"]
        keep = {k: getattr(cfg, k) for k in ("resume", "max_steps", "log_every", "final_eval")}
        cfg = dataclasses.replace(config_from_dict(saved, os.path.join(ckpt, "state.json")), **keep)
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
    ctx = {"tok": tok}
    if method.needs_ref and not cfg.lora_r:
        ctx["ref"] = dist.shard_frozen(frozen_copy(model), cfg.parallel)   # the start, frozen
    if cfg.resume:
        model, _ = load(ckpt, torch.float32, device)
    if method.needs_ref and cfg.lora_r:
        ctx["ref"] = AdaptersOff(model)          # the same weights with the adapters switched off
    model.grad_checkpoint = cfg.grad_checkpoint
    model = dist.wrap(model, cfg.parallel)       # DDP / FSDP2 under torchrun, else the model itself
    if dist.world() > 1:                         # each rank samples its own prompts differently
        torch.manual_seed(cfg.seed + 1000 * dist.rank())
    train_ex = load_split(cfg, method, "train", tok)
    val_ex = load_split(cfg, method, "val", tok) if method.data != "prompt" else []
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    step, pos = load_train_state(ckpt, model, opt) if cfg.resume else (0, 0)
    # one order of global batches; rank r takes rows [r*B, (r+1)*B) of each
    order = BatchOrder(len(train_ex), cfg.batch_size * dist.world(), cfg.seed, pos)
    rows = slice(dist.rank() * cfg.batch_size, (dist.rank() + 1) * cfg.batch_size)
    os.makedirs(cfg.out_dir, exist_ok=True)
    metrics_f = open(os.path.join(cfg.out_dir, "metrics.jsonl") if dist.is_main() else os.devnull, "a")
    before = oracle_eval(dist.unwrapped(model), tok) if cfg.final_eval and not cfg.resume else None
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{cfg.method}: {dist.unwrapped(model).num_params() / 1e6:.2f}M params "
          f"({n_train / 1e6:.3g}M trained) on {device} x{dist.world()}, {len(train_ex)} train "
          f"examples, {cfg.max_steps} steps of {cfg.batch_size}x{cfg.grad_accum}x{dist.world()}")
    model.train()
    stop, t0, tokens, last_log = StopFlag(), time.time(), 0, time.time()
    history = []
    try:
        while step < cfg.max_steps and not stop.hit:
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            # where the run is, for schedules over epochs (MO-ORPO epoch_by_epoch, task_by_task)
            ctx.update(step=step, epoch=order.pos / order.per_epoch,
                       epochs=cfg.max_steps * cfg.grad_accum / order.per_epoch)
            t_step = time.time()
            micro = [make_batch([train_ex[i] for i in order.next()[rows]], method.data, tok.pad_id,
                                device) for _ in range(cfg.grad_accum)]
            loss_total, mets = accumulate_gradients(model, method, micro, ctx, cfg)
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
                vl = held_out_loss(model, method, val_ex, ctx, cfg, tok.pad_id)
                print(f"step {step:5d} | val loss {vl:.4f}")
                metrics_f.write(json.dumps({"step": step, "split": "val", "loss": vl}) + "\n")
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                save_checkpoint(ckpt, model, tok, opt, cfg, step, order)
    except FloatingPointError as e:
        sys.exit(f"error: non-finite {e}; stopped without updating. The last good checkpoint "
                 f"(if any) is intact in {ckpt}")
    finally:
        stop.restore()
        metrics_f.close()
    save_checkpoint(ckpt, model, tok, opt, cfg, step, order)
    peak = peak_memory(device)
    print(f"checkpoint: {ckpt} (step {step}); peak memory of this process: "
          + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    if dist.is_main():
        with open(os.path.join(cfg.out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "split": "end", **peak}) + "\n")
    if stop.hit:
        if stop_at is not None:
            return history
        sys.exit(130)
    if before is not None:
        after = oracle_eval(dist.unwrapped(model), tok)
        print(f"\nBuilt-in task, greedy answers to 200 test prompts ({cfg.method}, "
              f"{time.time() - t0:.0f}s):")
        print(format_table(before, after))
        for p, a in after["examples"]:
            print(f"  {p!r} -> {a!r}")
    return history


if __name__ == "__main__":
    cfg = parse_config()
    try:
        if cfg.method == "meta_aligner" and cfg.meta_stage == "all":
            from nanoalign.meta_aligner import run_stages
            run_stages(cfg, train)
        else:
            train(cfg)
    except (CheckpointError, DataError, JudgeError) as e:
        sys.exit(f"error: {e}")
    finally:
        dist.cleanup()
