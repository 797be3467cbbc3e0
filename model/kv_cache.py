"""
The KV caches of generation (model/generate.py): the keys and values of the positions seen so far,
which a forward with `cache=` appends to and attends over.

    KVCache        the eager reference: each forward writes its T positions and reads up to them
    StaticKVCache  for the compiled decode step: fixed shapes and addresses, one column written per step

Kept apart from model/model.py, which only needs a cache's `update(layer, k, v)` and `pos`.
"""
import torch


class KVCache:
    """Keys and values of the positions seen so far, every layer's (B, n_kv_heads, max_len, head_dim).
    A forward with a cache writes its T positions at `pos` and attends to everything up to them; the
    model then advances `pos` by T. Left-padded positions are stored like any other; attn_mask hides
    them."""

    def __init__(self, cfg, batch_size, max_len, dtype=torch.float32, device="cpu"):
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.max_len, self.pos = max_len, 0

    def update(self, layer, k, v):
        """Store layer `layer`'s new (B, nkv, T, hs) keys/values at pos; return all of that layer's
        keys/values so far, (B, nkv, pos + T, hs) each."""
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class StaticKVCache(KVCache):
    """A KVCache for the compiled decode step (model/generate.py `decode_step`), gpt-fast style.

    The prefill goes through `Transformer.forward` like any KVCache. Each decode step then goes
    through `at(input_pos)`: it writes its one position in place at a tensor index and attends to
    all max_len columns, the ones not written yet hidden by the mask. So every step has the same
    shapes and the same tensors, whatever the position: torch.compile builds one graph for the
    whole loop (a cache read up to `pos`, as KVCache does, would be a new shape each step and a
    recompile), and on CUDA that graph can be captured once and replayed (CUDA graphs need fixed
    shapes and fixed addresses; the buffers are marked static for that, and written, never
    reallocated)."""

    def __init__(self, cfg, batch_size, max_len, dtype=torch.float32, device="cpu"):
        super().__init__(cfg, batch_size, max_len, dtype, device)
        if torch.device(device).type == "cuda":
            for t in self.k + self.v:
                torch._dynamo.mark_static_address(t)

    def at(self, input_pos):
        """The cache as the decode step at column `input_pos` ((1,) long tensor) sees it."""
        return _CacheAt(self, input_pos)


class _CacheAt:
    """StaticKVCache.at(input_pos): what Attention calls `update` on during a decode step."""

    def __init__(self, cache, input_pos):
        self.cache, self.input_pos = cache, input_pos

    def update(self, layer, k, v):
        """Write the step's (B, nkv, 1, hs) key/value at column input_pos, in place; return the
        layer's whole (B, nkv, max_len, hs) buffers. (Under autocast v comes out of its linear in
        bfloat16: cast to the cache's dtype, as KVCache's slice assignment does.)"""
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        kc.index_copy_(2, self.input_pos, k.to(kc.dtype))
        vc.index_copy_(2, self.input_pos, v.to(vc.dtype))
        return kc, vc
