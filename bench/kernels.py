"""
Benchmark of sequence log-prob + ORPO loss, forward + backward. A script, not a test.

    python -m bench.kernels --cpu_memory          # CPU: peak RSS growth, each path in a fresh process
    python -m bench.kernels                       # CUDA: time and peak memory at LLM head shapes
    python -m bench.kernels --sweep               # CUDA: time the Triton kernels' tile shapes

Paths (all compute the same per-sequence ORPO loss from hidden states and the LM-head weight):
  eager     full logits + log_softmax + gather (what most code does)
  compile   torch.compile of eager
  chunked   our torch reference path (the CPU training path)
  triton    our Triton kernels
  liger     Liger-Kernel's LigerFusedLinearORPOLoss, if that package is installed
  floor     the bare LM-head matmuls: one forward, two backward (no softmax at all)
Ratios are taken against numbers measured in the same run. On the GPU every token is a response
token by default (--response_frac 1), so all paths and the floor do the same arithmetic; with real
prompts masked out our paths skip those rows and the others do not.
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


def make_inputs(N, V, d, dtype, device, seed=0, response_frac=0.5):
    g = torch.Generator(device=device).manual_seed(seed)
    B = 8  # N tokens as 2B sequences: B chosen then B rejected; the last response_frac is response
    T = N // (2 * B)
    h = torch.randn(2 * B, T, d, generator=g, device=device).to(dtype).requires_grad_()
    w = (torch.randn(V, d, generator=g, device=device) * d ** -0.5).to(dtype).requires_grad_()
    y = torch.randint(0, V, (2 * B, T), generator=g, device=device)
    m = torch.zeros(2 * B, T, device=device)
    m[:, T - int(T * response_frac):] = 1
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


HEADS = {"llama3-8b": (128256, 4096), "mistral-7b": (32000, 4096)}


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
        out = subprocess.run([sys.executable, "-m", "bench.kernels", "--_child", path, "--N", str(N),
                              "--V", str(V), "--d", str(d)], capture_output=True, text=True, check=True)
        res[path] = json.loads(out.stdout.strip().splitlines()[-1])
    e = res["eager"]["extra_mib"]
    print(f"{'path':10s} {'extra MiB':>10s} {'% of eager':>11s} {'seconds':>8s}")
    for p, r in res.items():
        print(f"{p:10s} {r['extra_mib']:10.1f} {100 * r['extra_mib'] / e:10.1f}% {r['seconds']:8.2f}")
    full = N * V * 4 / 2 ** 20
    print(f"(for scale: one float32 N x V logits tensor is {full:.0f} MiB = {100 * full / e:.0f}% of eager)")


def cuda_time(step, iters, warmup=2):
    """Median milliseconds of `step` over iters runs, timed with CUDA events after warm-up."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def cuda_peak(step):
    """Peak memory of one step above what was allocated before it, in GiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 30


def gpu_bench(shapes, Ns, iters, response_frac):
    torch.backends.cuda.matmul.allow_tf32 = False
    paths = ["floor", "eager", "compile", "chunked", "triton"]
    try:
        import liger_kernel  # noqa: F401
        paths.append("liger")
    except ImportError:
        print("(liger-kernel not installed: its column is skipped)")
    compiled = torch.compile(naive_sequence_logprob)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16, fwd+bwd ORPO, "
          f"response_frac {response_frac}, median of {iters}")
    print(f"{'head':10s} {'N':>6s} {'path':8s} {'ms':>8s} {'x floor':>8s} {'peak GiB':>9s} {'% eager mem':>11s}")
    for name, V, d in shapes:
        for N in Ns:
            rows = {}
            for path in paths:
                h, w, y, m = make_inputs(N, V, d, torch.bfloat16, "cuda", response_frac=response_frac)

                def step(p=path):
                    h.grad = w.grad = None
                    if p == "liger":
                        liger_step(h, w, y, m)
                    else:
                        orpo_step(p, h, w, y, m, compiled)
                try:
                    ms = cuda_time(step, iters)
                    rows[path] = (ms, cuda_peak(step))
                except torch.OutOfMemoryError:
                    rows[path] = (float("nan"), float("nan"))
                del h, w, y, m, step
                torch.cuda.empty_cache()
            for path, (ms, peak) in rows.items():
                print(f"{name:10s} {N:6d} {path:8s} {ms:8.2f} {ms / rows['floor'][0]:8.2f} "
                      f"{peak:9.2f} {100 * peak / rows['eager'][1]:10.1f}%", flush=True)


def sweep(V, d, N, iters):
    """Time each kernel alone at one shape for a few tile shapes; prints TFLOP/s (2 N V d per kernel)."""
    import kernels.seq_logprob as sl
    torch.backends.cuda.matmul.allow_tf32 = False
    configs = [dict(BLOCK_M=bm, BLOCK_V=bv, BLOCK_D=bd, num_warps=nw, num_stages=ns)
               for bm, bv, bd, nw, ns in [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (256, 128, 64, 8, 3),
                                          (256, 128, 64, 8, 4), (128, 128, 64, 8, 3), (128, 128, 64, 8, 4),
                                          (128, 256, 32, 8, 4), (128, 128, 64, 4, 3)]]
    h, w, y, _ = make_inputs(N, V, d, torch.bfloat16, "cuda")
    h, w, y = h.detach().reshape(-1, d), w.detach(), y.reshape(-1)
    C, flop = h.shape[0], 2 * h.shape[0] * V * d
    g = torch.randn(C, device="cuda")
    lp_ref, lse_ref = sl._fwd_chunk_torch(h, w, y, torch.empty(C * V, device="cuda"))
    cols = sl.vocab_slices(V, C, sl.default_chunk(V, h.device))[0][1]
    buf = torch.empty(C * cols, dtype=h.dtype, device="cuda")
    mm = cuda_time(lambda: h @ w.t(), iters)
    print(f"sweep: V={V} d={d} tokens={C}; cuBLAS h @ W^T: {mm:.2f} ms = {flop / mm / 1e9:.0f} TFLOP/s")
    print(f"{'BM':>4s} {'BV':>4s} {'BD':>4s} {'warps':>5s} {'stages':>6s} {'fwd ms':>8s} {'TFLOP/s':>8s} "
          f"{'bwd-tile ms':>11s} {'TFLOP/s':>8s} {'fwd err':>8s}")
    for cfg in configs:
        sl.GPU_BLOCKS["fwd"], sl.GPU_BLOCKS["bwd"] = cfg, dict(cfg, GROUP_M=8)
        try:
            lp, _ = sl._fwd_triton(h, w, y)
            err = ((lp - lp_ref).abs().max() / lp_ref.abs().max()).item()
            f_ms = cuda_time(lambda: sl._fwd_triton(h, w, y), iters)
            b_ms = cuda_time(lambda: sl._dlogits_slice_triton(h, w[:cols], y, lse_ref, g, buf), iters)
            b_ms *= V / cols                                           # all slices of the vocabulary
            print(f"{cfg['BLOCK_M']:4d} {cfg['BLOCK_V']:4d} {cfg['BLOCK_D']:4d} {cfg['num_warps']:5d} "
                  f"{cfg['num_stages']:6d} {f_ms:8.2f} {flop / f_ms / 1e9:8.0f} {b_ms:11.2f} "
                  f"{flop / b_ms / 1e9:8.0f} {err:8.1e}", flush=True)
        except Exception as e:  # a tile that does not fit in shared memory, say
            print(f"{cfg}: {type(e).__name__}: {str(e)[:120]}", flush=True)


def profile(V, d, N):
    """Where one Triton fwd+bwd step's GPU time goes, kernel by kernel."""
    from torch.profiler import ProfilerActivity, profile as prof
    h, w, y, m = make_inputs(N, V, d, torch.bfloat16, "cuda", response_frac=1.0)

    def step():
        h.grad = w.grad = None
        orpo_step("triton", h, w, y, m)
    cuda_time(step, 1)
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        step()
        torch.cuda.synchronize()
    print(f"profile: one triton fwd+bwd step, V={V} d={d} N={N}")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--cpu_memory", action="store_true", help="run the CPU peak-memory comparison "
                    "(what runs anyway where torch sees no CUDA GPU)")
    ap.add_argument("--N", type=int, default=4096, help="tokens (CPU memory mode) (default: %(default)s)")
    ap.add_argument("--V", type=int, default=32000, help="vocabulary (CPU memory mode) (default: %(default)s)")
    ap.add_argument("--d", type=int, default=512, help="hidden size (CPU memory mode) (default: %(default)s)")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per path, median taken (GPU) (default: %(default)s)")
    ap.add_argument("--Ns", default="2048,8192,16384", help="comma-separated token counts (GPU) (default: %(default)s)")
    ap.add_argument("--heads", default="llama3-8b,mistral-7b", help="comma-separated heads (GPU): "
                    + ", ".join(f"{k} (V={v}, d={d})" for k, (v, d) in HEADS.items())
                    + " (default: %(default)s)")
    ap.add_argument("--response_frac", type=float, default=1.0,
                    help="fraction of each sequence that is response (GPU); the rest is masked prompt "
                    "(default: %(default)s)")
    ap.add_argument("--sweep", action="store_true", help="time the Triton kernels' tile shapes (GPU; "
                    "llama3-8b's head at 8192 tokens: --heads, --Ns, --response_frac unused)")
    ap.add_argument("--profile", action="store_true", help="per-kernel GPU time of one Triton step (GPU; "
                    "the same shape as --sweep)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        cpu_memory_child(a._child, a.N, a.V, a.d)
    elif a.cpu_memory or not torch.cuda.is_available():
        cpu_memory(a.N, a.V, a.d)
    elif a.sweep:
        sweep(*HEADS["llama3-8b"], N=8192, iters=a.iters)
    elif a.profile:
        profile(*HEADS["llama3-8b"], N=8192)
    else:
        gpu_bench([(k, *HEADS[k]) for k in a.heads.split(",")], [int(n) for n in a.Ns.split(",")],
                  a.iters, a.response_frac)
