"""SFT (nanoalign/sft.py) and the methods that are SFT on their own data: the loss is the response's
negative log-likelihood, per-token metrics divide by the response tokens. (That targets outside the
response mask never count is batch_logps's, tested in test_common.py.)"""
import pytest
from hypothesis import given, settings

from nanoalign.testing import sft_batches, tiny_models
from tests.helpers import assert_metrics, call_method, close, examples, lp_sum


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
