"""MetaAligner (nanoalign/meta_aligner.py): Algorithm 1 by hand, its invariants, the template and the
objectives, the rows of each stage (held-out objectives, seeded order), bad input."""
import dataclasses
import json

import pytest
from hypothesis import given, strategies as st

import train
from nanoalign.data import DataError, read_jsonl
from nanoalign.meta_aligner import build_sets, parse_objectives, render_objectives, stage_rows, template
from tests.helpers import meta_row

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


def test_a_mistyped_objective_gets_the_closest_known_one():
    """A bare name takes its description from the known objectives (sample.py --objectives: the
    aligner's): a typo of one was refused as a new objective that lacks a description, no more."""
    known = {"correct": "right", "concise": "short"}
    with pytest.raises(ValueError) as e:
        parse_objectives("correct,concize", known)
    assert "'concize' needs a description" in str(e.value)
    assert str(e.value).endswith("; did you mean 'concise'?")
    with pytest.raises(ValueError) as e:                  # a new name, far from any known one
        parse_objectives("polite", known)
    assert "'polite' needs a description" in str(e.value) and "did you mean" not in str(e.value)
    with pytest.raises(ValueError) as e:                  # nothing known to be close to
        parse_objectives("concize", None)
    assert "did you mean" not in str(e.value)


def test_objective_descriptions_may_hold_commas():
    """--objectives reads --principles' syntax (judge.parse_named): a comma starts the next objective
    only before a new 'name:' or after a bare name, so a known name after a description is 'name:'."""
    known = {"correct": "right", "concise": "short"}
    assert parse_objectives("correct,polite:says please, thanks, e.g.: sorry,concise:", known) == \
        [("correct", "right"), ("polite", "says please, thanks, e.g.: sorry"), ("concise", "short")]
    assert parse_objectives("polite:says please, concise", known) == [("polite", "says please, concise")]
    with pytest.raises(ValueError) as e:
        parse_objectives("correct,be polite:says please", known)
    assert str(e.value) == ("--objectives: 'be polite:says please' must be name[:description], a name "
                            "being letters, digits, _ and -")


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
    rows, _ = read_jsonl(str(f), "pref")          # a 'labels' field is no error when read
    with pytest.raises(DataError, match=str(f).replace(".", r"\.") + pattern):
        build_sets(rows, 0)                         # MetaAligner reads the labels: checked here


def test_built_rows_name_the_line_they_came_from(tmp_path):
    # a bad built row (a template error, a prompt beyond --max_length) must name file:line, not 'row'
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(row({"c": "1", "k": "2", "f": "equal"})) + "\n")
    rows, _ = read_jsonl(str(f), "pref")
    d_p, d_e = build_sets(rows, 0)
    assert len(d_p) == 2 and len(d_e) == 1
    assert {e["_where"] for e in d_p + d_e} == {f"{f}:1"}


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


# -- objectives, the template of a conversation, each stage's rows ---------------------------------
def test_parse_objectives_names_and_descriptions():
    from nanoalign.meta_aligner import parse_objectives
    assert parse_objectives(" a : x ,, b:y y ", None) == [("a", "x"), ("b", "y y")]
    assert parse_objectives("a", {"a": "known"}) == [("a", "known")]
    assert parse_objectives(" a ", {"a": "known"}) == [("a", "known")]
    with pytest.raises(ValueError) as e:
        parse_objectives("b", None)
    assert str(e.value) == "objective 'b' needs a description: --objectives b:<description>"
    with pytest.raises(ValueError) as e:
        parse_objectives(" , ")
    assert str(e.value) == "name at least one objective"


def test_meta_aligner_template_of_a_conversation_keeps_every_turn():
    from nanoalign.meta_aligner import template
    conv = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "mid"},
            {"role": "user", "content": "last one"}]
    assert template(conv[-1:], "y", [("a", "b")], "better") == template("last one", "y", [("a", "b")], "better")
    assert "| Question: User: first\nAssistant: mid\nUser: last one | Answer: y |" in \
        template(conv, [{"role": "assistant", "content": "y"}], [("a", "b")], "better")


def test_meta_aligner_rows_need_both_tables():
    from nanoalign.meta_aligner import build_sets
    for bad in ({"labels": {"a": "1"}, "objectives": "x"}, {"labels": ["a"], "objectives": {"a": "x"}},
                {"labels": {"a": "1"}}):
        row = {"prompt": "q", "chosen": "c", "rejected": "r", **bad}
        with pytest.raises(DataError) as e:
            build_sets([row], 0)
        assert str(e.value) == ("row: per-objective rows need 'labels' {objective: 1|2|equal} and "
                                "'objectives' {objective: description}")
    with pytest.raises(DataError, match=r"^f\.jsonl:3: objective 'a': label '4'"):
        build_sets([meta_row({"a": "4"}, where="f.jsonl:3")], 0)
    with pytest.raises(DataError, match=r"^row: objective 'a': label 4 is not"):
        build_sets([meta_row({"a": 4})], 0)


def test_meta_aligner_objective_order_is_seeded():
    from nanoalign.meta_aligner import build_sets
    names = [f"o{i}" for i in range(12)]
    rows = [meta_row({n: "1" for n in names}) for _ in range(3)]
    a, b = build_sets(rows, 7), build_sets(rows, 7)
    assert a == b                                          # the same seed, the same shuffles
    assert build_sets(rows, 8) != a                        # 12! orders: another seed differs
    assert len({e["prompt"] for e in a[0]}) > 1            # shuffled anew for every row


def test_meta_aligner_stage_rows_holdout_and_seed():
    import dataclasses
    import train
    from nanoalign.meta_aligner import build_sets, stage_rows
    rows = [meta_row({"a": "1", "b": "2", "c": "equal", "d": "1"}) for _ in range(6)]
    cfg = train.make_config(method="meta_aligner", meta_stage="preference", seed=4, meta_holdout="a,,d")
    want = build_sets(rows, 4, ("a", "d"))
    assert stage_rows(rows, cfg, "train") == want[0]
    assert all("a: marker" not in e["prompt"] and "d: marker" not in e["prompt"] for e in want[0])
    eq = dataclasses.replace(cfg, meta_stage="equal")
    assert stage_rows(rows, eq, "train") == want[1]
    warm = dataclasses.replace(cfg, meta_stage="warmup", batch_size=2, meta_warmup_frac=0.5)
    w1, w2 = stage_rows(rows, warm, "train"), stage_rows(rows, warm, "train")
    assert w1 == w2 and len(w1) == 3
    many = [meta_row({"c": "equal"}) for _ in range(40)]
    for i, r in enumerate(many):
        r["chosen"], r["rejected"] = f"g{i}", f"b{i}"
    warm = dataclasses.replace(warm, meta_warmup_frac=0.25, meta_holdout="")
    picks = {tuple(e["response"] for e in stage_rows(many, dataclasses.replace(warm, seed=s), "train"))
             for s in range(3)}
    assert len(picks) == 3                                 # the warm-up subset follows the seed


def test_a_holdout_objective_no_row_labels_is_refused_not_ignored():
    """--meta_holdout formt (for 'format') held nothing out: the sets came out as with no holdout,
    so the paper's zero-shot test quietly became a run that trained on the objective. A name no
    training row labels is refused, with the closest name; the validation split, which may lack an
    objective, is not checked."""
    import dataclasses
    import train
    from nanoalign.data import DataError
    from nanoalign.meta_aligner import build_sets, stage_rows
    rows = [meta_row({"format": "1", "correct": "2"}) for _ in range(4)]
    cfg = train.make_config(method="meta_aligner", meta_stage="preference", meta_holdout="correct,formt")
    with pytest.raises(DataError) as e:
        stage_rows(rows, cfg, "train")
    assert str(e.value) == ("--meta_holdout 'formt': no training row labels this objective; the rows "
                            "label correct, format; did you mean 'format'?")
    assert stage_rows(rows, cfg, "val") == build_sets(rows, cfg.seed, ("correct", "formt"))[0]
    ok = dataclasses.replace(cfg, meta_holdout="format")
    assert stage_rows(rows, ok, "train") == build_sets(rows, cfg.seed, ("format",))[0]


# -- --skip_bad_rows: a row without usable labels is a bad row like any other ------------------------
@pytest.mark.parametrize("method, opts", [("meta_aligner", {"meta_stage": "preference"}),
                                          ("jsft", {"judge_template": "compact_principle"}),
                                          ("pref_aug", {"judge_template": "compact_principle"})])
def test_rows_without_usable_labels_are_skipped_and_counted_with_skip_bad_rows(tmp_path, capsys,
                                                                                method, opts):
    """MetaAligner and a principle-aware judge read each row's labels: a row without them, or with a
    label of no meaning, is a bad row, named by file:line, and with --skip_bad_rows skipped and
    counted among the rows read. It stopped the run even with --skip_bad_rows (the labels were
    checked only when the method built its rows, after reading, where nothing skips)."""
    from nanoalign.common import REGISTRY
    from nanoalign.tasks import arith as task
    from tests.helpers import run_cfg
    f = tmp_path / "p.jsonl"
    good = {"prompt": "What is 1 + 1?", "chosen": "2.", "rejected": "3.", "labels": {"c": "1"},
            "objectives": {"c": "the sum is right"}}
    bare = {k: v for k, v in good.items() if k not in ("labels", "objectives")}
    f.write_text("".join(json.dumps(r) + "\n" for r in (good, bare, {**good, "labels": {"c": "3"}}, good)))
    cfg = run_cfg(tmp_path, method=method, train_data=str(f), max_length=384, **opts)
    with pytest.raises(DataError, match=rf"^{f}:2: "):
        train.load_split(cfg, REGISTRY[method], task, "train", train.Run(tok=task.build_tokenizer()))
    cfg = dataclasses.replace(cfg, skip_bad_rows=True)
    capsys.readouterr()
    ex = train.load_split(cfg, REGISTRY[method], task, "train", train.Run(tok=task.build_tokenizer()))
    assert {e["row"]["_where"] for e in ex} == {f"{f}:1", f"{f}:4"}
    assert f"{f} [train]: skipped 2 of 4 rows read;" in capsys.readouterr().out
