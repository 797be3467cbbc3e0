"""DPO and IPO (nanoalign/dpo.py): the losses through their entry points against their equations in
float64 (also as built again at test time), the gradient of DPO, IPO's minimum, and the metrics
(margin, reward accuracy)."""
import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from nanoalign.common import frozen_copy
from nanoalign.data import make_batch
from nanoalign.dpo import dpo_loss, ipo_loss, pair_metrics
from nanoalign.testing import pref_batches, tiny_model, tiny_models
from tests.helpers import (EXAMPLES, assert_metrics, call_method, close, examples, log_sigmoid, lp_sum, mean,
                           swapped)


# -- DPO's gradient, IPO's minimum -----------------------------------------------------------------
@given(pw=st.floats(-50, 0), pl=st.floats(-50, 0), rw=st.floats(-50, 0), rl=st.floats(-50, 0),
       beta=st.floats(0.01, 2.0))
def test_dpo_gradient_is_minus_beta_sigmoid(pw, pl, rw, rl, beta):
    x = torch.tensor([pw, pl], dtype=torch.float64, requires_grad=True)
    loss = dpo_loss(x[0], x[1], torch.tensor(rw, dtype=torch.float64), torch.tensor(rl, dtype=torch.float64), beta)
    g = torch.autograd.grad(loss, x)[0]
    h = (pw - rw) - (pl - rl)
    expect = -beta / (1 + math.exp(beta * h))     # -beta * sigma(-beta h)
    assert abs(g[0].item() - expect) < 1e-9 and abs(g[1].item() + expect) < 1e-9


@given(beta=st.floats(0.01, 2.0), shift=st.floats(-3, 3).filter(lambda s: abs(s) > 1e-3),
       rw=st.floats(-10, 0), rl=st.floats(-10, 0), pl=st.floats(-10, 0))
def test_ipo_minimized_at_half_inverse_beta(beta, shift, rw, rl, pl):
    def at(h):  # choose pol_w so that the log-ratio difference equals h
        pw = h + (pl - rl) + rw
        return ipo_loss(torch.tensor(pw, dtype=torch.float64), torch.tensor(pl, dtype=torch.float64),
                        torch.tensor(rw, dtype=torch.float64), torch.tensor(rl, dtype=torch.float64), beta).item()
    h_star = 1 / (2 * beta)
    assert at(h_star) < 1e-12
    assert at(h_star + shift) > at(h_star)


# -- the losses against their equations, in float64 ------------------------------------------------
def dpo_ipo_expected(method, model, ref, examples, beta):
    losses, hs = [], []
    for e in examples:
        w, nw, lo, nl = e["chosen"], e["n_prompt_chosen"], e["rejected"], e["n_prompt_rejected"]
        h = (lp_sum(model, w, nw) - lp_sum(ref, w, nw)) - (lp_sum(model, lo, nl) - lp_sum(ref, lo, nl))
        losses.append(-log_sigmoid(beta * h) if method == "dpo" else (h - 1 / (2 * beta)) ** 2)
        hs.append(h)
    return sum(losses), hs


@settings(max_examples=examples(15))
@pytest.mark.parametrize("method", ["dpo", "ipo"])
@given(model=tiny_models(), ref=tiny_models(), batch=pref_batches(), beta=st.floats(0.05, 1.0))
def test_dpo_and_ipo_match_their_equations(method, model, ref, batch, beta):
    ex = batch["examples"]
    want, hs = dpo_ipo_expected(method, model, ref, ex, beta)
    assume(all(abs(h) > 1e-3 for h in hs))              # reward_acc is well defined in float32
    assume(not close(dpo_ipo_expected(method, model, ref, swapped(ex), beta)[0], want, 1e-3, 1e-3))
    loss, m = call_method(method, model, batch, ref=ref, beta=beta)
    assert close(loss.item(), want)
    assert_metrics(m, {"margin": mean([beta * h for h in hs]), "reward_acc": mean([float(h > 0) for h in hs])})


# -- code that runs at import time, run again at test time ------------------------------------------------
# mutmut's workers are forked from a process that has already imported nanoalign, so a function
# called only while a module loads (an option declaration, a method's registration, a loss built by
# a factory) keeps its import-time result under every mutant. These tests call those functions
# again, at test time, and check what they build.
@pytest.mark.parametrize("method", ["dpo", "ipo"])
def test_dpo_and_ipo_losses_built_at_test_time_match_their_equations(method, monkeypatch):
    """nanoalign.dpo.pairs_loss builds the registered DPO / IPO losses at import; build them again and
    put them through the equation test of tests/methods/test_dpo.py."""
    import dataclasses
    from nanoalign import REGISTRY, dpo
    from tests.methods import test_dpo as test_method_math
    fn = {"dpo": dpo.dpo_loss, "ipo": dpo.ipo_loss}[method]
    monkeypatch.setitem(REGISTRY, method, dataclasses.replace(REGISTRY[method], loss=dpo.pairs_loss(fn)))
    test_method_math.test_dpo_and_ipo_match_their_equations(method=method)


# -- the metrics: margin and reward accuracy -------------------------------------------------------
def test_reward_accuracy_counts_only_strictly_positive_margins():
    m = pair_metrics(torch.tensor([0.0, 0.0, 2.0, -1.0]), 0.5)
    assert m["reward_acc"] == 0.25 and m["margin"] == pytest.approx(0.5 * 1.0 / 4)


def test_dpo_at_its_frozen_start_has_zero_margin_and_zero_reward_accuracy():
    model = tiny_model(seed=1, init_std=0.1)
    _, m = call_method("dpo", model, make_batch(EXAMPLES, "pref", 0), ref=frozen_copy(model))
    assert m["margin"] == 0.0 and m["reward_acc"] == 0.0          # h == 0 exactly: no pair has h > 0
