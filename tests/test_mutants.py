"""Tests written to kill the surviving mutants of the mutation run (docs/mutation.md): behaviour of
the method, judge, data and kernel-reference code that the other test files did not pin down.
Each test states a property of the library, derived by hand, never a number read off its output."""
import json

import pytest
import torch

from nanoalign.data import BatchOrder, DataError, implicit_prompt, read_jsonl, validate_row

W = "rows.jsonl:7"                     # the `where` a row carries into every error message
USER = {"role": "user", "content": "hi"}
BOT = {"role": "assistant", "content": "hello"}


def error_of(row, kind, where=W):
    with pytest.raises(DataError) as e:
        validate_row(row, kind, where)
    return str(e.value)


# -- data: reading and checking rows -------------------------------------------------------------------
@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_an_empty_response_is_an_error_naming_the_row_and_the_field(field):
    row = {"prompt": "p", "chosen": "c", "rejected": "r", field: "  "}
    assert error_of(row, "pref") == f"{W}: field '{field}' is empty"


def test_an_empty_prompt_string_is_allowed():
    assert validate_row({"prompt": "", "response": "r"}, "sft", W)["prompt"] == ""
    assert validate_row({"prompt": "", "chosen": "c", "rejected": "r"}, "pref", W)["prompt"] == ""


@pytest.mark.parametrize("bad", [
    [], [{"role": "user"}], [{"content": "x"}], [{"role": 1, "content": "x"}],
    [{"role": "user", "content": 3}], ["hi"], [USER, {"role": "user", "content": None}],
])
def test_a_text_field_must_be_a_string_or_a_list_of_messages(bad):
    msg = error_of({"prompt": bad, "response": "r"}, "sft")
    assert msg == (f"{W}: field 'prompt' must be a string or a list of {{\"role\", \"content\"}} "
                   f"messages, got list")


def test_a_text_field_of_another_type_names_that_type():
    assert error_of({"prompt": "p", "response": 5}, "sft").endswith("messages, got int")
    assert error_of({"prompt": {"a": 1}}, "prompt").startswith(f"{W}: field 'prompt' must be")


def test_messages_are_kept_as_given():
    row = {"prompt": [USER], "chosen": [USER, BOT], "rejected": "r", "extra": 1}
    out = validate_row(row, "pref", W)
    assert out == row and out is not row


@pytest.mark.parametrize("kind, fields, name", [
    ("pref", ("prompt", "chosen", "rejected"), "preference"),
    ("sft", ("prompt", "response"), "sft"),
    ("prompt", ("prompt",), "prompt"),
])
def test_a_missing_field_names_it_and_the_fields_the_kind_needs(kind, fields, name):
    full = {f: "x" for f in fields}
    for f in fields:
        row = {k: v for k, v in full.items() if k != f}
        if kind == "pref" and f == "prompt":
            continue                               # no prompt: TRL's implicit prompt, tested below
        assert error_of(row, kind) == f"{W}: missing field '{f}' (a {name} row needs {', '.join(fields)})"


@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_a_response_list_needs_an_assistant_message(field):
    row = {"prompt": "p", "chosen": [USER, BOT], "rejected": [USER, BOT], field: [USER]}
    assert error_of(row, "pref") == (f"{W}: field '{field}' is a message list with no assistant "
                                     f"message; the response is the last assistant message")
    row[field] = [USER, {"role": "assistant", "content": "x"}, USER]    # one anywhere is enough
    assert validate_row(row, "pref", W)[field] == row[field]


def test_an_sft_response_list_needs_an_assistant_message():
    assert error_of({"prompt": "p", "response": [USER]}, "sft").startswith(
        f"{W}: field 'response' is a message list with no assistant")
    assert validate_row({"prompt": "p", "response": [BOT]}, "sft", W)["response"] == [BOT]


def test_implicit_prompt_of_two_strings_keeps_the_space_with_the_responses():
    row = {"chosen": "Q: 2+2? A: four", "rejected": "Q: 2+2? A: 5", "score": 3}
    out = validate_row(row, "pref", W)
    assert (out["prompt"], out["chosen"], out["rejected"]) == ("Q: 2+2? A:", " four", " 5")
    assert out["score"] == 3
    assert implicit_prompt("abc", "abd", W) == ("ab", "c", "d")         # no space: split as it is


def test_implicit_prompt_of_two_conversations_is_their_shared_leading_messages():
    sys = {"role": "system", "content": "be brief"}
    c = [sys, USER, {"role": "assistant", "content": "yes"}]
    r = [sys, USER, {"role": "assistant", "content": "no"}]
    out = validate_row({"chosen": c, "rejected": r}, "pref", W)
    assert out["prompt"] == [sys, USER] and out["chosen"] == c[2:] and out["rejected"] == r[2:]


def test_implicit_prompt_of_multi_turn_conversations_stops_at_the_first_difference():
    u2 = {"role": "user", "content": "and?"}
    c = [USER, {"role": "assistant", "content": "a1"}, u2, {"role": "assistant", "content": "a2"}]
    r = [USER, {"role": "assistant", "content": "b1"}, u2, {"role": "assistant", "content": "b2"}]
    assert implicit_prompt(c, r, W) == ([USER], c[1:], r[1:])


@pytest.mark.parametrize("c, r, field", [
    ("Q: hi", "Q: hi there", "chosen"), ("Q: hi there", "Q: hi", "rejected"),
    ([USER, BOT], [USER, BOT, USER, BOT], "chosen"), ([USER, BOT, USER, BOT], [USER, BOT], "rejected"),
])
def test_implicit_prompt_when_one_side_is_a_prefix_of_the_other(c, r, field):
    msg = error_of({"chosen": c, "rejected": r}, "pref")    # that side's response is empty: a bad row
    assert msg.startswith(f"{W}: field '{field}' ")


@pytest.mark.parametrize("c, r, what", [
    ("abc", "xbc", "text"), ([USER, BOT], [BOT, USER], "message"),
])
def test_implicit_prompt_needs_a_shared_beginning(c, r, what):
    assert error_of({"chosen": c, "rejected": r}, "pref") == (
        f"{W}: no 'prompt' field, and 'chosen' and 'rejected' share no leading {what} to take as "
        f"the prompt")


def test_implicit_prompt_of_a_string_and_a_list_is_an_error():
    assert error_of({"chosen": "abc", "rejected": [USER, BOT]}, "pref") == (
        f"{W}: no 'prompt' field, and 'chosen' / 'rejected' are not both strings or both message lists")


def test_implicit_prompt_checks_each_field_first():
    assert error_of({"chosen": " ", "rejected": "x"}, "pref") == f"{W}: field 'chosen' is empty"
    assert error_of({"chosen": "x", "rejected": 3}, "pref").startswith(f"{W}: field 'rejected' must")


def test_an_implicit_prompt_response_without_assistant_turn_is_an_error():
    c, r = [USER, {"role": "user", "content": "a"}], [USER, {"role": "user", "content": "b"}]
    assert "field 'chosen' is a message list with no assistant message" in \
        error_of({"chosen": c, "rejected": r}, "pref")


def test_sft_messages_row_takes_the_last_assistant_message_as_response():
    msgs = [USER, BOT, {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}]
    out = validate_row({"messages": msgs, "id": 9}, "sft", W)
    assert out["prompt"] == msgs[:-1] and out["response"] == "ok" and out["id"] == 9


@pytest.mark.parametrize("msgs, why", [
    ([USER], "must end with an assistant message"),
    ("just text", "must end with an assistant message"),
    ([USER, {"role": "assistant", "content": "  "}], "has an empty final assistant message"),
    ([USER, BOT, USER, {"role": "assistant", "content": ""}], "has an empty final assistant message"),
])
def test_sft_messages_rows_must_end_with_a_real_answer(msgs, why):
    assert error_of({"messages": msgs}, "sft") == f"{W}: field 'messages' {why}"


def test_sft_messages_must_be_messages():
    assert error_of({"messages": [1]}, "sft").startswith(f"{W}: field 'messages' must be a string")


def test_a_row_must_be_an_object_and_a_kind_must_be_readable():
    assert error_of([1, 2], "pref") == f"{W}: expected a JSON object, got list"
    assert error_of({"prompt": "p"}, "mo") == f"{W}: 'mo' examples are built by a method, not read from a file"
    msg = error_of({"prompt": "p"}, "nope")
    assert msg == "unknown data kind 'nope'; the kinds are sft, pref, prompt, mo"


def test_read_jsonl_numbers_lines_skips_blank_ones_and_counts_bad_rows(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "a"}) + "\n\n   \n" + "{oops\n" + json.dumps({"x": 1}) + "\n"
                 + json.dumps({"prompt": "b"}) + "\n")
    rows, skipped = read_jsonl(str(f), "prompt", skip_bad=True)
    assert [(r["prompt"], r["_where"]) for r in rows] == [("a", f"{f}:1"), ("b", f"{f}:6")]
    assert skipped == 2
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt")
    assert str(e.value).startswith(f"{f}:4: malformed JSON (") and "at column 2)" in str(e.value)


def test_read_jsonl_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: cannot open \(No such file or directory\)"):
        read_jsonl(str(missing), "prompt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(DataError) as e:
        read_jsonl(str(bad), "prompt", skip_bad=True)
    assert str(e.value) == f"{bad}: no usable rows"
    with pytest.raises(DataError) as e:
        read_jsonl(str(bad), "prompt")
    assert str(e.value).startswith(f"{bad}:1: missing field 'prompt'")


# -- data: the batch order -------------------------------------------------------------------------------
def test_batch_order_needs_a_full_micro_batch():
    with pytest.raises(DataError) as e:
        BatchOrder(3, 4, seed=0)
    assert str(e.value) == "only 3 training examples for a micro-batch of 4; lower --batch_size"
    assert BatchOrder(4, 4, seed=0).next() != []


def test_batch_order_epochs_are_seeded_permutations_without_the_ragged_tail():
    n, bs = 11, 3                                          # 3 full batches per epoch, 2 left out
    o = BatchOrder(n, bs, seed=5)
    epochs = [[o.next() for _ in range(n // bs)] for _ in range(4)]
    for ep in epochs:
        assert all(len(b) == bs for b in ep)
        flat = [i for b in ep for i in b]
        assert len(set(flat)) == len(flat) == 9 and set(flat) <= set(range(n))
    assert len({tuple(map(tuple, ep)) for ep in epochs}) > 1       # a fresh permutation per epoch
    assert o.pos == 4 * (n // bs)
    again = BatchOrder(n, bs, seed=5)
    assert [again.next() for _ in range(12)] == [b for ep in epochs for b in ep]
    other = BatchOrder(n, bs, seed=6)
    assert [other.next() for _ in range(12)] != [b for ep in epochs for b in ep]


def test_batch_order_resumes_from_its_position():
    a = BatchOrder(10, 2, seed=1)
    seq = [a.next() for _ in range(13)]
    for pos in (0, 4, 5, 7, 12):
        b = BatchOrder(10, 2, seed=1, pos=pos)
        assert [b.next() for _ in range(13 - pos)] == seq[pos:]


# -- judge: principles and the command line --------------------------------------------------------------
def test_parse_principles_splits_names_from_descriptions():
    from nanoalign.judge import JudgeError, parse_principles
    assert parse_principles(" honesty : tells the truth ,, brevity:is: short,") == \
        [("honesty", "tells the truth"), ("brevity", "is: short")]
    assert parse_principles("") == []
    for bad in ("honesty", "honesty:  ", " :x"):
        with pytest.raises(JudgeError) as e:
            parse_principles(f"a:b,{bad}", where="cfg.json")
        assert str(e.value) == f"cfg.json: '{bad.strip()}' must be name:description"
    with pytest.raises(JudgeError, match=r"^--principles: 'x' must be"):
        parse_principles("x")


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A saved tiny judge (byte-level tokenizer, a context long enough for the A.5 templates)."""
    from model.checkpoint import save_model
    from tests.helpers import byte_tokenizer
    from nanoalign.testing import tiny_model
    d = tmp_path_factory.mktemp("judge")
    save_model(tiny_model(3, vocab_size=264, max_seq_len=1024, init_std=0.3), str(d), byte_tokenizer())
    return str(d)


def judge_cli(capsys, argv):
    from nanoalign.judge import main
    main(argv)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_judge_cli_prints_the_swapped_probability_of_each_row(judge_dir, tmp_path, capsys):
    from model.checkpoint import load
    from nanoalign.judge import TEMPLATES, judge_pairs
    rows = [{"prompt": "What is 1 + 1?", "a": "2.", "b": "It is 3"},
            {"prompt": "Hi", "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": "Go"},
            {"prompt": "What is 1 + 1?", "a": "It is 3", "b": "2."}]
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps(rows[0]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[1:]) + "\n")
    model, tok = load(judge_dir)
    items = [("What is 1 + 1?", "2.", "It is 3"), ("Hi", "Hello!", "Go"), ("What is 1 + 1?", "It is 3", "2.")]
    for template, extra in (("ultrafeedback", []), ("compact", ["--template", "compact", "--batch_size", "1"])):
        got = judge_cli(capsys, ["--init_from", judge_dir, "--pairs", str(f)] + extra)
        want = judge_pairs(model, tok, TEMPLATES[template], items).tolist()
        assert [g["row"] for g in got] == [0, 1, 2]
        assert [g["p(a>b)"] for g in got] == [round(p, 4) for p in want]
        assert abs(got[0]["p(a>b)"] + got[2]["p(a>b)"] - 1) <= 2e-4      # the same pair, swapped


def test_judge_cli_judges_under_principles_by_jm_pr(judge_dir, tmp_path, capsys):
    from model.checkpoint import load
    from nanoalign.judge import TEMPLATES, judge_pairs
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "What is 1 + 1?", "a": "2.", "b": "It is 3"}) + "\n")
    principles = [("correct", "the sum is right"), ("format", "ends with a period")]
    got = judge_cli(capsys, ["--init_from", judge_dir, "--pairs", str(f), "--template", "compact_principle",
                             "--principles", "correct:the sum is right,format:ends with a period"])
    model, tok = load(judge_dir)
    want = judge_pairs(model, tok, TEMPLATES["compact_principle"], [("What is 1 + 1?", "2.", "It is 3")],
                       principles)
    assert [g["p(a>b)"] for g in got] == [round(want.item(), 4)]


def test_judge_cli_errors_are_one_line(judge_dir, tmp_path, capsys):
    from nanoalign.judge import main
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n\n" + json.dumps({"prompt": "q", "a": "x"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--template", "compact"])
    assert str(e.value) == f"error: {f}:3: bad row (KeyError('b')); need prompt, a, b"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n{not json\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--template", "compact"])
    assert str(e.value).startswith(f"error: {f}:2: bad row (JSONDecodeError(")
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--template", "compact_principle"])
    assert str(e.value).startswith("error: judge template 'compact_principle' judges under principles")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(tmp_path / "none.jsonl"), "--template", "compact"])
    assert str(e.value).startswith("error: [Errno 2] No such file or directory")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", str(tmp_path / "no_such_dir"), "--pairs", str(f)])
    assert str(e.value).startswith("error: ") and "no_such_dir" in str(e.value)
    with pytest.raises(SystemExit):
        main(["--init_fro", judge_dir, "--pairs", str(f)])          # no abbreviations
    assert "the following arguments are required: --init_from" in capsys.readouterr().err


def test_judge_cli_blames_a_row_only_for_the_rows_own_error(monkeypatch, tmp_path):
    """A KeyError raised anywhere but in reading a row (here: a stand-in loader) is not reported as a
    bad row of the pairs file. (A config.json's own bad fields are CheckpointErrors: test_model.py.)"""
    import model.checkpoint as checkpoint
    from nanoalign.judge import main

    def broken(d):
        raise KeyError("factor")
    monkeypatch.setattr(checkpoint, "load", broken)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(KeyError, match="factor"):
        main(["--init_from", str(tmp_path), "--pairs", str(f)])


def test_judge_cli_help_names_every_flag_and_argparse_guards_the_rest(judge_dir, capsys):
    """The parser is left out of the mutation run (its help texts are prose); its rules are tested here."""
    import nanoalign.judge as judge
    with pytest.raises(SystemExit) as e:
        judge.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and judge.__doc__.strip().splitlines()[0] in out
    for flag in ("--init_from", "--pairs", "--template", "--principles", "--batch_size"):
        assert flag in out
    assert "default: ultrafeedback" in out and "default: 16" in out
    with pytest.raises(SystemExit) as e:
        judge.main(["--init_from", judge_dir])
    assert e.value.code == 2 and "required: --pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        judge.main(["--init_from", judge_dir, "--pairs", "p.jsonl", "--template", "no_such"])
    assert e.value.code == 2 and "invalid choice: 'no_such'" in capsys.readouterr().err


# -- the on-policy plumbing: judgment data, principles, start-up -----------------------------------------
def pref_rows(n=2):
    return [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": "no", "_where": f"f:{i + 1}",
             "labels": {"correct": "1", "format": "equal"},
             "objectives": {"correct": "the sum is right", "format": "ends with a period"}} for i in range(n)]


def test_judgment_data_of_a_plain_template_is_both_orders_of_each_pair():
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES, judgment_rows
    from nanoalign.onpolicy import judgment_data
    rows, run = pref_rows(), Run(tok=None)
    got = judgment_data(rows, TEMPLATES["compact"], run)
    assert got == judgment_rows(rows, TEMPLATES["compact"]) and len(got) == 4
    assert run.keep == {}


def test_principle_aware_judgment_data_keeps_its_principles_and_needs_labels():
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES, judgment_rows
    from nanoalign.onpolicy import PRINCIPLES_FILE, judgment_data
    t, rows, run = TEMPLATES["compact_principle"], pref_rows(), Run(tok=None)
    got = judgment_data(rows, t, run)
    assert got == judgment_rows(rows, t, True) and len(got) == 2 * 2      # 'format' is a tie
    assert run.keep == {PRINCIPLES_FILE: {"correct": "the sum is right", "format": "ends with a period"}}
    for missing in ("labels", "objectives"):
        bad = pref_rows()
        del bad[1][missing]
        with pytest.raises(DataError) as e:
            judgment_data(bad, t, Run(tok=None))
        assert str(e.value) == ("f:2: judge template 'compact_principle' is principle-aware and needs "
                                "'labels' and 'objectives' fields on every row")
    del bad[1]["_where"]
    with pytest.raises(DataError, match="^row: judge template"):
        judgment_data(bad, t, Run(tok=None))


def test_a_rationale_template_needs_a_builtin_task():
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES
    from nanoalign.onpolicy import judgment_data
    with pytest.raises(DataError) as e:
        judgment_data(pref_rows(), TEMPLATES["compact_rationale"], Run(tok=None))
    assert str(e.value) == ("judge template 'compact_rationale' trains on rationales, which only a "
                            "built-in task's oracle writes; choose a template without rationale")

    class Task:
        @staticmethod
        def rationale(prompt, answer, name):
            return f"<{answer} under {name}>"
    got = judgment_data(pref_rows(1), TEMPLATES["compact_rationale"], Run(tok=None, task=Task()))
    assert got[0]["response"].endswith("\nEvaluation of Response B: <no under correct>")


def test_principles_of_prefers_the_judge_checkpoint_over_the_start(tmp_path):
    import train
    from nanoalign.judge import TEMPLATES
    from nanoalign.onpolicy import PRINCIPLES_FILE, principles_of
    t = TEMPLATES["compact_principle"]
    start, judge = tmp_path / "start", tmp_path / "judge"
    start.mkdir(), judge.mkdir()
    (start / PRINCIPLES_FILE).write_text(json.dumps({"a": "from the start"}))
    (judge / PRINCIPLES_FILE).write_text(json.dumps({"b": "from the judge", "c": "too"}))
    cfg = train.make_config(method="self_judge", init_from=str(start))
    assert principles_of(cfg, t) == [("a", "from the start")]
    cfg = train.make_config(method="self_judge", init_from=str(start), judge_from=str(judge))
    assert principles_of(cfg, t) == [("b", "from the judge"), ("c", "too")]
    cfg = train.make_config(method="self_judge", init_from=str(tmp_path), judge_from=str(tmp_path / "x"))
    from nanoalign.judge import JudgeError
    with pytest.raises(JudgeError) as e:
        principles_of(cfg, t)
    path = tmp_path / "x" / PRINCIPLES_FILE
    assert str(e.value) == (f"judge template 'compact_principle' judges under principles: name them "
                            f"with --principles name:description,... ({path} does not exist)")


def test_prompt_rows_checks_the_template_and_caches_the_principles(tmp_path):
    import train
    from nanoalign.common import Run
    from nanoalign.judge import JudgeError
    from nanoalign.onpolicy import prompt_rows
    from tests.helpers import byte_tokenizer
    rows = [{"prompt": "q"}]
    run = Run(tok=byte_tokenizer())
    cfg = train.make_config(method="osp", judge_template="compact_principle", principles="a:b")
    assert prompt_rows(rows, cfg, "train", run) is rows
    assert run.cache["principles"] == [("a", "b")]
    run = Run(tok=byte_tokenizer())
    assert prompt_rows(rows, train.make_config(method="osp"), "train", run) is rows
    assert "principles" in run.cache and run.cache["principles"] is None

    class OneLabelTok:                                   # every text is one token: labels collide
        def encode(self, text):
            return [7]

        def decode(self, ids, skip_special=True):
            return "A"
    with pytest.raises(JudgeError, match="not single, distinct"):
        prompt_rows(rows, train.make_config(method="osp"), "train", Run(tok=OneLabelTok()))


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


def test_mo_orpo_prepare_attaches_a_seeded_self_judgement_triple():
    import train
    from nanoalign import REGISTRY
    from nanoalign.judge import attach_sj
    rows = pref_rows(4)
    cfg = train.make_config(method="scalarization", seed=3)
    got = REGISTRY["scalarization"].prepare(rows, cfg, "val", None)
    assert got == attach_sj(rows, 3, "val")
    assert got != attach_sj(rows, 4, "val") or got != attach_sj(rows, 3, "train")


def test_frozen_copy_is_a_separate_model_in_eval_mode_without_grads():
    from nanoalign.common import frozen_copy
    from nanoalign.testing import tiny_model
    m = tiny_model(0).train()
    ref = frozen_copy(m)
    assert m.training and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in m.parameters())
    for (n, p), (n2, q) in zip(m.named_parameters(), ref.named_parameters()):
        assert n == n2 and torch.equal(p, q) and p.data_ptr() != q.data_ptr()


# -- MetaAligner: stages and correction ---------------------------------------------------------------------
def test_meta_aligner_one_stage_is_one_run(tmp_path):
    import train
    from nanoalign.meta_aligner import run_stages
    seen = []
    cfg = train.make_config(method="meta_aligner", meta_stage="equal", out_dir=str(tmp_path / "o"))
    assert run_stages(cfg, seen.append) == str(tmp_path / "o" / "ckpt")
    assert seen == [cfg]


def test_meta_aligner_all_chains_warmup_equal_preference(tmp_path, capsys):
    import train
    from nanoalign.meta_aligner import run_stages
    seen = []
    out = tmp_path / "o"
    for steps, warm in ((100, 20), (4, 1), (9, 1), (10, 2)):
        seen.clear()
        cfg = train.make_config(method="meta_aligner", meta_stage="all", out_dir=str(out), init_from="start",
                                max_steps=steps, final_eval=True)
        assert run_stages(cfg, seen.append) == str(out / "preference" / "ckpt")
        assert [c.meta_stage for c in seen] == ["warmup", "equal", "preference"]
        assert [c.out_dir for c in seen] == [str(out / s) for s in ("warmup", "equal", "preference")]
        assert [c.init_from for c in seen] == ["start", str(out / "warmup" / "ckpt"), str(out / "equal" / "ckpt")]
        assert [c.max_steps for c in seen] == [warm, steps, steps]
        assert all(c.final_eval is False for c in seen)                    # a bool option stays a bool
        assert cfg.meta_stage == "all" and cfg.out_dir == str(out)          # the caller's config is kept
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [f"== MetaAligner stage '{s}' -> {out / s}" for s in ("warmup", "equal", "preference")]


def test_meta_aligner_correct_is_greedy_decoding_of_the_edit_prompt():
    from model.generate import generate
    from nanoalign.meta_aligner import correct, template
    from nanoalign.testing import tiny_model
    from tests.helpers import byte_tokenizer
    tok = byte_tokenizer()
    model = tiny_model(1, vocab_size=264, max_seq_len=256, init_std=0.3)
    qs = ["What is 1 + 1?", [{"role": "user", "content": "And 2 + 2?"}], "Hi"]
    ys = ["3", "four", "hello"]
    objs = [("correct", "the sum is right")]
    got = correct(model, tok, qs, ys, objs, max_new_tokens=6, batch_size=2)
    assert len(got) == 3
    for q, y, g in zip(qs, ys, got):
        ids = tok.encode_prompt(template(q, y, objs, "better"))
        one = generate(model, [ids], 6, model.cfg.eos_ids + [tok.eos_id], temperature=0, pad_id=tok.pad_id)
        assert g == tok.decode(one[0]).strip()
    assert correct(model, tok, qs, ys, objs, max_new_tokens=6) == got        # batching changes nothing
    assert correct(model, tok, [], [], objs) == []


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


def test_jsft_rows_are_the_chosen_responses_then_the_judgments():
    import train
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES, judgment_rows
    from nanoalign.self_judge import jsft_rows
    from tests.helpers import byte_tokenizer
    rows = pref_rows(3)
    del rows[2]["_where"]
    sft = [{"prompt": r["prompt"], "response": r["chosen"], "_where": w}
           for r, w in zip(rows, ["f:1", "f:2", "row"])]
    cfg = train.make_config(method="jsft")
    assert jsft_rows(rows, cfg, "train", Run(tok=byte_tokenizer())) == sft + judgment_rows(rows, TEMPLATES["compact"])
    cfg = train.make_config(method="jsft", jsft_judge=False)
    assert jsft_rows(rows, cfg, "train", Run(tok=byte_tokenizer())) == sft


def test_judgment_rows_are_never_cut_and_rationales_follow_the_principle():
    from nanoalign.judge import TEMPLATES, judgment_rows
    seen = []

    def rationale(prompt, answer, name):
        seen.append((prompt, answer, name))
        return f"{answer}/{name}"
    rows = pref_rows(1)
    got = judgment_rows(rows, TEMPLATES["compact_rationale"], True, rationale)
    assert all(r["keep_whole"] is True for r in got) and len(got) == 2
    first = got[0]["response"]                              # better (chosen '1.') in position A
    assert first.endswith("\nEvaluation of Response A: 1./correct\nEvaluation of Response B: no/correct")
    assert got[1]["response"].endswith("\nEvaluation of Response A: no/correct\nEvaluation of Response B: 1./correct")
    assert all(s[0] == "What is 0 + 1?" for s in seen)
    assert all(r["keep_whole"] is True for r in judgment_rows(rows, TEMPLATES["compact"]))


# -- MetaAligner: data ---------------------------------------------------------------------------------------
def meta_row(labels, where=None):
    objs = {k: f"marker {k}" for k in labels}
    r = {"prompt": "q?", "chosen": "good", "rejected": "bad", "labels": labels, "objectives": objs}
    if where:
        r["_where"] = where
    return r


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
        assert str(e.value) == ("row: MetaAligner rows need 'labels' {objective: 1|2|equal} and "
                                "'objectives' {objective: description}")
    with pytest.raises(DataError, match=r"^f\.jsonl:3: objective 'a': label '4'"):
        build_sets([meta_row({"a": "4"}, "f.jsonl:3")], 0)
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


def test_best_of_judges_a_principle_template_under_every_principle(monkeypatch):
    """With a principle template, self-rejection decides each match by JM-PR over the principles:
    here 'short' prefers the shorter response and the two 'long' ones the longer, so the longer
    wins 2 of 3 and the longest candidate is the tournament winner."""
    from nanoalign import judge
    calls = []

    def by_length(model, tok, t, items, likelihood="vocab", batch_size=64):
        calls.append(len(items))
        p = torch.tensor([float((len(a) < len(b)) == (name == "short")) for _, a, b, name, _ in items])
        return torch.stack([p.log(), (1 - p).log()], 1)            # log L_a, log L_b: p(a > b) = p
    monkeypatch.setattr(judge, "swapped_loglik", by_length)
    cands = ["yy", "y" * 9, "y", "y" * 5, "yyy"]
    t = judge.TEMPLATES["compact_principle"]
    three = [("short", "is short"), ("long", "is long"), ("long2", "is long too")]
    assert judge.best_of(None, None, t, "q", cands, principles=three) == 1
    assert judge.best_of(None, None, t, "q", cands, principles=three[:1]) == 2
    assert calls == [2, 2, 2, 1, 1, 1, 1, 1, 1] + [2, 1, 1]      # one call per principle per round
    with pytest.raises(judge.JudgeError):
        judge.best_of(None, None, t, "q", cands)


def test_on_policy_batches_are_built_on_the_callers_device(monkeypatch):
    """The device a method names (its model's) is the device make_batch builds the batch on."""
    from nanoalign import onpolicy
    seen = []

    def make_batch(examples, kind, pad_id, device="cpu", _real=onpolicy.make_batch):
        seen.append((kind, device))
        return _real(examples, kind, pad_id)
    monkeypatch.setattr(onpolicy, "make_batch", make_batch)
    gpu = torch.device("cuda", 3)
    onpolicy.response_batch([[5, 6], [7]], [[8, 9, 2], [10, 2]], 0, gpu)
    onpolicy.pair_batch([[5, 6], [7]], [[8, 2], [9, 2]], [[10, 2], [11, 12, 2]], 0, gpu)
    assert seen == [("sft", gpu), ("pref", gpu)]


# -- code that runs at import time, run again at test time ------------------------------------------------
# mutmut's workers are forked from a process that has already imported nanoalign, so a function
# called only while a module loads (an option declaration, a method's registration, a loss built by
# a factory) keeps its import-time result under every mutant. These tests call those functions
# again, at test time, and check what they build.
def test_option_is_a_field_with_its_default_and_its_declaration():
    import dataclasses
    from nanoalign.common import option

    @dataclasses.dataclass
    class Opts:
        mode: str = option("b", "which mode", choices=("a", "b"))
        size: int = option(3, "how many", minimum=1)
    f = {x.name: x for x in dataclasses.fields(Opts)}
    assert Opts() == Opts("b", 3)
    assert dict(f["mode"].metadata) == {"help": "which mode", "choices": ("a", "b"), "minimum": None}
    assert dict(f["size"].metadata) == {"help": "how many", "choices": None, "minimum": 1}


def test_with_defaults_changes_only_the_named_defaults():
    import dataclasses
    from nanoalign.common import with_defaults
    from nanoalign.mo_orpo import TwoWeights
    New = with_defaults(TwoWeights, "NewWeights", w2=0.05)
    assert New.__name__ == "NewWeights"
    old, new = dataclasses.fields(TwoWeights), dataclasses.fields(New)
    assert [(f.name, f.type, dict(f.metadata)) for f in new] == [(f.name, f.type, dict(f.metadata)) for f in old]
    got = {f.name: f.default for f in new}
    assert got == {**{f.name: f.default for f in old}, "w2": 0.05}
    with pytest.raises(AssertionError) as e:
        with_defaults(TwoWeights, "Bad", w3=1.0, w0=2.0)
    assert str(e.value) == "unknown options ['w0', 'w3']"


def test_register_adds_each_method_once():
    from nanoalign.common import REGISTRY, Method, register
    a, b = (Method(f"_mutants_{k}", "sft", "sft", "n_tokens", None, "a test method") for k in "ab")
    try:
        register(a, b)
        assert REGISTRY[a.name] is a and REGISTRY[b.name] is b
        with pytest.raises(AssertionError, match="method '_mutants_a' registered twice"):
            register(a)
        assert REGISTRY[a.name] is a
    finally:
        REGISTRY.pop(a.name, None), REGISTRY.pop(b.name, None)


@pytest.mark.parametrize("method", ["dpo", "ipo"])
def test_dpo_and_ipo_losses_built_at_test_time_match_their_equations(method, monkeypatch):
    """nanoalign.dpo._offline builds the registered DPO / IPO losses at import; build them again and
    put them through the equation test of tests/test_method_math.py."""
    import dataclasses
    from nanoalign import REGISTRY, dpo
    from tests import test_method_math
    from tests.helpers import one_thread
    fn = {"dpo": dpo.dpo_loss, "ipo": dpo.ipo_loss}[method]
    monkeypatch.setitem(REGISTRY, method, dataclasses.replace(REGISTRY[method], loss=dpo._offline(fn)))
    with one_thread():
        test_method_math.test_dpo_and_ipo_match_their_equations(method=method)


@pytest.mark.parametrize("kind", ["scalarization", "conjoined", "conditional", "epoch_by_epoch",
                                  "task_by_task", "sj_sft"])
def test_mo_orpo_losses_built_at_test_time_match_the_paper(kind, monkeypatch):
    """nanoalign.mo_orpo._loss builds the registered MO-ORPO losses at import; build them again and
    put them through the paper test of tests/test_method_math.py."""
    import dataclasses
    from nanoalign import REGISTRY, mo_orpo
    from tests import test_method_math
    from tests.helpers import one_thread
    monkeypatch.setitem(REGISTRY, kind, dataclasses.replace(REGISTRY[kind], loss=mo_orpo._loss(kind)))
    with one_thread():
        test_method_math.test_mo_orpo_variants_match_the_paper(kind=kind)


def test_sj_templates_are_5_wordings_x_5_names_x_2_orders():
    """MO-ORPO section 4's self-judgement prompts, rebuilt: every wording with every response-name
    pair, the question before or after the two responses, labels the pair's own names."""
    import string
    from nanoalign.judge import _SJ_NAMES, _SJ_WORDINGS, _sj_templates, render
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


# -- Self-Judge off-policy: each prompt's pair is sampled with its own seeded generator -------------------
def test_offpolicy_samples_each_prompt_with_a_generator_seeded_by_seed_and_prompt(monkeypatch):
    from nanoalign import onpolicy
    from nanoalign.data import make_batch, tokenize_rows
    from nanoalign.testing import tiny_model
    from tests.helpers import byte_tokenizer, call_method, judge_by_rule
    tok = byte_tokenizer()
    kw = dict(vocab_size=262, bos_token_id=256, eos_token_id=257, pad_token_id=258, max_seq_len=64)
    policy, ref = tiny_model(0, **kw), tiny_model(1, **kw)
    ex, _ = tokenize_rows([{"prompt": p} for p in ("What is 1 + 2?", "What is 3 + 4?")], tok, "prompt", 64)
    batch = make_batch(ex, "prompt", tok.pad_id)
    judge_by_rule(monkeypatch, lambda x, a, b: 0.5)
    seeds, made, real_gen, real_sample = [], [], torch.Generator, onpolicy.sample

    def generator(*args, **kw):
        made.append(args + tuple(kw.values()))
        return real_gen(*args, **kw)

    def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator=None, top_k=None):
        seeds.append((tuple(prompts[0]), generator.initial_seed()))
        assert model is ref                                  # off-policy: drawn from pi_ref
        assert (n, temperature, top_p, max_new_tokens) == (2, 1.0, 0.9, 3)   # the paper's sampling
        return real_sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator, top_k)
    monkeypatch.setattr(torch, "Generator", generator)
    monkeypatch.setattr(onpolicy, "sample", sample)
    runs = {}
    for seed in (1, 1, 2):
        seeds.clear()
        call_method("self_judge_offpolicy", policy, batch, tok=tok, ref=ref, seed=seed, gen_max_tokens=3)
        runs.setdefault(seed, []).append(dict(seeds))
    assert runs[1][0] == runs[1][1]                          # the same (seed, prompt): the same draws
    assert len(set(runs[1][0].values())) == 2               # two prompts: two generators
    assert not set(runs[1][0].values()) & set(runs[2][0].values())   # another seed: other draws
    assert made and all(m == (policy.lm_head.weight.device,) for m in made)   # on the model's device


def offpolicy_setup():
    from nanoalign.data import make_batch, tokenize_rows
    from nanoalign.testing import tiny_model
    from tests.helpers import byte_tokenizer
    tok = byte_tokenizer()
    kw = dict(vocab_size=262, bos_token_id=256, eos_token_id=257, pad_token_id=258, max_seq_len=64)
    ex, _ = tokenize_rows([{"prompt": p} for p in ("What is 1 + 2?", "What is 3 + 4?")], tok, "prompt", 64)
    return tok, tiny_model(0, **kw), tiny_model(1, **kw), tiny_model(2, **kw), make_batch(ex, "prompt", tok.pad_id)


class OracleTask:
    """A built-in task's stand-in for metrics: the oracle prefers the text with the larger score."""
    @staticmethod
    def score(y):
        return len(y) + sum(map(ord, y)) / 1e5

    def oracle_scores(self, prompt, response):
        return {"overall": self.score(response)}


def test_offpolicy_metrics_count_what_the_step_did(monkeypatch):
    from nanoalign import REGISTRY
    from nanoalign.common import Run
    from tests.helpers import judge_by_rule, method_config
    tok, policy, ref, other, batch = offpolicy_setup()
    calls = judge_by_rule(monkeypatch, lambda x, a, b: float(OracleTask.score(a) > OracleTask.score(b)))
    loss_fn, cfg = REGISTRY["self_judge_offpolicy"].loss, method_config("self_judge_offpolicy", gen_max_tokens=3)
    run = Run(tok=tok, ref=ref, task=OracleTask())
    _, m1 = loss_fn(policy, batch, run, cfg)
    assert [j for j, _ in calls] == [ref]                    # pi_ref judges, once, both prompts
    assert m1["cached_prompts"] == 2.0 and isinstance(m1["cached_prompts"], float)
    assert all(m1[k] >= 0 for k in ("t_sample", "t_judge", "t_update"))
    assert abs(m1["samples_per_s"] * max(m1["t_sample"], 1e-9) - 4) < 1e-6     # 2 prompts x 2 samples
    assert m1["judge_agree"] == 1.0                          # the judge follows the oracle here
    _, m2 = loss_fn(policy, batch, run, cfg)                  # every prompt cached: nothing drawn
    assert len(calls) == 1 and m2["cached_prompts"] == 2.0
    assert "samples_per_s" not in m2 and "judge_agree" not in m2
    assert all(k in m2 for k in ("t_sample", "t_judge", "t_update", "sample_len", "margin"))
    calls.clear()
    REGISTRY["self_judge_offpolicy"].loss(policy, batch, Run(tok=tok, ref=ref, judge=other), cfg)
    assert [j for j, _ in calls] == [other]                  # --judge_from: that model judges


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


def test_batches_count_examples_and_are_built_on_the_given_device(monkeypatch):
    from nanoalign import data
    seen, real = [], data._tensor_batch

    def spy(seqs, n_prompts, n_examples, pad_id, device, examples):
        seen.append((n_examples, device))
        return real(seqs, n_prompts, n_examples, pad_id, "cpu", examples)
    monkeypatch.setattr(data, "_tensor_batch", spy)
    gpu = torch.device("cuda", 1)
    sft = [{"ids": [5, 6, 7], "n_prompt": 1}, {"ids": [5, 6], "n_prompt": 1}, {"ids": [9, 9, 9, 9], "n_prompt": 2}]
    pref = [{"chosen": [5, 6], "n_prompt_chosen": 1, "rejected": [5, 7, 8], "n_prompt_rejected": 1}] * 2
    assert data.make_batch(sft, "sft", 0, gpu)["n_examples"] == 3
    assert data.make_batch(pref, "pref", 0, gpu)["n_examples"] == 2
    data.make_batch([{"align": pref[0], "sj": pref[1]}], "mo", 0, gpu)
    assert seen == [(3, gpu), (2, gpu), (1, gpu), (1, gpu)]


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


@pytest.mark.parametrize("who", ["ref", "policy", "judge_from"])
def test_self_judge_step_judges_with_the_chosen_model_and_logs_its_cost(who, monkeypatch):
    from nanoalign import REGISTRY, onpolicy
    from nanoalign.common import Run
    from tests.helpers import judge_by_rule, method_config
    tok, policy, ref, other, batch = offpolicy_setup()
    calls = judge_by_rule(monkeypatch, lambda x, a, b: float(OracleTask.score(a) > OracleTask.score(b)))
    drawn, real_sample = [], onpolicy.sample

    def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator=None, top_k=None):
        drawn.append((model, n, temperature, top_p, max_new_tokens, generator))
        return real_sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator, top_k)
    devices, real_pairs = [], onpolicy.pair_batch

    def pair_batch(prompts, wins, losses, pad_id, device):
        devices.append(device)
        return real_pairs(prompts, wins, losses, pad_id, device)
    monkeypatch.setattr(onpolicy, "sample", sample)
    monkeypatch.setattr(onpolicy, "pair_batch", pair_batch)
    cfg = method_config("self_judge", gen_max_tokens=3, judge="policy" if who == "policy" else "ref")
    run = Run(tok=tok, ref=ref, task=OracleTask(), judge=other if who == "judge_from" else None)
    _, m = REGISTRY["self_judge"].loss(policy, batch, run, cfg)
    assert drawn == [(policy, 2, 1.0, 0.9, 3, None)]         # on-policy, the paper's sampling
    assert devices == [policy.lm_head.weight.device]
    assert [j for j, _ in calls] == [{"ref": ref, "policy": policy, "judge_from": other}[who]]
    assert all(m[k] >= 0 for k in ("t_sample", "t_judge", "t_update"))
    assert abs(m["samples_per_s"] * max(m["t_sample"], 1e-9) - 4) < 1e-6      # 2 prompts x 2 samples
    assert m["judge_agree"] == 1.0


def test_naive_log_probs_by_hand_in_each_dtype():
    """The plain reference (the tests' and the benchmark's 'eager'): log_softmax of the full logits,
    in float32 by default (bfloat16 logits upcast first) or in the dtype asked for; flat (N, d)
    input sums over its N tokens."""
    from kernels.seq_logprob import naive_sequence_logprob
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(2, 5, 8, generator=g), torch.randn(11, 8, generator=g)
    y, m = torch.randint(0, 11, (2, 5), generator=g), (torch.rand(2, 5, generator=g) < 0.6).float()
    m[1, 0] = 1.0

    def by_hand(logits, mask):
        lp = torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1) * mask
        return lp.sum(-1), lp.sum(-1) / mask.sum(-1).clamp(min=1)
    s64, mean64 = by_hand(h.double() @ w.double().t(), m.double())
    got = naive_sequence_logprob(h, w, y, m, "sum", dtype=torch.float64)
    assert got.dtype == torch.float64 and torch.allclose(got, s64, rtol=1e-12, atol=1e-12)
    assert torch.allclose(naive_sequence_logprob(h, w, y, m, "mean", dtype=torch.float64), mean64,
                          rtol=1e-12, atol=1e-12)
    hb, wb = h.bfloat16(), w.bfloat16()
    s32, _ = by_hand((hb @ wb.t()).float(), m)
    got = naive_sequence_logprob(hb, wb, y, m)
    assert got.dtype == torch.float32 and torch.allclose(got, s32, rtol=1e-6, atol=1e-6)
    assert torch.equal(naive_sequence_logprob(h, w, y, m, "none"),
                       torch.log_softmax(h @ w.t(), -1).gather(-1, y.unsqueeze(-1)).squeeze(-1) * m)
    flat = naive_sequence_logprob(h.reshape(10, 8), w, y.reshape(10), m.reshape(10), "sum")
    assert flat.shape == () and torch.allclose(flat, s64.sum().float(), rtol=1e-5)
    flat_mean = naive_sequence_logprob(h.reshape(10, 8), w, y.reshape(10), m.reshape(10), "mean")
    assert torch.allclose(flat_mean, (s64.sum() / m.sum()).float(), rtol=1e-5)


# -- OSP: sampling, the judge's principles, metrics, devices ------------------------------------------------
def judge_recorder(monkeypatch, rule):
    """Replace onpolicy.judge_probs by `rule`; returns the calls (judge, n items, principles)."""
    from nanoalign import onpolicy
    calls = []

    def stub(judge, tok, template, prompts, a, b, principles=None, likelihood=None, combine=None):
        calls.append((judge, len(prompts), principles))
        return torch.tensor([float(rule(*it)) for it in zip(prompts, a, b)], dtype=torch.float32)
    monkeypatch.setattr(onpolicy, "judge_probs", stub)
    return calls


def by_score(x, a, b):
    return float(OracleTask.score(a) > OracleTask.score(b))


@pytest.mark.parametrize("method, opts", [
    ("self_judge", {}), ("self_judge_offpolicy", {}), ("osp", {"pairing": "ranked", "osp_k": 3}),
    ("osp", {"pairing": "raft", "osp_k": 3}), ("osp", {"pairing": "random", "osp_k": 4}),
])
def test_on_policy_methods_judge_under_the_runs_principles(method, opts, monkeypatch):
    from nanoalign import REGISTRY
    from nanoalign.common import Run
    from tests.helpers import method_config
    tok, policy, ref, _, batch = offpolicy_setup()
    calls = judge_recorder(monkeypatch, by_score)
    principles = [("correct", "the sum is right"), ("format", "ends with a period")]
    run = Run(tok=tok, ref=ref)
    run.cache["principles"] = principles
    REGISTRY[method].loss(policy, batch, run, method_config(method, gen_max_tokens=3, **opts))
    assert calls and all(p == principles for _, _, p in calls)
    assert all(j is ref for j, _, _ in calls)


@pytest.mark.parametrize("pairing, K", [("ranked", 3), ("ranked", 4), ("raft", 3), ("random", 4)])
def test_osp_step_samples_at_the_papers_settings_and_logs_its_cost(pairing, K, monkeypatch):
    from nanoalign import REGISTRY, onpolicy
    from nanoalign.common import Run
    from tests.helpers import method_config
    tok, policy, ref, other, batch = offpolicy_setup()
    calls = judge_recorder(monkeypatch, by_score)
    drawn, built, real = [], [], (onpolicy.sample, onpolicy.pair_batch, onpolicy.response_batch)

    def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator=None, top_k=None):
        drawn.append((model, n, temperature, top_p, max_new_tokens))
        return real[0](model, tok, prompts, n, temperature, top_p, max_new_tokens, generator, top_k)

    def pair_batch(prompts, wins, losses, pad_id, device):
        built.append(("pref", len(prompts), device))
        return real[1](prompts, wins, losses, pad_id, device)

    def response_batch(prompts, responses, pad_id, device):
        built.append(("sft", len(prompts), device))
        return real[2](prompts, responses, pad_id, device)
    monkeypatch.setattr(onpolicy, "sample", sample)
    monkeypatch.setattr(onpolicy, "pair_batch", pair_batch)
    monkeypatch.setattr(onpolicy, "response_batch", response_batch)
    cfg = method_config("osp", gen_max_tokens=4, pairing=pairing, osp_k=K)
    _, m = REGISTRY["osp"].loss(policy, batch, Run(tok=tok, ref=ref, task=OracleTask(), judge=other), cfg)
    assert drawn == [(policy, K, 0.7, 0.9, 4)]
    dev = policy.lm_head.weight.device
    assert built == ([("sft", 2, dev)] if pairing == "raft" else [("pref", 2 * (K // 2), dev)])
    assert all(j is other for j, _, _ in calls)
    assert all(m[k] >= 0 for k in ("t_sample", "t_judge", "t_update"))
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
    judge_recorder(monkeypatch, rule)
    rec = record_on_policy(monkeypatch)
    lens = {}
    for loss in ("spce", "dpo"):
        torch.manual_seed(3)
        cfg = method_config("osp", gen_max_tokens=8, osp_k=4, osp_loss=loss)
        REGISTRY["osp"].loss(policy, batch, Run(tok=tok, ref=ref), cfg)
        _, wins, losses = rec.pairs[-1]
        lens[loss] = [(len(tok.decode(w)), len(tok.decode(lo))) for w, lo in zip(wins, losses)]
    assert lens["spce"] == [(b, a) if a != b else (a, b) for a, b in lens["dpo"]]
    assert all(w >= lo for w, lo in lens["spce"]) and any(w > lo for w, lo in lens["spce"])


# -- small rules ------------------------------------------------------------------------------------------------
def test_orient_breaks_a_tie_for_the_first():
    from nanoalign.onpolicy import orient
    assert orient(["a", "b", "c"], ["x", "y", "z"], [0.5, 0.4999, 0.5001]) == (["a", "y", "c"], ["x", "b", "z"])


def test_task_by_task_switches_to_alignment_at_half_the_epochs():
    """L_sj for the first half of the run's epochs, [0, epochs / 2), then L_align; an odd number of
    epochs switches mid-epoch."""
    from nanoalign.mo_orpo import phase
    assert [phase("task_by_task", e, 4.0) for e in (0.0, 1.99, 2.0, 3.5)] == ["sj", "sj", "align", "align"]
    assert [phase("task_by_task", e, 3.0) for e in (1.4999, 1.5)] == ["sj", "align"]
    assert [phase("epoch_by_epoch", e, 4.0) for e in (0.0, 0.99, 1.0, 2.5, 3.2)] == \
        ["align", "align", "sj", "align", "sj"]


def test_osp_stats_of_one_value_have_zero_spread():
    from nanoalign.osp import _stats
    assert _stats("p", torch.tensor([0.25])) == {"p_mean": 0.25, "p_std": 0.0}
    got = _stats("q", torch.tensor([1.0, 2.0, 4.0]))
    assert abs(got["q_mean"] - 7 / 3) < 1e-6 and abs(got["q_std"] - (7 / 3) ** 0.5) < 1e-6   # unbiased


def test_a_prompt_batch_counts_prompts_and_their_tokens():
    from nanoalign.data import make_batch
    ex = [{"prompt": [5, 6, 7], "row": {}}, {"prompt": [8], "row": {}}]
    b = make_batch(ex, "prompt", 0)
    assert b == {"prompts": [[5, 6, 7], [8]], "n_examples": 2, "n_tokens": 0, "n_seen": 4, "examples": ex}


def test_a_prompt_the_template_refuses_is_a_bad_row_naming_it():
    from nanoalign.data import tokenize_rows

    class Refuses:
        def encode_prompt(self, prompt):
            if "system" in str(prompt):
                raise ValueError("this template has no system role")
            return [5, 6]
    rows = [{"prompt": "ok", "_where": "f:1"}, {"prompt": [{"role": "system", "content": "x"}], "_where": "f:2"}]
    with pytest.raises(DataError) as e:
        tokenize_rows(rows, Refuses(), "prompt", 16)
    assert str(e.value) == "f:2: this template has no system role"
    out, dropped = tokenize_rows(rows, Refuses(), "prompt", 16, skip_bad=True)
    assert [x["prompt"] for x in out] == [[5, 6]] and dropped == 1


def test_batch_logps_hands_the_kernel_the_autocast_dtype(monkeypatch):
    """Autocast does not reach inside the kernel: under it, batch_logps casts the hidden states and
    the LM head to the autocast dtype itself; outside it, both stay float32."""
    from nanoalign import common
    from nanoalign.data import make_batch
    from nanoalign.testing import tiny_model
    seen, real = [], common.sequence_logprob

    def spy(h, w, *a, **k):
        seen.append((h.dtype, w.dtype))
        return real(h, w, *a, **k)
    monkeypatch.setattr(common, "sequence_logprob", spy)
    model = tiny_model(0)
    batch = make_batch([{"ids": [5, 6, 7, 8], "n_prompt": 1}, {"ids": [5, 9], "n_prompt": 1}], "sft", 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = common.batch_logps(model, batch)
    plain = common.batch_logps(model, batch)
    assert seen == [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]
    assert torch.allclose(low, plain, rtol=0.05, atol=0.05)


def test_judge_cli_passes_its_batch_size_on(judge_dir, tmp_path, monkeypatch, capsys):
    import nanoalign.judge as judge
    seen, real = [], judge.judge_pairs

    def spy(*a, **k):
        seen.append(a[5] if len(a) > 5 else k.get("batch_size"))
        return real(*a, **k)
    monkeypatch.setattr(judge, "judge_pairs", spy)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    judge.main(["--init_from", judge_dir, "--pairs", str(f), "--template", "compact", "--batch_size", "3"])
    judge.main(["--init_from", judge_dir, "--pairs", str(f), "--template", "compact"])
    assert seen == [3, 16]
