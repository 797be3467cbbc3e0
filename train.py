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
micro-batches (an on-policy method first samples and judges all of them, without gradients; then
forward and backward of each) -> clip -> finite check -> AdamW -> log / evaluate / checkpoint.
Ctrl-C (or SIGTERM) finishes the step in flight, writes a checkpoint, prints the command that
resumes it and exits; `--resume` continues it exactly (model, AdamW state, RNG states, data
position, step: nanoalign/checkpoint.py).
"""
import os
import signal
import sys


def stopped_while_starting(signum, frame):
    # os._exit, not SystemExit: an exception raised here lands inside whichever module is importing,
    # and one that catches everything swallowed it in CI (the program then ran to its end, exit 0)
    print("stopped (Ctrl-C) while starting: nothing was written", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":    # Ctrl-C in the seconds torch takes to import: one line, not a traceback
    signal.signal(signal.SIGINT, stopped_while_starting)

# the imports below come after that handler: torch's import is what it covers
import dataclasses
import io
import math
import shlex
import time

import torch

from model.checkpoint import CheckpointError, load
from model.lora import AdaptersOff, apply_lora, merge
from model.model import Transformer, config_from_preset
from model.tokenizer import NoChatTemplate
from nanoalign import REGISTRY, dist, runlog
from nanoalign.checkpoint import (DATA_FILE, check_same_data, data_fingerprint, load_train_state,
                                  save_checkpoint, saved_step, trained_config)
from nanoalign.cli import parse_config
from nanoalign.common import Run, frozen_copy
from nanoalign.compute import (autocast, autocast_dtype, checkpoint_every, make_optimizer, off_bf16_ties,
                               max_length_of, packed_batches, peak_lr, set_deterministic)
from nanoalign.config import ON_POLICY, make_config, options_of, resume_config, shared_options
from nanoalign.data import KINDS, BatchOrder, DataError, make_batch, read_jsonl, tokenize_rows
from nanoalign.judge import JudgeError
from nanoalign.onpolicy import COUNTS, RATES, TIMES, WEIGHTS, inherited
from nanoalign.tasks import get_task
from nanoalign.tasks.evaluate import format_table, oracle_eval


# -- the pieces train() calls, in the order it calls them -----------------------------------------
def replaced_note(cfg, ckpt, done):
    """The note a new run in an earlier run's out_dir prints: the earlier run is replaced, and
    --resume is named only where it would have continued that run (the same method, short of this
    run's --max_steps), not for a finished run or another method's."""
    earlier = trained_config(ckpt).get("method")
    resumable = earlier == cfg.method and done < cfg.max_steps
    return (f"note: {cfg.out_dir} holds an earlier run ({earlier or 'a run'}, step {done}); this run "
            f"replaces it and its metrics.jsonl" + (" (--resume would have continued it)" if resumable else ""))


def init_model(cfg, task, device):
    """The model and tokenizer a run starts from (--init_from), with LoRA adapters if asked."""
    if cfg.init_from == "scratch":
        torch.manual_seed(cfg.seed)
        model = Transformer(config_from_preset(cfg.model_preset)).to(device)
        tok = task.build_tokenizer()
    else:
        try:
            model, tok = load(cfg.init_from, torch.float32, device, cfg.chat_format or None)
        except CheckpointError as e:     # its message begins with the path: say which flag gave it
            raise CheckpointError(f"--init_from {e}") from None
        if tok.template is None:         # every row is a chat: said now, naming this command's flag
            raise NoChatTemplate(cfg.init_from, how="--chat_format")
        if tok.replaced:                 # obeyed, but its prompts are not the checkpoint's own
            print(f"note: --chat_format {cfg.chat_format} replaces the checkpoint's own chat template "
                  f"({tok.replaced}), with whatever it adds (a default system prompt, say); the run "
                  f"trains on {cfg.chat_format}'s prompts and saves {cfg.chat_format} with its checkpoint")
    if getattr(model, "lora", None):   # starting from a LoRA run: its adapters become the base
        merge(model)
    if autocast_dtype(cfg, model):     # float16 or dequantized weights: see off_bf16_ties
        off_bf16_ties(model.parameters())
    if cfg.lora_r:
        apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    return model, tok


def load_split(cfg, method, task, split, run, max_length=None):
    """Tokenized examples of one split: the built-in task's rows or a JSONL file's, read as the
    method's row kind, turned into what its loss eats by method.prepare (if any), then tokenized
    to max_length: --max_length with its auto resolved by the model (compute.max_length_of; train
    passes it), else as resolved without one."""
    max_length = max_length or max_length_of(cfg)
    src = cfg.train_data if split == "train" else cfg.val_data
    if split == "val" and src == "auto":   # the built-in task's when training on it, else none
        src = "builtin" if cfg.train_data == "builtin" else ""
    if not src:
        return []
    bad = []   # "file:line: why" of each row skipped or dropped, in order: the first few are named
    if src == "builtin":
        rows, skipped = task.rows(method.reads, split, cfg.seed, options_of(cfg, task.Options)), 0
    else:
        rows, skipped = read_jsonl(src, method.reads, cfg.skip_bad_rows,
                                   method.check_row and method.check_row(cfg), bad=bad)
    n_read = len(rows)
    if method.prepare:
        rows = method.prepare(rows, cfg, split, run)
        if len(rows) != n_read:      # JSFT's 24 examples from 8 rows: an answer and two judgments each
            print(f"{src} [{split}]: {n_read} rows make {len(rows)} {method.name} examples "
                  f"(python train.py --method {method.name} --help says how)")
    ex, dropped = tokenize_rows(rows, run.tok, method.eats, max_length, cfg.skip_bad_rows,
                                bad=bad, **method.tokenize_options(cfg))
    if skipped or dropped:
        # a method that prepares makes its examples from the rows read (JSFT: three of each): count
        # the bad rows among the rows read, the dropped examples among the examples made
        what = (f"skipped {skipped} of {n_read + skipped} rows read; dropped {dropped} of {len(rows)} "
                f"examples made from them" if method.prepare else
                f"dropped {skipped + dropped} of {len(rows) + skipped} rows")
        named = " | ".join(bad[:3]) + (" | ..." if len(bad) > 3 else "")   # (their errors hold ';' and ',')
        print(f"{src} [{split}]: {what} ({KINDS[method.eats].summary}): {named}")
    cut = [e for e in ex if e.get("cut")]
    if cut:
        where = [e["row"]["_where"] for e in cut if "_where" in e["row"]]
        print(f"{src} [{split}]: cut the response of {len(cut)} of {len(ex)} examples to "
              f"--max_length {max_length} (its first tokens kept)"
              + (f": {', '.join(where[:3])}{', ...' if len(where) > 3 else ''}" if where else ""))
    if not ex:
        raise DataError(f"{src} [{split}]: no usable examples left")
    return ex


def signal_name(signum):
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class Abort(KeyboardInterrupt):
    """A second signal while training. It carries which one: main's last line and exit code name it,
    where a bare KeyboardInterrupt would read as a Ctrl-C after a second `kill`."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class StopFlag:
    """First Ctrl-C (SIGINT) or SIGTERM (`kill`, a cluster's preemption): finish this step,
    checkpoint, exit with 128 + the signal's number. A second signal: stop at once."""

    def __init__(self):
        self.hit, self.signum = False, signal.SIGINT
        self.prev = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, _):
        if self.hit:
            raise Abort(signum)
        self.hit, self.signum = True, signum
        name = signal_name(signum)
        print(f"\n{name}: finishing this step and writing a checkpoint ({name} again to abort)")

    def restore(self):
        for s, handler in self.prev.items():
            signal.signal(s, handler)


def lr_at(step, cfg, peak):
    """Linear warm-up to the peak rate, then cosine decay to peak * min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return peak * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def rollout(model, method, micro, run, cfg):
    """The on-policy round of a method that has one (Self-Judge, OSP): each micro-batch of prompts
    becomes the batch its loss eats, sampled and judged by method.rollout with no gradients."""
    out, mets = [], []
    for b in micro:
        with torch.no_grad(), autocast(cfg, model):
            b, m = method.rollout(dist.unwrapped(model), b, run, cfg)
        out.append(b)
        mets.append(m)
    return out, runlog.step_metrics(mets, [b[method.unit] for b in out], totals=TIMES + COUNTS,
                                    by=WEIGHTS, run_totals=COUNTS + RATES)


def accumulate_gradients(model, method, micro, run, cfg):
    """Backward through every micro-batch, each loss divided by the units (tokens or examples) of
    the whole effective batch: N micro-steps give the gradient of one step on their concatenation."""
    # with W processes: the global batch's units G / W, because DDP / FSDP average the W ranks'
    # gradients: the mean over ranks of S_r / (G / W) is (sum of the S_r) / G, the whole batch's
    denom = dist.all_sum(sum(b[method.unit] for b in micro)) / dist.world()
    loss_total, mets = 0.0, []
    for i, b in enumerate(micro):
        with dist.no_sync(model, last=i == len(micro) - 1):
            with autocast(cfg, model):   # --dtype: the weights and AdamW stay float32
                loss_sum, m = method.loss(model, b, run, cfg)
            if loss_sum.numel() != 1:    # backward() would say only 'grad can be implicitly created ...'
                raise ValueError(f"--method {method.name}: its loss returned a tensor of shape "
                                 f"{tuple(loss_sum.shape)}; a loss returns one number, the sum over the "
                                 f"micro-batch's {method.unit} (nanoalign/common.py, Method)")
            (loss_sum / denom).backward()
        loss_total += loss_sum.item() / denom
        mets.append(m)
    units = [b[method.unit] for b in micro]
    return dist.all_sum(loss_total) / dist.world(), runlog.step_metrics(mets, units)


@torch.no_grad()
def held_out_loss(model, method, val, run, cfg):
    model.eval()
    tot, units = 0.0, 0
    dev = next(model.parameters()).device
    # the same examples at every evaluation, spread evenly over the data: its head alone could be one
    # kind of example (JSFT's prepared rows: every answer before every judgement)
    n = min(len(val), cfg.batch_size * max(1, min(cfg.eval_batches, len(val) // cfg.batch_size)))
    pick = [val[i * len(val) // n] for i in range(n)]
    for i in range(0, n, cfg.batch_size):
        b = make_batch(pick[i:i + cfg.batch_size], method.eats, run.tok.pad_id, dev, packed_batches(cfg, model))
        with autocast(cfg, model):
            loss, _ = method.loss(model, b, run, cfg)
        tot, units = tot + loss.item(), units + b[method.unit]
    model.train()
    return tot / max(units, 1)


# -- the loop ------------------------------------------------------------------------------------
def train(cfg, task=None, stop_at=None):
    """Run (or resume) one training run from cfg.init_from (a directory or 'scratch'); returns the
    per-step losses. `task`: the built-in task (looked up from cfg.task if not given). `stop_at` is
    for tests: it stops after that step exactly as Ctrl-C does (checkpoint, then return)."""
    method, task = REGISTRY[cfg.method], task or get_task(cfg.task)
    # (under torchrun, ranks without a GPU each fall back to the CPU with a note: dist.rank_device)
    if cfg.device == "cuda" and not torch.cuda.is_available() and "WORLD_SIZE" not in os.environ:
        raise SystemExit(f"error: --device cuda, but this torch ({torch.__version__}) sees no CUDA "
                         f"GPU; use --device cpu, or auto (CUDA when there is one)")
    device = dist.setup(cfg.device)   # 'auto' resolved; joins the torchrun group, if launched by it
    ckpt = os.path.join(cfg.out_dir, "ckpt")
    done = saved_step(ckpt)           # 0: no checkpoint there
    if cfg.resume:  # the saved config wins; only RESUMABLE settings may change
        cfg = resume_config(dataclasses.asdict(cfg))
        if done >= cfg.max_steps:
            raise CheckpointError(f"the run in {cfg.out_dir} is at step {done} and --max_steps is "
                                  f"{cfg.max_steps}: nothing to resume; raise --max_steps to train on")
    replaces = None if cfg.resume or not done else replaced_note(cfg, ckpt, done)
    if cfg.init_from == "default":
        raise CheckpointError("--init_from default names the built-in task's start: resolve it with "
                              "train.start_checkpoint(cfg, task) first (train.main does)")
    if cfg.lora_r and cfg.init_from == "scratch":
        raise CheckpointError("--lora_r needs a base checkpoint to adapt (--init_from DIR or default), "
                              "not --init_from scratch: a LoRA checkpoint stores the adapters only")
    set_deterministic(cfg, device)               # CUDA: one summation order, for --resume
    torch.manual_seed(cfg.seed)
    model, tok = init_model(cfg, task, device)
    # the built-in task lends its oracle to the methods' metrics (and its rationales to the rationale
    # judge templates); on your own data there is none
    run = Run(tok=tok, task=task if cfg.train_data == "builtin" else None)
    run.checkpoint_files.update(inherited(cfg.init_from))   # a judge's principles travel on
    if method.needs_ref and not cfg.lora_r:
        run.ref = dist.shard_frozen(frozen_copy(model), cfg.parallel)   # the start, frozen
    if method.setup:                             # what the method needs beside the model (a judge)
        method.setup(run, cfg, device)
    if cfg.resume:
        model, _ = load(ckpt, torch.float32, device)
        if autocast_dtype(cfg, model):   # a LoRA run's base, loaded from the start again: as init_model had it
            off_bf16_ties([p for p in model.parameters() if not p.requires_grad])
    if method.needs_ref and cfg.lora_r:
        run.ref = AdaptersOff(model)             # the same weights with the adapters switched off
    # a length limit beyond the model's context would stop the run when a long row comes, hours in
    context = model.cfg.max_seq_len
    max_length = max_length_of(cfg, model)
    for name, n in {"max_length": max_length, **method.tokenize_options(cfg)}.items():
        if n > context:
            raise CheckpointError(f"--{name} {n} is longer than the model's context ({context} tokens, "
                                  f"max_position_embeddings); lower it to {context} or less")
    model.checkpoint_every = checkpoint_every(cfg, model)   # --grad_checkpoint (recompute in backward)
    model = dist.wrap(model, cfg.parallel)       # DDP / FSDP2 under torchrun, else the model itself
    if dist.world() > 1:                         # each rank samples its own prompts differently
        torch.manual_seed(cfg.seed + 1000 * dist.rank())
    train_ex = load_split(cfg, method, task, "train", run, max_length)
    if os.path.isfile(cfg.train_data):          # kept with every checkpoint: --resume checks it
        run.checkpoint_files[DATA_FILE] = data_fingerprint(cfg.train_data)
        if cfg.resume:
            check_same_data(ckpt, run.checkpoint_files[DATA_FILE])
    # an on-policy method's held-out loss would need a rollout per evaluation: it has none
    val_ex = load_split(cfg, method, task, "val", run, max_length) if not method.rollout else []
    opt = make_optimizer(model, cfg)
    step, pos = load_train_state(ckpt, model, opt) if cfg.resume else (0, 0)
    # one order of global batches; rank r takes rows [r*B, (r+1)*B) of each
    order = BatchOrder(len(train_ex), cfg.batch_size * dist.world(), cfg.seed, pos)
    rows = slice(dist.rank() * cfg.batch_size, (dist.rank() + 1) * cfg.batch_size)
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"--out_dir {cfg.out_dir}: cannot create it ({e.strerror})") from None
    packed, peak = packed_batches(cfg, model), peak_lr(cfg, model, method)
    if replaces:          # said once the run is sure to start: a bad row above replaced nothing
        print(replaces)
    runlog.start(cfg, method, model, device, len(train_ex), peak, lr_at(cfg.max_steps - 1, cfg, peak), step)
    model.train()
    log, stop = runlog.RunLog(cfg.out_dir, step, cfg.resume, method.metrics), StopFlag()
    history, val_step, rollout_mets = [], None, {}
    saved = step if cfg.resume else None       # the step of this run's newest checkpoint
    try:
        while step < cfg.max_steps and not stop.hit:
            lr = lr_at(step, cfg, peak)
            for g in opt.param_groups:
                g["lr"] = lr
            # where the run is, for methods that schedule over epochs
            run.epoch = order.pos / order.per_epoch
            run.epochs = cfg.max_steps * cfg.grad_accum / order.per_epoch
            t_step = time.time()
            micro = [make_batch([train_ex[i] for i in order.next()[rows]], method.eats, tok.pad_id,
                                device, packed) for _ in range(cfg.grad_accum)]
            if method.rollout:   # on-policy: sample and judge, no gradients; then the method's loss
                micro, rollout_mets = rollout(model, method, micro, run, cfg)
            loss_total, mets = accumulate_gradients(model, method, micro, run, cfg)
            mets = {**rollout_mets, **mets}
            log.tokens += sum(b["n_seen"] for b in micro)
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
                log.train_step(step, cfg.max_steps, loss_total, lr, gnorm.item(), mets, t_step)
            elif step == log.first_step + 1:      # the first step, which no line would show for a while
                log.first(step, cfg.max_steps, cfg.log_every)
            if val_ex and cfg.eval_every and step % cfg.eval_every == 0:
                log.val(step, held_out_loss(model, method, val_ex, run, cfg))
                val_step = step
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                save_checkpoint(ckpt, model, tok, opt, cfg, step, order, run)
                saved = step
        # every run with validation data ends with its loss; a stopped one does when it is resumed
        if val_ex and val_step != step and not (stop.hit and step < cfg.max_steps):
            log.val(step, held_out_loss(model, method, val_ex, run, cfg), " (end of run)")
    except FloatingPointError as e:
        kept = (f"this run's last good checkpoint (step {saved}) is intact in {ckpt}" if saved is not None
                else "this run wrote no checkpoint before it (--ckpt_every N writes one every N steps)")
        sys.exit(f"error: non-finite {e}; stopped without updating; {kept}")
    finally:
        stop.restore()
    save_checkpoint(ckpt, model, tok, opt, cfg, step, order, run)
    log.end(step, device, ckpt)
    if stop.hit:
        if step < cfg.max_steps:
            # quoted: a directory with a space in it would be two arguments to the shell
            # with as many processes: the data position counts global batches (load_train_state)
            launch = f"torchrun --nproc_per_node {dist.world()}" if dist.world() > 1 else "python"
            print(f"stopped at step {step} of {cfg.max_steps}; to continue exactly:\n"
                  f"  {launch} train.py --method {cfg.method} --out_dir {shlex.quote(cfg.out_dir)} "
                  f"--resume")
        else:                          # stopped in the last step or the end-of-run evaluation: complete
            print(f"stopped after the last step ({step}): the run is complete, its checkpoint written")
        if stop_at is None:
            sys.exit(128 + stop.signum)
    return history


# -- the command line: the built-in task's start and table around one run -------------------------
def start_checkpoint(cfg, task):
    """cfg with --init_from default resolved to the task's start: the arithmetic task's cached SFT
    warm-up (a run of its own, trained by train() first), the instruct task's real checkpoint."""
    if cfg.init_from != "default" or cfg.resume:
        return cfg
    # your own rows, read (and thrown away) first: a mistake in them is its error now, not after the
    # warm-up has trained (a minute on a first run)
    method = REGISTRY[cfg.method]
    for src in (cfg.train_data, cfg.val_data):
        if src not in ("builtin", "auto", ""):
            read_jsonl(src, method.reads, cfg.skip_bad_rows, method.check_row and method.check_row(cfg))
    path = task.warm_start(shared_options(cfg), lambda **kw: train(make_config(**kw), task))
    return dataclasses.replace(cfg, init_from=path)


def table(cfg, task, device, before, t0):
    """The built-in task's before/after table: greedy answers of the start and of the result."""
    after = oracle_eval(load(os.path.join(cfg.out_dir, "ckpt"), torch.float32, device)[0],
                        before["tok"], task=task)
    name = "" if task.NAME == "arith" else f" '{task.NAME}'"
    print(f"\nBuilt-in task{name}, greedy answers to {len(task.test_prompts())} test prompts ({cfg.method}, "
          f"{time.time() - t0:.0f}s):")
    print(format_table(before["scores"], after))
    for p, a in after["examples"]:
        print(f"  {p!r} -> {a!r}")


def main(argv=None):
    """The command line: parse; look the built-in task up once; its warm start if the run begins
    there; the run (or the method's own driver, e.g. MetaAligner's stages); the table."""
    # stdout piped to `tee`, a log file or torchrun is block-buffered: a run would show nothing until
    # it ended, and a killed one (the OOM killer) would lose what it had printed. One line at a time.
    if isinstance(sys.stdout, io.TextIOWrapper):   # not a notebook's stream, which has no such setting
        sys.stdout.reconfigure(line_buffering=True)
    cfg = parse_config(argv, __doc__)
    method, task = REGISTRY[cfg.method], get_task(cfg.task)
    try:
        cfg = start_checkpoint(cfg, task)
        device, before = dist.setup(cfg.device), None
        set_deterministic(cfg, device)           # before the first matmul: the "before" table's
        # the start's scores; a resumed run's too (its saved --init_from, which --resume requires),
        # so that it ends with the unbroken run's table
        if cfg.final_eval and cfg.train_data == "builtin" and not method.main:
            torch.manual_seed(cfg.seed)
            model, tok = init_model(cfg, task, device)
            before = {"scores": oracle_eval(model, tok, task=task), "tok": tok}
            del model
        t0 = time.time()
        if method.main:
            ckpt = method.main(cfg, lambda c: train(c, task))
        else:
            train(cfg, task)
            ckpt = os.path.join(cfg.out_dir, "ckpt")
        if before is not None:
            table(cfg, task, device, before, t0)
        example = task.test_prompts(1)[0] if cfg.train_data == "builtin" else "your prompt"
        flags = (method.sample_flags(cfg, ckpt) if method.sample_flags
                 else f"--init_from {shlex.quote(ckpt)}")
        print(f"\nsample from it:\n  python sample.py {flags} --prompt {shlex.quote(example)}")
        if method.trains_judge and method.trains_judge(cfg):
            q = shlex.quote(ckpt)    # it trained a judge: its uses
            print(f"judge with it (the template and rule it trained on are kept with it):\n"
                  f"  python sample.py --init_from {q} --best_of 4 --prompt {shlex.quote(example)}\n"
                  f"  python -m nanoalign.judge_cli --init_from {q} --pairs pairs.jsonl\n"
                  f"  python train.py --method M --init_from {q}    (on-policy, judged by it; M: {ON_POLICY})")
    except (CheckpointError, DataError, JudgeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        # Ctrl-C where the loop's handler is not installed (loading the model, reading the data, the
        # built-in table) or a second signal in the loop (abort): no traceback, and what is on disk
        signum = e.signum if isinstance(e, Abort) else signal.SIGINT
        ckpt, said = os.path.join(cfg.out_dir, "ckpt"), ""
        if not method.main:                      # a chain's stages have said how to resume it
            n = saved_step(ckpt)
            said = f"; {ckpt} holds a checkpoint of step {n}" if n else f"; no checkpoint in {cfg.out_dir}"
        print(f"stopped ({signal_name(signum)}){said}", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        dist.cleanup()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)   # imported: main's own handling from here
    main()
