"""Decoding (model/generate.py, model/cpu_pack.py): greedy tokens against `transformers`, the KV cache
against a full recompute, a left-padded batch against one prompt at a time, each row stopping at its
own end of sequence, the context limit, the CPU's packed decoding weights, and the compiled
static-cache step against the eager one."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from model.checkpoint import save_model
from model.generate import decode_step, generate, left_pad
from model.kv_cache import KVCache, StaticKVCache
from tests.helpers import greedy_equal_up_to_ties, sharp, spy_on_attention, tiny
from tests.model.test_model import CONFIGS


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_left_padded_batch_matches_transformers(name, tmp_path, hf):
    m = tiny(5, **CONFIGS[name])
    with torch.no_grad():      # sharp attention, so that a position gone wrong changes the tokens
        for layer in m.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
    save_model(m, tmp_path)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 101, (n,), generator=g).tolist() for n in (3, 11, 7)]
    ours = generate(m, prompts, 12, eos_ids=[], temperature=0, pad_id=0)
    L = max(map(len, prompts))
    x = torch.tensor([[0] * (L - len(p)) + p for p in prompts])           # (3, L), left-padded
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    theirs, _ = hf.model(tmp_path).generate(x, mask, 12, pad_id=0)
    assert theirs.tolist() == ours


@given(cfg=st.sampled_from(list(CONFIGS)), T=st.integers(1, 20), new=st.integers(1, 8),
       seed=st.integers(0, 1000))
def test_kv_cache_equals_full_recompute(cfg, T, new, seed):
    m = tiny(seed, **CONFIGS[cfg]).eval()
    x = torch.randint(0, 101, (2, T + new), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = m.logits(m(x))                               # (2, T+new, V)
        cache = KVCache(m.cfg, 2, T + new)
        steps = [m.logits(m(x[:, :T], cache=cache))]
        for t in range(T, T + new):
            assert cache.pos == t
            steps.append(m.logits(m(x[:, t:t + 1], cache=cache)))
    inc = torch.cat(steps, 1)
    assert (inc - full).abs().max().item() < 1e-5


@given(lens=st.lists(st.integers(1, 12), min_size=2, max_size=5), seed=st.integers(0, 1000),
       cfg=st.sampled_from(list(CONFIGS)))
def test_left_padded_batch_equals_one_at_a_time(lens, seed, cfg):
    m = sharp(tiny(seed, **CONFIGS[cfg]))       # at the init's 0.02 a pad counted as a position
                                                # changed no greedy token
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 101, (n,), generator=g).tolist() for n in lens]
    batched = generate(m, prompts, 8, eos_ids=[2], temperature=0, pad_id=0)
    single = [generate(m, [p], 8, eos_ids=[2], temperature=0, pad_id=0)[0] for p in prompts]
    assert all(greedy_equal_up_to_ties(m, p, b, s) for p, b, s in zip(prompts, batched, single))


@pytest.mark.parametrize("seed, k", [(3, 2), (4, 0), (8, 5)])     # the 3rd, 1st and last step
def test_each_row_stops_at_its_own_eos(seed, k):
    """EOS (token 2) is made the greedy choice exactly where a token `tgt` would be, the token row 0
    emits at step k: its lm_head row set to 1.001 x tgt's, so 2 wins wherever tgt would have (its
    logit is the larger of the two whenever tgt's is positive, as a greedy winner's is here).
    Row 0 then stops there, its EOS kept and nothing after it; row 1, which never emits tgt, decodes
    on as if no EOS were asked for; a batch whose rows are all done decodes no further. (The test
    this replaces zeroed EOS's row and so never saw an EOS.)"""
    m = tiny(seed)
    prompts = [[5, 6, 7], [5, 6, 8, 9]]
    free = generate(m, prompts, 6, eos_ids=[], temperature=0, pad_id=0)
    tgt = free[0][k]
    assert tgt not in free[0][:k] and tgt not in free[1] and tgt != 2    # what the seeds were chosen for
    with torch.no_grad():
        m.lm_head.weight[2] = 1.001 * m.lm_head.weight[tgt]
    out = generate(m, prompts, 6, eos_ids=[2], temperature=0, pad_id=0)
    assert out == [free[0][:k] + [2], free[1]]
    # alone, row 0 stops decoding at its EOS: the prompt's forward and one per token before the EOS
    calls = []
    hook = m.register_forward_hook(lambda *_: calls.append(1))
    assert generate(m, prompts[:1], 6, eos_ids=[2], temperature=0, pad_id=0) == [free[0][:k] + [2]]
    hook.remove()
    assert len(calls) == k + 1


# -- bad input: one clear error naming the file and the field or tensor --------------------------
def test_prompt_longer_than_context():
    m = tiny()
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(m, [[3] * 70], 4, eos_ids=[2])


def test_new_tokens_stop_where_the_context_is_full():
    m = tiny()                                              # max_seq_len 64
    out = generate(m, [[3] * 60, [4] * 10], 20, eos_ids=[], temperature=0)
    assert [len(o) for o in out] == [4, 4]                  # the longest prompt leaves 4 positions


def test_cpu_packed_decoding_matches_plain_and_follows_weight_updates(monkeypatch):
    import model.cpu_pack as P
    if not P._CAN_PACK:
        pytest.skip("this torch build has no oneDNN linear")
    m = tiny(11).eval()
    x = torch.randint(0, 101, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = m.logits(m(x))
        with P.cpu_packed_linears(m, 3):
            packed = m.logits(m(x))
    assert (packed - plain).abs().max() <= 1e-5
    assert "forward" not in vars(m.lm_head)                    # the plain forward is back
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]
    before = generate(m, prompts, 12, eos_ids=[], temperature=0)
    with torch.no_grad():                                      # an in-place update, as AdamW does
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = generate(m, prompts, 12, eos_ids=[], temperature=0)
    monkeypatch.setattr(P, "_CAN_PACK", False)
    assert after == generate(m, prompts, 12, eos_ids=[], temperature=0)   # not a stale packing
    assert after != before


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_decoding_attends_in_float32_under_bf16(weights, monkeypatch):
    """On the CPU, bf16 SDPA over one query row ran 2.7-5.2x slower than float32 (docs/performance.md,
    "Attention in float32 while decoding"): decoding keeps its KV cache in float32 and attends in it
    whatever autocast says or the weights are; the rest of the step keeps its dtype (the attention's
    output goes to o_proj in the dtype o_proj computes in: autocast's, else the weights'; float16
    weights are not packed, so a float32 output there would fail in F.linear). The tokens stay
    eager's = compiled's (test_sample.py)."""
    m = tiny(4).to(weights).eval()
    seen, into_o = spy_on_attention(m, monkeypatch)
    autocast = weights == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = generate(m, [[3, 4, 5], [6, 7]], 5, eos_ids=[], temperature=0)
    assert [len(o) for o in out] == [5, 5]
    assert len(seen) == 5 * m.cfg.n_layers                   # the prefill and 4 steps, every layer
    assert set(seen) == {(torch.float32, torch.float32, torch.float32, False)}
    assert into_o == {torch.bfloat16 if autocast else weights}


def test_cpu_packing_follows_the_batch_size(monkeypatch):
    """oneDNN packs a weight for one expected batch; a new batch size repacks (a batch-1 packing
    reused at batch 8 decoded at two thirds of the speed), and the tokens stay those of plain decoding."""
    import model.cpu_pack as P
    if not P._CAN_PACK:
        pytest.skip("this torch build has no oneDNN linear")
    m = tiny(12).eval()
    one, eight = [[3, 4, 5]], [[3, 4, 5], [6, 7]] * 4
    generate(m, one, 4, eos_ids=[], temperature=0)
    assert P._PACKED[m.lm_head]["forward"][0][2] == 1
    packed = generate(m, eight, 6, eos_ids=[], temperature=0)
    assert P._PACKED[m.lm_head]["forward"][0][2] == 8
    monkeypatch.setattr(P, "_CAN_PACK", False)
    assert packed == generate(m, eight, 6, eos_ids=[], temperature=0)


@given(targets=st.sets(st.sampled_from(["q", "k", "v", "o", "gate", "up", "down"])),
       B=st.integers(1, 4), T=st.integers(1, 6), seed=st.integers(0, 1000))
def test_sibling_linears_packed_as_one_product_equal_the_plain_linears(targets, B, T, seed):
    """q/k/v and gate/up run as one packed product each (Attention.qkv and MLP.gate_up replaced
    inside the block), unless one of them is a LoRA layer; every plain linear is packed exactly once;
    the outputs are the plain ones (float32: different summation order, last bits only); and the
    model's own methods are back after the block."""
    import model.cpu_pack as P
    from model.lora import apply_lora
    if not P._CAN_PACK:
        pytest.skip("this torch build has no oneDNN linear")
    m = tiny(seed).eval()
    if targets:
        m = apply_lora(m, 2, 4.0, 0.0, ",".join(sorted(targets)))
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.normal_()
    units = P.packing_units(m)
    members = [id(lin) for _, _, linears in units for lin in linears]
    plain = [id(x) for x in m.modules() if type(x) is torch.nn.Linear]
    assert sorted(members) == sorted(plain)                    # each plain linear once, nothing else
    attn, mlp = m.layers[0].self_attn, m.layers[0].mlp
    grouped = {method for owner, method, _ in units if owner in (attn, mlp)}
    assert ("qkv" in grouped) == (not targets & {"q", "k", "v"})
    assert ("gate_up" in grouped) == (not targets & {"gate", "up"})
    x = torch.randn(B, T, m.cfg.dim, generator=torch.Generator().manual_seed(seed))
    ids = torch.randint(0, 101, (B, T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = [*attn.qkv(x), *mlp.gate_up(x), m.logits(m(ids))]
        with P.cpu_packed_linears(m, B):
            assert ("qkv" in vars(attn)) == ("qkv" in grouped)
            got = [*attn.qkv(x), *mlp.gate_up(x), m.logits(m(ids))]
    assert not {"qkv", "gate_up", "forward"} & (set(vars(attn)) | set(vars(mlp)) | set(vars(m.lm_head)))
    for w, g in zip(want, got, strict=True):
        assert g.shape == w.shape
        assert (g - w).abs().max() <= 1e-5 * (1 + w.abs().max())


@pytest.mark.parametrize("which", ["o_proj", "q_proj"])
def test_a_linear_with_a_bias_is_not_packed(which):
    """oneDNN's packed product is called without a bias: a biased linear (no checkpoint this project
    loads has one; a model edited by hand may) lost its bias, logits off by up to 0.81."""
    import model.cpu_pack as P
    if not P._CAN_PACK:
        pytest.skip("this torch build has no oneDNN linear")
    m = tiny(3).eval()
    attn = m.layers[0].self_attn
    old = getattr(attn, which)
    biased = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(old.weight)
        biased.bias.fill_(1.0)
    setattr(attn, which, biased)
    assert all(biased not in linears for _, _, linears in P.packing_units(m))
    ids = torch.randint(0, 101, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = m.logits(m(ids))
        with P.cpu_packed_linears(m, 2):
            got = m.logits(m(ids))
    assert (got - want).abs().max() <= 1e-5 * (1 + want.abs().max())


def test_packing_that_fails_midway_puts_every_method_back(monkeypatch):
    """An error (or Ctrl-C) while packing leaves no packed forward on the model: a training step
    after it would otherwise run oneDNN's linear, which has no gradient."""
    import model.cpu_pack as P
    if not P._CAN_PACK:
        pytest.skip("this torch build has no oneDNN linear")
    m = tiny(2)
    calls, pack = [], P._pack

    def failing(*args):
        calls.append(args[1])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return pack(*args)
    monkeypatch.setattr(P, "_pack", failing)
    with pytest.raises(KeyboardInterrupt):
        with P.cpu_packed_linears(m, 1):
            pass
    assert len(calls) == 4 and {"qkv", "gate_up"} <= set(calls)      # groups were patched first
    assert not any({"qkv", "gate_up", "forward"} & set(vars(x)) for x in m.modules())


def test_a_group_broken_up_by_lora_keeps_no_packed_copy():
    """After LoRA replaces q_proj, q/k/v are no longer one group: the group's packed weight goes (it
    would be a stale copy of the three weights for as long as the model lives)."""
    import model.cpu_pack as P
    from model.lora import apply_lora
    if not P._CAN_PACK:
        pytest.skip("this torch build has no oneDNN linear")
    m = tiny(3)
    generate(m, [[3, 4, 5]], 2, eos_ids=[], temperature=0)
    attn = m.layers[0].self_attn
    assert {"qkv"} <= set(P._PACKED[attn])
    apply_lora(m, 2, 4.0, 0.0, "q")
    generate(m, [[3, 4, 5]], 2, eos_ids=[], temperature=0)
    assert "qkv" not in P._PACKED[attn] and "gate_up" in P._PACKED[m.layers[0].mlp]
    assert P._PACKED[attn.k_proj]["forward"][0][2] == 1           # k and v now packed alone


def test_top_p_keeps_the_nucleus_without_a_floating_point_cumsum():
    """Top-p keeps the most likely tokens until the ones before reach top_p (the first always
    stays), and finds them without a floating-point cumsum: CUDA has no deterministic one (torch
    alerts on it under use_deterministic_algorithms, which train.py's --deterministic sets on CUDA),
    so an on-policy rollout that sampled with top_p would differ from run to run. The ops are
    recorded on the CPU, as a CUDA rollout would call them."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from model.generate import sample_next

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.cumsums = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket == torch.ops.aten.cumsum:
                self.cumsums.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    # probabilities 0.5, 0.3, 0.15, 0.05: at top_p 0.75 tokens 0 and 1 stay (0.5 comes before 1,
    # 0.8 before 2), listed out of order so that the sort matters
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log().repeat(400, 1)
    g = torch.Generator().manual_seed(0)
    with Ops() as ops:
        drawn = sample_next(logits, temperature=1.0, top_p=0.75, generator=g)
    assert not [dt for dt in ops.cumsums if dt.is_floating_point]
    assert set(drawn.tolist()) == {1, 3}


# -- the compiled static-cache decode (model/generate.py `decode_step`) against the eager one ------
# One tiny model for the whole module (GQA and a sliding window of 5, so the fixed-shape mask's
# window and pad columns both matter), compiled once per batch size: compiling is the slow part.
DECODE_CFG = dict(model_type="mistral", n_heads=4, n_kv_heads=2, sliding_window=5)
STEP_CONFIGS = {                     # for the uncompiled step: the RoPE and attention variants
    "llama-gqa": dict(n_heads=6, n_kv_heads=2),
    "llama-mha-untied": dict(n_heads=4, n_kv_heads=4),
    "llama3-rope": dict(n_heads=4, n_kv_heads=1, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8}),
    "mistral-window": DECODE_CFG,
}


@pytest.fixture(scope="module")
def decode_model():
    return sharp(tiny(21, **DECODE_CFG))


def random_prompts(lens, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 101, (n,), generator=g).tolist() for n in lens]


@pytest.mark.parametrize("cfg", list(STEP_CONFIGS))
@settings(max_examples=10)
@given(lens=st.lists(st.integers(1, 9), min_size=1, max_size=4), new=st.integers(1, 6),
       seed=st.integers(0, 1000))
def test_decode_step_equals_the_cached_forward(cfg, lens, new, seed):
    """Uncompiled, so every config is cheap: the fixed-shape step (one column written in place,
    all max_len columns attended under the mask, per-row RoPE positions) gives the logits of
    `model(token, mask, cache=KVCache)` on the same left-padded batch."""
    m = sharp(tiny(seed, **STEP_CONFIGS[cfg]))
    idx, mask = left_pad(random_prompts(lens, seed), 0)
    B, L = idx.shape
    toks = torch.randint(3, 101, (B, new), generator=torch.Generator().manual_seed(seed + 1))
    S = 32                                              # > L + new: unwritten columns stay masked
    with torch.no_grad():
        cache, static = KVCache(m.cfg, B, L + new), StaticKVCache(m.cfg, B, S)
        m(idx, mask, cache=cache)
        m(idx, mask, cache=static)
        key_mask = torch.cat([mask.bool(), torch.ones(B, S - L, dtype=torch.bool)], 1)
        full_mask = torch.cat([mask, torch.ones(B, new, dtype=torch.long)], 1)
        for t in range(new):
            ref = m.logits(m(toks[:, t:t + 1], full_mask[:, :L + t + 1], cache=cache)[:, -1])
            got = decode_step(m, static, toks[:, t:t + 1], torch.tensor([L + t]),
                              mask.sum(1, keepdim=True) + t, key_mask)
            assert (got - ref).abs().max().item() < 1e-5, t


@settings(max_examples=12)
@given(B=st.sampled_from([1, 3]), data=st.data(), new=st.integers(1, 12), seed=st.integers(0, 1000))
def test_compiled_greedy_tokens_equal_eager(decode_model, B, data, new, seed):
    lens = data.draw(st.lists(st.integers(1, 16), min_size=B, max_size=B))
    prompts = random_prompts(lens, seed)
    eager = generate(decode_model, prompts, new, eos_ids=[], temperature=0)
    compiled = generate(decode_model, prompts, new, eos_ids=[], temperature=0, compiled=True)
    assert all(greedy_equal_up_to_ties(decode_model, p, c, e) for p, c, e in zip(prompts, compiled, eager))


@settings(max_examples=8)
@given(seed=st.integers(0, 1000), temperature=st.sampled_from([0.7, 1.0, 1.5]),
       top_k=st.sampled_from([None, 20]), top_p=st.sampled_from([None, 0.9]))
def test_compiled_sampling_with_a_seeded_generator_equals_eager(decode_model, seed, temperature,
                                                                top_k, top_p):
    prompts = random_prompts([4, 11, 1], seed)
    run = {}
    for compiled in (False, True):
        g = torch.Generator().manual_seed(seed)
        run[compiled] = generate(decode_model, prompts, 10, eos_ids=[5, 6], temperature=temperature,
                                 top_k=top_k, top_p=top_p, generator=g, compiled=compiled)
    assert run[True] == run[False]


def test_compiled_decode_follows_weight_updates(decode_model, monkeypatch):
    """An optimizer step between two generate calls (on-policy training) changes the weights in
    place: the compiled step reads them as inputs (and the CPU packing repacks), never a stale copy.
    The reference is eager decoding without the packing, which keeps no copy of any weight."""
    import model.cpu_pack as P
    prompts = random_prompts([3, 8, 5], 0)
    before = generate(decode_model, prompts, 12, eos_ids=[], temperature=0, compiled=True)
    saved = {k: v.clone() for k, v in decode_model.state_dict().items()}
    try:
        with torch.no_grad():                               # an in-place update, as AdamW does
            for name, p in decode_model.named_parameters():
                if "norm" not in name:                             # the linears' weights among them
                    p.add_(torch.randn_like(p) * 0.1)
        after = generate(decode_model, prompts, 12, eos_ids=[], temperature=0, compiled=True)
        monkeypatch.setattr(P, "_CAN_PACK", False)
        assert after == generate(decode_model, prompts, 12, eos_ids=[], temperature=0)
        assert after != before
    finally:
        decode_model.load_state_dict(saved)


def test_traced_packed_linears_equal_the_packed_ones():
    """The custom op that compiled graphs call (cpu_packed_linears(traced=True)) computes what the
    packed forward does, and each module keeps one forward object (a new one would recompile)."""
    import model.cpu_pack as P
    if not P._CAN_PACK:
        pytest.skip("this torch build has no oneDNN linear")
    m = tiny(5).eval()
    attn, mlp = m.layers[0].self_attn, m.layers[0].mlp
    x = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with P.cpu_packed_linears(m, 2):
            packed = m.logits(m(x))
        with P.cpu_packed_linears(m, 2, traced=True):
            traced, first = m.logits(m(x)), (m.lm_head.forward, attn.qkv, mlp.gate_up)
        with P.cpu_packed_linears(m, 2, traced=True):
            assert all(a is b for a, b in zip((m.lm_head.forward, attn.qkv, mlp.gate_up), first))
        old_k = attn.k_proj
        attn.k_proj = torch.nn.Linear(old_k.in_features, old_k.out_features, bias=False)
        with P.cpu_packed_linears(m, 2, traced=True):   # a replaced linear: a new forward, without the old
            assert attn.qkv is not first[1] and attn.k_proj in attn.qkv.args[2]
            assert not any(f.args[2][1] is old_k for f in vars(attn)["_packed_traced"].values())
    assert torch.equal(traced, packed)
    assert not {"forward", "qkv", "gate_up"} & (set(vars(m.lm_head)) | set(vars(attn)) | set(vars(mlp)))


def test_decoding_under_bf16_autocast_packs_bf16_weights(decode_model, monkeypatch):
    """bf16 sampling (float32 master weights, CPU autocast): the linears run on packed bf16 copies,
    and both decode paths give the tokens of plain autocast (F.linear casting every weight)."""
    import model.cpu_pack as P
    if not (P._CAN_PACK and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pytest.skip("no oneDNN bf16 linear on this CPU")
    prompts = random_prompts([6, 2, 9], 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = generate(decode_model, prompts, 10, eos_ids=[], temperature=0)
        assert P._PACKED[decode_model.lm_head]["forward"][0][3] == torch.bfloat16
        compiled = generate(decode_model, prompts, 10, eos_ids=[], temperature=0, compiled=True)
        monkeypatch.setattr(P, "_CAN_PACK", False)
        plain = generate(decode_model, prompts, 10, eos_ids=[], temperature=0)
    assert eager == plain
    assert compiled == plain
