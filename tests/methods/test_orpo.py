"""ORPO (nanoalign/orpo.py): the loss through its entry point against equations 1-4 in float64, and the
odds-ratio term's properties: finite with finite gradients, monotone in the chosen log-prob,
antisymmetric under a swap, log-odds as float64 computes them; the prompt loss on CUDA."""
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from nanoalign.data import make_batch
from nanoalign.orpo import odds_ratio
from nanoalign.testing import pref_batches, tiny_model, tiny_models
from tests.helpers import EXAMPLES, assert_metrics, call_method, close, examples, mean, orpo_terms, swapped

# -- the odds-ratio term's properties --------------------------------------------------------------
lp = st.floats(-1e4, -1e-7, allow_nan=False)
small = st.floats(-20, -0.01)


@given(a=lp, b=lp)
def test_orpo_finite_with_finite_gradients_float32(a, b):
    aw = torch.tensor([a], requires_grad=True)
    al = torch.tensor([b], requires_grad=True)
    loss, z = odds_ratio(aw, al)
    g = torch.autograd.grad(loss.sum(), [aw, al])
    assert torch.isfinite(loss).all() and torch.isfinite(z).all()
    assert all(torch.isfinite(x).all() for x in g)


@given(a=small, b=small, d=st.floats(0.001, 1.0))
def test_orpo_decreases_as_chosen_logp_rises(a, b, d):
    hi = min(a + d, -1e-3)
    l0, _ = odds_ratio(torch.tensor([a]), torch.tensor([b]))
    l1, _ = odds_ratio(torch.tensor([hi]), torch.tensor([b]))
    assert l1.item() <= l0.item() + 1e-6


@given(a=lp, b=lp)
def test_swapping_chosen_and_rejected_negates_z(a, b):
    _, z1 = odds_ratio(torch.tensor([a]), torch.tensor([b]))
    _, z2 = odds_ratio(torch.tensor([b]), torch.tensor([a]))
    assert z1.item() == -z2.item()


@given(a=st.floats(-1e4, -1e-6), b=st.floats(-1e4, -1e-6))
def test_log_odds_matches_float64(a, b):
    def log_odds(x):  # float64, the textbook formula with the stable log(1 - e^x)
        return x - (math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x)))
    _, z = odds_ratio(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))
    assert abs(z.item() - (log_odds(a) - log_odds(b))) <= 1e-9 * max(1, abs(log_odds(a)), abs(log_odds(b)))


# -- the loss against equations 1-4, in float64 ----------------------------------------------------
def orpo_expected(model, examples, lam, prompt_loss):
    t = orpo_terms(model, examples, lam, prompt_loss)
    return sum(x["L"] for x in t), {k: mean([x[k] for x in t]) for k in ("z", "L_SFT", "L_OR", "logp_w", "logp_l")}


@settings(max_examples=examples(20))
@given(model=tiny_models(), batch=pref_batches(), lam=st.floats(0.05, 2.0), prompt_loss=st.booleans())
def test_orpo_matches_equations_1_to_4(model, batch, lam, prompt_loss):
    ex = batch["examples"]
    want, want_m = orpo_expected(model, ex, lam, prompt_loss)
    assume(not close(orpo_expected(model, swapped(ex), lam, prompt_loss)[0], want, 1e-3, 1e-3))
    loss, m = call_method("orpo", model, batch, orpo_lambda=lam, prompt_loss=prompt_loss)
    assert close(loss.item(), want)
    assert_metrics(m, want_m)


# -- the prompt loss on CUDA -----------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the padding column's device")
def test_orpo_prompt_loss_runs_on_cuda_and_matches_the_cpu():
    batch = make_batch(EXAMPLES, "pref", 0)
    model = tiny_model(seed=6, init_std=0.1)
    cpu, _ = call_method("orpo", model, batch, prompt_loss=True)
    gpu_batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    gpu, _ = call_method("orpo", model.cuda(), gpu_batch, prompt_loss=True)
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-3, abs=1e-4)
