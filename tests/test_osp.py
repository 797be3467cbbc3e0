"""OSP (issue 7): properties of the SPCE loss and of the pairings, derived from eq. 7 by hand."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

from nanoalign.dpo import dpo_loss
from nanoalign.osp import random_pairs, ranked_pairs, spce_loss

lp = st.floats(-200, -0.01, allow_nan=False)
beta = st.floats(0.001, 2.0)
prob = st.floats(0.0, 1.0)


def T(x):
    return torch.tensor([x], dtype=torch.float64)


@given(a=lp, b=lp, c=lp, d=lp, be=beta)
def test_hard_targets_are_dpo(a, b, c, d, be):
    assert math.isclose(spce_loss(T(a), T(b), T(c), T(d), T(1.0), be).item(),
                        dpo_loss(T(a), T(b), T(c), T(d), be).item(), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(spce_loss(T(a), T(b), T(c), T(d), T(0.0), be).item(),
                        dpo_loss(T(b), T(a), T(d), T(c), be).item(), rel_tol=1e-9, abs_tol=1e-12)


def _spce_of_h(h, p, be):  # SPCE as a function of the log-ratio difference alone
    return spce_loss(h, torch.zeros_like(h), torch.zeros_like(h), torch.zeros_like(h), p, be)


@given(p=st.floats(0.01, 0.99), be=beta, h=st.floats(-50, 50))
def test_gradient_wrt_log_ratio_difference(p, be, h):
    x = T(h).requires_grad_(True)
    (g,) = torch.autograd.grad(_spce_of_h(x, T(p), be).sum(), x)
    p_hat = 1 / (1 + math.exp(-be * h))
    assert math.isclose(g.item(), be * (p_hat - p), rel_tol=1e-7, abs_tol=1e-12)


@given(p=st.floats(0.01, 0.99), be=beta, d=st.floats(0.01, 5.0))
def test_minimized_where_predicted_strength_equals_target(p, be, d):
    h_star = math.log(p / (1 - p)) / be                 # sigmoid(beta * h*) = p
    at = _spce_of_h(T(h_star), T(p), be).item()
    assert at <= _spce_of_h(T(h_star + d / be), T(p), be).item() + 1e-12
    assert at <= _spce_of_h(T(h_star - d / be), T(p), be).item() + 1e-12
    ent = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # the minimum is the target's entropy
    assert math.isclose(at, ent, rel_tol=1e-6, abs_tol=1e-9)


@given(a=lp, b=lp, c=lp, d=lp, p=prob, be=beta)
def test_swapping_the_pair_and_the_target_changes_nothing(a, b, c, d, p, be):
    x = spce_loss(T(a), T(b), T(c), T(d), T(p), be).item()
    y = spce_loss(T(b), T(a), T(d), T(c), T(1 - p), be).item()
    assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


@given(st.lists(st.floats(0, 1), min_size=2, max_size=15, unique=True))
def test_ranked_pairing(scores):
    K = len(scores)
    pairs = ranked_pairs(scores)
    assert len(pairs) == K // 2
    used = [i for pr in pairs for i in pr]
    assert len(set(used)) == len(used)                   # disjoint
    by_rank = sorted(range(K), key=lambda i: -scores[i])
    for i, (hi, lo) in enumerate(pairs):
        assert hi == by_rank[i] and lo == by_rank[K - 1 - i]
    if K % 2:
        assert by_rank[K // 2] not in used               # the median sample is left out


@given(st.integers(2, 15), st.integers(0, 1000))
def test_random_pairing_is_disjoint(K, seed):
    pairs = random_pairs(K, torch.Generator().manual_seed(seed))
    used = [i for pr in pairs for i in pr]
    assert len(pairs) == K // 2 and len(set(used)) == len(used) and all(0 <= i < K for i in used)


def test_osp_and_self_judge_steps_log_the_cost_split(tmp_path):
    import dataclasses
    import json

    import train
    from tests.test_train import run_cfg
    for method, extra in (("osp", {"osp_k": 3}), ("osp", {"pairing": "raft", "osp_k": 3}),
                          ("self_judge", {}), ("self_judge_offpolicy", {})):
        cfg = dataclasses.replace(run_cfg(tmp_path / method, method=method, max_steps=1, grad_accum=1,
                                          val_data="", gen_max_tokens=6), **extra)
        train.train(cfg)
        rec = json.loads(open(tmp_path / method / "run" / "metrics.jsonl").readline())
        assert {"t_sample", "t_judge", "t_update", "step_s", "sample_len"} <= set(rec), method
        assert rec["t_sample"] + rec["t_judge"] + rec["t_update"] <= rec["step_s"] + 1e-3


@given(P=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6), data=st.data())
def test_target_under_principles_is_monotone_in_each_principles_probability(P, data):
    """OSP's p under a principle template (judge.judge_pairs with combine='mean', as osp_loss asks):
    raising one principle's position-swapped probability never lowers p, and raises it when the
    step is not lost to rounding; with one principle p is that principle's probability (soft, so
    SPCE is not DPO). JM-PR's win rate would fail both."""
    from nanoalign import judge
    t = judge.TEMPLATES["compact_principle"]

    def target(ps):
        def loglik(model, tok, tt, items, likelihood="pair", batch_size=64):
            p = torch.tensor([ps[int(it[3])] for it in items], dtype=torch.float64)
            return torch.stack([p.log(), (1 - p).log()], 1)            # log L_a, log L_b
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(judge, "swapped_loglik", loglik)
            principles = [(str(i), "d") for i in range(len(ps))]
            return judge.judge_pairs(None, None, t, [("q", "a", "b")], principles, likelihood="pair",
                                     combine="mean").item()

    k = data.draw(st.integers(0, len(P) - 1))
    up = data.draw(st.floats(P[k], 1.0))
    higher = P[:k] + [up] + P[k + 1:]
    assert target(higher) >= target(P)
    if up > P[k] + 1e-6:
        assert target(higher) > target(P)
    if len(P) == 1:
        assert math.isclose(target(P), P[0], rel_tol=1e-12, abs_tol=1e-12)
