"""The model is the reference model (model/model.py): logits against `transformers` (in its own
process: the `hf` fixture, tests/hf_reference.py) for each architecture, a checkpoint round trip
through it, the sliding window, padding-free rows, and what a training forward keeps for backward."""
import json

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import model.model as model_module
from model.checkpoint import load_model, save_model
from model.lora import LoRALinear, apply_lora
from model.model import PackedRows, RMSNorm, lean, swiglu
from tests.helpers import examples, ids, one_thread, spy_on_attention, tiny

CONFIGS = {
    "llama-gqa": dict(n_heads=6, n_kv_heads=2),
    "llama-mha-untied": dict(n_heads=4, n_kv_heads=4),
    "llama-tied": dict(n_heads=4, n_kv_heads=2, tie_embeddings=True),
    "llama3-rope": dict(n_heads=4, n_kv_heads=1, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8}),
    "mistral-window": dict(model_type="mistral", n_heads=4, n_kv_heads=2, sliding_window=5),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name, tmp_path, hf):
    m = tiny(**CONFIGS[name])
    save_model(m, tmp_path)
    x = torch.randint(0, 101, (3, 23))  # 23 > sliding window 5 and > original_max_position 8
    with torch.no_grad():
        ours = m.logits(m(x))
    theirs = hf.model(tmp_path).logits(x)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("name, fields, T", [
    # Llama-1 era configs (huggyllama/llama-7b) have no num_key_value_heads: one kv head per head
    ("llama-mha-untied", {"num_key_value_heads": None, "rms_norm_eps": None}, 23),
    ("llama-mha-untied", {"num_key_value_heads": "null", "max_position_embeddings": None}, 23),
    # MistralConfig's defaults: a 4096-token window, 131072 positions; 4100 tokens see both
    ("mistral-window", {"rms_norm_eps": None, "sliding_window": None,
                        "max_position_embeddings": None}, 4100),
    # Llama 3's scaling without its pre-training length: transformers takes max_position_embeddings
    ("llama3-rope", {"rope_scaling.original_max_position_embeddings": None}, 23),
])
def test_fields_config_json_leaves_out_mean_what_they_mean_to_transformers(name, fields, T, tmp_path, hf):
    # None: the field is left out of config.json; "null": it is there as null
    m = tiny(**CONFIGS[name])
    save_model(m, tmp_path)
    c = json.loads((tmp_path / "config.json").read_text())
    for k, v in fields.items():
        *outer, k = k.split(".")                           # "rope_scaling.factor": a field inside one
        d = c[outer[0]] if outer else c
        d.pop(k) if v is None else d.update({k: None})
    (tmp_path / "config.json").write_text(json.dumps(c))
    ours, _ = load_model(str(tmp_path))
    x = torch.randint(0, 101, (1, T))
    with torch.no_grad():
        got = ours.logits(ours(x))
    assert (got - hf.model(tmp_path).logits(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["llama-tied", "mistral-window"])
def test_round_trip_through_transformers(name, tmp_path, hf):
    # theirs -> ours: a checkpoint written by transformers loads and gives the same logits
    m = tiny(**CONFIGS[name])
    save_model(m, tmp_path / "a")
    ref = hf.model(tmp_path / "a")
    ref.save_pretrained(tmp_path / "b")
    back, _ = load_model(str(tmp_path / "b"))
    x = torch.randint(0, 101, (2, 17))
    with torch.no_grad():
        ours = back.logits(back(x))
        assert (ours - m.logits(m(x))).abs().max().item() == 0.0
    assert (ours - ref.logits(x)).abs().max().item() < 1e-4


def test_sliding_window_matters():
    m = tiny(**CONFIGS["mistral-window"])
    x = torch.randint(0, 101, (1, 20))
    with torch.no_grad():
        a = m.logits(m(x))
        m.cfg.sliding_window = None
        b = m.logits(m(x))
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)    # inside the window: identical
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3        # beyond it: different


# -- padding-free rows (PackedRows: train.py --packed) ---------------------------------------------------
@settings(max_examples=examples(25), deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5), seed=st.integers(0, 1000),
       window=st.sampled_from([None, 3]))
@example(lengths=[1], seed=0, window=None).via("a single row of one token")
@example(lengths=[1, 12, 1, 2], seed=1, window=3).via("length-1 rows, a window")
def test_packed_rows_give_the_padded_rows_hidden_states(lengths, seed, window):
    """The padding-free forward (rows back to back, RoPE restarting per row, attention inside a row;
    GQA, and a sliding window shorter than a row) against the right-padded batch of the same rows:
    every real token's hidden state. (batch_logps's log-probs and gradients on such rows:
    tests/methods/test_common.py.)"""
    with one_thread():
        model = tiny(seed, sliding_window=window)
        g = torch.Generator().manual_seed(seed)
        rows = [torch.randint(3, 101, (n,), generator=g) for n in lengths]
        padded = torch.zeros(len(rows), max(lengths), dtype=torch.long)       # right-padded with 0
        attn = torch.zeros_like(padded)
        for i, r in enumerate(rows):
            padded[i, :len(r)], attn[i, :len(r)] = r, 1
        cu = torch.tensor([0, *lengths]).cumsum(0)
        # positions restart in each row (RoPE only sees differences inside a row, so the hidden
        # states alone could not tell; a long packed batch would drift in float32 and past the
        # model's context)
        assert PackedRows(cu).positions.tolist() == [t for n in lengths for t in range(n)]
        h_pad = model(padded, attn)[attn.bool()]                                    # (N, dim)
        h_pack = model(torch.cat(rows)[None], cu_seqlens=cu)[0]
        assert torch.allclose(h_pack, h_pad, rtol=1e-5, atol=1e-5)


# -- The dtype attention runs in ------------------------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cpu_training_attends_in_float32_whatever_autocast_says(packed, weights, monkeypatch):
    """On the CPU torch's attention ran bf16 1.7-2.4x slower than float32 on training rows of ~100
    tokens (docs/performance.md, "A profile of both steps"), as on one query row while decoding
    (test_generate.py): a training forward, padded or packed, attends in float32 (float64 weights:
    float64) with autocast off, under bf16 autocast and with bf16 or float16 weights alike; o_proj
    gets the dtype the linears compute in, and the backward reaches every weight in its own dtype."""
    from nanoalign.common import batch_logps
    from nanoalign.data import make_batch
    m = tiny(4).to(weights).train()
    seen, into_o = spy_on_attention(m, monkeypatch)
    rows = [{"ids": [5, 6, 7, 8], "n_prompt": 1}, {"ids": [5, 9, 10], "n_prompt": 1}]
    autocast = weights == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        lp = batch_logps(m, make_batch(rows, "sft", 0, packed=packed))
    lp.sum().backward()
    want = torch.float64 if weights == torch.float64 else torch.float32
    assert len(seen) == m.cfg.n_layers * (len(rows) if packed else 1)     # packed: a call per row
    assert set(seen) == {(want, want, want, False)}
    assert into_o == {torch.bfloat16 if autocast else weights}
    assert all(p.grad is not None and p.grad.dtype == weights for p in m.parameters())


def test_attention_dtype_per_device_and_cache():
    """attention_dtype's rule, CUDA's included, which no CPU run reaches through a forward: on CUDA
    the linears' compute dtype (bf16 under autocast, so packed rows reach the varlen kernel), on the
    CPU at least float32, and while decoding the cache's dtype on either."""
    from model.model import attention_dtype
    bf16, f16, f32, f64 = torch.bfloat16, torch.float16, torch.float32, torch.float64
    assert [attention_dtype("cuda", dt) for dt in (bf16, f16, f32, f64)] == [bf16, f16, f32, f64]
    assert [attention_dtype("cpu", dt) for dt in (bf16, f16, f32, f64)] == [f32, f32, f32, f64]
    assert attention_dtype(torch.device("cpu"), f64, cache_dtype=f32) == f32
    assert attention_dtype("cuda", f32, cache_dtype=bf16) == bf16


# -- RecomputeInBackward: the elementwise pieces keep only their inputs --------------------------------
def _grads(fn, inputs, upstream, bf16):
    """fn's output (forward under bf16 autocast if asked) and the gradients of `inputs` (those that
    require grad) for `upstream`; backward outside autocast, as train.py runs it."""
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = fn(*inputs)
    y.backward(upstream)
    return y, [t.grad for t in inputs]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 7), width=st.integers(1, 40), which=st.sampled_from(["norm", "swiglu", "matmul"]),
       bf16=st.booleans(), weight_grad=st.booleans(), seed=st.integers(0, 2**16))
def test_recompute_in_backward_gives_bitwise_the_plain_gradients(rows, width, which, bf16, weight_grad, seed):
    """lean(fn, ...) against fn called plainly: the same output and bitwise the same gradients, in
    float32 and under bf16 autocast (the matmul is there because autocast changes it: a recompute
    outside forward's autocast would differentiate a float32 product instead), with and without a
    second input that needs no gradient (a frozen norm weight under LoRA)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, rows, width, generator=g, requires_grad=True)
    if which == "norm":          # as RMSNorm.forward calls it: x once per use
        norm = RMSNorm(width, 1e-5).norm
        plain, leaned = (lambda a, w: norm(a, a, w)), (lambda a, w: lean(norm, a, a, w))
        other = torch.randn(width, generator=g)
    else:
        fn = swiglu if which == "swiglu" else (lambda a, b: a @ b)
        plain, leaned = fn, (lambda a, b: lean(fn, a, b))
        other = torch.randn(*((2, rows, width) if which == "swiglu" else (width, 3)), generator=g)
    other.requires_grad_(weight_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref_y = plain(x, other)
    upstream = torch.randn(ref_y.shape, generator=g).to(ref_y.dtype)
    y0, g0 = _grads(plain, [x, other], upstream, bf16)
    y1, g1 = _grads(leaned, [x, other], upstream, bf16)
    assert torch.equal(y0, y1)
    for a, b in zip(g0, g1):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
    assert (g1[1] is not None) == weight_grad


def _saved_bytes(model, x):
    """Bytes autograd keeps for backward in model(x), parameters not counted, each storage once."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    return sum(n for ptr, n in seen.items() if ptr not in params), y


def test_a_training_forward_keeps_neither_the_normalized_rows_nor_silu_gate(monkeypatch):
    """What RecomputeInBackward is for, counted: against the plain pieces, a forward keeps, per
    RMSNorm (2 a layer, and the final one), neither the normalized rows (B*T x dim) nor their
    rsqrt (B*T), and per MLP not silu(gate) (B*T x hidden); and every parameter's gradient is
    bitwise the same, so that a training run is the run it was (the default run's table)."""
    m = tiny()
    B, T, c = 3, 11, m.cfg
    x = torch.randint(0, c.vocab_size, (B, T))
    lean_bytes, y = _saved_bytes(m, x)
    m.logits(y).logsumexp(-1).mean().backward()
    lean_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    monkeypatch.setattr(model_module, "lean", lambda fn, *inputs: fn(*inputs))
    plain_bytes, y = _saved_bytes(m, x)
    m.logits(y).logsumexp(-1).mean().backward()
    n_norms = 2 * c.n_layers + 1
    assert plain_bytes - lean_bytes == 4 * B * T * (n_norms * (c.dim + 1) + c.n_layers * c.hidden_dim)
    # bitwise, although a block's residual x gets three gradient terms (the skip connection and
    # the norm's two uses of x) and two of them come back from one RecomputeInBackward: RMSNorm
    # passes x in once per use, so autograd adds the terms in the plain graph's order
    assert all(torch.equal(a, p.grad) for a, p in zip(lean_grads, m.parameters()))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("checkpoint_every", [0, 1, 2])
@pytest.mark.parametrize("lora", [False, True])
def test_recompute_in_backward_leaves_every_training_path_bitwise_the_same(packed, checkpoint_every, lora,
                                                                           monkeypatch):
    """Each way train.py trains (packed rows, --grad_checkpoint, LoRA's frozen base with frozen
    norm weights) gives bitwise the gradients of the plain pieces."""
    m = tiny()
    if lora:
        m = apply_lora(m, 4, 8.0)         # the base, norms included, frozen; the adapters learn
        for p in m.parameters():          # (B starts at zero: give A a gradient too)
            if p.requires_grad:
                p.data.normal_(0, 0.1)
    m.checkpoint_every = checkpoint_every
    lengths = [5, 1, 9]
    x = torch.randint(3, m.cfg.vocab_size, (1, sum(lengths)) if packed else (3, 9))
    cu = torch.tensor([0] + lengths).cumsum(0) if packed else None

    def grads():
        m.zero_grad()
        m.logits(m(x, cu_seqlens=cu)).logsumexp(-1).mean().backward()
        return [p.grad.clone() for p in m.parameters() if p.requires_grad]
    lean_grads = grads()
    monkeypatch.setattr(model_module, "lean", lambda fn, *inputs: fn(*inputs))
    assert len(lean_grads) > 0 and all(torch.equal(a, b) for a, b in zip(lean_grads, grads()))


def test_recompute_in_backward_refuses_a_second_derivative():
    """A double backward through the recomputed piece would be silently wrong: it raises instead."""
    x = torch.randn(3, 8, requires_grad=True)
    y = lean(swiglu, x, x * 2)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(y.sum(), x)                  # a first derivative still works
    assert torch.equal(g, torch.autograd.grad(swiglu(x, x * 2).sum(), x)[0])


# -- activation checkpointing (Transformer.checkpoint_every, train.py --grad_checkpoint) ----------------
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("every", [1, 2, 3])
def test_activation_checkpointing_same_loss_and_grads(lora, every):
    """Checkpointing every block, every other one, or every third (of 3 blocks: the first alone)
    gives bitwise the loss and gradients of keeping every activation."""
    def run(ckpt):
        torch.manual_seed(0)
        m = tiny(4, n_layers=3)
        if lora:
            apply_lora(m, 4, 16.0, 0.3)                   # dropout: recompute must replay the RNG
            for x in m.modules():
                if isinstance(x, LoRALinear):
                    torch.nn.init.normal_(x.lora_B)
        m.checkpoint_every = ckpt
        m.train()
        torch.manual_seed(1)
        x = ids(5)
        loss = torch.nn.functional.cross_entropy(m.logits(m(x[:, :-1])).flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        return loss.item(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    (l0, g0), (l1, g1) = run(0), run(every)
    assert l0 == l1 and g0.keys() == g1.keys() and g0
    for n in g0:
        assert torch.equal(g0[n], g1[n]), n


def test_checkpointing_fewer_blocks_keeps_more_for_backward():
    """What autograd keeps for backward (bytes of distinct storages, parameters not counted) falls
    as more blocks are checkpointed: none > every other one > all; and outside training or without
    a gradient nothing is checkpointed (the same as none)."""
    m = tiny(0, n_layers=4)
    x = ids(4)

    def kept(every, train=True):
        m.checkpoint_every = every
        m.train(train)
        return _saved_bytes(m, x)[0]
    none, half, every_block = kept(0), kept(2), kept(1)
    assert none > half > every_block > 0
    assert kept(1, train=False) == kept(0, train=False)
