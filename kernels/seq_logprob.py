"""
Fused sequence log-probabilities: from the last hidden states and the LM-head weight straight to
per-sequence log p(response | prompt), without ever holding the (tokens x vocab) logits.

    lp_t   = h_t . W[y_t] - logsumexp_v(h_t . W[v])            (docs/methods.md#sequence-log-probabilities)
    sum    : logp_sum[b]  = sum_t mask[b,t] * lp_t              (DPO, IPO, Self-Judge, OSP)
    mean   : logp_mean[b] = logp_sum[b] / sum_t mask[b,t]       (ORPO; a fully masked row gives 0)
    none   : lp_t where mask, 0 elsewhere                       (per token)

`targets[b, t]` is the token that `hidden[b, t]` predicts (input ids shifted left by one).

How the memory is kept down (the design choice, frankly):
- Only masked-in tokens are computed at all: prompt and padding rows are dropped before any matmul.
- Forward: the Triton kernel `_fwd_kernel` walks the vocabulary in BLOCK_V tiles for a block of
  BLOCK_M tokens, computes each logits tile with tl.dot (float32 accumulation), and keeps an online
  logsumexp (running max m and scaled sum s) plus the target logit. Logits are never written out:
  forward memory is O(tokens), not O(tokens x vocab). A block of tokens is too little work for a
  whole GPU when there are few tokens, so the vocabulary is also split across SPLIT programs
  (split-K style); each writes its partial (m, s, target) and `_combine` merges them in torch.
- Backward recomputes. d lp_t / d logits = onehot(y_t) - softmax_t, scaled by the upstream gradient.
  For a slice of the vocabulary, `_bwd_kernel` recomputes those logits columns for every token and
  writes that gradient (tokens x slice); two cuBLAS matmuls turn it into d W[slice] = dlogits^T @ h
  (written into its rows of d W, no accumulator; through a float32 slice-sized temporary where W is
  bf16 and dlogits float32, as on the torch path; not made at all for a frozen head, as under LoRA)
  and d hidden += dlogits @ W[slice] (a float32 (tokens x d) accumulator, small). Slicing the
  vocabulary rather than the tokens matters: a token-chunked backward must accumulate d W, a (V x d)
  float32 tensor (2 GiB for Llama-3's head), across chunks; a vocabulary-sliced one accumulates only
  d hidden. The peak is one slice's
  dlogits, and the price is a fourth matmul (the recompute) on top of the three a plain
  implementation needs. We pay it because the upstream gradient is not known in forward: these
  log-probs feed arbitrary losses (DPO, SPCE, the conjoined ORPO term), so we cannot fold the loss's
  gradient into the forward pass the way a fixed cross-entropy kernel can.
- The torch reference path (`backend="torch"`, and CPU training) runs the very same algorithm with
  torch ops per tile (token chunks forward, vocabulary slices backward), so CPU training never holds
  full logits either. `chunk_size` (rows per forward chunk) sets the tile budget, chunk_size x V
  elements; a backward slice gets budget / tokens columns. With bf16 input (CPU training under
  autocast) the products are bf16, as on the GPU: on the CPU one ran 2-3x as fast as a float32
  product of the same operands. A bf16 product rounds its logits to bf16 at its end, +-0.06 at a
  real model's 20-30, so both passes shift it before that rounding (addmm), where the values that
  weigh then sit near 0: the forward by each row's max, found by a first product, the backward by
  the forward's log-sum-exp. Log-sum-exp and log-probs stay float32.

Under TRITON_INTERPRET=1 (CPU tests) the interpreter's bf16 tl.dot is wrong (numpy has no bf16),
so there the tiles are upcast to float32 before the dot (the UPCAST flag); on a GPU they are not.

Tested: the torch path against the plain full-logits formula (`naive_sequence_logprob`), values and
gradients, in tests/kernels/test_reference.py; the Triton kernels against the torch path, the same
upstream gradient through both, in tests/kernels/test_triton.py (test_triton_matches_reference).
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
    """Rows per forward chunk, so that one (rows x V) float32 tile stays near 32 MiB (256 on GPU)."""
    budget = (1 << 26) if device.type == "cuda" else (1 << 23)
    return max(16, budget // V)


def vocab_slices(V, C, chunk):
    """The backward's vocabulary slices: (start, end) pairs whose (C x slice) tile fits chunk x V.
    Widths are a multiple of 128 where they can be: a (C x 8191) bf16 tile has an odd row stride,
    which costs the kernel's stores their vectors and cuBLAS its fastest kernels."""
    cols = max(1, chunk * V // max(C, 1))
    cols = cols // 128 * 128 if cols >= 128 else cols
    return [(v0, min(v0 + cols, V)) for v0 in range(0, V, cols)]


# ---------------------------------------------------------------------------------------------
# The torch reference of one tile (also the CPU training path)
# ---------------------------------------------------------------------------------------------
def _compute_dtype(h):
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def _scratch(numel, h):
    """One tile for every chunk of a call. Allocating a fresh 32 MiB tile per chunk let glibc's
    heap grow and fragment (its mmap threshold rises after the first free), so peak RSS wandered
    between 9% and 22% of eager's; one reused tile keeps it flat."""
    return torch.empty(numel, dtype=_compute_dtype(h), device=h.device)


def _logits_into(h, w, buf):
    cd = _compute_dtype(h)
    out = buf[:h.shape[0] * w.shape[0]].view(h.shape[0], w.shape[0])    # (C, V) view of the tile
    return torch.mm(h.to(cd), w.to(cd).t(), out=out)


def _fwd_chunk_torch(h, w, y, buf):
    """h (C, d), w (V, d), y (C,) -> (lp (C,), lse (C,)), in float32 (float64 for float64 input).
    buf: the scratch tile (`_scratch`), overwritten."""
    logits = _logits_into(h, w, buf)
    picked = logits.gather(1, y[:, None]).squeeze(1)
    top = logits.amax(-1)                                               # logsumexp, in place:
    lse = top + logits.sub_(top[:, None]).exp_().sum(-1).log()          # no second (C, V) tensor
    return picked - lse, lse


def _dlogits_slice_torch(h, w, y, lse, g, buf):
    """d(sum_t g_t lp_t)/d logits[:, slice] = g_t * (onehot(y_t) - softmax_t), (C, Vs).
    w is the slice's rows W[v0:v1], y the targets shifted by -v0 (out of range: no one-hot);
    g (C,) is already in the compute dtype."""
    d = _logits_into(h, w, buf)                                         # (C, Vs), recomputed
    return _onehot_minus_softmax_(d.sub_(lse[:, None]), y, g)           # in place: one tile alive


def _onehot_minus_softmax_(d, y, g):
    """d (C, Vs), the slice's log-softmax, overwritten by g_t * (onehot(y_t) - softmax_t)."""
    d.exp_().mul_(-g[:, None])
    hit = ((y >= 0) & (y < d.shape[1])).nonzero().squeeze(1)            # tokens whose target is here
    d[hit, y[hit]] += g[hit]
    return d


# The bf16 tiles (h and w bf16: the CPU under bf16 autocast; the module docstring says why they
# shift their products). `tile`: a bf16 tile the size of `buf`, overwritten.
def _fwd_chunk_bf16_torch(h, w, y, buf, tile):
    """As `_fwd_chunk_torch`, in two bf16 products (still faster than one float32 product and its
    float32 copy of the head): the first only for each row's max, the second shifted by it; the
    target's logit is a float32 dot of its own. bf16 rounds a value by up to 2^-8 of itself, so a
    log-prob moves from the float32 product's by at most about 2^-8 x the p-weighted distance of the
    logits from the max (at most the entropy, at most log V: tests/kernels/test_reference.py's worst
    case; on SmolLM2-135M 0.0002 on average, 2% of what rounding the operands to bf16 moved it)."""
    C, V = h.shape[0], w.shape[0]
    raw = torch.mm(h, w.t(), out=tile[:C * V].view(C, V))                # (C, V) bf16, rounded
    top = raw.amax(-1)                                                  # (C,) within a bf16 step of the max
    shifted = torch.addmm(-top[:, None], h, w.t(), out=raw)             # logits - top, rounded near 0
    lse = top.float() + buf[:C * V].view(C, V).copy_(shifted).exp_().sum(-1).log()
    picked = (h.float() * w[y].float()).sum(-1)                         # (C,) the targets' logits
    return picked - lse, lse


def _dlogits_slice_bf16_torch(h, w, y, lse, g, buf, tile):
    """As `_dlogits_slice_torch`, returned in bf16 as the Triton kernel returns it, for the two bf16
    products after it: the logits recomputed shifted by the forward's log-sum-exp, so the likely
    tokens' values sit near 0; float32 from there in `buf`, then one rounding to bf16."""
    C, Vs = h.shape[0], w.shape[0]
    lo = lse.to(h.dtype)                                                # (C,) lse as bf16 holds it
    shifted = torch.addmm(-lo[:, None], h, w.t(), out=tile[:C * Vs].view(C, Vs))   # (C, Vs) bf16
    d = buf[:C * Vs].view(C, Vs).copy_(shifted)                         # float32 from here
    _onehot_minus_softmax_(d.sub_((lse - lo.float())[:, None]), y, g)   # what rounding lse took off
    return shifted.copy_(d)                                             # (C, Vs) bf16


# ---------------------------------------------------------------------------------------------
# The Triton kernels
# ---------------------------------------------------------------------------------------------
if HAS_TRITON:
    @triton.jit
    def _logits_tile(H, W, rows, cols, rmask, cmask, D, stride_h, stride_w,
                     BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                     UPCAST: tl.constexpr, PRECISION: tl.constexpr, EVEN_D: tl.constexpr):
        """(BLOCK_M, BLOCK_V) float32 tile of h[rows] @ W[cols]^T, accumulated over D in BLOCK_D steps.
        EVEN_D (D % BLOCK_D == 0, every real model) drops the mask along D."""
        acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
        h_rows = H + rows.to(tl.int64)[:, None] * stride_h     # int64: V x d passes 2^31 for big heads
        w_rows = W + cols.to(tl.int64)[:, None] * stride_w
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            if EVEN_D:
                h = tl.load(h_rows + dd[None, :], mask=rmask[:, None], other=0.0)
                w = tl.load(w_rows + dd[None, :], mask=cmask[:, None], other=0.0)
            else:
                dmask = dd < D
                h = tl.load(h_rows + dd[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
                w = tl.load(w_rows + dd[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
            if UPCAST:
                h, w = h.to(tl.float32), w.to(tl.float32)
            acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION)
        return acc

    @triton.jit
    def _fwd_kernel(
        H,            # (C, D) hidden states of the selected tokens, row stride stride_h
        W,            # (V, D) LM-head weight, row stride stride_w
        Y,            # (C,) int64 target ids
        M,            # (SPLIT, C) float32 out: running max of this program's vocabulary span
        S,            # (SPLIT, C) float32 out: sum of exp(logit - M) over the span
        TGT,          # (SPLIT, C) float32 out: the target's logit if it lies in the span, else 0
        C, V, D, span, stride_h, stride_w,
        BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, PRECISION: tl.constexpr, EVEN_D: tl.constexpr,
    ):
        # grid (SPLIT, token blocks), the split fastest: the programs running at once share a few
        # token blocks, whose hidden states then stay in L2 while every span's W tiles stream past
        rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < C
        v_lo = tl.program_id(0) * span                             # this program's vocabulary span
        v_hi = tl.minimum(v_lo + span, V)
        y = tl.load(Y + rows, mask=rmask, other=-1)
        m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)   # running max
        s = tl.zeros((BLOCK_M,), dtype=tl.float32)                  # running sum of exp(x - m)
        tgt = tl.zeros((BLOCK_M,), dtype=tl.float32)                # the target's logit
        for v0 in range(v_lo, v_hi, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            cmask = cols < v_hi
            x = _logits_tile(H, W, rows, cols, rmask, cmask, D, stride_h, stride_w,
                             BLOCK_M, BLOCK_V, BLOCK_D, UPCAST, PRECISION, EVEN_D)
            x = tl.where(cmask[None, :], x, float("-inf"))
            m_new = tl.maximum(m, tl.max(x, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
            m = m_new
            tgt += tl.sum(tl.where(cols[None, :] == y[:, None], x, 0.0), axis=1)
        out = tl.program_id(0) * C + rows
        tl.store(M + out, m, mask=rmask)
        tl.store(S + out, s, mask=rmask)
        tl.store(TGT + out, tgt, mask=rmask)

    @triton.jit
    def _bwd_kernel(
        H, W, Y,      # as in _fwd_kernel
        LSE,          # (C,) float32 logsumexp from the forward pass
        G,            # (C,) float32 upstream gradient d loss / d lp_t
        DL,           # (C, V) out: d loss / d logits, row stride stride_dl
        C, V, D, stride_h, stride_w, stride_dl,
        BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, PRECISION: tl.constexpr, EVEN_D: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # A 1-D grid walked in groups of GROUP_M token blocks: consecutive programs take GROUP_M
        # token blocks x every vocabulary block, so the h and W tiles they share are hit in L2
        # (the usual matmul rasterization; one program per output tile, as in a GEMM).
        pid, n_m, n_v = tl.program_id(0), tl.cdiv(C, BLOCK_M), tl.cdiv(V, BLOCK_V)
        first_m = (pid // (GROUP_M * n_v)) * GROUP_M
        group = tl.minimum(n_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * n_v)) % group
        pid_v = (pid % (GROUP_M * n_v)) // group
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
        rmask, cmask = rows < C, cols < V
        x = _logits_tile(H, W, rows, cols, rmask, cmask, D, stride_h, stride_w,
                         BLOCK_M, BLOCK_V, BLOCK_D, UPCAST, PRECISION, EVEN_D)
        lse = tl.load(LSE + rows, mask=rmask, other=0.0)
        g = tl.load(G + rows, mask=rmask, other=0.0)
        y = tl.load(Y + rows, mask=rmask, other=-1)
        p = tl.exp(x - lse[:, None])
        d = g[:, None] * (tl.where(cols[None, :] == y[:, None], 1.0, 0.0) - p)
        tl.store(DL + rows.to(tl.int64)[:, None] * stride_dl + cols[None, :], d.to(DL.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])


# Tile shapes on a GPU, per kernel. `python -m bench.kernels --sweep` times alternatives.
GPU_BLOCKS = {"fwd": dict(BLOCK_M=128, BLOCK_V=256, BLOCK_D=64, num_warps=8, num_stages=3),
              "bwd": dict(BLOCK_M=128, BLOCK_V=128, BLOCK_D=64, num_warps=8, num_stages=3, GROUP_M=8)}


def _blocks(kernel):  # pragma: no mutate block (Triton path)
    # 16 is tl.dot's minimum; small blocks keep the interpreter quick in tests
    if INTERPRET:
        return dict(BLOCK_M=16, BLOCK_V=32, BLOCK_D=32, GROUP_M=2)
    return dict(GPU_BLOCKS[kernel])


def _flags(h, b):  # pragma: no mutate block (Triton path)
    return dict(UPCAST=INTERPRET, PRECISION="ieee" if h.dtype == torch.float32 else "tf32",
                EVEN_D=h.shape[1] % b["BLOCK_D"] == 0)


def _split(C, V, b, device):  # pragma: no mutate block (Triton path)
    """How many programs share the vocabulary: enough token-blocks x splits for ~4 waves of the
    GPU (2 under the interpreter, so the tests cover the merge)."""
    v_blocks = triton.cdiv(V, b["BLOCK_V"])
    if INTERPRET:
        return min(2, v_blocks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(v_blocks, triton.cdiv(4 * sms, triton.cdiv(C, b["BLOCK_M"]))))


def _combine(m, s, tgt):  # pragma: no mutate block (Triton path)
    """Merge the SPLIT partial logsumexps, each (SPLIT, C): lse = M + log sum_j s_j exp(m_j - M)."""
    top = m.amax(0)                                                     # (C,)
    lse = top + (s * torch.exp(m - top)).sum(0).log()
    return tgt.sum(0) - lse, lse


def _fwd_triton(h, w, y):  # pragma: no mutate block (Triton path)
    """h (C, d), w (V, d), y (C,) -> (lp, lse), both (C,) float32. No logits are stored."""
    (C, D), V = h.shape, w.shape[0]
    b = _blocks("fwd")
    b.pop("GROUP_M", None)                                             # the forward's grid is 2-D
    split = _split(C, V, b, h.device)
    span = triton.cdiv(triton.cdiv(V, split), b["BLOCK_V"]) * b["BLOCK_V"]
    split = triton.cdiv(V, span)                                        # no empty spans
    m, s, tgt = (torch.empty(split, C, dtype=torch.float32, device=h.device) for _ in range(3))
    _fwd_kernel[(split, triton.cdiv(C, b["BLOCK_M"]))](h, w, y, m, s, tgt, C, V, D, span, h.stride(0),
                                                       w.stride(0), **b, **_flags(h, b))
    return _combine(m, s, tgt)


def _dlogits_slice_triton(h, w, y, lse, g, buf):  # pragma: no mutate block (Triton path)
    """As `_dlogits_slice_torch`, by `_bwd_kernel`, into the (C x slice) tile `buf`. bf16/fp16
    gradients stay in the input dtype (the matmuls after this run in it)."""
    (C, D), V = h.shape, w.shape[0]                  # V: this slice's vocabulary columns
    dl = buf[:C * V].view(C, V)                      # the first C x V of the tile, as a (C, V) matrix
    b = _blocks("bwd")
    grid = (triton.cdiv(C, b["BLOCK_M"]) * triton.cdiv(V, b["BLOCK_V"]),)
    _bwd_kernel[grid](h, w, y, lse, g, dl, C, V, D, h.stride(0), w.stride(0),
                      dl.stride(0), **b, **_flags(h, b))
    return dl


# ---------------------------------------------------------------------------------------------
# autograd.Function: the tiling, shared by both backends
# ---------------------------------------------------------------------------------------------
class TokenLogprob(torch.autograd.Function):
    """lp (C,) for C selected tokens: h (C, d), w (V, d), y (C,). `chunk` rows x V is the tile budget."""

    @staticmethod
    def forward(ctx, h, w, y, backend, chunk):
        h, w = h.contiguous(), w.contiguous()
        C, V = h.shape[0], w.shape[0]
        cd = _compute_dtype(h)
        # bf16 h and w on the torch path (CPU training under autocast): the *_bf16_torch tiles
        ctx.bf16 = bf16 = backend == "torch" and h.dtype == w.dtype == torch.bfloat16
        if C == 0:
            lp = lse = h.new_zeros(0, dtype=cd)
        elif backend == "triton":
            lp, lse = _fwd_triton(h, w, y)                              # holds no tile at all
        else:                                                           # token chunks of (chunk, V)
            buf = _scratch(min(chunk, C) * V, h)
            wc = w if bf16 else w.to(cd)                                # float32 once, not once a chunk
            fwd = (functools.partial(_fwd_chunk_bf16_torch, tile=torch.empty_like(buf, dtype=h.dtype))
                   if bf16 else _fwd_chunk_torch)                       # bf16: a bf16 tile beside buf
            outs = [fwd(h[s:s + chunk], wc, y[s:s + chunk], buf) for s in range(0, C, chunk)]
            lp, lse = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        ctx.save_for_backward(h, w, y, lse)
        ctx.backend, ctx.chunk = backend, chunk
        return lp.to(cd)

    @staticmethod
    def backward(ctx, g):
        h, w, y, lse = ctx.saved_tensors
        (C, d), V = h.shape, w.shape[0]
        cd = _compute_dtype(h)
        g = g.to(cd).contiguous()                                       # (C,), read by every slice
        train_w = ctx.needs_input_grad[1]      # False for a frozen LM head (LoRA): no d W made at all
        if C == 0:
            return torch.zeros_like(h), torch.zeros_like(w) if train_w else None, None, None, None
        slices = vocab_slices(V, C, ctx.chunk)
        n = C * min(V, slices[0][1])                                    # one slice's tile
        if ctx.backend == "triton":  # pragma: no mutate (Triton and CUDA lines: docs/mutation.md)
            # bf16/fp16 dlogits: the two matmuls below run in the input dtype
            dlogits = _dlogits_slice_triton                                     # pragma: no mutate
            buf = torch.empty(n, dtype=h.dtype, device=h.device)                # pragma: no mutate
        elif ctx.bf16:                         # bf16 dlogits and bf16 matmuls, as the Triton path
            tile = torch.empty(n, dtype=h.dtype, device=h.device)
            dlogits = functools.partial(_dlogits_slice_bf16_torch, tile=tile)
            buf = _scratch(n, h)
        else:
            dlogits = _dlogits_slice_torch
            buf = _scratch(n, h)
        low = ctx.backend == "triton" or ctx.bf16                       # dlogits in h's dtype
        dh = torch.zeros(C, d, dtype=cd, device=h.device)               # the only accumulator
        dw = torch.empty_like(w) if train_w else None
        hv = h if low or h.dtype == cd else h.to(cd)                    # h in dlogits' dtype, once
        for v0, v1 in slices:
            dl = dlogits(h, w[v0:v1], y - v0, lse, g, buf)              # (C, v1 - v0)
            if train_w and dw.dtype == dl.dtype:
                torch.mm(dl.t(), hv, out=dw[v0:v1])                     # (Vs, d), straight into d W
            elif train_w:
                dw[v0:v1] = dl.t() @ hv                                 # via a float32 (Vs, d) temporary
            if dl.dtype == cd:
                dh.addmm_(dl, w[v0:v1].to(cd))                          # (C, d), in place
            elif dl.is_cuda:  # pragma: no mutate (bf16 in, float32 accumulated in place by cuBLAS)
                torch.addmm(dh, dl, w[v0:v1], out_dtype=cd, out=dh)    # pragma: no mutate
            else:             # bf16 on the CPU: oneDNN has no bf16-in, float32-out product, so a
                dh += dl @ w[v0:v1]                                     # bf16 (C, d) temporary
        return dh.to(h.dtype), dw, None, None, None


def padded_slots(cu_seqlens):
    """(slot (N,), (R, T)): where each token of R packed rows (row r = tokens cu_seqlens[r] to
    cu_seqlens[r + 1]) sits in the right-padded (R, T) grid of the same rows, T the longest row."""
    cu = cu_seqlens.long()
    lengths = cu.diff()                                                  # (R,)
    R, T = lengths.numel(), int(lengths.max()) if lengths.numel() else 0
    row = torch.repeat_interleave(torch.arange(R, device=cu.device), lengths)     # (N,)
    within = torch.arange(int(cu[-1]), device=cu.device) - cu[row]      # position in its row
    return row * T + within, torch.Size((R, T))


def sequence_logprob(hidden, weight, targets, mask, reduction="sum", backend=None, chunk_size=None,
                     cu_seqlens=None):
    """
    hidden (B, T, d) or (N, d); weight (V, d); targets and mask shaped like hidden without d; mask
    0/1 (a token is in or out: it selects tokens, and `mean` divides by its sum).
    Returns float32 whatever the input's dtype (bf16 and float16 too, on both paths), float64 for
    float64 input: (B,) for sum/mean of (B, T) input, a scalar for
    (N, d) input, and the per-token values shaped like `targets` for reduction="none".
    Packed rows (padding-free batches, nanoalign/data.py): hidden (N, d) holds R rows back to back,
    row r being tokens cu_seqlens[r]:cu_seqlens[r + 1]; sum/mean then give (R,), one per row.
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
    if sel.numel() < keep.numel():                                      # gather the response rows
        h, y = h.index_select(0, sel), y.index_select(0, sel)           # (else every row counts: no copy)
    lp = TokenLogprob.apply(h, weight, y.long(), b, chunk)
    # back into (B*T,) slots, one token each: a copy, not index_add, whose CUDA atomics would sum a
    # sequence in a different order on every run (and a GPU run could not repeat itself exactly)
    per_tok = lp.new_zeros(keep.numel()).index_copy(0, sel, lp)
    if reduction == "none":
        return per_tok.view(targets.shape)
    grid = targets.shape                                                 # (B, T): one row each
    if cu_seqlens is not None:
        # packed rows: each token back into its slot of the (R, T) padded grid of the same rows
        # (a copy, as above), so a row sums in the padded layout's order, to the same bits
        slot, grid = padded_slots(cu_seqlens)
        per_tok = per_tok.new_zeros(grid.numel()).index_copy(0, slot, per_tok)
        mask = per_tok.new_zeros(grid.numel()).index_copy(0, slot, mask.reshape(-1).to(per_tok.dtype))
    elif targets.dim() == 1:                                             # (N,) -> scalar
        total = per_tok.sum()
        return total if reduction == "sum" else total / keep.sum().clamp(min=1)
    total = per_tok.view(grid).sum(1)                                    # (B,)
    if reduction == "sum":
        return total
    return total / mask.reshape(grid).sum(1).clamp(min=1).to(total.dtype)


def naive_sequence_logprob(hidden, weight, targets, mask, reduction="sum", dtype=None):
    """The plain PyTorch way: full logits, log_softmax, gather. For tests and the benchmark's 'eager'."""
    logits = hidden @ weight.t() if dtype is None else hidden.to(dtype) @ weight.to(dtype).t()
    lp = torch.log_softmax(logits.float() if dtype is None else logits, -1)
    lp = lp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1) * mask
    if reduction == "none":
        return lp
    total = lp.sum(-1)
    return total if reduction == "sum" else total / mask.sum(-1).clamp(min=1)
