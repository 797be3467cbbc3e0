"""SFT (nanoalign/sft.py) and the methods that are SFT on their own data: the loss is the response's
negative log-likelihood, masked tokens never count, per-token metrics divide by the response tokens."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from nanoalign.testing import sft_batches, tiny_models
from tests.helpers import assert_metrics, call_method, close, examples, lp_sum


# -- masked tokens never count ---------------------------------------------------------------------
@given(seed=st.integers(0, 1000))
def test_sft_loss_ignores_masked_tokens(seed):
    from nanoalign.common import batch_logps
    from tests.helpers import tiny
    m = tiny(seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 101, (2, 10), generator=g)
    mask = torch.zeros(2, 10)
    mask[:, 4:9] = 1                               # targets 4..8 are response tokens
    batch = {"ids": ids, "attn": torch.ones_like(ids), "targets": torch.roll(ids, -1, 1), "mask": mask}
    a = batch_logps(m, batch)
    t2 = batch["targets"].clone()
    t2[:, :4] = torch.randint(3, 101, (2, 4), generator=g)   # change masked targets only
    b = batch_logps(m, {**batch, "targets": t2})
    assert torch.equal(a, b)
    t3 = batch["targets"].clone()
    t3[:, 5] = (t3[:, 5] + 1) % 101                           # change a response target
    assert not torch.equal(a, batch_logps(m, {**batch, "targets": t3}))


# -- the response's negative log-likelihood --------------------------------------------------------
@settings(max_examples=examples(10))
@pytest.mark.parametrize("method", ["sft", "jsft", "pref_aug", "meta_aligner"])
@given(model=tiny_models(), batch=sft_batches())
def test_sft_family_is_response_nll(method, model, batch):
    ex = batch["examples"]
    nll = -sum(lp_sum(model, e["ids"], e["n_prompt"]) for e in ex)
    n_tokens = sum(len(e["ids"]) - e["n_prompt"] for e in ex)
    loss, m = call_method(method, model, batch)
    assert close(loss.item(), nll)
    assert_metrics(m, {"nll_per_token": nll / n_tokens})


# -- nll per token ---------------------------------------------------------------------------------
def test_sft_nll_per_token_divides_by_the_response_tokens():
    from nanoalign.data import make_batch
    from nanoalign.sft import sft_loss
    from nanoalign.testing import tiny_model
    model = tiny_model(0)
    for ids, n_prompt, n_tok in (([5, 6, 7], 2, 1), ([5, 6, 7, 8, 9], 2, 3)):
        b = make_batch([{"ids": ids, "n_prompt": n_prompt}], "sft", 0)
        assert b["n_tokens"] == n_tok and b["n_examples"] == 1
        nll, m = sft_loss(model, b, None, None)
        assert abs(m["nll_per_token"] - nll.item() / n_tok) < 1e-6
