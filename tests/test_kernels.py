"""Kernels against their references. On the CPU the Triton kernels run in the interpreter
(conftest.py sets TRITON_INTERPRET=1), so shapes stay small but awkward: vocab not a multiple of
the block, d not a power of two, fully masked rows, a single token, float32 and bfloat16."""
import pytest
import torch
from hypothesis import given, strategies as st

from kernels.odds_ratio import odds_ratio_loss, odds_ratio_reference
from kernels.seq_logprob import TokenLogprob, naive_sequence_logprob, sequence_logprob

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}   # relative, as the issue states


def inputs(B, T, d, V, dtype, seed, p_mask=0.6, masked_row=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, d, generator=g).to(dtype).to(DEVICE).requires_grad_()
    w = (torch.randn(V, d, generator=g) * d ** -0.5 * 3).to(dtype).to(DEVICE).requires_grad_()
    y = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    m = (torch.rand(B, T, generator=g) < p_mask).float().to(DEVICE)
    if masked_row:
        m[0] = 0
    return h, w, y, m


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-6)).item()


def grads(out, h, w, upstream):
    return torch.autograd.grad((out * upstream).sum(), [h, w])


shapes = st.tuples(st.integers(1, 3), st.integers(1, 9), st.sampled_from([16, 24, 40, 64]),
                   st.sampled_from([37, 64, 77, 130]))


@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       reduction=st.sampled_from(["sum", "mean", "none"]), seed=st.integers(0, 10_000),
       masked_row=st.booleans(), chunk=st.integers(1, 16))
def test_triton_matches_reference(shape, dtype, reduction, seed, masked_row, chunk):
    B, T, d, V = shape
    h, w, y, m = inputs(B, T, d, V, dtype, seed, masked_row=masked_row)
    out_t = sequence_logprob(h, w, y, m, reduction, backend="triton", chunk_size=chunk)
    out_r = sequence_logprob(h, w, y, m, reduction, backend="torch", chunk_size=16)
    up = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    assert rel_err(out_t, out_r) <= TOL[dtype]
    for gt, gr in zip(grads(out_t, h, w, up), grads(out_r, h, w, up)):
        assert torch.isfinite(gt).all()
        assert rel_err(gt, gr) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_many_blocks(dtype):
    """Enough tokens for several groups of token blocks in the backward's rasterized grid (and, on
    a GPU, several vocabulary spans in the forward), with a vocabulary no block size divides."""
    h, w, y, m = inputs(4, 70, 64, 1000 if DEVICE == "cuda" else 200, dtype, 3, p_mask=0.8)
    out_t = sequence_logprob(h, w, y, m, "sum", backend="triton", chunk_size=40)
    out_r = sequence_logprob(h, w, y, m, "sum", backend="torch")
    up = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    assert rel_err(out_t, out_r) <= TOL[dtype]
    for gt, gr in zip(grads(out_t, h, w, up), grads(out_r, h, w, up)):
        assert rel_err(gt, gr) <= TOL[dtype]


@given(shape=shapes, reduction=st.sampled_from(["sum", "mean", "none"]), seed=st.integers(0, 10_000),
       chunk=st.integers(1, 20))
def test_reference_matches_float64_log_softmax(shape, reduction, seed, chunk):
    B, T, d, V = shape
    h, w, y, m = inputs(B, T, d, V, torch.float32, seed, masked_row=seed % 3 == 0)
    out = sequence_logprob(h, w, y, m, reduction, backend="torch", chunk_size=chunk)
    ref = naive_sequence_logprob(h, w, y, m.double(), reduction, dtype=torch.float64)
    assert rel_err(out, ref) <= 1e-5
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE)
    for ga, gb in zip(grads(out, h, w, up.float()), grads(ref, h, w, up)):
        assert rel_err(ga, gb) <= 1e-5


def test_single_token_and_fully_masked():
    h, w, y, m = inputs(1, 1, 40, 77, torch.float32, 0, p_mask=2.0)
    for b in ("triton", "torch"):
        lp = sequence_logprob(h, w, y, m, "mean", backend=b)
        ref = torch.log_softmax(h[0, 0] @ w.t(), -1)[y[0, 0]]
        assert abs(lp.item() - ref.item()) < 1e-5
    m0 = torch.zeros_like(m)
    for b in ("triton", "torch"):
        for red in ("sum", "mean", "none"):
            out = sequence_logprob(h, w, y, m0, red, backend=b)
            assert (out == 0).all()
            gh, gw = torch.autograd.grad(out.sum(), [h, w], allow_unused=True)
            assert gh is None or (gh == 0).all()


def test_gradcheck_reference_float64():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(11, 7, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: TokenLogprob.apply(a, b, y, "torch", 2), (h, w))


def test_never_holds_full_logits(monkeypatch):
    """The torch path's matmuls never produce more than a chunk x V tile of logits at once: forward
    in token chunks, backward in vocabulary slices that together cover the vocabulary once."""
    import kernels.seq_logprob as sl
    fwd, bwd = [], []
    real_f, real_b = sl._fwd_chunk_torch, sl._dlogits_slice_torch
    monkeypatch.setattr(sl, "_fwd_chunk_torch", lambda h, w, *a: fwd.append(h.shape[0]) or real_f(h, w, *a))
    monkeypatch.setattr(sl, "_dlogits_slice_torch",
                        lambda h, w, *a: bwd.append((h.shape[0], w.shape[0])) or real_b(h, w, *a))
    h, w, y, m = inputs(2, 9, 16, 37, torch.float32, 1, p_mask=2.0)
    sequence_logprob(h, w, y, m, "sum", backend="torch", chunk_size=4).sum().backward()
    assert max(fwd) == 4 and sum(fwd) == 18
    assert all(c * v <= 4 * 37 for c, v in bwd) and sum(v for _, v in bwd) == 37 and len(bwd) > 1


# -- odds ratio ---------------------------------------------------------------------------------
logps = st.floats(-1e4, -1e-7, allow_nan=False) | st.just(0.0) | st.just(-1e-7)


@given(lw=st.lists(logps, min_size=1, max_size=9), ll=st.lists(logps, min_size=9, max_size=9),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_odds_ratio_finite_and_kernel_matches_reference(lw, ll, dtype):
    aw = torch.tensor(lw).to(dtype).to(DEVICE).requires_grad_()
    al = torch.tensor(ll[:len(lw)]).to(dtype).to(DEVICE).requires_grad_()
    out = {}
    for b in ("triton", "torch"):
        loss, z = odds_ratio_loss(aw, al, backend=b)
        gw, gl = torch.autograd.grad(loss.sum(), [aw, al])
        for t in (loss, z, gw, gl):
            assert torch.isfinite(t.float()).all()
        out[b] = (loss, z, gw, gl)
    for t, r in zip(out["triton"], out["torch"]):
        # the reference adds float32 rounding; compare relative to magnitude, elementwise
        assert torch.allclose(t.float(), r.float(), rtol=1e-4, atol=1e-4)


@given(a=st.floats(-50, -1e-6), b=st.floats(-50, -1e-6))
def test_odds_ratio_matches_float64_formula(a, b):
    import math
    lo = lambda x: x - math.log(1 - math.exp(x))  # noqa: E731
    z64 = lo(a) - lo(b)
    for be in ("triton", "torch"):
        _, z = odds_ratio_loss(torch.tensor([a], device=DEVICE), torch.tensor([b], device=DEVICE), backend=be)
        assert abs(z.item() - z64) <= 1e-5 * max(1.0, abs(z64)) + 2e-6 * max(abs(lo(a)), abs(lo(b)))


def test_odds_ratio_z_gradient_flows():
    aw = torch.tensor([-0.3, -2.0], device=DEVICE, requires_grad=True)
    al = torch.tensor([-1.0, -0.1], device=DEVICE, requires_grad=True)
    for be in ("triton", "torch"):
        _, z = odds_ratio_loss(aw, al, backend=be)
        gw, gl = torch.autograd.grad(z.sum(), [aw, al])
        # d z / d a = 1 / (1 - e^a), derived by hand
        assert torch.allclose(gw, 1 / (1 - torch.exp(aw.detach())), rtol=1e-5)
        assert torch.allclose(gl, -1 / (1 - torch.exp(al.detach())), rtol=1e-5)


def test_reference_where_branches_do_not_poison_gradient():
    a = torch.tensor([0.0, -1e-7, -1e4], requires_grad=True)
    loss, _ = odds_ratio_reference(a, torch.full((3,), -1.0))
    (g,) = torch.autograd.grad(loss.sum(), [a])
    assert torch.isfinite(g).all()
