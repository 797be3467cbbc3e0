"""The torch reference paths of the kernels (kernels/seq_logprob.py, kernels/odds_ratio.py), the code
CPU training runs on, against float64 formulas: values, gradients, reductions, masking, packed rows,
the vocabulary tiles, the backend choice, and the plain log-softmax reference. They need no Triton, so
this file runs everywhere (tests/kernels/test_triton.py compares the Triton kernels with these
references)."""
import math

import pytest
import torch
from hypothesis import example, given, strategies as st

from kernels import odds_ratio as odds_mod
from kernels.odds_ratio import log1mexp, odds_ratio_loss, odds_ratio_reference
from kernels.seq_logprob import HAS_TRITON, INTERPRET, TokenLogprob, naive_sequence_logprob, sequence_logprob
from nanoalign.testing import logps
from tests.helpers import grads, kernel_inputs, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

shapes = st.tuples(st.integers(1, 3), st.integers(1, 9), st.sampled_from([16, 24, 40, 64]),
                   st.sampled_from([37, 64, 77, 130]))


def inputs(*a, **kw):
    return kernel_inputs(*a, device=DEVICE, **kw)


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


@given(n=st.integers(1, 24), d=st.sampled_from([16, 40]), V=st.sampled_from([37, 77]),
       seed=st.integers(0, 10_000), p_mask=st.sampled_from([0.2, 0.5, 0.9]))
def test_flat_input_reductions_count_only_kept_positions(n, d, V, seed, p_mask):
    """(N, d) hidden states with (N,) targets and mask: 'sum' adds the kept tokens' log-probs, 'mean'
    divides that by the number of KEPT tokens (not by N), 'none' is zero where masked."""
    h, w, y, m = inputs(1, n, d, V, torch.float32, seed, p_mask=p_mask)
    h, y, m = h[0].detach().requires_grad_(), y[0], m[0]
    m[seed % n] = 1.0                                            # at least one kept token
    lp = torch.log_softmax(h.double() @ w.double().t(), -1)[torch.arange(n), y]    # (N,) float64
    kept = m.bool()
    want = {"sum": lp[kept].sum(), "mean": lp[kept].sum() / kept.sum(), "none": torch.where(kept, lp, 0.0)}
    for reduction, expected in want.items():
        got = sequence_logprob(h, w, y, m, reduction, backend="torch")
        assert got.shape == expected.shape
        assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-5), reduction
    gh, = torch.autograd.grad(sequence_logprob(h, w, y, m, "mean", backend="torch"), [h])
    assert (gh[~kept] == 0).all()                                # masked positions get no gradient


def check_single_token_and_fully_masked(backend):
    """One kept token is its own log-softmax; a fully masked batch is zero with zero gradients
    (tests/kernels/test_triton.py runs it for Triton)."""
    h, w, y, m = inputs(1, 1, 40, 77, torch.float32, 0, p_mask=2.0)
    lp = sequence_logprob(h, w, y, m, "mean", backend=backend)
    ref = torch.log_softmax(h[0, 0] @ w.t(), -1)[y[0, 0]]
    assert abs(lp.item() - ref.item()) < 1e-5
    m0 = torch.zeros_like(m)
    for red in ("sum", "mean", "none"):
        out = sequence_logprob(h, w, y, m0, red, backend=backend)
        assert (out == 0).all()
        gh, gw = torch.autograd.grad(out.sum(), [h, w], allow_unused=True)
        assert gh is None or (gh == 0).all()


def check_frozen_head(backend):
    """An LM head that takes no gradient (LoRA freezes it) gets none, and no d W product is made for
    it (the backward made a (V, d) product per vocabulary slice for nothing); d h is the same, bit for
    bit, as with a trained head."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountProducts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
                self.shapes.append(tuple(out.shape))
            return out
    h, w, y, m = inputs(2, 5, 16, 77, torch.float32, 3)
    up = torch.randn(2, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    got = {}
    for frozen in (False, True):
        hf, wf = h.detach().requires_grad_(), w.detach().requires_grad_(not frozen)
        out = sequence_logprob(hf, wf, y, m, "sum", backend=backend, chunk_size=4)   # several slices
        with CountProducts() as count:
            (out * up).sum().backward()
        # (C, d) products are d h's, C the response tokens; the (Vs, d) ones, a slice of d W
        got[frozen] = hf.grad, wf.grad, [s for s in count.shapes if s[1] == 16 and s[0] != int(m.sum())]
    assert got[True][1] is None and got[False][1] is not None
    assert torch.equal(got[True][0], got[False][0])
    assert got[False][2] and not got[True][2], got          # d W's (Vs, d) products: only when trained


def test_a_frozen_head_gets_no_gradient_and_costs_no_product():
    check_frozen_head("torch")


def test_reference_single_token_and_fully_masked():
    check_single_token_and_fully_masked("torch")


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
@given(lw=st.lists(logps(), min_size=1, max_size=9), ll=st.lists(logps(), min_size=9, max_size=9),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_odds_ratio_reference_finite(lw, ll, dtype):
    aw = torch.tensor(lw).to(dtype).to(DEVICE).requires_grad_()
    al = torch.tensor(ll[:len(lw)]).to(dtype).to(DEVICE).requires_grad_()
    loss, z = odds_ratio_loss(aw, al, backend="torch")
    gw, gl = torch.autograd.grad(loss.sum(), [aw, al])
    for t in (loss, z, gw, gl):
        assert torch.isfinite(t.float()).all()


def check_odds_ratio_formula(a, b, backend):
    """z against log-odds(a) - log-odds(b) in float64 (tests/kernels/test_triton.py runs it for Triton)."""
    lo = lambda x: x - math.log(1 - math.exp(x))  # noqa: E731
    z64 = lo(a) - lo(b)
    _, z = odds_ratio_loss(torch.tensor([a], device=DEVICE), torch.tensor([b], device=DEVICE), backend=backend)
    assert abs(z.item() - z64) <= 1e-5 * max(1.0, abs(z64)) + 2e-6 * max(abs(lo(a)), abs(lo(b)))


def check_odds_ratio_z_gradient(backend):
    aw = torch.tensor([-0.3, -2.0], device=DEVICE, requires_grad=True)
    al = torch.tensor([-1.0, -0.1], device=DEVICE, requires_grad=True)
    _, z = odds_ratio_loss(aw, al, backend=backend)
    gw, gl = torch.autograd.grad(z.sum(), [aw, al])
    # d z / d a = 1 / (1 - e^a), derived by hand
    assert torch.allclose(gw, 1 / (1 - torch.exp(aw.detach())), rtol=1e-5)
    assert torch.allclose(gl, -1 / (1 - torch.exp(al.detach())), rtol=1e-5)


@given(a=st.floats(-50, -1e-6), b=st.floats(-50, -1e-6))
def test_odds_ratio_reference_matches_float64_formula(a, b):
    check_odds_ratio_formula(a, b, "torch")


def test_odds_ratio_reference_z_gradient():
    check_odds_ratio_z_gradient("torch")


def test_reference_where_branches_do_not_poison_gradient():
    a = torch.tensor([0.0, -1e-7, -1e4], requires_grad=True)
    loss, _ = odds_ratio_reference(a, torch.full((3,), -1.0))
    (g,) = torch.autograd.grad(loss.sum(), [a])
    assert torch.isfinite(g).all()


@given(V=st.integers(1, 5000), C=st.integers(1, 300), chunk=st.integers(1, 64))
@example(V=5, C=10, chunk=1).via("no column fits")
@example(V=100, C=1, chunk=1).via("under 128")
@example(V=256, C=1, chunk=1).via("exactly two 128s, one slice")
@example(V=300, C=1, chunk=1).via("rounded down to 256")
@example(V=1000, C=1, chunk=1).via("rounded down to 896")
def test_vocab_slices_tile_the_vocabulary_within_the_budget(V, C, chunk):
    """The backward's slices cover 0..V once, in order; each (C x width) tile fits the forward's
    chunk x V budget (a width of 1 where even one column is over it); the width is the widest such,
    rounded down to a multiple of 128 once it reaches 128."""
    from kernels.seq_logprob import vocab_slices
    s = vocab_slices(V, C, chunk)
    assert s[0][0] == 0 and s[-1][1] == V and all(a[1] == b[0] for a, b in zip(s, s[1:]))
    widths = [b - a for a, b in s]
    width = widths[0]
    assert all(w == width for w in widths[:-1]) and 0 < widths[-1] <= width
    widest = chunk * V // C                          # columns of C rows that fit in chunk x V
    if widest < 1:
        assert width == 1
    elif widest < 128:
        assert width == min(widest, V)
    elif width < V:                                  # (one slice of all V columns where V fits)
        assert width % 128 == 0 and widest - 128 < width <= widest
    else:
        assert len(s) == 1 and widest // 128 * 128 >= V


@given(dtype=st.sampled_from([torch.bfloat16, torch.float64]), seed=st.integers(0, 10_000),
       chunk=st.integers(1, 6), reduction=st.sampled_from(["sum", "mean"]))
def test_reference_gradients_in_bfloat16_and_float64(dtype, seed, chunk, reduction):
    """The torch path's backward in the dtypes CPU training sees besides float32: bfloat16 weights
    (bf16 dlogits tiles and bf16 products, as the Triton path) and float64 (float64 throughout, to
    float64 precision). A small
    chunk makes several vocabulary slices; the expected gradients come from float64 autograd
    through log_softmax of the same (rounded) inputs."""
    h, w, y, m = inputs(2, 5, 16, 130, dtype, seed)
    m[:, 0] = 1.0
    out = sequence_logprob(h, w, y, m, reduction, backend="torch", chunk_size=chunk)
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = naive_sequence_logprob(h64, w64, y, m.double(), reduction, dtype=torch.float64)
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gh, gw = grads(out, h, w, up.to(out.dtype))
    rh, rw = grads(ref, h64, w64, up)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert gh.dtype == gw.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-2
    if dtype == torch.float64:
        assert rel_err(out, ref) <= 1e-12
    else:
        assert within_bf16_forward_bound(out, ref, h, w, m, reduction)
    assert rel_err(gh, rh) <= tol and rel_err(gw, rw) <= tol


def within_bf16_forward_bound(out, ref, h, w, m, reduction):
    """The torch path's bf16 forward against float64 of the same bf16 inputs. Each logit minus the
    row's top (the max of the rounded product, within 2^-8 of the true max) is rounded to bf16 once,
    by at most 2^-8 of itself (8 significant bits). So with a_v = 2^-8 x (max - logit_v + 2^-8 |max|)
    a token's log-sum-exp, and so its log-prob, moves by at most log sum_v p_v exp(a_v), about 2^-8 x
    the p-weighted distance from the max (at most the entropy, itself at most log V); the target's
    logit is a float32 dot of its own. Per token, from the float64 logits: sums add the kept tokens'
    bounds, means average them."""
    logits = h.detach().double() @ w.detach().double().t()                       # (B, T, V)
    top = logits.amax(-1, keepdim=True)
    a = 2 ** -8 * (top - logits + 2 ** -8 * top.abs())
    per_token = (torch.log_softmax(logits, -1) + a).logsumexp(-1) * m.double()     # (B, T)
    n = m.sum(-1).double().clamp(min=1)
    bound = per_token if reduction == "none" else per_token.sum(-1) / (n if reduction == "mean" else 1)
    return bool(((out.double() - ref).abs() <= bound + 1e-5 * (1 + ref.abs())).all())


@given(seed=st.integers(0, 10_000), chunk=st.integers(1, 6), offset=st.sampled_from([3.0, 5.0, 6.0]))
def test_reference_bf16_log_probs_and_gradients_hold_at_a_real_models_logits(seed, chunk, offset):
    """A real model's logits sit at 20-30 (SmolLM2-135M's), where bf16 keeps only +-0.06 of them. The
    torch path's bf16 products round once at their end; shifted there (forward: by each row's max;
    backward: by the log-sum-exp), the likely tokens' values are near 0 and keep their precision.
    Here one coordinate, offset x offset in every logit (9-36), lifts them all alike: the
    log-softmax is the same, and the gradients must stay as close to float64's (of the same bf16
    inputs) as at small logits. (That coordinate of d hidden is a sum that cancels exactly, and bf16
    dlogits leave up to 2^-8 of its terms, as on the GPU: it is left out.) Unshifted, d W's error was 8%,
    and the log-probs left within_bf16_forward_bound's bound."""
    h, w, y, m = inputs(2, 5, 16, 130, torch.float32, seed)
    with torch.no_grad():
        h[..., -1], w[:, -1] = offset, offset
    h, w = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    m[:, 0] = 1.0
    out = sequence_logprob(h, w, y, m, "sum", backend="torch", chunk_size=chunk)
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = naive_sequence_logprob(h64, w64, y, m.double(), "sum", dtype=torch.float64)
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gh, gw = grads(out, h, w, up.to(out.dtype))
    rh, rw = grads(ref, h64, w64, up)
    assert within_bf16_forward_bound(out, ref, h, w, m, "sum")
    assert rel_err(gh[..., :-1], rh[..., :-1]) <= 1e-2 and rel_err(gw, rw) <= 1e-2


@pytest.mark.parametrize("V", [130, 4096, 49152])
def test_reference_bf16_forward_at_its_worst_rounding(V):
    """The bf16 forward's worst case: one token at logit 0 and V - 1 at -8.0300, a value whose
    shifted product (by the row's max, 0) rounds to -8 in bf16, by 2^-8 of itself (bf16 keeps 8
    significant bits: its rounding moves a value by up to 2^-8 of it, not 2^-9), every one the same
    way. At SmolLM2's vocabulary (49152) the log-prob moves by 0.028 (2^-8 x 7.2), past the
    2^-9 x (log V + 1) = 0.023 once assumed here, and within 5% of within_bf16_forward_bound's."""
    h = torch.tensor([[1.0, 1.0]]).bfloat16()
    w = torch.zeros(V, 2)
    w[1:, 0], w[1:, 1] = -8.0, -0.03
    w = w.bfloat16()
    y, m = torch.tensor([[1]]), torch.ones(1, 1)
    out = sequence_logprob(h[None], w, y, m, "sum", backend="torch")
    ref = naive_sequence_logprob(h[None].double(), w.double(), y, m.double(), "sum", dtype=torch.float64)
    assert within_bf16_forward_bound(out, ref, h, w, m, "sum")


def test_backend_choice_follows_argument_then_environment_then_device(monkeypatch):
    import kernels.seq_logprob as sl
    cpu = torch.zeros(1)
    monkeypatch.delenv("NANOALIGN_KERNELS", raising=False)
    assert sl.choose_backend(cpu) == "torch" and sl.choose_backend(cpu, "torch") == "torch"
    monkeypatch.setenv("NANOALIGN_KERNELS", "bogus")
    with pytest.raises(ValueError, match=r"^kernel backend must be auto, triton or torch, got 'bogus'$"):
        sl.choose_backend(cpu)
    assert sl.choose_backend(cpu, "torch") == "torch"             # the argument comes first
    monkeypatch.setenv("NANOALIGN_KERNELS", "auto")
    assert sl.choose_backend(cpu) == "torch"                      # auto: torch off the GPU
    monkeypatch.setattr(sl, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match=r"^backend 'triton' requested but triton is not installed$"):
        sl.choose_backend(cpu, "triton")
    monkeypatch.setattr(sl, "HAS_TRITON", True)
    monkeypatch.setattr(sl, "INTERPRET", False)
    with pytest.raises(RuntimeError, match=r"^backend 'triton' needs CUDA tensors \(or TRITON_INTERPRET=1 on the CPU\)$"):
        sl.choose_backend(cpu, "triton")
    monkeypatch.setattr(sl, "INTERPRET", True)
    assert sl.choose_backend(cpu, "triton") == "triton"           # the interpreter runs it on the CPU
    monkeypatch.setenv("NANOALIGN_KERNELS", "triton")
    assert sl.choose_backend(cpu) == "triton"


def test_default_chunk_keeps_one_float32_tile_near_its_budget():
    """Rows per forward chunk: (rows x V) float32 logits of about 32 MiB on the CPU (2**23 values)
    and 256 MiB on a GPU (2**26), never fewer than 16 rows."""
    from kernels.seq_logprob import default_chunk
    for V in (1, 1000, 49152, 2 ** 20, 2 ** 22):
        assert default_chunk(V, torch.device("cpu")) == max(16, 2 ** 23 // V)
        assert default_chunk(V, torch.device("cuda")) == max(16, 2 ** 26 // V)


def test_auto_picks_triton_for_cuda_tensors_when_triton_is_there(monkeypatch):
    """The auto rule on a GPU, with a stand-in for a CUDA tensor (no GPU needed to check the rule)."""
    import types

    import kernels.seq_logprob as sl
    monkeypatch.delenv("NANOALIGN_KERNELS", raising=False)
    cuda_like = types.SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(sl, "HAS_TRITON", True)
    assert sl.choose_backend(cuda_like) == "triton"
    monkeypatch.setattr(sl, "HAS_TRITON", False)
    assert sl.choose_backend(cuda_like) == "torch"


def test_sequence_logprob_defaults_and_reduction_names(monkeypatch):
    """reduction defaults to 'sum'; an unknown one is refused by name; without chunk_size the tile
    budget is default_chunk of the VOCABULARY size; a fully masked bfloat16 batch still returns
    float32 zeros (the empty selection keeps the compute dtype)."""
    import kernels.seq_logprob as sl
    h, w, y, m = inputs(2, 4, 16, 77, torch.float32, 0)
    m[:, 0] = 1.0
    assert torch.equal(sl.sequence_logprob(h, w, y, m), sl.sequence_logprob(h, w, y, m, "sum"))
    with pytest.raises(ValueError, match=r"^reduction must be sum, mean or none, got 'avg'$"):
        sl.sequence_logprob(h, w, y, m, "avg")
    chunks, real = [], sl.TokenLogprob.apply
    monkeypatch.setattr(sl.TokenLogprob, "apply", lambda *a: chunks.append(a[4]) or real(*a))
    sl.sequence_logprob(h, w, y, m)
    assert chunks == [sl.default_chunk(77, h.device)]
    hb, wb = h.detach().bfloat16(), w.detach().bfloat16()
    for red in ("sum", "mean", "none"):
        out = sl.sequence_logprob(hb, wb, y, torch.zeros_like(m), red, backend="torch")
        assert out.dtype == torch.float32 and (out == 0).all()


@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), reduction=st.sampled_from(["sum", "mean"]),
       seed=st.integers(0, 10_000), chunk=st.integers(1, 20), dtype=st.sampled_from([torch.float32, torch.float64]))
@example(lengths=[1], reduction="mean", seed=0, chunk=1, dtype=torch.float32).via("one row of one token")
@example(lengths=[1, 9, 1], reduction="sum", seed=1, chunk=3, dtype=torch.float32).via("length-1 rows around a long one")
@example(lengths=[2, 3], reduction="mean", seed=2, chunk=4, dtype=torch.float64).via("float64 stays float64")
def test_packed_rows_give_the_padded_rows_log_probs_and_gradients(lengths, reduction, seed, chunk, dtype):
    """The packed layout (rows back to back, cu_seqlens) against the right-padded one of the same
    rows: the same per-row sums and means (the same bits: a row sums in the same order), in the
    input's precision (float64 in, float64 out, as the docstring promises), and the same gradients,
    written back to the same tokens."""
    R, T, d, V = len(lengths), max(lengths), 16, 37
    h, w, y, m = inputs(R, T, d, V, dtype, seed)
    real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]        # (R, T): not a pad
    m = m * real                                                            # pads are never kept
    padded = sequence_logprob(h, w, y, m, reduction, backend="torch", chunk_size=chunk)
    cu = torch.tensor([0] + lengths).cumsum(0)
    hp = h.detach()[real].requires_grad_()                                  # (N, d), row-major
    packed = sequence_logprob(hp, w, y[real], m[real], reduction, backend="torch", chunk_size=chunk,
                              cu_seqlens=cu)
    assert packed.shape == (R,) and packed.dtype == padded.dtype and torch.equal(packed, padded)
    up = torch.randn(R, generator=torch.Generator().manual_seed(seed))
    gh, gw = torch.autograd.grad((padded * up).sum(), [h, w])
    ghp, gwp = torch.autograd.grad((packed * up).sum(), [hp, w])
    assert torch.allclose(ghp, gh[real], rtol=1e-6, atol=1e-7) and (gh[~real] == 0).all()
    assert torch.allclose(gwp, gw, rtol=1e-5, atol=1e-7)


def test_zero_packed_rows_give_an_empty_result():
    """A packed batch of no rows (cu_seqlens [0]): an empty (0,) result for sum and mean, not an
    error on the longest of no rows."""
    h, w = torch.zeros(0, 16), torch.randn(37, 16)
    y, m = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    for reduction in ("sum", "mean"):
        out = sequence_logprob(h, w, y, m, reduction, backend="torch", cu_seqlens=torch.tensor([0]))
        assert out.shape == (0,)


# -- the plain log-softmax reference, by hand ------------------------------------------------------
def test_naive_log_probs_by_hand_in_each_dtype():
    """The plain reference (the tests' and the benchmark's 'eager'): log_softmax of the full logits,
    in float32 by default (bfloat16 logits upcast first) or in the dtype asked for; flat (N, d)
    input sums over its N tokens."""
    from kernels.seq_logprob import naive_sequence_logprob
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(2, 5, 8, generator=g), torch.randn(11, 8, generator=g)
    y, m = torch.randint(0, 11, (2, 5), generator=g), (torch.rand(2, 5, generator=g) < 0.6).float()
    m[1, 0] = 1.0

    def by_hand(logits, mask):
        lp = torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1) * mask
        return lp.sum(-1), lp.sum(-1) / mask.sum(-1).clamp(min=1)
    s64, mean64 = by_hand(h.double() @ w.double().t(), m.double())
    got = naive_sequence_logprob(h, w, y, m, "sum", dtype=torch.float64)
    assert got.dtype == torch.float64 and torch.allclose(got, s64, rtol=1e-12, atol=1e-12)
    assert torch.allclose(naive_sequence_logprob(h, w, y, m, "mean", dtype=torch.float64), mean64,
                          rtol=1e-12, atol=1e-12)
    hb, wb = h.bfloat16(), w.bfloat16()
    s32, _ = by_hand((hb @ wb.t()).float(), m)
    got = naive_sequence_logprob(hb, wb, y, m)
    assert got.dtype == torch.float32 and torch.allclose(got, s32, rtol=1e-6, atol=1e-6)
    assert torch.equal(naive_sequence_logprob(h, w, y, m, "none"),
                       torch.log_softmax(h @ w.t(), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1) * m)
    flat = naive_sequence_logprob(h.reshape(10, 8), w, y.reshape(10), m.reshape(10), "sum")
    assert flat.shape == () and torch.allclose(flat, s64.sum().float(), rtol=1e-5)
    flat_mean = naive_sequence_logprob(h.reshape(10, 8), w, y.reshape(10), m.reshape(10), "mean")
    assert torch.allclose(flat_mean, (s64.sum() / m.sum()).float(), rtol=1e-5)


# -- the odds-ratio term: the backend choice, the Triton route, log1mexp ---------------------------
AW = [-0.5, -2.0, -1e-3, -3.0, -0.05]       # mean log-probs of chosen responses (all < 0)
AL = [-1.0, -0.1, -0.5, -3.0, -7.0]         # of rejected ones


def z_formula(aw, al):
    """ORPO eq. 2-3 in plain float64 math: log odds(a) = log(e^a / (1 - e^a))."""
    odds = lambda a: math.log(math.exp(a) / (1.0 - math.exp(a)))  # noqa: E731
    return odds(aw) - odds(al)


def kernel_spy(monkeypatch):
    """Record every call of the Triton route (kernels.odds_ratio.OddsRatio.apply), then run it."""
    calls, real = [], odds_mod.OddsRatio

    class Spy:
        @staticmethod
        def apply(*args):
            calls.append(args)
            return real.apply(*args)

    monkeypatch.setattr(odds_mod, "OddsRatio", Spy)
    return calls


triton_here = pytest.mark.skipif(not HAS_TRITON or not (INTERPRET or torch.cuda.is_available()),
                                 reason="needs triton (CUDA, or TRITON_INTERPRET=1 on the CPU)")


@triton_here
def test_odds_ratio_backend_triton_runs_the_kernel_on_both_inputs(monkeypatch):
    # an explicit backend beats NANOALIGN_KERNELS (kernels.seq_logprob.choose_backend's order)
    monkeypatch.setenv("NANOALIGN_KERNELS", "torch")
    calls = kernel_spy(monkeypatch)
    dev = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
    aw = torch.tensor(AW, dtype=torch.float64, device=dev, requires_grad=True)
    al = torch.tensor(AL, dtype=torch.float64, device=dev, requires_grad=True)
    loss, z = odds_ratio_loss(aw, al, backend="triton")
    assert len(calls) == 1 and calls[0][0] is aw and calls[0][1] is al
    assert loss.dtype == z.dtype == torch.float32            # the Triton route returns float32
    want_z = torch.tensor([z_formula(a, b) for a, b in zip(AW, AL)], dtype=torch.float64)
    assert torch.allclose(z.double().cpu(), want_z, rtol=1e-6, atol=1e-6)
    assert torch.allclose(loss.double().cpu(), torch.log1p(torch.exp(-want_z)), rtol=1e-6, atol=1e-6)
    # d loss / d a_w = -sigmoid(-z) / (1 - e^a_w), d loss / d a_l = sigmoid(-z) / (1 - e^a_l)
    gw, gl = torch.autograd.grad(loss.sum(), [aw, al])
    s = torch.sigmoid(-want_z)
    ew, el = torch.exp(torch.tensor(AW, dtype=torch.float64)), torch.exp(torch.tensor(AL, dtype=torch.float64))
    assert torch.allclose(gw.cpu(), -s / (1 - ew), rtol=1e-5, atol=1e-6)
    assert torch.allclose(gl.cpu(), s / (1 - el), rtol=1e-5, atol=1e-6)


@triton_here
def test_odds_ratio_backend_torch_beats_the_environment(monkeypatch):
    monkeypatch.setenv("NANOALIGN_KERNELS", "triton")
    calls = kernel_spy(monkeypatch)
    aw, al = torch.tensor(AW, dtype=torch.float64), torch.tensor(AL, dtype=torch.float64)
    _, z = odds_ratio_loss(aw, al, backend="torch")
    assert calls == []
    assert torch.allclose(z, torch.tensor([z_formula(a, b) for a, b in zip(AW, AL)], dtype=torch.float64))


def test_odds_ratio_names_an_unknown_backend():
    with pytest.raises(ValueError) as e:
        odds_ratio_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), backend="cuda")
    assert str(e.value) == "kernel backend must be auto, triton or torch, got 'cuda'"


def test_log1mexp_is_accurate_to_two_ulps_below_minus_log_2():
    # Maechler (2012): for a < -log 2, log1p(-exp(a)) is accurate; log(-expm1(a)) there loses up to
    # ~3 ulps (log of a number near 1). Measured over every float32 in [-1.69, -0.70]: 1.38 ulps.
    a = torch.linspace(-1.69, -0.70, 20001, dtype=torch.float64).float()
    got = log1mexp(a)
    truth = torch.log1p(-torch.exp(a.double()))        # float64 of the same float32 inputs
    ulp = (torch.nextafter(got, torch.zeros_like(got)) - got).abs().double()
    assert ((got.double() - truth).abs() / ulp).max().item() <= 2.0
