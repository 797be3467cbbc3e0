"""
Fused sequence log-probabilities: from the last hidden states and the LM-head weight straight to
per-sequence log p(response | prompt), without ever holding the (tokens x vocab) logits.

    lp_t   = h_t . W[y_t] - logsumexp_v(h_t . W[v])            (METHODS.md, "Sequence log-probabilities")
    sum    : logp_sum[b]  = sum_t mask[b,t] * lp_t              (DPO, IPO, Self-Judge, OSP)
    mean   : logp_mean[b] = logp_sum[b] / sum_t mask[b,t]       (ORPO; a fully masked row gives 0)
    none   : lp_t where mask, 0 elsewhere                       (per token)

`targets[b, t]` is the token that `hidden[b, t]` predicts (input ids shifted left by one).

How the memory is kept down (the design choice, frankly):
- Only masked-in tokens are computed at all: prompt and padding rows are dropped before any matmul.
- Forward: the Triton kernel `_fwd_kernel` walks the vocabulary in BLOCK_V tiles for a block of
  BLOCK_M tokens, computes each logits tile with tl.dot (float32 accumulation), and keeps an online
  logsumexp (running max m and scaled sum s) plus the target logit. Logits are never written out:
  forward memory is O(tokens), not O(tokens x vocab).
- Backward recomputes. d lp_t / d logits = onehot(y_t) - softmax_t, scaled by the upstream gradient.
  For a chunk of tokens, `_bwd_kernel` recomputes the logits tiles and writes that gradient (chunk x
  V); two cuBLAS matmuls turn it into d hidden = dlogits @ W and d W += dlogits^T @ h. So the peak is
  one chunk's dlogits, and the price is a fourth matmul (the recompute) on top of the three a plain
  implementation needs. We pay it because the upstream gradient is not known in forward: these
  log-probs feed arbitrary losses (DPO, SPCE, the conjoined ORPO term), so we cannot fold the loss's
  gradient into the forward pass the way a fixed cross-entropy kernel can.
- The torch reference path (`backend="torch"`, and CPU training) runs the very same chunked
  algorithm with torch ops per chunk, so CPU training never holds full logits either.
- The weight gradient is accumulated in float32 across chunks, whatever the input dtype.

Under TRITON_INTERPRET=1 (CPU tests) the interpreter's bf16 tl.dot is wrong (numpy has no bf16),
so there the tiles are upcast to float32 before the dot (the UPCAST flag); on a GPU they are not.
"""
import functools
import os

import torch

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # the torch path needs no Triton
    HAS_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def choose_backend(t, backend=None):
    """'triton' or 'torch'. Order: explicit argument, NANOALIGN_KERNELS env var, then the device."""
    b = backend or os.environ.get("NANOALIGN_KERNELS", "auto")
    if b not in ("auto", "triton", "torch"):
        raise ValueError(f"kernel backend must be auto, triton or torch, got {b!r}")
    if b == "auto":
        b = "triton" if HAS_TRITON and t.is_cuda else "torch"
    if b == "triton" and not HAS_TRITON:
        raise RuntimeError("backend 'triton' requested but triton is not installed")
    if b == "triton" and not (t.is_cuda or INTERPRET):
        raise RuntimeError("backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)")
    return b


def default_chunk(V, device):
    """Rows per chunk, so that one chunk's (rows x V) float32 tile stays near 32 MiB (256 on GPU)."""
    budget = (1 << 26) if device.type == "cuda" else (1 << 23)
    return max(16, budget // V)


# ---------------------------------------------------------------------------------------------
# The torch reference of one chunk (also the CPU training path)
# ---------------------------------------------------------------------------------------------
def _compute_dtype(h):
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def _scratch(h, w, chunk):
    """One (chunk, V) tile for every chunk of a call. Allocating a fresh 32 MiB tile per chunk let
    glibc's heap grow and fragment (its mmap threshold rises after the first free), so peak RSS
    wandered between 9% and 22% of eager's; one reused tile keeps it flat."""
    return torch.empty(min(chunk, h.shape[0]), w.shape[0], dtype=_compute_dtype(h), device=h.device)


def _logits_into(h, w, buf):
    cd = _compute_dtype(h)
    return torch.mm(h.to(cd), w.to(cd).t(), out=buf[:h.shape[0]])      # (C, V), in the tile


def _fwd_chunk_torch(h, w, y, buf):
    """h (C, d), w (V, d), y (C,) -> (lp (C,), lse (C,)), in float32 (float64 for float64 input).
    buf: the scratch tile (`_scratch`), overwritten."""
    logits = _logits_into(h, w, buf)
    picked = logits.gather(1, y[:, None]).squeeze(1)
    top = logits.amax(-1)                                               # logsumexp, in place:
    lse = top + logits.sub_(top[:, None]).exp_().sum(-1).log()          # no second (C, V) tensor
    return picked - lse, lse


def _dlogits_chunk_torch(h, w, y, lse, g, buf):
    """d(sum_t g_t lp_t)/d logits for one chunk: g_t * (onehot(y_t) - softmax_t), (C, V)."""
    cd = _compute_dtype(h)
    d = _logits_into(h, w, buf)                                         # (C, V), recomputed
    d.sub_(lse[:, None]).exp_().mul_(-g[:, None].to(cd))                # in place: one tile alive
    d[torch.arange(len(y), device=y.device), y] += g.to(cd)
    return d


# ---------------------------------------------------------------------------------------------
# The Triton kernels
# ---------------------------------------------------------------------------------------------
if HAS_TRITON:
    @triton.jit
    def _logits_tile(H, W, rows, cols, rmask, cmask, D, stride_h, stride_w,
                     BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr):
        """(BLOCK_M, BLOCK_V) float32 tile of h[rows] @ W[cols]^T, accumulated over D in BLOCK_D steps."""
        acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            dmask = dd < D
            h = tl.load(H + rows[:, None] * stride_h + dd[None, :],
                        mask=rmask[:, None] & dmask[None, :], other=0.0)
            w = tl.load(W + cols[:, None] * stride_w + dd[None, :],
                        mask=cmask[:, None] & dmask[None, :], other=0.0)
            if UPCAST:
                h, w = h.to(tl.float32), w.to(tl.float32)
            acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _fwd_kernel(
        H,            # (C, D) hidden states of the selected tokens, row stride stride_h
        W,            # (V, D) LM-head weight, row stride stride_w
        Y,            # (C,) int64 target ids
        LP,           # (C,) float32 out: log p(y_t)
        LSE,          # (C,) float32 out: logsumexp of the row's logits (saved for backward)
        C, V, D, stride_h, stride_w,
        BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < C
        y = tl.load(Y + rows, mask=rmask, other=0)
        m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)   # running max
        s = tl.zeros((BLOCK_M,), dtype=tl.float32)                  # running sum of exp(x - m)
        tgt = tl.zeros((BLOCK_M,), dtype=tl.float32)                # the target's logit
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            cmask = cols < V
            x = _logits_tile(H, W, rows, cols, rmask, cmask, D, stride_h, stride_w,
                             BLOCK_M, BLOCK_V, BLOCK_D, UPCAST, PRECISION)
            x = tl.where(cmask[None, :], x, float("-inf"))
            m_new = tl.maximum(m, tl.max(x, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
            m = m_new
            tgt += tl.sum(tl.where(cols[None, :] == y[:, None], x, 0.0), axis=1)
        lse = m + tl.log(s)
        tl.store(LP + rows, tgt - lse, mask=rmask)
        tl.store(LSE + rows, lse, mask=rmask)

    @triton.jit
    def _bwd_kernel(
        H, W, Y,      # as in _fwd_kernel
        LSE,          # (C,) float32 logsumexp from the forward pass
        G,            # (C,) float32 upstream gradient d loss / d lp_t
        DL,           # (C, V) out: d loss / d logits, row stride stride_dl
        C, V, D, stride_h, stride_w, stride_dl,
        BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        rmask, cmask = rows < C, cols < V
        x = _logits_tile(H, W, rows, cols, rmask, cmask, D, stride_h, stride_w,
                         BLOCK_M, BLOCK_V, BLOCK_D, UPCAST, PRECISION)
        lse = tl.load(LSE + rows, mask=rmask, other=0.0)
        g = tl.load(G + rows, mask=rmask, other=0.0)
        y = tl.load(Y + rows, mask=rmask, other=-1)
        p = tl.exp(x - lse[:, None])
        d = g[:, None] * (tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - p)
        tl.store(DL + rows[:, None] * stride_dl + cols[None, :], d.to(DL.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])


def _blocks(h):
    # 16 is tl.dot's minimum; small blocks keep the interpreter quick in tests
    if INTERPRET:
        return dict(BLOCK_M=16, BLOCK_V=32, BLOCK_D=32)
    return dict(BLOCK_M=64, BLOCK_V=128, BLOCK_D=64, num_warps=8)


def _flags(h):
    return dict(UPCAST=INTERPRET, PRECISION="ieee" if h.dtype == torch.float32 else "tf32")


def _fwd_chunk_triton(h, w, y):
    C, D = h.shape
    lp = torch.empty(C, dtype=torch.float32, device=h.device)
    lse = torch.empty_like(lp)
    b = _blocks(h)
    _fwd_kernel[(triton.cdiv(C, b["BLOCK_M"]),)](h, w, y, lp, lse, C, w.shape[0], D, h.stride(0),
                                                 w.stride(0), **b, **_flags(h))
    return lp, lse


def _dlogits_chunk_triton(h, w, y, lse, g):
    C, D = h.shape
    V = w.shape[0]
    # bf16/fp16 gradients stay in the input dtype (the matmuls after this run in it)
    dl = torch.empty(C, V, dtype=h.dtype, device=h.device)
    b = _blocks(h)
    grid = (triton.cdiv(C, b["BLOCK_M"]), triton.cdiv(V, b["BLOCK_V"]))
    _bwd_kernel[grid](h, w, y, lse, g.float().contiguous(), dl, C, V, D, h.stride(0), w.stride(0),
                      dl.stride(0), **b, **_flags(h))
    return dl


# ---------------------------------------------------------------------------------------------
# autograd.Function: chunking, shared by both backends
# ---------------------------------------------------------------------------------------------
class TokenLogprob(torch.autograd.Function):
    """lp (C,) for C selected tokens: h (C, d), w (V, d), y (C,). Chunked over tokens."""

    @staticmethod
    def forward(ctx, h, w, y, backend, chunk):
        h, w = h.contiguous(), w.contiguous()
        if backend == "triton":
            fwd = _fwd_chunk_triton
        else:
            fwd = functools.partial(_fwd_chunk_torch, buf=_scratch(h, w, chunk))
        outs = [fwd(h[s:s + chunk], w, y[s:s + chunk]) for s in range(0, h.shape[0], chunk)]
        cd = _compute_dtype(h)
        lp = torch.cat([o[0] for o in outs]) if outs else h.new_zeros(0, dtype=cd)
        lse = torch.cat([o[1] for o in outs]) if outs else h.new_zeros(0, dtype=cd)
        ctx.save_for_backward(h, w, y, lse)
        ctx.backend, ctx.chunk = backend, chunk
        return lp.to(cd)

    @staticmethod
    def backward(ctx, g):
        h, w, y, lse = ctx.saved_tensors
        if ctx.backend == "triton":
            dlogits = _dlogits_chunk_triton
        else:
            dlogits = functools.partial(_dlogits_chunk_torch, buf=_scratch(h, w, ctx.chunk))
        cd = _compute_dtype(h)
        dh = torch.empty_like(h)
        dw = torch.zeros(w.shape, dtype=cd, device=w.device)
        for s in range(0, h.shape[0], ctx.chunk):
            e = s + ctx.chunk
            dl = dlogits(h[s:e], w, y[s:e], lse[s:e], g[s:e])             # (c, V)
            dh[s:e] = (dl @ w.to(dl.dtype)).to(h.dtype)                   # (c, d)
            if dl.dtype == cd:   # accumulate in place: no (V, d) temporary per chunk
                dw.addmm_(dl.t(), h[s:e].to(cd))                          # (V, d)
            else:                # bf16/fp16 dlogits from the Triton path: matmul, then upcast
                dw += (dl.t() @ h[s:e]).to(cd)
        return dh, dw.to(w.dtype), None, None, None


def sequence_logprob(hidden, weight, targets, mask, reduction="sum", backend=None, chunk_size=None):
    """
    hidden (B, T, d) or (N, d); weight (V, d); targets and mask shaped like hidden without d.
    Returns float32 (float64 for float64 input): (B,) for sum/mean of (B, T) input, a scalar for
    (N, d) input, and the per-token values shaped like `targets` for reduction="none".
    """
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction must be sum, mean or none, got {reduction!r}")
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d)
    y = targets.reshape(-1)
    keep = mask.reshape(-1).bool()
    sel = keep.nonzero().squeeze(1)                                      # selected token indices
    b = choose_backend(hidden, backend)
    chunk = chunk_size or default_chunk(weight.shape[0], hidden.device)
    lp = TokenLogprob.apply(h.index_select(0, sel), weight, y.index_select(0, sel).long(), b, chunk)
    if reduction == "none":
        return lp.new_zeros(y.shape[0]).index_add(0, sel, lp).view(targets.shape)
    if targets.dim() == 1:                                               # (N,) -> scalar
        total = lp.sum()
        return total if reduction == "sum" else total / keep.sum().clamp(min=1)
    B, T = targets.shape
    total = lp.new_zeros(B).index_add(0, sel // T, lp)                   # (B,)
    if reduction == "sum":
        return total
    return total / mask.reshape(B, T).sum(1).clamp(min=1).to(total.dtype)


def naive_sequence_logprob(hidden, weight, targets, mask, reduction="sum", dtype=None):
    """The plain PyTorch way: full logits, log_softmax, gather. For tests and the benchmark's 'eager'."""
    logits = hidden @ weight.t() if dtype is None else hidden.to(dtype) @ weight.to(dtype).t()
    lp = torch.log_softmax(logits.float() if dtype is None else logits, -1)
    lp = lp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1) * mask
    if reduction == "none":
        return lp
    total = lp.sum(-1)
    return total if reduction == "sum" else total / mask.sum(-1).clamp(min=1)
