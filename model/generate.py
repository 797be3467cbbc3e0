"""
Batched generation with the KV cache: left-pad the prompts, prefill them in one forward, then decode
one token per step for every row until each row has produced its own EOS (or max_new_tokens).

Left padding keeps every row's next token in the same column, so one (B, 1) forward serves the
whole batch; the model counts positions from each row's first real token and never attends to pads.
Keys and values of past positions live in a KVCache (model/kv_cache.py); on the CPU the linears run
with prepacked weights (model/cpu_pack.py). Used by sample.py, the evaluation, and the on-policy
methods (all sampling lives here, once). Pass the tokenizer's `stop_ids` as eos_ids: EOS, the chat
template's end of turn, and generation_config.json's eos_token_id.

Two ways to decode, the same tokens:
- eager (the default, and the reference): each step is `model(token, mask, cache=KVCache)`, which
  reads the cache up to the current position, so every step has new shapes.
- compiled (`generate(..., compiled=True)`, gpt-fast style): the prefill runs eagerly into a
  StaticKVCache, then every step runs `decode_step`, compiled once by torch.compile, on tensors
  whose shapes never change (see `decode_step` for how). It pays where the per-step work is small
  next to the step's Python and dispatch overhead (batch 1; on a GPU, where CUDA graphs remove the
  launch overhead), and only once a compile is amortised over many tokens: the first call for a
  (model, batch, cache length) compiles, 110-140 s for SmolLM2-135M on this busy 2-core CPU with a
  cold inductor cache, 20-55 s with it warm; later calls reuse the graph. On the CPU a decode step
  is mostly the linears reading every weight (65-80% of a step, SmolLM2-135M); in bf16 the compiled
  step ran 1.2-1.4x eager at batch 1 and 1.1-1.3x at batch 8 (docs/performance.md). Its float
  arithmetic may differ from eager's in the last bits (fused kernels), so the evaluation stays eager.
  Tested against eager in tests/model/test_generate.py: the uncompiled step against the cached
  forward, and greedy and seeded sampling, compiled against eager.

On the CPU both keep the cache in float32 and attend in it, whatever autocast computes the linears
in (see `generate`): bf16 attention over a step's one query row is the slow case of the CPU's SDPA.
"""
import math

import torch

from model.cpu_pack import cpu_packed_linears
from model.kv_cache import KVCache, StaticKVCache

STATIC_LEN_STEP = 256   # a StaticKVCache's length is rounded up to this: one compiled graph serves
                        # every prompt + max_new_tokens up to it (more columns only cost masked
                        # attention, small next to the weights at decode)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """(B, V) float logits -> (B,) token ids. temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays).
        # The running sum is over integers, the probabilities in units of 2^-52 (exact for any
        # float32 above 2^-29): CUDA has no deterministic floating-point cumsum (torch alerts on it
        # under train.py's --deterministic), and an integer one is exact, the same on every run
        units = (probs.double() * 2.0 ** 52).round().long()
        drop = (units.cumsum(-1) - units) >= math.ceil(top_p * 2.0 ** 52)
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(seqs, pad_id, device="cpu"):
    """list of id lists -> (ids (B, L), mask (B, L)) with padding on the left."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, L - len(s):] = 1
    return ids.to(device), mask.to(device)


def decode_step(model, cache, tok, input_pos, rope_pos, key_mask):
    """
    One token for every row, against a StaticKVCache: the same arithmetic as
    `model(tok, mask, cache=KVCache)`, written so that no shape depends on the position.
    tok: (B, 1) ids, written at cache column `input_pos` ((1,) long tensor, the same column for
    every row: left padding). rope_pos: (B, 1) each row's RoPE position (its real tokens so far;
    it differs per row when the prompts had different lengths). key_mask: (B, max_len) bool, the
    columns that hold a real token or will (False at left pads); which of them exist yet comes from
    input_pos here. Returns (B, V) float32 logits.
    """
    x = model.embed_tokens(tok)                                     # (B, 1, dim)
    freqs = rope_pos[..., None].float() * model.inv_freq             # (B, 1, hs/2), as forward does
    emb = torch.cat((freqs, freqs), dim=-1)                          # (B, 1, hs)
    cos, sin = emb.cos()[:, None].to(x.dtype), emb.sin()[:, None].to(x.dtype)  # (B, 1, 1, hs)
    # a fixed-shape mask over all max_len columns (a slice up to input_pos would change shape each
    # step): pads hidden, columns after input_pos (not written yet, or stale) hidden
    col = torch.arange(key_mask.shape[1], device=tok.device)         # (max_len,)
    allowed = key_mask & (col <= input_pos)                          # (B, max_len)
    if model.cfg.sliding_window is not None:
        allowed = allowed & (input_pos - col < model.cfg.sliding_window)
    mask = allowed[:, None, None, :]                                 # (B, 1, 1, max_len)
    at = cache.at(input_pos)
    for layer in model.layers:
        x = layer(x, cos, sin, mask, at)
    return model.logits(model.norm(x)[:, -1])                        # (B, V)


_COMPILED = {}


def compiled_decode_step(device_type):
    """decode_step under torch.compile, one per device type (torch.compile caches its graphs per
    model, batch size and cache length inside it). fullgraph: a graph break would silently bring
    the per-op overhead back. dynamic=False: the shapes are fixed by design, and static shapes
    give the best kernels. On CUDA, mode 'reduce-overhead' (CUDA graphs) captures the step, one
    launch per token instead of hundreds (which is why the shapes and the cache addresses must not
    move). On the CPU there are no CUDA graphs; the default mode fuses the elementwise work
    (RMSNorm, RoPE, SiLU, the mask) into C++ loops and removes the Python and dispatch overhead of
    the ~40 small ops per layer, and the linears stay oneDNN's packed ones (model/cpu_pack.py).
    emulate_precision_casts: a fused kernel otherwise keeps bf16 intermediates in float32 where
    eager rounds each op's result, and under bf16 autocast greedy tokens drifted from eager's."""
    if device_type not in _COMPILED:
        # mode="reduce-overhead" is the option triton.cudagraphs; written as options, since
        # torch.compile takes a mode or options, not both
        options = {"triton.cudagraphs": device_type == "cuda", "emulate_precision_casts": True}
        _COMPILED[device_type] = torch.compile(decode_step, fullgraph=True, dynamic=False,
                                               options=options)
    return _COMPILED[device_type]


@torch.no_grad()
def generate(model, prompts, max_new_tokens, eos_ids, temperature=1.0, top_k=None, top_p=None,
             generator=None, pad_id=0, compiled=False):
    """
    prompts: list of token-id lists. Returns a list of generated id lists (EOS kept when produced,
    nothing after it). Generation stops where the context is full: with the longest prompt of L
    tokens, at most max_seq_len - L new tokens, whatever max_new_tokens says (sample.py counts the
    rows cut so); a prompt longer than the context is a ValueError naming the limit. compiled:
    decode with the compiled static-cache step (the module docstring), not eager.
    """
    if not prompts:
        return []
    device = model.lm_head.weight.device
    idx, mask = left_pad(prompts, pad_id, device)                  # (B, L) each
    B, L = idx.shape
    ctx = model.cfg.max_seq_len
    if L > ctx:
        raise ValueError(f"prompt of {L} tokens is longer than the model's context ({ctx} tokens)")
    max_new_tokens = min(max_new_tokens, ctx - L)
    was_training = model.training
    model.eval()
    # the mask of every position the cache will hold: the prompts', then one per new token
    full_mask = torch.cat([mask, torch.ones(B, max_new_tokens, dtype=torch.long, device=device)], 1)
    # the cache holds keys/values in the dtype attention runs in (Attention.forward attends in the
    # cache's dtype). On a GPU the compute dtype: under autocast (bf16 sampling with float32
    # weights) bf16, which flash attention is fast in. On the CPU float32 always: there bf16 SDPA
    # over the one query row of a step ran 2.7-5.2x slower than float32 (a quarter to a half of a
    # bf16 step's time; docs/performance.md, "Attention in float32 while decoding")
    dtype = model.lm_head.weight.dtype
    if device.type == "cpu":
        dtype = torch.float32
    elif torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    if compiled:
        S = min(ctx, math.ceil((L + max_new_tokens) / STATIC_LEN_STEP) * STATIC_LEN_STEP)
        cache = StaticKVCache(model.cfg, B, S, dtype, device)
        new_cols = torch.ones(B, S - L, dtype=torch.bool, device=device)
        key_mask = torch.cat([mask.bool(), new_cols], 1)             # (B, S)
        n_real = mask.sum(1, keepdim=True)                          # (B, 1)
        step_fn = compiled_decode_step(device.type)

        def step(tok, t):            # the token of step t goes into column L + t
            if device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()   # a new step: the graph may now
                                                             # overwrite the last one's logits
            pos = torch.tensor([L + t], device=device)
            return step_fn(model, cache, tok[:, None], pos, n_real + t, key_mask)
    else:
        cache = KVCache(model.cfg, B, L + max_new_tokens, dtype, device)

        def step(tok, t):
            h = model(tok[:, None], full_mask[:, :L + t + 1], cache=cache)   # (B, 1, dim)
            return model.logits(h[:, -1])
    eos = torch.tensor(list(eos_ids) or [-1], device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)   # new tokens
    done = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        with cpu_packed_linears(model, B, traced=compiled):
            logits = model.logits(model(idx, full_mask[:, :L], cache=cache)[:, -1])    # (B, V)
            n = 0
            for t in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, top_p, generator)
                out[:, t] = torch.where(done, torch.full_like(nxt, pad_id), nxt)
                n = t + 1
                done = done | torch.isin(nxt, eos)
                if bool(done.all()) or t == max_new_tokens - 1:
                    break
                logits = step(nxt, t)
    finally:
        model.train(was_training)
    result = []
    eos_set = set(int(e) for e in eos_ids)
    for row in out[:, :n].tolist():
        cut = next((i + 1 for i, tok in enumerate(row) if tok in eos_set), len(row))
        result.append(row[:cut])
    return result
