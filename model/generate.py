"""
Batched generation with the KV cache: left-pad the prompts, prefill them in one forward, then decode
one token per step for every row until each row has produced its own EOS (or max_new_tokens).

Left padding keeps every row's next token in the same column, so one (B, 1) forward serves the
whole batch; the model counts positions from each row's first real token and never attends to pads.
Keys and values of past positions live in a KVCache (model/model.py); on the CPU the linears run
with prepacked weights (model/cpu_pack.py). Used by sample.py, the evaluation, and the on-policy
methods (all sampling lives here, once). Pass the tokenizer's `stop_ids` as eos_ids: EOS, the chat
template's end of turn, and generation_config.json's eos_token_id.
"""
import torch

from model.cpu_pack import cpu_packed_linears


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
    idx, mask = left_pad(prompts, pad_id, device)                  # (B, L) each
    B, L = idx.shape
    ctx = model.cfg.max_seq_len
    if L > ctx:
        raise ValueError(f"prompt of {L} tokens is longer than the model's context ({ctx} tokens)")
    max_new_tokens = min(max_new_tokens, ctx - L)
    was_training = model.training
    model.eval()
    cache = model.new_cache(B, L + max_new_tokens)
    # the mask of every position the cache will hold: the prompts', then one per new token
    full_mask = torch.cat([mask, torch.ones(B, max_new_tokens, dtype=torch.long, device=device)], 1)
    eos = torch.tensor(list(eos_ids) or [-1], device=device)
    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)   # new tokens
    done = torch.zeros(B, dtype=torch.bool, device=device)
    try:
        with cpu_packed_linears(model, B):
            logits = model.logits(model(idx, full_mask[:, :L], cache=cache)[:, -1])    # (B, V)
            n = 0
            for t in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, top_p, generator)
                out[:, t] = torch.where(done, torch.full_like(nxt, pad_id), nxt)
                n = t + 1
                done = done | torch.isin(nxt, eos)
                if bool(done.all()) or t == max_new_tokens - 1:
                    break
                h = model(nxt[:, None], full_mask[:, :L + t + 1], cache=cache)     # (B, 1, dim)
                logits = model.logits(h[:, -1])
    finally:
        model.train(was_training)
    result = []
    eos_set = set(int(e) for e in eos_ids)
    for row in out[:, :n].tolist():
        cut = next((i + 1 for i, tok in enumerate(row) if tok in eos_set), len(row))
        result.append(row[:cut])
    return result
