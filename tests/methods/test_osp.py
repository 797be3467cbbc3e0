"""OSP (nanoalign/osp.py): the SPCE loss against equation 7 on the samples it drew, its properties
derived by hand, the pairings (ranked, random, RAFT), the step's sampling settings and metrics, and
the pref_aug rows."""
import math

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

import train
from nanoalign.dpo import dpo_loss
from nanoalign.osp import random_pairs, ranked_pairs, spce_loss
from tests.helpers import (PROMPTS, OracleTask, assert_metrics, by_score, call_method, close, examples,
                           judge_by_rule, log_sigmoid, longer_rule, lp_mean, mean,
                           method_step, offpolicy_setup, on_policy_setup, pair_h, pref_rows, record_on_policy)

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


@given(st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.5, 0.9, 1.0]) | st.floats(0, 1), min_size=1, max_size=15))
@example([0.5, 0.5, 0.5])                   # all tied, odd: one pair, one left out
@example([0.7])                             # one sample: no pair
def test_ranked_pairing_pairs_the_ith_best_with_the_ith_worst(scores):
    """K samples give K // 2 disjoint pairs (y_h, y_l); pair i's scores are the i-th highest and the
    i-th lowest, so s(y_h) >= s(y_l) and the gap narrows from pair to pair; an odd K leaves out a
    sample of the median score. Said of scores, not indices: among tied samples any may be taken."""
    K = len(scores)
    pairs = ranked_pairs(scores)
    assert len(pairs) == K // 2
    used = [i for pr in pairs for i in pr]
    assert len(set(used)) == len(used) and all(0 <= i < K for i in used)     # disjoint, real samples
    desc = sorted(scores, reverse=True)
    assert [(scores[h], scores[lo]) for h, lo in pairs] == [(desc[i], desc[K - 1 - i]) for i in range(K // 2)]
    gaps = [scores[h] - scores[lo] for h, lo in pairs]
    assert all(g >= 0 for g in gaps) and gaps == sorted(gaps, reverse=True)
    if K % 2:
        left = set(range(K)) - set(used)
        assert [scores[i] for i in left] == [desc[K // 2]]                   # the median sample


@given(st.integers(2, 15), st.integers(0, 1000))
def test_random_pairing_is_disjoint(K, seed):
    pairs = random_pairs(K, torch.Generator().manual_seed(seed))
    used = [i for pr in pairs for i in pr]
    assert len(pairs) == K // 2 and len(set(used)) == len(used) and all(0 <= i < K for i in used)


@given(P=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6), data=st.data())
def test_target_under_principles_is_monotone_in_each_principles_probability(P, data):
    """OSP's p under a principle template (judge.judge_pairs with combine='mean', as osp_loss asks):
    raising one principle's position-swapped probability never lowers p, and raises it when the
    step is not lost to rounding; with one principle p is that principle's probability (soft, so
    SPCE is not DPO). the win rate would fail both."""
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


# -- the loss against equation 7 on the samples it drew --------------------------------------------
def std(xs):  # torch's default (unbiased)
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0


def _indices(samples, pairs_ids):
    """Sample indices of (winner ids, loser ids) pairs of one prompt; each sample used at most once."""
    used, out = set(), []
    for w, lo in pairs_ids:
        iw = next(k for k, y in enumerate(samples) if y == w and k not in used)
        used.add(iw)
        il = next(k for k, y in enumerate(samples) if y == lo and k not in used)
        used.add(il)
        out.append((iw, il))
    return out


@settings(max_examples=examples(5))
@pytest.mark.parametrize("pairing,osp_loss", [("ranked", "spce"), ("ranked", "dpo"), ("ranked", "ipo"),
                                              ("random", "spce"), ("random", "dpo"), ("raft", "spce")])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 2), K=st.sampled_from([4, 5]),
       beta=st.floats(0.05, 1.0))
def test_osp_matches_equation_7_on_the_samples_it_drew(pairing, osp_loss, seed, n, K, beta):
    tok, policy, ref, batch = on_policy_setup(seed, n)
    with pytest.MonkeyPatch.context() as mp:
        calls = judge_by_rule(mp, longer_rule)
        rec = record_on_policy(mp)
        torch.manual_seed(seed)
        loss, m = call_method("osp", policy, batch, tok=tok, ref=ref, beta=beta, osp_k=K,
                              osp_loss=osp_loss, pairing=pairing, gen_max_tokens=5)
    prompts, (samples,) = batch["prompts"], rec.samples
    assert len(samples) == n and all(len(s) == K for s in samples)
    texts = [[tok.decode(y) for y in s] for s in samples]
    assert all(c[0] is ref for c in calls)                       # pi_SFT judges, never the policy
    s = [[longer_rule(x, y, "") for y in t] for x, t in zip(PROMPTS, texts)]   # s(y) = p(y > blank)
    if pairing == "raft":                                        # SFT on each prompt's best sample
        best = [max(range(K), key=lambda k: (row[k], -k)) for row in s]
        resp = [samples[i][best[i]] for i in range(n)]
        assert rec.sft[-1] == (prompts, resp)
        nll = [-lp_mean(policy, p + r, len(p)) for p, r in zip(prompts, resp)]
        assert close(loss.item(), sum(nll))
        assert_metrics(m, {"raft_nll": mean(nll), "score_best": mean([max(row) for row in s])})
        return
    if pairing == "ranked":                                      # i-th best with i-th worst
        order = [sorted(range(K), key=lambda k: -row[k]) for row in s]
        pairs = [[(o[j], o[K - 1 - j]) for j in range(K // 2)] for o in order]
    else:                                                        # random: the pairs the step used
        _, rw, rl = rec.pairs[-1]
        per = K // 2
        pairs = [_indices(samples[i], list(zip(rw[i * per:(i + 1) * per], rl[i * per:(i + 1) * per])))
                 for i in range(n)]
    total, ps, hs, oriented = 0.0, [], [], []
    for i in range(n):
        per_pair = []
        for hi, lo in pairs[i]:
            q = longer_rule(PROMPTS[i], texts[i][hi], texts[i][lo])   # target p(y_h > y_l | x)
            ps.append(q)
            if osp_loss != "spce" and q < 0.5:                      # hard labels: orient by the judge
                hi, lo = lo, hi
            oriented.append((prompts[i], samples[i][hi], samples[i][lo]))
            h = pair_h(policy, ref, prompts[i], samples[i][hi], samples[i][lo])
            hs.append(h)
            per_pair.append({"spce": -(q * log_sigmoid(beta * h) + (1 - q) * log_sigmoid(-beta * h)),
                             "dpo": -log_sigmoid(beta * h), "ipo": (h - 1 / (2 * beta)) ** 2}[osp_loss])
        total += mean(per_pair)                                    # a prompt's K//2 pairs: the mean
    assert rec.pairs[-1] == tuple(list(x) for x in zip(*oriented))
    assert close(loss.item(), total)
    p_hats = [1 / (1 + math.exp(-beta * h)) for h in hs]
    assert_metrics(m, {"p_hat_mean": mean(p_hats), "p_hat_std": std(p_hats), "margin": mean([beta * h for h in hs])})
    if pairing == "ranked" or osp_loss == "spce":   # (a random pair's order before orienting is unknown)
        assert_metrics(m, {"p_mean": mean(ps), "p_std": std(ps)})
    if all(abs(h) > 1e-3 for h in hs):
        assert_metrics(m, {"reward_acc": mean([float(h > 0) for h in hs])})


# -- --osp_beta's help -----------------------------------------------------------------------------
def test_osp_beta_help_states_the_default_and_the_papers_values(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "osp", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "0.001 (dialogue)" in out and "0.02 (summaries)" in out and "(default: 0.1; > 0.0)" in out


# -- pref_aug rows, the pairings' generator, the step's sampling and metrics -----------------------
def test_pref_aug_rows_are_judgments_only(tmp_path):
    import train
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES, judgment_rows
    from nanoalign.osp import pref_aug_rows
    from tests.helpers import byte_tokenizer
    rows = pref_rows(3)
    got = pref_aug_rows(rows, train.make_config(method="pref_aug", judge_template="hh"), "train",
                        Run(tok=byte_tokenizer()))
    assert got == judgment_rows(rows, TEMPLATES["hh"])


def test_random_pairs_follow_the_generator_alone():
    from nanoalign.osp import random_pairs
    for K in (2, 5, 12):
        torch.manual_seed(0)
        a = random_pairs(K, torch.Generator().manual_seed(K))
        torch.manual_seed(1)
        b = random_pairs(K, torch.Generator().manual_seed(K))
        assert a == b
    draws = {tuple(random_pairs(12, torch.Generator().manual_seed(s))) for s in range(5)}
    assert len(draws) == 5


@pytest.mark.parametrize("pairing, K", [("ranked", 3), ("ranked", 4), ("raft", 3), ("random", 4)])
def test_osp_step_samples_at_the_papers_settings_and_logs_its_cost(pairing, K, monkeypatch):
    from nanoalign import REGISTRY, onpolicy
    from nanoalign.common import Run
    from tests.helpers import method_config
    tok, policy, ref, other, batch = offpolicy_setup()
    calls = judge_by_rule(monkeypatch, by_score)
    drawn, built, real = [], [], (onpolicy.sample, onpolicy.pair_batch, onpolicy.response_batch)

    def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator=None, top_k=None):
        drawn.append((model, n, temperature, top_p, max_new_tokens))
        return real[0](model, tok, prompts, n, temperature, top_p, max_new_tokens, generator, top_k)

    def pair_batch(prompts, wins, losses, pad_id, device, packed=False):
        built.append(("pref", len(prompts), device))
        return real[1](prompts, wins, losses, pad_id, device, packed)

    def response_batch(prompts, responses, pad_id, device, packed=False):
        built.append(("sft", len(prompts), device))
        return real[2](prompts, responses, pad_id, device, packed)
    monkeypatch.setattr(onpolicy, "sample", sample)
    monkeypatch.setattr(onpolicy, "pair_batch", pair_batch)
    monkeypatch.setattr(onpolicy, "response_batch", response_batch)
    cfg = method_config("osp", gen_max_tokens=4, pairing=pairing, osp_k=K)
    _, m = method_step(REGISTRY["osp"], policy, batch, Run(tok=tok, ref=ref, task=OracleTask(), judge=other), cfg)
    assert drawn == [(policy, K, 0.7, 0.9, 4)]
    dev = policy.lm_head.weight.device
    assert built == ([("sft", 2, dev)] if pairing == "raft" else [("pref", 2 * (K // 2), dev)])
    assert all(j is other for j, _, _ in calls)
    assert all(m[k] >= 0 for k in ("t_sample", "t_judge"))
    assert abs(m["samples_per_s"] * max(m["t_sample"], 1e-9) - 2 * K) < 1e-6
    if pairing != "raft":
        assert m["judge_agree"] == 1.0                       # the stub judge follows the oracle


def test_spce_keeps_the_ranked_pair_where_hard_labels_reorient_it(monkeypatch):
    """SPCE trains on (y_h, y_l) as ranked by s(y) = p(y > blank), with the soft target p(y_h > y_l);
    only the hard-label ablations orient a pair by that p. A judge that ranks longer samples higher
    against the blank but prefers the shorter one of a pair tells the two apart."""
    from nanoalign import REGISTRY
    from nanoalign.common import Run
    from tests.helpers import method_config, record_on_policy
    tok, policy, ref, _, batch = offpolicy_setup()

    def rule(x, a, b):
        if b == "":
            return len(a) / (len(a) + 1)
        return 0.5 if len(a) == len(b) else float(len(a) < len(b))
    judge_by_rule(monkeypatch, rule)
    rec = record_on_policy(monkeypatch)
    lens = {}
    for loss in ("spce", "dpo"):
        torch.manual_seed(3)
        cfg = method_config("osp", gen_max_tokens=8, osp_k=4, osp_loss=loss)
        method_step(REGISTRY["osp"], policy, batch, Run(tok=tok, ref=ref), cfg)
        _, wins, losses = rec.pairs[-1]
        lens[loss] = [(len(tok.decode(w)), len(tok.decode(lo))) for w, lo in zip(wins, losses)]
    assert lens["spce"] == [(b, a) if a != b else (a, b) for a, b in lens["dpo"]]
    assert all(w >= lo for w, lo in lens["spce"]) and any(w > lo for w, lo in lens["spce"])


def test_osp_stats_of_one_value_have_zero_spread():
    from nanoalign.osp import _stats
    assert _stats("p", torch.tensor([0.25])) == {"p_mean": 0.25, "p_std": 0.0}
    got = _stats("q", torch.tensor([1.0, 2.0, 4.0]))
    assert abs(got["q_mean"] - 7 / 3) < 1e-6 and abs(got["q_std"] - (7 / 3) ** 0.5) < 1e-6   # unbiased


def test_a_judge_that_records_no_rule_judges_by_each_papers_own(tmp_path):
    """A start that records no likelihood rule (an SFT warm-up, a downloaded model): OSP's judge takes
    the OSP paper's two-label softmax ('pair', section 3.2), Self-Judge's the Self-Judge paper's
    ('vocab', section 3.1); a recorded rule or a flag comes first."""
    import json
    import types
    from nanoalign import REGISTRY, onpolicy
    cfg = types.SimpleNamespace(init_from=str(tmp_path), judge_from="", judge_template="", likelihood="")
    assert REGISTRY["osp"].start_defaults(cfg) == {"judge_template": "compact", "likelihood": "pair"}
    assert REGISTRY["self_judge"].start_defaults(cfg) == {"judge_template": "compact", "likelihood": "vocab"}
    assert onpolicy.judging_defaults("pair")(cfg)["likelihood"] == "pair"     # the rule given, not a default
    (tmp_path / "state.json").write_text(json.dumps({"step": 1, "config": {"likelihood": "vocab"}}))
    assert REGISTRY["osp"].start_defaults(cfg) == {"judge_template": "compact", "likelihood": "vocab"}
    cfg.likelihood = "pair"
    assert REGISTRY["self_judge"].start_defaults(cfg) == {"judge_template": "compact"}
