"""The model is the reference model: logits against `transformers` (in its own process: the `hf`
fixture, tests/hf_reference.py) and a checkpoint round trip through it, the KV cache against a full
recompute, left-padded batches against single prompts, and clear checkpoint errors."""
import json
import os
import re

import pytest
import torch
from hypothesis import given, strategies as st

from model.checkpoint import CheckpointError, load, load_model, save_model
from model.generate import generate
from tests.helpers import tiny

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

def test_sliding_window_matters():
    m = tiny(**CONFIGS["mistral-window"])
    x = torch.randint(0, 101, (1, 20))
    with torch.no_grad():
        a = m.logits(m(x))
        m.cfg.sliding_window = None
        b = m.logits(m(x))
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)    # inside the window: identical
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3        # beyond it: different


@given(cfg=st.sampled_from(list(CONFIGS)), T=st.integers(1, 20), new=st.integers(1, 8),
       seed=st.integers(0, 1000))
def test_kv_cache_equals_full_recompute(cfg, T, new, seed):
    m = tiny(seed, **CONFIGS[cfg]).eval()
    x = torch.randint(0, 101, (2, T + new), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = m.logits(m(x))                               # (2, T+new, V)
        cache = m.new_cache(2, T + new)
        steps = [m.logits(m(x[:, :T], cache=cache))]
        for t in range(T, T + new):
            assert cache.pos == t
            steps.append(m.logits(m(x[:, t:t + 1], cache=cache)))
    inc = torch.cat(steps, 1)
    assert (inc - full).abs().max().item() < 1e-5


@given(lens=st.lists(st.integers(1, 12), min_size=2, max_size=5), seed=st.integers(0, 1000),
       cfg=st.sampled_from(list(CONFIGS)))
def test_left_padded_batch_equals_one_at_a_time(lens, seed, cfg):
    m = tiny(seed, **CONFIGS[cfg])
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 101, (n,), generator=g).tolist() for n in lens]
    batched = generate(m, prompts, 8, eos_ids=[2], temperature=0, pad_id=0)
    single = [generate(m, [p], 8, eos_ids=[2], temperature=0, pad_id=0)[0] for p in prompts]
    assert batched == single


def test_each_row_stops_at_its_own_eos():
    m = tiny(3)
    with torch.no_grad():  # make token 2 (EOS) the greedy choice after token 7 only
        m.lm_head.weight[2] = 0
    prompts = [[5, 6, 7], [5, 6, 8]]
    out = generate(m, prompts, 6, eos_ids=[2], temperature=0, pad_id=0)
    for o in out:
        assert 2 not in o[:-1]        # nothing is emitted after a row's EOS


# -- bad input: one clear error naming the file and the field or tensor --------------------------
@pytest.fixture
def saved(tmp_path):
    save_model(tiny(), tmp_path)
    return tmp_path


def test_missing_config(saved):
    os.remove(saved / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        load_model(str(saved))


def test_corrupt_config(saved):
    (saved / "config.json").write_text('{"model_type": "llama",\n  "vocab_size": }')
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON at line 2"):
        load_model(str(saved))


def test_unknown_model_type(saved):
    c = json.loads((saved / "config.json").read_text())
    c["model_type"] = "gpt2"
    (saved / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'model_type' is 'gpt2'"):
        load_model(str(saved))


@pytest.mark.parametrize("rope_scaling, says", [
    ({"rope_type": "llama3", "original_max_position_embeddings": 8}, "needs a number 'factor'"),
    ({"rope_type": "llama3", "factor": "8", "original_max_position_embeddings": 8}, "needs a number 'factor'"),
    ({"rope_type": "llama3", "factor": 8.0}, "needs a number 'original_max_position_embeddings'"),
    ({"rope_type": "yarn", "factor": 4.0}, "only the 'llama3' type is supported"),
    ("llama3", "only the 'llama3' type is supported"),
])
def test_bad_rope_scaling_names_the_field(saved, rope_scaling, says):
    c = json.loads((saved / "config.json").read_text())
    c["rope_scaling"] = rope_scaling
    (saved / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'rope_scaling' .*" + re.escape(says)):
        load_model(str(saved))


def test_truncated_safetensors(saved):
    p = saved / "model.safetensors"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        load_model(str(saved))


def test_wrong_tensor_shape(saved):
    c = json.loads((saved / "config.json").read_text())
    c["intermediate_size"] = 80
    (saved / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.\w+_proj"
                                              r"\.weight' has shape"):
        load_model(str(saved))


def test_prompt_longer_than_context():
    m = tiny()
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(m, [[3] * 70], 4, eos_ids=[2])


def test_cli_errors_are_one_line(saved, tmp_path):
    import subprocess
    import sys
    os.remove(saved / "config.json")
    r = subprocess.run([sys.executable, "sample.py", "--init_from", str(saved), "--prompt", "hi"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode != 0 and "config.json: file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_never_unpickles(saved):
    (saved / "pytorch_model.bin").write_bytes(b"not a pickle")
    os.remove(saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load(str(saved))


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


def test_cpu_packing_follows_the_batch_size(monkeypatch):
    """oneDNN packs a weight for one expected batch; a new batch size repacks (a batch-1 packing
    reused at batch 8 decoded at two thirds of the speed), and the tokens stay those of plain decoding."""
    import model.cpu_pack as P
    if not P._CAN_PACK:
        pytest.skip("this torch build has no oneDNN linear")
    m = tiny(12).eval()
    one, eight = [[3, 4, 5]], [[3, 4, 5], [6, 7]] * 4
    generate(m, one, 4, eos_ids=[], temperature=0)
    assert P._PACKED[m.lm_head][0][2] == 1
    packed = generate(m, eight, 6, eos_ids=[], temperature=0)
    assert P._PACKED[m.lm_head][0][2] == 8
    monkeypatch.setattr(P, "_CAN_PACK", False)
    assert packed == generate(m, eight, 6, eos_ids=[], temperature=0)
