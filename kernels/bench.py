"""
Benchmark of sequence log-prob + ORPO loss, forward + backward. A script, not a test.

    python -m kernels.bench --cpu_memory          # CPU: peak RSS growth, each path in a fresh process
    python -m kernels.bench                       # CUDA: time and peak memory at LLM head shapes

Paths (all compute the same per-sequence ORPO loss from hidden states and the LM-head weight):
  eager     full logits + log_softmax + gather (what most code does)
  compile   torch.compile of eager
  chunked   our torch reference path (the CPU training path)
  triton    our Triton kernels
  liger     Liger-Kernel's LigerFusedLinearORPOLoss, if that package is installed
  floor     the bare LM-head matmuls: one forward, two backward (no softmax at all)
Ratios are taken against numbers measured in the same run.
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from kernels.odds_ratio import odds_ratio_loss
from kernels.seq_logprob import naive_sequence_logprob, sequence_logprob


def make_inputs(N, V, d, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B = 8  # N tokens as 2B sequences: B chosen then B rejected, half of each sequence is response
    T = N // (2 * B)
    h = (torch.randn(2 * B, T, d, generator=g) * 1.0).to(dtype).to(device).requires_grad_()
    w = (torch.randn(V, d, generator=g) * d ** -0.5).to(dtype).to(device).requires_grad_()
    y = torch.randint(0, V, (2 * B, T), generator=g).to(device)
    m = torch.zeros(2 * B, T, device=device)
    m[:, T // 2:] = 1
    return h, w, y, m


def orpo_step(path, h, w, y, m, compiled=None):
    if path == "floor":
        x = h.reshape(-1, h.shape[-1])
        logits = x @ w.t()
        logits.backward(torch.ones_like(logits))
        return
    if path in ("eager", "compile"):
        lp = (compiled if path == "compile" else naive_sequence_logprob)(h, w, y, m, "mean")
    else:
        lp = sequence_logprob(h, w, y, m, "mean", backend="torch" if path == "chunked" else "triton")
    B = lp.shape[0] // 2
    loss, _ = odds_ratio_loss(lp[:B], lp[B:], backend="torch" if path in ("eager", "chunked", "compile") else None)
    (loss.mean() - lp[:B].mean()).backward()


def liger_step(h, w, y, m):
    from liger_kernel.chunked_loss import LigerFusedLinearORPOLoss
    loss_fn = LigerFusedLinearORPOLoss(ignore_index=-100, beta=0.1)
    tgt = torch.where(m.bool(), y, torch.full_like(y, -100))
    out = loss_fn(w, h, tgt)
    (out[0] if isinstance(out, tuple) else out).backward()


def cpu_memory_child(path, N, V, d):
    h, w, y, m = make_inputs(N, V, d, torch.float32, "cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    orpo_step(path, h, w, y, m)
    dt = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"path": path, "extra_mib": (peak - before) / 1024, "seconds": dt}))


def cpu_memory(N, V, d):
    print(f"CPU peak RSS growth, fwd+bwd ORPO, N={N} V={V} d={d} float32 (each path in a fresh process)")
    res = {}
    for path in ("eager", "chunked"):
        out = subprocess.run([sys.executable, "-m", "kernels.bench", "--_child", path, "--N", str(N),
                              "--V", str(V), "--d", str(d)], capture_output=True, text=True, check=True)
        res[path] = json.loads(out.stdout.strip().splitlines()[-1])
    e = res["eager"]["extra_mib"]
    print(f"{'path':10s} {'extra MiB':>10s} {'% of eager':>11s} {'seconds':>8s}")
    for p, r in res.items():
        print(f"{p:10s} {r['extra_mib']:10.1f} {100 * r['extra_mib'] / e:10.1f}% {r['seconds']:8.2f}")
    full = N * V * 4 / 2 ** 20
    print(f"(for scale: one float32 N x V logits tensor is {full:.0f} MiB = {100 * full / e:.0f}% of eager)")


def gpu_bench(shapes, iters):
    torch.backends.cuda.matmul.allow_tf32 = False
    paths = ["floor", "eager", "compile", "chunked", "triton"]
    try:
        import liger_kernel  # noqa: F401
        paths.append("liger")
    except ImportError:
        print("(liger-kernel not installed: its column is skipped)")
    compiled = torch.compile(naive_sequence_logprob)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16, fwd+bwd ORPO")
    print(f"{'head':10s} {'N':>6s} {'path':8s} {'ms':>8s} {'x floor':>8s} {'peak GiB':>9s} {'% eager mem':>11s}")
    for name, V, d in shapes:
        for N in (2048, 8192, 16384):
            rows = {}
            for path in paths:
                h, w, y, m = make_inputs(N, V, d, torch.bfloat16, "cuda")
                if path == "liger":
                    step = lambda: liger_step(h, w, y, m)  # noqa: E731
                else:
                    step = lambda p=path: orpo_step(p, h, w, y, m, compiled)  # noqa: E731
                try:
                    step()  # warm-up / compile
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        h.grad = w.grad = None
                        step()
                    torch.cuda.synchronize()
                    ms = (time.perf_counter() - t0) / iters * 1e3
                    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
                    rows[path] = (ms, peak)
                except torch.OutOfMemoryError:
                    rows[path] = (float("nan"), float("nan"))
                del h, w, y, m
                torch.cuda.empty_cache()
            for path, (ms, peak) in rows.items():
                print(f"{name:10s} {N:6d} {path:8s} {ms:8.2f} {ms / rows['floor'][0]:8.2f} "
                      f"{peak:9.2f} {100 * peak / rows['eager'][1]:10.1f}%")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu_memory", action="store_true", help="run the CPU peak-memory comparison")
    ap.add_argument("--N", type=int, default=4096, help="tokens (CPU memory mode)")
    ap.add_argument("--V", type=int, default=32000, help="vocabulary (CPU memory mode)")
    ap.add_argument("--d", type=int, default=512, help="hidden size (CPU memory mode)")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per path (GPU)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        cpu_memory_child(a._child, a.N, a.V, a.d)
    elif a.cpu_memory or not torch.cuda.is_available():
        cpu_memory(a.N, a.V, a.d)
    else:
        gpu_bench([("llama3-8b", 128256, 4096), ("mistral-7b", 32000, 4096)], a.iters)
