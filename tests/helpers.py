"""Small shared test helpers."""
import torch

from model.model import ModelConfig, Transformer


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(vocab_size=101, dim=48, n_layers=2, hidden_dim=72, max_seq_len=64, n_heads=4,
                n_kv_heads=2, bos_token_id=1, eos_token_id=2)
    return Transformer(ModelConfig(**{**base, **kw}))
