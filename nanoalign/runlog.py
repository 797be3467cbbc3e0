"""
What a training run prints and logs: the lines it starts with (what trains, how it computes, the
legend of the loop's numbers; a method's own are explained above the first line that logs them), a
line and a record every --log_every steps, held-out losses, the peak memory at the end; and how a
step's metrics are combined over its micro-batches and ranks first.

metrics.jsonl holds one JSON object a line: {"split": "train"} every --log_every steps (loss, lr,
grad_norm, the method's metrics, step_s, tok_per_s, elapsed), {"split": "val"} at each held-out
evaluation, {"split": "end"} with the process's peak memory. Under torchrun rank 0 writes it.
A resumed run keeps the lines up to its checkpoint's step and appends after them.
"""
import json
import os
import time

import torch

from nanoalign import dist
from nanoalign.compute import compute_of, max_length_of
from nanoalign.onpolicy import judging_said, new_tokens


def start(cfg, method, model, device, n_examples, peak, last_lr, step=0):
    """The lines a run starts with: what trains on what (and, resumed, from which step it goes on),
    how it computes, its learning rate (and that a run shorter than its warm-up never reaches it),
    an on-policy method's sample length, and the legend of what each logged number means."""
    n_all = dist.unwrapped(model).num_params()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # "all": 3 significant digits of a full fine-tune's count would print larger than the total
    trained = "all" if n_train == n_all else f"{n_train / 1e6:.3g}M"
    W = dist.world()
    per_step = (f"{cfg.batch_size * cfg.grad_accum * W} (--batch_size {cfg.batch_size} x --grad_accum "
                f"{cfg.grad_accum}" + (f" x {W} processes)" if W > 1 else ")"))
    print(f"{cfg.method}: {n_all / 1e6:.2f}M params ({trained} trained) on {device} x{W}, "
          f"{plural(n_examples, 'train example')}, {plural(cfg.max_steps, 'step')} of {per_step}")
    if cfg.resume:
        print(f"resumed from {os.path.join(cfg.out_dir, 'ckpt')} at step {step} of {cfg.max_steps}")
    print(f"compute: {compute_of(cfg, model)} (--dtype {cfg.dtype}, --packed {cfg.packed}, "
          f"--grad_checkpoint {cfg.grad_checkpoint})")
    print(f"peak lr {peak:g}" + ("" if cfg.lr else " (--lr 0: auto, by the model's size and the method; "
                                                  "see --help)"))
    if not cfg.max_length:                       # auto: the number the rows were cut to
        print(f"max_length {max_length_of(cfg, dist.unwrapped(model))} (--max_length 0: auto, TRL's "
              f"1024 or the model's context if shorter; see --help)")
    if cfg.warmup_steps > cfg.max_steps:         # a short try: the log lines do not show the rate
        print(f"note: --warmup_steps {cfg.warmup_steps} is longer than the run (--max_steps "
              f"{cfg.max_steps}): the rate rises to {last_lr:g} at its last step, not to the peak")
    if hasattr(cfg, "gen_max_tokens"):           # an on-policy method: how long a sample may grow
        print(f"samples up to {new_tokens(cfg, dist.unwrapped(model))} new tokens"
              + ("" if cfg.gen_max_tokens else " (--gen_max_tokens 0: auto, by the model's size; "
                                               "see --help)"))
    if hasattr(cfg, "judge_from"):               # an on-policy method: how its judge judges
        print(judging_said(cfg))
    print(legend())


def plural(n, what):
    return f"{n} {what}" + ("" if n == 1 else "s")


def legend():
    """What the loop's own logged numbers mean, printed at the start of a run; a method's own are
    explained by its first line that logs them (RunLog.train_step). The console line shows the
    loss, the method's metrics and tok/s; metrics.jsonl holds every one."""
    shown = {"loss": "the method's loss, averaged over the effective batch",
             "tok_per_s": "tokens through the model per second since the last log line, all ranks"}
    kept = {"lr": "learning rate", "grad_norm": "gradient norm before clipping",
            "step_s": "seconds for this step"}
    return ("metrics: " + "; ".join(f"{k} = {v}" for k, v in shown.items())
            + "; the method's own: where they are first logged"
            + "\nin out_dir/metrics.jsonl too: " + "; ".join(f"{k} = {v}" for k, v in kept.items()))


def step_metrics(per_micro, units, totals=(), by=None, run_totals=()):
    """One step's metrics from its micro-batches' {name: float} and their units (the tokens or
    examples its loss sums over), each name over the micro-batches that logged it (judge agreement
    only where the oracle ranked a pair: no agreement of 0 where it did not), by dist.weighted_means:
    the mean weighted by units, so that a per-token or per-example mean is that of the whole step
    (SFT's nll_per_token over micro-batches of unequal token counts); a name in `by` weighted by
    the count it names instead (judge agreement by the pairs the oracle ranked); a name in `totals`
    (seconds spent, pairs counted) summed. Then over ranks, weighted alike (dist.mean_metrics), a
    name in `run_totals` (a count or a rate of the whole run) summed."""
    out = dist.weighted_means(per_micro, units, by)
    for k in totals:
        if k in out:
            out[k] = sum(m[k] for m in per_micro if k in m)
    return dist.mean_metrics(out, sum(units), by, run_totals)


def keep_log_until(path, step):
    """A resumed run's metrics.jsonl up to its checkpoint's step: a run that crashed after a
    --ckpt_every checkpoint had logged later steps, which the resumed run trains again (each step
    would be logged twice), and perhaps half a line."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):   # a line cut short by the crash
                pass
    with open(path, "w") as f:
        f.writelines(kept)


def peak_memory(device):
    """Peak memory of this process so far, in MiB: CUDA max allocated, or peak RSS on the CPU."""
    if str(device).startswith("cuda"):
        return {"peak_cuda_alloc_mib": torch.cuda.max_memory_allocated() / 2**20}
    import resource
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux


class RunLog:
    """One run's log from `step` (0, or a resumed run's checkpoint step) on. `tokens` counts what
    went through the model since the last train line; each record is appended as it is made (a
    killed run keeps every line it printed)."""

    def __init__(self, out_dir, step, resume, meanings=None):
        # a method's metrics (Method.metrics), each explained above the first line that logs it:
        # a legend of all of them up front named numbers a run never logs (an oracle's agreement on
        # the user's own data, RAFT's under ranked pairs)
        self.meanings, self.explained = meanings or {}, set()
        self.path = os.path.join(out_dir, "metrics.jsonl") if dist.is_main() else os.devnull
        if resume and dist.is_main():
            keep_log_until(self.path, step)
        elif not resume:
            open(self.path, "w").close()         # a fresh run replaces an earlier run's log
        self.first_step, self.tokens = step, 0
        self.t0 = self.last = time.time()

    def write(self, rec):
        with open(self.path, "a") as f:
            print(json.dumps(rec), file=f)

    def train_step(self, step, max_steps, loss, lr, gnorm, mets, t_step):
        """The console line and record of a logged step. tok_per_s is every rank's tokens (the
        ranks train side by side, so the run's rate is their sum) over one clock reading, so that
        tok_per_s * (elapsed - the last line's elapsed) is those tokens."""
        tokens, now = dist.all_sum(self.tokens), time.time()
        el = now - self.t0
        rec = {"step": step, "split": "train", "loss": loss, "lr": lr, "grad_norm": gnorm, **mets,
               "step_s": now - t_step, "tok_per_s": tokens / max(now - self.last, 1e-9), "elapsed": el}
        self.tokens, self.last = 0, now
        eta = el / max(step - self.first_step, 1) * (max_steps - step)
        extra = " ".join(f"{k} {v:.4f}" for k, v in mets.items())
        new = [k for k in mets if k not in self.explained]
        if new:
            self.explained.update(new)
            print("metrics: " + "; ".join(f"{k} = {self.meanings.get(k, 'a number the method logs')}"
                                          for k in new))
        print(f"step {step:5d} | loss {loss:.4f} | {extra} | {rec['tok_per_s']:.0f} tok/s"
              f" | {el:.0f}s elapsed, eta {eta:.0f}s")
        self.write(rec)

    def first(self, step, max_steps, log_every):
        """A line after this process's first step when it is not a logged one: on a CPU a real
        model's step takes seconds, and a run logging every 10 steps said nothing for minutes. The
        console only; metrics.jsonl keeps its --log_every records."""
        el = time.time() - self.t0
        print(f"step {step:5d} | first step done, {el:.1f}s | eta {el * (max_steps - step):.0f}s | "
              f"a line every {log_every} steps (--log_every)")

    def val(self, step, loss, note=""):
        print(f"step {step:5d} | val loss {loss:.4f}{note}")
        self.write({"step": step, "split": "val", "loss": loss})

    def end(self, step, device, ckpt):
        """Where the checkpoint is and the process's peak memory, which is also the log's last record
        (a resumed run's log keeps the stopped process's too: each process has its own peak)."""
        peak = peak_memory(device)
        print(f"checkpoint: {ckpt} (step {step}); peak memory of this process: "
              + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
        self.write({"step": step, "split": "end", **peak})
