"""MetaAligner (issue 8): Algorithm 1 by hand, its invariants, the template, the stages, bad input."""
import dataclasses
import json

import pytest
from hypothesis import given, strategies as st

import train
from nanoalign.data import DataError, read_jsonl
from nanoalign.meta_aligner import build_sets, parse_objectives, render_objectives, stage_rows, template

OBJ = {"c": "is correct", "k": "is short", "f": "ends with a period"}


def row(labels, q="q?", y1="good", y2="bad"):
    return {"prompt": q, "chosen": y1, "rejected": y2, "labels": labels,
            "objectives": {k: OBJ[k] for k in labels}}


def T(y, names, t):
    return "Edit the following Question-Answer pair to make it " + t + " considering the following " \
           "objectives: " + "; ".join(f"{n}: {OBJ[n]}" for n in names) + f" | Question: q? | Answer: {y} | Edit:"


def test_algorithm_1_by_hand():
    d_p, d_e = build_sets([row({"c": "1", "k": "2", "f": "equal"}),      # all three kinds
                           row({"c": "1", "k": "1"}),                      # no O-, no O=
                           row({"c": "equal", "f": "equal"})], seed=0)    # only O=
    got_p = [(e["prompt"], e["response"]) for e in d_p]
    got_e = [(e["prompt"], e["response"]) for e in d_e]
    assert got_p[0] == (T("bad", ["c"], "better"), "good")
    assert got_p[1] == (T("good", ["k"], "better"), "bad")
    assert got_p[2] in [(T("bad", ["c", "k"], "better"), "good"), (T("bad", ["k", "c"], "better"), "good")]
    assert len(got_p) == 3
    assert got_e[0] == (T("bad", ["f"], "equal"), "good")
    assert got_e[1] in [(T("bad", ["c", "f"], "equal"), "good"), (T("bad", ["f", "c"], "equal"), "good")]
    assert len(got_e) == 2


labels = st.dictionaries(st.sampled_from("ckf"), st.sampled_from(["1", "2", "equal"]), min_size=1)


@given(st.lists(labels, min_size=1, max_size=8), st.integers(0, 100))
def test_targets_won_or_tied_every_named_objective(rows_labels, seed):
    rows = [row(lab, y1=f"one{i}", y2=f"two{i}") for i, lab in enumerate(rows_labels)]
    d_p, d_e = build_sets(rows, seed)
    by_answer = {}
    for r in rows:
        by_answer[r["chosen"]] = (r, "1")
        by_answer[r["rejected"]] = (r, "2")

    def named(prompt):
        objs = prompt.split("objectives: ")[1].split(" | Question")[0]
        return [o.split(":")[0] for o in objs.split("; ")]

    for e in d_p:
        r, who = by_answer[e["response"]]
        assert all(r["labels"][n] == who for n in named(e["prompt"]))
        assert e["input"] != e["response"]
    for e in d_e:
        r, _ = by_answer[e["response"]]
        assert all(r["labels"][n] == "equal" for n in named(e["prompt"]))
    n_p = sum(any(v == "1" for v in lab.values()) + any(v == "2" for v in lab.values()) for lab in rows_labels)
    assert len(d_p) == n_p and len(d_e) == sum("equal" in lab.values() for lab in rows_labels)


def test_template_and_objective_parsing():
    assert render_objectives([("a", "x y"), ("b", "z")]) == "a: x y; b: z"
    assert "objectives: a: x | Question: Q | Answer: A | Edit:" in template("Q", "A", [("a", "x")], "better")
    assert parse_objectives("correct,polite:says please", {"correct": "right"}) == \
        [("correct", "right"), ("polite", "says please")]
    with pytest.raises(ValueError, match="'polite' needs a description"):
        parse_objectives("polite", {"correct": "right"})


def test_warmup_targets_are_the_input_answers():
    rows = [row({"c": "equal", "k": "1"}, y1=f"g{i}", y2=f"b{i}") for i in range(40)]
    cfg = train.make_config(method="meta_aligner", meta_stage="warmup", meta_warmup_frac=0.5)
    warm = stage_rows(rows, cfg, "train")
    assert len(warm) == 20 and all(w["response"] == w["input"] and w["response"].startswith("b") for w in warm)
    assert f"Answer: {warm[0]['input']} |" in warm[0]["prompt"]
    eq = stage_rows(rows, dataclasses.replace(cfg, meta_stage="equal"), "train")
    assert all(e["response"].startswith("g") for e in eq) and len(eq) == 40
    held = stage_rows(rows, dataclasses.replace(cfg, meta_stage="preference", meta_holdout="k"), "train")
    assert held == []                                      # 'k' was the only preference objective


@pytest.mark.parametrize("bad, pattern", [
    ({"c": "3"}, r":2: objective 'c': label '3' is not one of 1, 2, equal"),
    ({"c": "1", "zz": "2"}, r":2: objective 'zz' is labelled but has no marker"),
])
def test_bad_labels_name_file_line_objective(tmp_path, bad, pattern):
    f = tmp_path / "p.jsonl"
    good = row({"c": "1"})
    broken = {**row({"c": "1"}), "labels": bad}
    f.write_text(json.dumps(good) + "\n" + json.dumps(broken) + "\n")
    rows, _ = read_jsonl(str(f), "pref")
    with pytest.raises(DataError, match=str(f).replace(".", r"\.") + pattern):
        build_sets(rows, 0)


def test_stage_all_chains_three_runs(tmp_path):
    from nanoalign.meta_aligner import run_stages
    from tests.test_train import run_cfg
    cfg = dataclasses.replace(run_cfg(tmp_path, method="meta_aligner", max_steps=2, val_data="",
                                      n_train=64, max_length=384), meta_stage="all")
    final = run_stages(cfg, train.train)
    for st in ("warmup", "equal", "preference"):
        saved = json.load(open(tmp_path / "run" / st / "ckpt" / "state.json"))["config"]
        assert saved["meta_stage"] == st
    assert final.endswith("preference/ckpt")
    assert json.load(open(tmp_path / "run" / "equal" / "ckpt" / "state.json"))["config"]["init_from"] \
        .endswith("warmup/ckpt")


def test_a_conversational_row_keeps_every_turn_and_the_answer_text(monkeypatch):
    """A TRL-style row: the prompt shows the system message and every turn with its role name, the
    answer its text (not a Python list), and inference (`correct`) builds the very same prompt."""
    from nanoalign import meta_aligner
    from tests.helpers import byte_tokenizer
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 1 + 1?"}]
    answer = [{"role": "assistant", "content": "3"}]
    r = {"prompt": conv, "chosen": [{"role": "assistant", "content": "2."}], "rejected": answer,
         "labels": {"c": "1"}, "objectives": {"c": OBJ["c"]}}
    (e,), _ = build_sets([r], 0)
    assert e["prompt"] == ("Edit the following Question-Answer pair to make it better considering the "
                           "following objectives: c: is correct | Question: System: Be brief.\nUser: Hi\n"
                           "Assistant: Hello!\nUser: What is 1 + 1? | Answer: 3 | Edit:")
    tok, seen = byte_tokenizer(), []

    def generate(model, ids, *a, **k):
        seen.extend(ids)
        return [[] for _ in ids]
    monkeypatch.setattr(meta_aligner, "generate", generate)
    meta_aligner.correct(None, tok, [conv], [answer], [("c", OBJ["c"])])
    assert seen == [tok.encode_prompt(e["prompt"])]
