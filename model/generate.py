"""
Batched generation with the KV cache: left-pad the prompts, prefill them in one forward, then decode
one token per step for every row until each row has produced its own EOS (or max_new_tokens).

Left padding keeps every row's next token in the same column, so one (B, 1) forward serves the
whole batch; the model counts positions from each row's first real token and never attends to pads.
Used by sample.py, the evaluation, and the on-policy methods (all sampling lives here, once).
"""
import contextlib
import functools
import weakref

import torch
import torch.nn as nn


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
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# -- CPU speed: prepacked weights ---------------------------------------------------------------
# Decoding a batch of B rows multiplies (B, dim) by each weight: a skinny matrix product. On the CPU,
# MKL's sgemm repacks the weight on every call and runs such products at a fraction of its peak
# (here, B = 8: 684 us for a 576 x 1536 weight, against 158 us at B = 1). oneDNN's linear with a
# weight packed once ran the same product in 347 us. So, while generating on the CPU in float32,
# every plain nn.Linear runs through oneDNN with a packed copy of its weight, cached per module (in
# _PACKED, so a deepcopy of the model never sees it) and repacked when the weight changes (its
# version counter moves after an optimizer step) or the batch size does (oneDNN packs for an
# expected batch; a weight packed for batch 1 ran batch-8 decoding about 1.4x slower). Costs: one
# extra copy of those weights while the model lives (skipped above MAX_PACKED parameters), and
# float32 results that differ from F.linear's in the last bits (different summation order).
MAX_PACKED = 1_000_000_000
_PACKED = weakref.WeakKeyDictionary()     # module -> ((address, version, batch), packed weight)
_CAN_PACK = hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and torch.backends.mkldnn.is_available()


def _packed_forward(packed, x):
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@contextlib.contextmanager
def cpu_packed_linears(model, batch_size):
    w = model.lm_head.weight
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not (_CAN_PACK and w.device.type == "cpu" and w.dtype == torch.float32
            and sum(m.weight.numel() for m in linears) <= MAX_PACKED):
        yield
        return
    for m in linears:
        key = (m.weight.data_ptr(), m.weight._version, batch_size)   # packed for this batch size
        if key != _PACKED.get(m, (None,))[0]:
            _PACKED[m] = (key, torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_size))
        m.forward = functools.partial(_packed_forward, _PACKED[m][1])   # shadows Linear.forward
    try:
        yield
    finally:
        for m in linears:
            del m.forward


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


@torch.no_grad()
def generate(model, prompts, max_new_tokens, eos_ids, temperature=1.0, top_k=None, top_p=None,
             generator=None, pad_id=0):
    """
    prompts: list of token-id lists. Returns a list of generated id lists (EOS kept when produced,
    nothing after it). Raises ValueError naming the limit when prompt + new tokens exceed the context.
    """
    if not prompts:
        return []
    device = model.lm_head.weight.device
    idx, mask = left_pad(prompts, pad_id, device)
    B, L = idx.shape
    ctx = model.cfg.max_seq_len
    if L > ctx:
        raise ValueError(f"prompt of {L} tokens is longer than the model's context ({ctx} tokens)")
    max_new_tokens = min(max_new_tokens, ctx - L)
    was_training = model.training
    model.eval()
    model.setup_cache(B, L + max_new_tokens)
    full_mask = torch.cat([mask, torch.ones(B, max_new_tokens, dtype=torch.long, device=device)], 1)
    eos = torch.tensor(list(eos_ids) or [-1], device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        with cpu_packed_linears(model, B):
            logits = model.logits(model(idx, full_mask[:, :L], cache_pos=0)[:, -1])    # (B, V)
            n = 0
            for t in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, top_p, generator)
                out[:, t] = torch.where(done, torch.full_like(nxt, pad_id), nxt)
                n = t + 1
                done = done | torch.isin(nxt, eos)
                if bool(done.all()) or t == max_new_tokens - 1:
                    break
                h = model(nxt[:, None], full_mask[:, :L + t + 1], cache_pos=L + t)  # (B, 1, dim)
                logits = model.logits(h[:, -1])
    finally:
        model.clear_cache()
        model.train(was_training)
    result = []
    eos_set = set(int(e) for e in eos_ids)
    for row in out[:, :n].tolist():
        cut = next((i + 1 for i, tok in enumerate(row) if tok in eos_set), len(row))
        result.append(row[:cut])
    return result
