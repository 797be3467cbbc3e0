"""The model is the reference model (model/model.py): logits against `transformers` (in its own
process: the `hf` fixture, tests/hf_reference.py) for each architecture, a checkpoint round trip
through it, and the sliding window."""
import pytest
import torch

from model.checkpoint import load_model, save_model
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


def test_sliding_window_matters():
    m = tiny(**CONFIGS["mistral-window"])
    x = torch.randint(0, 101, (1, 20))
    with torch.no_grad():
        a = m.logits(m(x))
        m.cfg.sliding_window = None
        b = m.logits(m(x))
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)    # inside the window: identical
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3        # beyond it: different
