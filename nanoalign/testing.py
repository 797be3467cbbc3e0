"""
Hypothesis strategies for property-testing preference losses: the ones nanoalign's own tests use,
for your own losses too (README.md, "Property-test your own loss").

    from hypothesis import given
    from nanoalign.testing import logp_vectors, judge_probs, pref_batches, tiny_models

    logps()           one per-sequence log-probability, a float <= 0; every draw may be an edge a
                      loss must survive: exactly 0, just below 0 (-1e-12, -1e-7), or near -1e4
    logp_vectors(k)   k float64 tensors of one shared length n (e.g. pol_w, pol_l, ref_w, ref_l)
    judge_probs()     a judge probability p(a > b) in [0, 1]: 0, 1, 1/2 and near them included
    prob_vectors(n)   a float64 tensor of n of those
    pref_examples()   preference examples as nanoalign.data.tokenize_rows makes them: token ids of
                      prompt + chosen and prompt + rejected, unequal lengths, chosen != rejected
    pref_batches()    those, batched by nanoalign.data.make_batch (right padding, response mask)
    sft_examples(), sft_batches(), mo_examples(), mo_batches()   the same for the other kinds
    tiny_models()     small random Llama models (model.model.Transformer), a few thousand weights

A model drawn by `tiny_models` is built from its seed alone (torch's global RNG is left untouched),
so a failing example replays. Token ids are drawn from [3, vocab_size); 0 is the padding id.
"""
import torch
from hypothesis import strategies as st

from model.model import ModelConfig, Transformer
from nanoalign.data import make_batch

LOGP_MIN = -1e4     # the most negative per-sequence log-prob the strategies draw by default
PAD_ID = 0          # the padding id of the drawn batches
FIRST_TOKEN = 3     # drawn token ids start here (0-2: padding, BOS, EOS of the tiny models)


# -- numbers ---------------------------------------------------------------------------------------
def logps(min_value=LOGP_MIN, max_value=0.0):
    """A per-sequence log-probability in [min_value, max_value] (max_value <= 0). Besides the whole
    range, a draw is often an edge: exactly max_value, within 1e-6 of 0, or within 0.1% of min_value
    (where log(1 - exp(x)) and exp(x) misbehave)."""
    assert min_value < max_value <= 0.0
    near_zero = [x for x in (0.0, -1e-12, -1e-7, -1e-4) if min_value <= x <= max_value]
    return st.one_of(
        st.floats(min_value, max_value, allow_nan=False, allow_infinity=False),
        st.sampled_from(near_zero + [max_value, min_value]),
        st.floats(max(min_value, -1e-6), max_value),
        st.floats(min_value, min(max_value, min_value * 0.999)),
    )


def logp_vectors(k=2, min_size=1, max_size=8, min_value=LOGP_MIN, max_value=0.0, dtype=torch.float64):
    """A tuple of k tensors, each of n log-probs (n in [min_size, max_size], shared)."""
    return st.integers(min_size, max_size).flatmap(lambda n: st.tuples(*[
        st.lists(logps(min_value, max_value), min_size=n, max_size=n).map(
            lambda v: torch.tensor(v, dtype=dtype)) for _ in range(k)]))


def judge_probs():
    """A judge probability p(a > b): anywhere in [0, 1], often exactly 0, 1/2 or 1, or within 1e-9
    of 0 or 1 (where a soft target meets log(0))."""
    return st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 1.0, 1e-9, 1 - 1e-9]))


def prob_vectors(n, dtype=torch.float64):
    return st.lists(judge_probs(), min_size=n, max_size=n).map(lambda v: torch.tensor(v, dtype=dtype))


# -- token data ------------------------------------------------------------------------------------
def token_ids(vocab_size, min_size, max_size):
    return st.lists(st.integers(FIRST_TOKEN, vocab_size - 1), min_size=min_size, max_size=max_size)


def _pref_example(prompt, chosen, rejected):
    if chosen == rejected:          # a pair is two different responses
        rejected = rejected + [FIRST_TOKEN if rejected[-1] != FIRST_TOKEN else FIRST_TOKEN + 1]
    return {"chosen": prompt + chosen, "n_prompt_chosen": len(prompt),
            "rejected": prompt + rejected, "n_prompt_rejected": len(prompt)}


def _unequal(examples, key):
    """Make sure a batch needs padding: if every row has one length, lengthen the first row."""
    lens = {len(s) for e in examples for s in key(e)}
    if len(lens) == 1:
        e = examples[0]
        if "ids" in e:
            e["ids"] = e["ids"] + [FIRST_TOKEN]
        else:
            e["chosen"] = e["chosen"] + [FIRST_TOKEN]
    return examples


def pref_examples(vocab_size=101, min_batch=1, max_batch=3, max_prompt=6, max_response=8):
    """Lists of preference examples {chosen, n_prompt_chosen, rejected, n_prompt_rejected} (token
    ids, prompt included): prompts of 1..max_prompt tokens, responses of 1..max_response, chosen and
    rejected always different, rows of unequal lengths."""
    one = st.builds(_pref_example, token_ids(vocab_size, 1, max_prompt),
                    token_ids(vocab_size, 1, max_response), token_ids(vocab_size, 1, max_response))
    return st.lists(one, min_size=min_batch, max_size=max_batch).map(
        lambda ex: _unequal(ex, lambda e: (e["chosen"], e["rejected"])))


def pref_batches(vocab_size=101, **kw):
    """Preference batches from `pref_examples`: chosen rows first, then rejected rows; the examples
    are in batch["examples"]."""
    return pref_examples(vocab_size, **kw).map(lambda ex: make_batch(ex, "pref", PAD_ID))


def sft_examples(vocab_size=101, min_batch=1, max_batch=3, max_prompt=6, max_response=8):
    one = st.builds(lambda p, r: {"ids": p + r, "n_prompt": len(p)},
                    token_ids(vocab_size, 1, max_prompt), token_ids(vocab_size, 1, max_response))
    return st.lists(one, min_size=min_batch, max_size=max_batch).map(
        lambda ex: _unequal(ex, lambda e: (e["ids"],)))


def sft_batches(vocab_size=101, **kw):
    return sft_examples(vocab_size, **kw).map(lambda ex: make_batch(ex, "sft", PAD_ID))


def mo_examples(vocab_size=101, min_batch=1, max_batch=3, max_prompt=6, max_response=8):
    """MO-ORPO examples {align, sj}: two preference examples per row (the self-judgement one with a
    longer prompt, as a judge prompt shows both responses)."""
    align = pref_examples(vocab_size, 1, 1, max_prompt, max_response)
    sj = pref_examples(vocab_size, 1, 1, 2 * max_prompt, 3)
    one = st.builds(lambda a, s: {"align": a[0], "sj": s[0]}, align, sj)
    return st.lists(one, min_size=min_batch, max_size=max_batch)


def mo_batches(vocab_size=101, **kw):
    return mo_examples(vocab_size, **kw).map(lambda ex: make_batch(ex, "mo", PAD_ID))


# -- models ----------------------------------------------------------------------------------------
def tiny_model(seed=0, vocab_size=101, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=48,
               max_seq_len=64, init_std=0.02, bos_token_id=1, eos_token_id=2, **kw):
    """A small random Transformer, a function of its arguments alone. init_std above the default
    0.02 gives peakier next-token distributions (log-probs that differ more between responses)."""
    cfg = ModelConfig(vocab_size=vocab_size, dim=dim, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv_heads, hidden_dim=hidden_dim, max_seq_len=max_seq_len,
                      bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Transformer(cfg)
        if init_std != 0.02:
            for name, p in model.named_parameters():
                if p.dim() == 2:
                    torch.nn.init.normal_(p, 0.0, init_std)
    return model


def tiny_models(vocab_size=101, init_std=st.sampled_from([0.02, 0.1, 0.3]), **kw):
    """Random small models: `tiny_model` of a drawn seed (and init_std, a strategy or a number)."""
    std = init_std if isinstance(init_std, st.SearchStrategy) else st.just(init_std)
    return st.builds(tiny_model, seed=st.integers(0, 2 ** 16), vocab_size=st.just(vocab_size),
                     init_std=std, **{k: st.just(v) for k, v in kw.items()})
