"""Multi-objective ORPO (issue 5): loss properties, the self-judgement transform, the schedules."""
import dataclasses
import json
import math
import random

import pytest
import torch
from hypothesis import example, given, strategies as st

import train
from experiments import task
from nanoalign import REGISTRY
from nanoalign.data import make_batch, tokenize_rows
from nanoalign.judge import REJECTED_FIRST, SJ_TEMPLATES, attach_sj, sj_triple
from nanoalign.mo_orpo import conditional, conjoined_or, phase, weighted
from nanoalign.orpo import odds_ratio
from experiments.plot import pareto
from model.model import ModelConfig, Transformer
from tests.test_train import grads_of, run_cfg


def small_model(seed=0):  # test_train's small model with room for the judge prompts
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=264, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   hidden_dim=48, max_seq_len=512, tie_embeddings=True,
                                   bos_token_id=256, eos_token_id=257, pad_token_id=258))

lp = st.floats(-30, -1e-4, allow_nan=False)
zs = st.floats(-20, 20, allow_nan=False, width=32)  # exactly representable in float32
vec = st.lists(st.tuples(zs, st.floats(0, 10, width=32), st.floats(0, 10, width=32)), min_size=1, max_size=12)


@given(a=lp, b=lp)
def test_conjoined_with_zero_sj_is_orpo(a, b):
    l_or, z = odds_ratio(torch.tensor([a]), torch.tensor([b]))
    assert torch.allclose(conjoined_or(z, torch.zeros(1)), l_or, rtol=1e-6, atol=1e-7)


# F.softplus(x) (beta 1, threshold 20) returns x itself where x > 20, so there its gradient is
# exactly 1 where the exact one is sigmoid(x) = 1 - sigmoid(-x): off by sigmoid(-x) < e^-20 ~ 2.1e-9.
# That is softplus's documented linear branch, not an error of the conjoined term, so the tolerance
# allows exactly that much on that branch and stays at 1e-9 relative everywhere else.
SOFTPLUS_THRESHOLD = 20.0


@given(za=zs, zj=zs)
@example(za=-0.5, zj=20.0)           # softplus's argument z_sj - z_align = 20.5: the linear branch
def test_conjoined_gradient_wrt_z_align(za, zj):
    z_a = torch.tensor([za], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(conjoined_or(z_a, torch.tensor([zj], dtype=torch.float64)).sum(), z_a)
    linear = zj - za > SOFTPLUS_THRESHOLD
    assert math.isclose(g.item(), -1 / (1 + math.exp(za - zj)), rel_tol=1e-9,
                        abs_tol=math.exp(-SOFTPLUS_THRESHOLD) if linear else 1e-12)


@given(aw=lp, al=lp, sw=lp, sl=lp)
def test_no_gradient_reaches_sj_logps_through_conjoined_term(aw, al, sw, sl):
    a = torch.tensor([aw, al], requires_grad=True)
    s = torch.tensor([sw, sl], requires_grad=True)
    _, z_a = odds_ratio(a[:1], a[1:])
    _, z_s = odds_ratio(s[:1], s[1:])
    ga, gs = torch.autograd.grad(conjoined_or(z_a, z_s).sum(), [a, s], allow_unused=True)
    assert gs is None or gs.abs().max().item() == 0.0
    assert ga.abs().max().item() > 0.0 or abs(z_a.item() - z_s.item()) > 30


@given(rows=vec, w1=st.floats(0, 1), w2=st.floats(0, 1))
def test_conditional_is_per_example_epsilon_constraint(rows, w1, w2):
    z_sj = torch.tensor([r[0] for r in rows])
    la, ls = torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows])
    loss, active = conditional(la, ls, z_sj, w1, w2)
    for i, (z, a, s) in enumerate(rows):
        want = w1 * a + w2 * s if z < 0 else a         # scalarization(w1, w2) / alignment only
        assert math.isclose(loss[i].item(), want, rel_tol=1e-6, abs_tol=1e-6)
        assert bool(active[i]) == (z < 0)
    assert torch.equal(weighted(la, ls, w1, w2), w1 * la + w2 * ls)


def _mo_batch(n=6, seed=0):
    tok = task.build_tokenizer()
    rows = attach_sj(task.preference_rows(n, seed), seed, "train")
    ex, dropped = tokenize_rows(rows, tok, "mo", 128, sj_max_length=384)
    assert dropped == 0
    return make_batch(ex, "mo", tok.pad_id)


def test_scalarization_with_w1_one_equals_orpo():
    b = _mo_batch()
    cfg = train.make_config(method="scalarization", w1=1.0)
    model = small_model()
    l1, _ = REGISTRY["scalarization"].loss(model, b, None, cfg)
    l1.backward()
    g1 = grads_of(model)
    model.zero_grad()
    l2, _ = REGISTRY["orpo"].loss(model, b["align"], None, cfg)
    l2.backward()
    assert torch.allclose(l1, l2, rtol=1e-6)
    for x, y in zip(g1, grads_of(model)):
        assert torch.allclose(x, y, atol=1e-7)


@pytest.mark.parametrize("method", ["conjoined", "conditional"])
def test_mo_grad_accumulation_equals_one_big_batch(method):
    m, cfg, model = REGISTRY[method], train.make_config(method=method, w1=0.7, w2=0.3), small_model()
    tok = task.build_tokenizer()
    rows = attach_sj(task.preference_rows(8, 0), 0, "train")
    ex, _ = tokenize_rows(rows, tok, "mo", 128, sj_max_length=384)
    train.accumulate_gradients(model, m, [make_batch(ex, "mo", tok.pad_id)], None, cfg)
    one = grads_of(model)
    model.zero_grad()
    train.accumulate_gradients(model, m, [make_batch(ex[i:i + 2], "mo", tok.pad_id)
                                          for i in range(0, 8, 2)], None, cfg)
    for a, b in zip(one, grads_of(model)):
        assert (a - b).abs().max().item() <= 1e-6


# -- the self-judgement transform ---------------------------------------------------------------
text = st.text(alphabet="abcdefgh 0123456789.", min_size=1, max_size=20)


@given(p=text, w=text, l=text, seed=st.integers(0, 10**6))
def test_sj_triple_names_the_better_response(p, w, l, seed):
    row = {"prompt": "Q " + p, "chosen": "WIN " + w, "rejected": "LOSE " + l}
    sj = sj_triple(row, random.Random(seed))
    t = next(t for t in SJ_TEMPLATES if t.name == sj["template"])
    user = sj["prompt"][-1]["content"]
    assert row["chosen"] in user and row["rejected"] in user and row["prompt"] in user
    chosen_first = user.index(row["chosen"]) < user.index(row["rejected"])
    assert chosen_first == (not sj["rejected_first"])
    pos = 0 if chosen_first else 1
    assert sj["chosen"] == t.answer.format(label=t.labels[pos])          # names the better one
    assert sj["rejected"] == t.answer.format(label=t.labels[1 - pos])    # names the worse one
    assert sj["chosen"] != sj["rejected"]


def test_sj_templates_rejected_first_rate_and_determinism():
    rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(10_000)]
    a, b = attach_sj(rows, 7, "train"), attach_sj(rows, 7, "train")
    assert [r["sj"] for r in a] == [r["sj"] for r in b]                 # same seed, same data
    assert [r["sj"] for r in a] != [r["sj"] for r in attach_sj(rows, 8, "train")]
    n = len(rows)
    rate = sum(r["sj"]["rejected_first"] for r in a) / n
    half = 2.576 * math.sqrt(REJECTED_FIRST * (1 - REJECTED_FIRST) / n)  # 99% normal interval
    assert abs(rate - REJECTED_FIRST) <= half
    used = {r["sj"]["template"] for r in a}
    assert len(used) >= 50 and len({(t.user, t.answer) for t in SJ_TEMPLATES if t.name in used}) >= 50


def test_long_sj_prompts_are_dropped_and_counted():
    tok = task.build_tokenizer()
    rows = attach_sj(task.preference_rows(5, 0), 0, "train")
    rows[2] = {**rows[2], "sj": {**rows[2]["sj"], "prompt": "x" * 500}}
    ex, dropped = tokenize_rows(rows, tok, "mo", 128, sj_max_length=384)
    assert dropped == 1 and len(ex) == 4


# -- schedules, defaults, metrics, the figure's Pareto front --------------------------------------
def test_phase_schedules():
    assert [phase("epoch_by_epoch", e + 0.5, 4) for e in range(4)] == ["align", "sj", "align", "sj"]
    assert [phase("task_by_task", e + 0.5, 4) for e in range(4)] == ["sj", "sj", "align", "align"]


def test_method_defaults_apply_unless_set(tmp_path):
    assert (train.parse_config(["--method", "conjoined"]).w1, train.parse_config(
        ["--method", "conjoined"]).w2) == (0.7, 0.3)
    assert train.parse_config(["--method", "conditional", "--w1", "0.5"]).w1 == 0.5
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"method": "scalarization", "w1": 0.8}))
    assert train.parse_config(["--config", str(f)]).w1 == 0.8
    assert train.parse_config(["--method", "scalarization"]).w1 == 0.6


def test_epoch_by_epoch_alternates_in_the_loop(tmp_path):
    # 16 rows in micro-batches of 4 = 4 micro-batches per epoch; grad_accum 2 -> 2 steps an epoch
    cfg = run_cfg(tmp_path, method="epoch_by_epoch", n_train=16, max_steps=8, val_data="")
    train.train(cfg)
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["task_sj"] for r in recs if r.get("split") == "train"] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert all(("z_sj" in r) == bool(r["task_sj"]) for r in recs if r.get("split") == "train")


def test_conditional_logs_active_fraction_and_both_log_odds(tmp_path):
    cfg = dataclasses.replace(run_cfg(tmp_path, method="conditional", max_steps=2), w1=0.9, w2=0.1)
    train.train(cfg)
    r = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert 0 <= r["sj_active"] <= 1 and {"z_align", "z_sj", "L_SFT_sj", "L_OR_align"} <= set(r)


@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 5)), min_size=1, max_size=10))
def test_pareto_front(points):
    front = set(pareto(points))
    for i, (a, b) in enumerate(points):
        dominated = any(c <= a and d <= b and (c, d) != (a, b) for c, d in points)
        assert (i in front) == (not dominated)


def test_judge_accuracy_scores_in_eval_mode_and_restores_the_mode():
    """MO-ORPO's self-judgement accuracy is a measurement: LoRA dropout off while it scores (so the
    same model scores the same twice), the model's training mode as it was after."""
    from model.lora import apply_lora
    from nanoalign.mo_orpo import judge_accuracy
    tok = task.build_tokenizer()
    rows = attach_sj(task.preference_rows(8, 0), 0, "val")
    ex, _ = tokenize_rows(rows, tok, "mo", 128, sj_max_length=384)
    batches = [make_batch([e["sj"] for e in ex], "pref", tok.pad_id)]
    model = small_model(0)
    apply_lora(model, 4, 8.0, dropout=0.9)
    for m in model.modules():                  # non-zero adapters, so dropout would change the output
        if hasattr(m, "B"):
            torch.nn.init.normal_(m.B, std=1.0)
    modes = []
    model.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    model.train()
    first = judge_accuracy(model, batches)
    assert modes and not any(modes)            # every forward in eval mode
    assert model.training                      # restored
    assert judge_accuracy(model, batches) == first
    model.eval()
    judge_accuracy(model, batches)
    assert not model.training
