"""Multi-objective ORPO (nanoalign/mo_orpo.py): every variant against the paper, loss properties, the
self-judgement transform (templates, triples, the rejected-first draw), the schedules, defaults and
metrics."""
import dataclasses
import json
import math
import random

import pytest
import torch
from hypothesis import assume, example, given, settings, strategies as st

import train
from nanoalign import REGISTRY
from nanoalign.data import make_batch, tokenize_rows
from nanoalign.mo_orpo import (REJECTED_FIRST, SJ_TEMPLATES, attach_sj, conditional, conjoined_or, phase,
                               sj_triple, weighted)
from nanoalign.orpo import odds_ratio
from nanoalign.tasks import arith as task
from nanoalign.testing import mo_batches, tiny_model, tiny_models
from tests.helpers import (EXAMPLES, assert_metrics, call_method, close, examples, grads_of, log_sigmoid,
                           mean, orpo_terms, pref_rows, run_cfg, small_model, swapped)

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


# -- the sequential schedules, the method's defaults, what it logs ---------------------------------
def test_each_schedule_gives_each_epoch_its_task():
    assert [phase("epoch_by_epoch", e + 0.5, 4) for e in range(4)] == ["sj", "align", "sj", "align"]
    assert [phase("epoch_by_epoch", e + 0.5, 3) for e in range(3)] == ["align", "sj", "align"]
    assert [phase("task_by_task", e + 0.5, 4) for e in range(4)] == ["sj", "sj", "align", "align"]


@given(epochs=st.floats(0.05, 12), kind=st.sampled_from(["epoch_by_epoch", "task_by_task"]))
def test_both_sequential_schedules_end_on_the_evaluated_task(epochs, kind):
    """Whatever the run's length, its last step trains alignment. epoch_by_epoch gives each whole
    epoch of data one task and switches at every whole epoch; task_by_task switches once."""
    assert phase(kind, epochs * (1 - 1e-9), epochs) == "align"
    if kind == "epoch_by_epoch":
        whole = [phase(kind, k + 0.01, epochs) for k in range(int(epochs))]
        assert whole == [phase(kind, k + 0.99, epochs) for k in range(int(epochs))]
        assert all(x != y for x, y in zip(whole, whole[1:]))


def test_epoch_by_epoch_of_the_results_table_ends_on_a_whole_alignment_epoch():
    """150 steps of 16 over 600 rows: 37 batches an epoch, 4.05 epochs. The fourth whole epoch
    trains alignment, and the 2 steps past it join it (the schedule once alternated from the start:
    align, sj, align, sj, then 2 steps of align)."""
    epochs = 150 / 37
    assert [phase("epoch_by_epoch", e, epochs) for e in (0.5, 1.5, 2.5, 3.5, 4.02)] == \
        ["sj", "align", "sj", "align", "align"]
    assert [phase("epoch_by_epoch", e, 3.4) for e in (0.5, 1.5, 2.5, 3.2)] == ["align", "sj", "align", "align"]


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
    assert [r["task_sj"] for r in recs if r.get("split") == "train"] == [1, 1, 0, 0, 1, 1, 0, 0]
    assert all(("z_sj" in r) == bool(r["task_sj"]) for r in recs if r.get("split") == "train")


def test_epoch_by_epoch_says_when_the_run_is_too_short_for_an_sj_epoch(tmp_path, capsys):
    # 16 rows, 2 steps an epoch: 2 steps (1 epoch) train the alignment task alone, said once; 3 steps
    # (1.5 epochs, two whole ones) train an SJ epoch first, and say nothing
    for steps, note in ((2, True), (3, False)):
        cfg = run_cfg(tmp_path / str(steps), method="epoch_by_epoch", n_train=16, max_steps=steps, val_data="")
        train.train(cfg)
        out = capsys.readouterr().out
        assert out.count("note: epoch_by_epoch alternates whole epochs and this run is 1.00 epochs") == note, out
        recs = [json.loads(x) for x in open(tmp_path / str(steps) / "run" / "metrics.jsonl")]
        assert any(r.get("task_sj") for r in recs) != note


def test_conditional_logs_active_fraction_and_both_log_odds(tmp_path):
    cfg = dataclasses.replace(run_cfg(tmp_path, method="conditional", max_steps=2), w1=0.9, w2=0.1)
    train.train(cfg)
    r = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert 0 <= r["sj_active"] <= 1 and {"z_align", "z_sj", "L_SFT_sj", "L_OR_align"} <= set(r)


pair_scores = st.tuples(st.integers(-3, 3), st.integers(-3, 3))      # (log p(c), log p(r)), ties likely


@settings(max_examples=examples(50))
@given(batches=st.lists(st.lists(pair_scores, min_size=1, max_size=4), max_size=3))
@example(batches=[[(1, 0), (2, 2), (3, 1)], [(0, -1)]])        # two batches and a tie: 3/4
@example(batches=[[(1, 0)]])                                   # one won pair: 1.0
def test_judge_accuracy_is_the_fraction_of_pairs_whose_better_answer_scores_higher(batches):
    """Over every batch together: a pair is a hit when the answer naming the better response has
    the strictly higher log-prob (a tie is no verdict); no pairs at all score 0."""
    from nanoalign import mo_orpo

    def logps(model, b, reduction="sum"):  # the chosen rows first, then the rejected (make_batch)
        assert reduction == "sum"
        return torch.tensor([float(c) for c, _ in b["pairs"]] + [float(r) for _, r in b["pairs"]])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mo_orpo, "batch_logps", logps)
        got = mo_orpo.judge_accuracy(torch.nn.Linear(1, 1), [{"n_examples": len(b), "pairs": b}
                                                              for b in batches])
    pairs = [q for b in batches for q in b]
    assert got == (sum(c > r for c, r in pairs) / len(pairs) if pairs else 0)


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


# -- every variant's loss against the paper, in float64 --------------------------------------------
def mo_expected(kind, model, batch, lam, w1, w2, epoch, epochs, prompt_loss=False):
    """Per kind, the loss of MO-ORPO sec. 3.2 / eq. 6 / Alg. 1 / Table 2, from the two tasks' ORPO terms.
    prompt_loss counts the alignment prompt in L_SFT_align, never the SJ prompt (it shows both
    responses)."""
    ex = batch["examples"]
    a = orpo_terms(model, [e["align"] for e in ex], lam, prompt_loss)
    s = orpo_terms(model, [e["sj"] for e in ex], lam)
    mets = {}
    if kind == "scalarization":
        per = [w1 * x["L"] + (1 - w1) * y["L"] for x, y in zip(a, s)]
    elif kind == "sj_sft":
        per = [w1 * x["L"] + (1 - w1) * y["L_SFT"] for x, y in zip(a, s)]
    elif kind == "conjoined":   # eq. 6: the alignment OR term is -log sigmoid(z_align - z_sj), alone
        l_or = [-log_sigmoid(x["z"] - y["z"]) for x, y in zip(a, s)]
        per = [w1 * (x["L_SFT"] + lam * o) + w2 * y["L"] for x, y, o in zip(a, s, l_or)]
        mets["L_OR_conjoined"] = mean(l_or)
    elif kind == "conditional":  # Alg. 1: the SJ term only where the SJ task is not yet fit
        per = [w1 * x["L"] + w2 * y["L"] if y["z"] < 0 else x["L"] for x, y in zip(a, s)]
        mets["sj_active"] = mean([float(y["z"] < 0) for y in s])
    else:
        # of the 4 epochs, the last (3) trains alignment and they alternate: SJ in 0 and 2
        sj_now = (int(epoch) in (0, 2)) if kind == "epoch_by_epoch" else (epoch < epochs / 2)
        per = [y["L"] if sj_now else x["L"] for x, y in zip(a, s)]
        mets["task_sj"] = float(sj_now)
        a, s = (None, s) if sj_now else (a, None)
    for name, t in (("align", a), ("sj", s)):
        if t is not None:
            mets.update({f"z_{name}": mean([x["z"] for x in t]), f"L_{name}": mean([x["L"] for x in t]),
                         f"L_SFT_{name}": mean([x["L_SFT"] for x in t]),
                         f"L_OR_{name}": mean([x["L_OR"] for x in t])})
    return sum(per), mets, [y["z"] for y in orpo_terms(model, [e["sj"] for e in ex], lam)]


MO = ["scalarization", "conjoined", "conditional", "epoch_by_epoch", "task_by_task", "sj_sft"]
# an epoch inside one of 4, away from its ends (a float draw lands on a whole epoch almost never, and
# `assume`-ing the whole ones away threw out 35-50% of the draws)
EPOCH_INSIDE = st.builds(lambda k, f: k + f, st.integers(0, 3), st.floats(0.01, 0.99))


@settings(max_examples=examples(12))
@pytest.mark.parametrize("kind", MO)
@given(model=tiny_models(), batch=mo_batches(), lam=st.floats(0.05, 2.0), w1=st.floats(0.1, 0.9),
       w2=st.floats(0.1, 0.9), epoch=st.one_of(st.integers(0, 3).map(float), EPOCH_INSIDE),
       prompt_loss=st.booleans())
def test_mo_orpo_variants_match_the_paper(kind, model, batch, lam, w1, w2, epoch, prompt_loss):
    """Each variant's loss and metrics against mo_expected, the paper's equations written out. Half
    the epochs drawn are whole (0, 1, 2, 3: the phase boundaries, where a schedule's half-open
    rule decides: epoch 2.0 is the epoch_by_epoch schedule's third epoch, self-judgement, and the
    task_by_task schedule's second half), half inside an epoch."""
    epochs = 4.0
    want, want_m, z_sj = mo_expected(kind, model, batch, lam, w1, w2, epoch, epochs, prompt_loss)
    assume(all(abs(z) > 1e-4 for z in z_sj))            # the conditional's z_sj < 0 is unambiguous
    # chosen and rejected of either task exchanged must change the answer
    for task in ("align", "sj"):
        ex2 = [{**e, task: swapped([e[task]])[0]} for e in batch["examples"]]
        other = mo_expected(kind, model, {"examples": ex2}, lam, w1, w2, epoch, epochs, prompt_loss)[0]
        assume(not close(other, want, 1e-3, 1e-3) or kind in ("epoch_by_epoch", "task_by_task"))
    opts = {"w1": w1} if kind in ("scalarization", "sj_sft") else {"w1": w1, "w2": w2} \
        if kind in ("conjoined", "conditional") else {}
    loss, m = call_method(kind, model, batch, epoch=epoch, epochs=epochs, orpo_lambda=lam,
                          prompt_loss=prompt_loss, **opts)
    assert close(loss.item(), want)
    assert_metrics(m, want_m)


# -- prepare's self-judgement triple ---------------------------------------------------------------
def test_mo_orpo_prepare_attaches_a_seeded_self_judgement_triple():
    import train
    from nanoalign import REGISTRY
    from nanoalign.mo_orpo import attach_sj
    rows = pref_rows(4)
    cfg = train.make_config(method="scalarization", seed=3)
    got = REGISTRY["scalarization"].prepare(rows, cfg, "val", None)
    assert got == attach_sj(rows, 3, "val")
    assert got != attach_sj(rows, 4, "val") or got != attach_sj(rows, 3, "train")


def test_task_by_task_switches_to_alignment_at_half_the_epochs():
    """L_sj for the first half of the run's epochs, [0, epochs / 2), then L_align; an odd number of
    epochs switches mid-epoch."""
    from nanoalign.mo_orpo import phase
    assert [phase("task_by_task", e, 4.0) for e in (0.0, 1.99, 2.0, 3.5)] == ["sj", "sj", "align", "align"]
    assert [phase("task_by_task", e, 3.0) for e in (1.4999, 1.5)] == ["sj", "align"]
    assert [phase("epoch_by_epoch", e, 4.0) for e in (0.0, 0.99, 1.0, 2.5, 3.2)] == \
        ["sj", "sj", "align", "sj", "align"]
    assert [phase("epoch_by_epoch", e, 3.5) for e in (0.2, 1.2, 2.2, 3.2)] == ["sj", "align", "sj", "align"]


# -- code that runs at import time, run again at test time ------------------------------------------------
# mutmut's workers are forked from a process that has already imported nanoalign, so a function
# called only while a module loads (an option declaration, a method's registration, a loss built by
# a factory) keeps its import-time result under every mutant. These tests call those functions
# again, at test time, and check what they build.
@pytest.mark.parametrize("kind", ["scalarization", "conjoined", "conditional", "epoch_by_epoch",
                                  "task_by_task", "sj_sft"])
def test_mo_orpo_losses_built_at_test_time_match_the_paper(kind, monkeypatch):
    """nanoalign.mo_orpo._loss builds the registered MO-ORPO losses at import; build them again and
    put them through the paper test of tests/methods/test_mo_orpo.py."""
    import dataclasses
    from nanoalign import REGISTRY, mo_orpo
    from tests.methods import test_mo_orpo as test_method_math
    monkeypatch.setitem(REGISTRY, kind, dataclasses.replace(REGISTRY[kind], loss=mo_orpo._loss(kind)))
    test_method_math.test_mo_orpo_variants_match_the_paper(kind=kind)


def test_sj_templates_are_5_wordings_x_5_names_x_2_orders():
    """MO-ORPO section 4's self-judgement prompts, rebuilt: every wording with every response-name
    pair, the question before or after the two responses, labels the pair's own names."""
    import string
    from nanoalign.judge import render
    from nanoalign.mo_orpo import _SJ_NAMES, _SJ_WORDINGS, _sj_templates
    ts = _sj_templates()
    assert len(ts) == 50 and len({t.name for t in ts}) == 50
    assert len({(t.user, t.answer) for t in ts}) == 50
    k = 0
    for wi, (ask, ans) in enumerate(_SJ_WORDINGS):
        for noun, x1, x2 in _SJ_NAMES:
            for order in ("first", "last"):
                t = ts[k]
                k += 1
                assert t.name == f"sj{wi}-{noun}-{order}" and t.labels == (x1, x2)
                assert t.system is None and not t.rationale
                assert [f for _, f, _, _ in string.Formatter().parse(t.user) if f] == ["prompt", "a", "b"]
                msgs, answer = render(t, "Q?", "first answer", "second answer")
                user = msgs[-1]["content"]
                body = f"Question: Q?\n{noun} {x1}: first answer\n{noun} {x2}: second answer"
                q = ask.format(noun=noun.lower())
                assert user == (f"{q}\n{body}" if order == "first" else f"{body}\n{q}")
                assert answer == ans.format(noun=noun, x="{label}")


# -- a schedule scores only the task it trains -----------------------------------------------------
MO_EXAMPLES = [
    {"align": EXAMPLES[0],
     "sj": {"chosen": [20, 21, 22, 23, 24, 25, 30], "n_prompt_chosen": 6,
            "rejected": [20, 21, 22, 23, 24, 25, 31], "n_prompt_rejected": 6}},
    {"align": EXAMPLES[1],
     "sj": {"chosen": [40, 41, 42, 43, 31], "n_prompt_chosen": 4,
            "rejected": [40, 41, 42, 43, 30], "n_prompt_rejected": 4}},
]


@pytest.mark.parametrize("kind, epoch, epochs, trained", [
    ("epoch_by_epoch", 0.5, 2.0, "sj"), ("epoch_by_epoch", 1.5, 2.0, "align"),
    ("task_by_task", 0.5, 2.0, "sj"), ("task_by_task", 1.5, 2.0, "align"),
])
def test_a_schedule_scores_only_the_task_it_trains(kind, epoch, epochs, trained):
    other = "sj" if trained == "align" else "align"
    model = tiny_model(seed=2, init_std=0.1)
    loss, m = call_method(kind, model, make_batch(MO_EXAMPLES, "mo", 0), epoch=epoch, epochs=epochs)
    assert m["task_sj"] == float(trained == "sj")
    assert f"z_{trained}" in m and f"L_{trained}" in m
    assert not [k for k in m if k.endswith("_" + other) and k != "task_sj"]   # the other task: not run
    assert loss.item() == pytest.approx(m[f"L_{trained}"] * len(MO_EXAMPLES), rel=1e-5)


@pytest.mark.parametrize("kind", ["scalarization", "conjoined", "conditional", "epoch_by_epoch",
                                  "task_by_task", "sj_sft"])
def test_a_variants_legend_names_what_its_steps_log_and_nothing_else(kind):
    """The log's legend (Method.metrics) was one table for all six variants: a conjoined run's legend
    explained sj_active and task_sj, which it never logs. Over steps in both halves of a run (a
    schedule trains each task in one of them), the names logged are the legend's."""
    logged = set()
    for epoch in (0.5, 1.5):
        _, m = call_method(kind, tiny_model(seed=2, init_std=0.1), make_batch(MO_EXAMPLES, "mo", 0),
                           epoch=epoch, epochs=2.0)
        logged |= set(m)
    assert logged == set(REGISTRY[kind].metrics)


# -- the rejected-first draw -----------------------------------------------------------------------
class Draws:
    """A stand-in for random.Random: randrange gives 0 (the first SJ template), random gives u."""

    def __init__(self, u):
        self.u = u

    def randrange(self, n):
        return 0

    def random(self):
        return self.u


def test_the_rejected_response_goes_first_when_the_draw_is_below_0_55():
    """sj_triple: rejected first iff u < 0.55 for u = random() in [0, 1): probability exactly 0.55."""
    row = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    assert sj_triple(row, Draws(0.55 - 2 ** -53))["rejected_first"] is True
    sj = sj_triple(row, Draws(0.55))
    assert sj["rejected_first"] is False
    assert sj["chosen"] == "Response A is better." and "Response A: good\n" in sj["prompt"][0]["content"]
