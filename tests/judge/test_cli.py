"""The judge's command line (python -m nanoalign.judge_cli): the swapped probability of each row, principles
by win rate (given, or the checkpoint's own), the pairs file read as train.py reads a data file, one-line
errors that blame a row only for its own error, help for every flag."""
import json

import pytest


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
    from nanoalign.judge_cli import main
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
    # no --judge_template: the checkpoint records none, so 'compact' (sample.py --best_of's and the on-policy
    # methods' default: 'ultrafeedback' overflowed a small model's context)
    for template, extra in (("compact", []), ("ultrafeedback", ["--template", "ultrafeedback", "--batch_size", "1"])):
        got = judge_cli(capsys, ["--init_from", judge_dir, "--pairs", str(f)] + extra)
        want = judge_pairs(model, tok, TEMPLATES[template], items).tolist()
        assert [g["row"] for g in got] == [0, 1, 2]
        assert [g["p(a>b)"] for g in got] == [round(p, 4) for p in want]
        assert abs(got[0]["p(a>b)"] + got[2]["p(a>b)"] - 1) <= 2e-4      # the same pair, swapped


def test_judge_cli_judges_under_principles_by_win_rate(judge_dir, tmp_path, capsys):
    from model.checkpoint import load
    from nanoalign.judge import TEMPLATES, judge_pairs
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "What is 1 + 1?", "a": "2.", "b": "It is 3"}) + "\n")
    principles = [("correct", "the sum is right"), ("format", "ends with a period")]
    got = judge_cli(capsys, ["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact_principle",
                             "--principles", "correct:the sum is right,format:ends with a period"])
    model, tok = load(judge_dir)
    want = judge_pairs(model, tok, TEMPLATES["compact_principle"], [("What is 1 + 1?", "2.", "It is 3")],
                       principles)
    assert [g["p(a>b)"] for g in got] == [round(want.item(), 4)]


def test_judge_cli_errors_are_one_line(judge_dir, tmp_path, capsys):
    from nanoalign.judge_cli import main
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n\n" + json.dumps({"prompt": "q", "a": "x"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact"])
    assert str(e.value) == (f"error: {f}:3: missing field 'b' (a pair row needs prompt, a, b; or a "
                            f"preference row: prompt, chosen, rejected)")
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n{not json\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact"])
    assert str(e.value) == f"error: {f}:2: malformed JSON (Expecting property name enclosed in double quotes at column 2)"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact_principle"])
    assert str(e.value).startswith("error: judge template 'compact_principle' judges under principles")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(tmp_path / "none.jsonl"), "--judge_template", "compact"])
    assert str(e.value) == f"error: {tmp_path / 'none.jsonl'}: cannot open (No such file or directory)"
    with pytest.raises(SystemExit) as e:
        main(["--init_from", str(tmp_path / "no_such_dir"), "--pairs", str(f)])
    assert str(e.value).startswith("error: ") and "no_such_dir" in str(e.value)
    with pytest.raises(SystemExit):
        main(["--init_fro", judge_dir, "--pairs", str(f)])          # no abbreviations
    assert "the following arguments are required: --init_from" in capsys.readouterr().err


# -- the pairs file: read as train.py reads a data file (nanoalign/textfile.py, nanoalign/rows.py) ----------
Q = "What is 1 + 1?"


@pytest.mark.parametrize("line, why", [
    # a number where a response goes was a TypeError traceback from deep in the tokenizer
    ('{"prompt": "Q?", "a": 5, "b": "y"}',
     "field 'a' must be a string or a list of {\"role\", \"content\"} messages, got int"),
    # a message list without an assistant turn was a MessagesError traceback, no file, no line
    ('{"prompt": "Q?", "chosen": [{"role": "user", "content": "hi"}], "rejected": "n"}',
     "field 'chosen' is a message list with no assistant message; the response is the last assistant message"),
    # a trailing comma (a JSON array's rows pasted in) was "bad row (JSONDecodeError(...)); need prompt, a, b"
    ('{"prompt": "q", "a": "x", "b": "y"},', "malformed JSON: a trailing comma after the row at column 36 (JSON allows none)"),
    ('["q", "x", "y"]', "expected a JSON object, got list"),
    ('{"prompt": "q", "a": "x", "chosen": "y", "rejected": "z"}',
     "both 'a'/'b' and 'chosen'/'rejected'; a row holds one pair: keep one of them"),
    ('{"prompt": "q", "answer": "x"}', "missing field 'a' (a pair row needs prompt, a, b; or a preference row: "
                                       "prompt, chosen, rejected)"),
    ('{"prompt": "q", "a": "x", "b": "  "}', "field 'b' is empty"),
    ('{"prompt": "q", "a": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}], "b": "y"}',
     "field 'a': the messages before its answer are not the 'prompt' field's conversation (from message 1), "
     "and would be ignored (the answer goes after 'prompt'); give 'a' as the answer alone, or as the prompt's "
     "messages then the answer"),
    ('{"chosen": "Yes.", "rejected": "Yeah."}', "no 'prompt' field, and 'chosen' and 'rejected' share only the "
                                              "start of a word ('Ye'), no whole words to take as the prompt"),
    # read_pair: a row with 'a' or 'b' is a pair, refused beside 'chosen' or 'rejected'; one with either
    # of those is a preference row, read as read_pref reads it; each response checked, named by its field
    # 'b' alone (no 'a') beside chosen and rejected: still both shapes, not a preference row with 'b' ignored
    ('{"prompt": "q", "b": "x", "chosen": "y", "rejected": "z"}',
     "both 'a'/'b' and 'chosen'/'rejected'; a row holds one pair: keep one of them"),
    # a pair beside one of chosen or rejected: which two responses were meant?
    ('{"prompt": "q", "a": "x", "b": "w", "chosen": "y"}',
     "both 'a'/'b' and 'chosen'/'rejected'; a row holds one pair: keep one of them"),
    ('{"prompt": "q", "a": "x", "b": "w", "rejected": "z"}',
     "both 'a'/'b' and 'chosen'/'rejected'; a row holds one pair: keep one of them"),
    # half a preference row is a preference row missing its other half, not a pair missing 'a'
    ('{"prompt": "q", "chosen": "y"}',
     "missing field 'rejected' (a preference row needs prompt, chosen, rejected; or, with no prompt, chosen "
     "and rejected conversations that begin with it)"),
    ('{"prompt": "q", "rejected": "z"}',
     "missing field 'chosen' (a preference row needs prompt, chosen, rejected; or, with no prompt, chosen "
     "and rejected conversations that begin with it)"),
    # a pair's responses are checked as a preference row's are, each named
    ('{"prompt": "q", "a": "x", "b": [{"role": "user", "content": "hi"}]}',
     "field 'b' is a message list with no assistant message; the response is the last assistant message"),
    ('{"prompt": "q", "a": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "thanks"}], "b": "y"}',
     "field 'a' ends with a 'user' message: the response is the last assistant message (message 1), and the "
     "turns after it, from message 2, would be ignored; end the list at the response"),
])
def test_a_bad_row_is_one_error_naming_its_file_line_and_field(judge_dir, tmp_path, line, why):
    """Each bad row is train.py's one line, 'error: FILE:LINE: ...' (nanoalign/rows.py's checks), on the
    row's line of the file, before the model loads."""
    from nanoalign.judge_cli import main
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n\n" + line + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact"])
    assert str(e.value) == f"error: {f}:3: {why}"


@pytest.mark.parametrize("line, why", [
    # a row cut short, spaces after it: the column is the line's end, as train.py says it
    ('{"prompt": "q", "a": "x", "b": "y"  ', "malformed JSON (Expecting ',' delimiter at column 37)"),
    # cut short at its end: the column is on this line, not 'column 1' of the newline after it
    ('{"prompt": "q", "a": "x", "b": "y"', "malformed JSON (Expecting ',' delimiter at column 35)"),
    # text after the row is no part of the line to strip
    ('{"prompt": "q", "a": "x", "b": "y"}X', "malformed JSON (Extra data at column 36)"),
    # a line after the first that looks like CSV is a bad row, not a CSV file
    ("q,x,y", "malformed JSON (Expecting value at column 1)"),
])
def test_a_pairs_line_is_read_as_train_py_reads_a_data_line(judge_dir, tmp_path, line, why):
    """Each line of --pairs is decoded, stripped of its line end and parsed as read_jsonl does, so a
    malformed line gets train.py's own error for it (here a 'prompt' file, which a pair row also is)."""
    from nanoalign.data import DataError, read_jsonl
    from nanoalign.judge_cli import main
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n\n" + line + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact"])
    assert str(e.value) == f"error: {f}:3: {why}"
    with pytest.raises(DataError) as train:
        read_jsonl(str(f), "prompt")
    assert str(train.value) == f"{f}:3: {why}"


def test_a_file_that_is_no_jsonl_or_no_text_or_empty_is_one_error(judge_dir, tmp_path):
    from nanoalign.judge_cli import main
    f = tmp_path / "pairs.jsonl"
    for data, want in ((json.dumps([{"prompt": "q", "a": "x", "b": "y"}], indent=1).encode(),
                        f"error: {f}:1: the file looks like a JSON document, not JSONL"),
                       (b"\x1f\x8b\x08\x00", f"error: {f}:1: gzip-compressed, not UTF-8 text"),
                       ('{"prompt": "caf\xe9", "a": "x", "b": "y"}\n'.encode("latin-1"),
                        f"error: {f}:1: not UTF-8 text (byte 0xe9 at column 16"),
                       (b"\n \n", f"error: {f}: no usable rows: the file is empty (or blank lines only)")):
        f.write_bytes(data)
        with pytest.raises(SystemExit) as e:
            main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact"])
        assert str(e.value).startswith(want), str(e.value)


def test_preference_rows_in_every_form_train_py_reads_are_judged_as_their_pair(judge_dir, tmp_path, capsys):
    """TRL's implicit-prompt rows (whole conversations, or whole strings, no 'prompt': train.py reads them)
    were 'bad row (KeyError('prompt'))', and a file saved with a UTF-8 BOM (Windows editors) was a bad line 1.
    Each form is judged as the {prompt, a, b} row of the same pair, a = chosen; 'line' is the file's line
    (counted from 1, blank lines too), 'row' the pair's index (from 0)."""
    from model.checkpoint import load
    from nanoalign.judge import TEMPLATES, judge_pairs
    user = {"role": "user", "content": Q}
    rows = [{"prompt": Q, "a": "2.", "b": "It is 3"},
            {"chosen": [user, {"role": "assistant", "content": "2."}],
             "rejected": [user, {"role": "assistant", "content": "It is 3"}]},
            {"prompt": [user], "chosen": "2.", "rejected": [user, {"role": "assistant", "content": "It is 3"}]},
            {"chosen": f"{Q} 2.", "rejected": f"{Q} It is 3"},
            {"prompt": Q, "a": [{"role": "assistant", "content": "2."}], "b": "It is 3", "labels": {}}]
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(json.dumps(r) for r in rows).encode() + b"\r\n")
    got = judge_cli(capsys, ["--init_from", judge_dir, "--pairs", str(f)])
    assert [(g["row"], g["line"]) for g in got] == [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9)]
    assert list(got[0]) == ["row", "line", "p(a>b)"]
    model, tok = load(judge_dir)
    # the string form: the prompt is the shared words, the space before the answers goes with them (as TRL)
    want = judge_pairs(model, tok, TEMPLATES["compact"], [(Q, "2.", "It is 3"), (Q, " 2.", " It is 3")]).tolist()
    assert [g["p(a>b)"] for g in got] == [round(p, 4) for p in (want[0], want[0], want[0], want[1], want[0])]


# -- the checkpoint's principles, --device, --chat_format ------------------------------------------------
@pytest.fixture
def principled(judge_dir, tmp_path):
    """The tiny judge as a principle-aware JSFT run leaves it: its template recorded (state.json) and the
    principles its data had kept beside it (principles.json, nanoalign/onpolicy.py kept_principles)."""
    import shutil
    d = tmp_path / "principled"
    shutil.copytree(judge_dir, d)
    (d / "state.json").write_text(json.dumps({"step": 1, "config": {
        "method": "jsft", "judge_template": "compact_principle", "likelihood": "vocab"}}))
    (d / "principles.json").write_text(json.dumps({"correct": "the sum is right", "format": "ends with a period"}))
    return d


def test_a_principle_judge_judges_under_the_principles_kept_in_its_checkpoint(principled, tmp_path, capsys):
    """It failed 'judge template ... judges under principles, and none were given' with no --principles;
    sample.py --best_of falls back to the checkpoint's principles.json, and so does the judge's command line
    now (saying so on stderr). --principles overrides them; a checkpoint without the file names both."""
    import os
    from model.checkpoint import load
    from nanoalign.judge import TEMPLATES, judge_pairs
    from nanoalign.judge_cli import main
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": Q, "a": "2.", "b": "It is 3"}) + "\n")
    model, tok = load(str(principled))
    t, item = TEMPLATES["compact_principle"], [(Q, "2.", "It is 3")]
    kept = [("correct", "the sum is right"), ("format", "ends with a period")]
    got = judge_cli(capsys, ["--init_from", str(principled), "--pairs", str(f)])
    assert [g["p(a>b)"] for g in got] == [round(judge_pairs(model, tok, t, item, kept).item(), 4)]
    main(["--init_from", str(principled), "--pairs", str(f)])
    assert capsys.readouterr().err == (f"--- judging under principles correct, format (those kept in the "
                                       f"checkpoint: {principled / 'principles.json'})\n")
    given = [("honest", "tells the truth")]
    got = judge_cli(capsys, ["--init_from", str(principled), "--pairs", str(f), "--principles", "honest:tells the truth"])
    assert [g["p(a>b)"] for g in got] == [round(judge_pairs(model, tok, t, item, given).item(), 4)]
    os.remove(principled / "principles.json")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", str(principled), "--pairs", str(f)])
    assert str(e.value) == (f"error: judge template 'compact_principle' judges under principles: name them "
                            f"with --principles name:description,... ({principled / 'principles.json'} does "
                            f"not exist)")


def test_principles_given_to_a_template_without_principles_are_refused_in_every_tool(judge_dir, tmp_path):
    """--principles beside a template that has no {principle} in it was ignored without a word, in
    the judge's command line, sample.py --best_of and the on-policy methods: the pairs were judged
    under none of the principles named. Each refuses it in the same words."""
    import argparse
    import sample
    from model.checkpoint import load
    from nanoalign import onpolicy
    from nanoalign.judge import TEMPLATES, JudgeError
    from nanoalign.judge_cli import main
    names = ", ".join(n for n, t in TEMPLATES.items() if "{principle}" in t.user)
    want = f"--principles applies to a principle template ({names}); judge template 'compact' judges without principles"
    assert "compact_principle" in names and "'compact'" not in names
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact", "--principles", "a:b"])
    assert str(e.value) == f"error: {want}"
    a = sample.parse_args(["--init_from", judge_dir, "--prompt", "q", "--best_of", "2", "--device", "cpu",
                           "--judge_template", "compact", "--principles", "a:b"])
    model, tok = load(judge_dir)
    with pytest.raises(SystemExit) as e:
        sample.best_of_main(a, model, tok, ["q"])
    assert str(e.value) == f"error: {want}"
    cfg = argparse.Namespace(principles="a:b", judge_from="", init_from=judge_dir)
    with pytest.raises(JudgeError) as e:
        onpolicy.principles_of(cfg, TEMPLATES["compact"])
    assert str(e.value) == want
    assert onpolicy.principles_of(cfg, TEMPLATES["compact_principle"]) == [("a", "b")]


def test_the_judge_loads_on_the_device_it_is_given(judge_dir, tmp_path, monkeypatch, capsys):
    import torch
    import nanoalign.judge_cli as judge
    seen, real = [], judge.load

    def spy(d, dtype=torch.float32, device="cpu", chat_format=None):
        seen.append((device, dtype, chat_format))
        return real(d, dtype, device, chat_format)
    monkeypatch.setattr(judge, "load", spy)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    judge.main(["--init_from", judge_dir, "--pairs", str(f), "--device", "cpu"])
    judge.main(["--init_from", judge_dir, "--pairs", str(f), "--device", "cpu", "--chat_format", "chatml"])
    # in float32 whatever dtype the checkpoint was saved in (a bf16 one too): p(a>b) is no bf16 rounding
    assert seen == [("cpu", torch.float32, None), ("cpu", torch.float32, "chatml")]
    assert judge.build_parser().get_default("device") == ("cuda" if torch.cuda.is_available() else "cpu")
    for device, why in (("tpu", "--device 'tpu': use cpu, cuda or cuda:N"),
                        ("cuda:x", "--device 'cuda:x': use cpu, cuda or cuda:N")):
        with pytest.raises(SystemExit) as e:
            judge.main(["--init_from", judge_dir, "--pairs", str(f), "--device", device])
        assert e.value.code == 2 and why in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            judge.main(["--init_from", judge_dir, "--pairs", str(f), "--device", "cuda"])
        assert e.value.code == 2 and "--device cuda: this torch sees no CUDA GPU" in capsys.readouterr().err
    assert seen == [("cpu", torch.float32, None), ("cpu", torch.float32, "chatml")]   # each refused before loading


def test_a_checkpoint_without_a_chat_template_is_one_error_naming_chat_format(judge_dir, tmp_path, capsys):
    """As sample.py's: the judgments are chats, so a checkpoint with no template says which flag names one."""
    import os
    import shutil
    from nanoalign.judge_cli import main
    d = tmp_path / "no_template"
    shutil.copytree(judge_dir, d)
    os.remove(d / "tokenizer_config.json")
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", str(d), "--pairs", str(f)])
    msg = str(e.value)
    assert msg.startswith(f"error: {d}: no chat template") and len(msg.splitlines()) == 1, msg
    assert "with --chat_format" in msg and "load(" not in msg, msg
    got = judge_cli(capsys, ["--init_from", str(d), "--pairs", str(f), "--chat_format", "selfjudge"])
    assert [g["row"] for g in got] == [0]


def test_judge_cli_blames_a_row_only_for_the_rows_own_error(monkeypatch, tmp_path):
    """A KeyError raised anywhere but in reading a row (here: a stand-in loader) is not reported as a
    bad row of the pairs file. (A config.json's own bad fields are CheckpointErrors: test_model.py.)"""
    import nanoalign.judge_cli as judge_cli
    from nanoalign.judge_cli import main

    def broken(*args):
        raise KeyError("factor")
    monkeypatch.setattr(judge_cli, "load", broken)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(KeyError, match="factor"):
        main(["--init_from", str(tmp_path), "--pairs", str(f)])


def test_judge_cli_help_names_every_flag_and_argparse_guards_the_rest(judge_dir, capsys, monkeypatch):
    """The parser is left out of the mutation run (its help texts are prose); its rules are tested here."""
    import nanoalign.judge_cli as judge
    from model.chat_template import CHAT_FORMAT_HELP, CHAT_FORMATS
    monkeypatch.setenv("COLUMNS", "100")       # argparse wraps to the terminal width
    with pytest.raises(SystemExit) as e:
        judge.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and judge.__doc__.strip().splitlines()[0] in out
    # the usage line is the command a user types, not the file's name
    assert out.startswith("usage: python -m nanoalign.judge_cli [-h] --init_from"), out.splitlines()[0]
    # how `python -m` runs a module twice is the code's business, not the user's
    assert "sys.modules" not in out and "a second time" not in out
    for flag in ("--init_from", "--pairs", "--judge_template", "--principles", "--batch_size", "--likelihood",
                 "--device", "--chat_format"):
        assert flag in out
    flat = " ".join(out.split())
    assert "default: the one the checkpoint trained with, else 'compact'" in flat and "default: 16" in flat
    assert "(default: the principles kept in the checkpoint, its principles.json, as sample.py --best_of)" in flat
    assert "cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu" in flat
    assert " ".join(CHAT_FORMAT_HELP.split()) in flat and "(default: '')" in flat
    action = next(x for x in judge.build_parser()._actions if x.dest == "chat_format")
    assert tuple(action.choices) == CHAT_FORMATS
    with pytest.raises(SystemExit) as e:
        judge.main(["--init_from", judge_dir])
    assert e.value.code == 2 and "required: --pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        judge.main(["--init_from", judge_dir, "--pairs", "p.jsonl", "--judge_template", "no_such"])
    assert e.value.code == 2 and "invalid choice: 'no_such'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        judge.main(["--init_from", judge_dir, "--pairs", "p.jsonl", "--chat_format", "chatm"])
    assert e.value.code == 2 and "invalid choice: 'chatm'" in capsys.readouterr().err


def test_judge_cli_passes_its_batch_size_on(judge_dir, tmp_path, monkeypatch, capsys):
    import nanoalign.judge_cli as judge
    seen, real = [], judge.judge_pairs

    def spy(*a, **k):
        seen.append(a[5] if len(a) > 5 else k.get("batch_size"))
        return real(*a, **k)
    monkeypatch.setattr(judge, "judge_pairs", spy)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    judge.main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact", "--batch_size", "3"])
    judge.main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact"])
    assert seen == [3, 16]


def test_judge_cli_judges_by_the_likelihood_rule_it_is_given(judge_dir, tmp_path, monkeypatch, capsys):
    import nanoalign.judge_cli as judge
    seen, real = [], judge.judge_pairs

    def spy(*a, **k):
        seen.append(k.get("likelihood", a[6] if len(a) > 6 else "vocab"))
        return real(*a, **k)
    monkeypatch.setattr(judge, "judge_pairs", spy)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    for rule in ("pair", "vocab"):
        judge.main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact", "--likelihood", rule])
    judge.main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact"])
    assert seen == ["pair", "vocab", "vocab"]


def test_judge_cli_judges_as_the_checkpoint_records_unless_told(judge_dir, tmp_path, monkeypatch, capsys):
    """A JSFT judge's checkpoint records its template and rule (state.json): with no flags the CLI judges
    so, as sample.py --best_of does; a flag overrides it, saying so as --best_of and the on-policy
    runs do (onpolicy.judging_overridden; the command judged otherwise without a word)."""
    import shutil
    import nanoalign.judge_cli as judge
    seen, real = [], judge.judge_pairs

    def spy(model, tok, t, *a, **k):
        seen.append((t.name, k["likelihood"]))
        return real(model, tok, t, *a, **k)
    monkeypatch.setattr(judge, "judge_pairs", spy)
    trained = tmp_path / "jsft"
    shutil.copytree(judge_dir, trained)
    (trained / "state.json").write_text(json.dumps({"step": 1, "config": {
        "method": "jsft", "judge_template": "hh", "likelihood": "pair"}}))
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    judge.main(["--init_from", str(trained), "--pairs", str(f)])
    assert "note:" not in capsys.readouterr().err
    judge.main(["--init_from", str(trained), "--pairs", str(f), "--judge_template", "compact", "--likelihood", "vocab"])
    assert (f"note: the judge {trained} records --judge_template hh --likelihood pair (its state.json); this run "
            f"judges with --judge_template compact --likelihood vocab, as given") in capsys.readouterr().err
    judge.main(["--init_from", judge_dir, "--pairs", str(f)])
    assert "note:" not in capsys.readouterr().err
    assert seen == [("hh", "pair"), ("compact", "vocab"), ("compact", "vocab")]


@pytest.mark.parametrize("name, guess", [("compakt", "'compact'"), ("ultrafeedbak", "'ultrafeedback'"),
                                         ("zzz", None)])
def test_an_unknown_judge_template_gets_the_closest_one(judge_dir, name, guess):
    """judge.judging, where every tool that judges chooses its template: a name given that is none of
    TEMPLATES is refused, with a guess only where a known name is close."""
    from nanoalign.judge import JudgeError, judging
    with pytest.raises(JudgeError) as e:
        judging(judge_dir, {"judge_template": name})
    assert str(e.value).startswith(f"--judge_template {name!r} is unknown; choose from hh, ultrafeedback, ")
    if guess:
        assert str(e.value).endswith(f"; did you mean {guess}?")
    else:
        assert "did you mean" not in str(e.value)


def test_a_recorded_template_unknown_here_is_one_error_in_every_tool_that_judges(judge_dir, tmp_path, capsys):
    """A checkpoint whose run recorded a template this code does not know (renamed since): the judge's
    command line raised KeyError('compact_v1') from TEMPLATES[...], sample.py --best_of named a flag the
    user never gave, and only the on-policy methods said which file held the name. Each now refuses
    it in the same words, naming state.json and the flag that overrides it; given that flag, it judges."""
    import argparse
    import shutil
    import sample
    import nanoalign.judge_cli as judge
    from nanoalign import onpolicy
    from model.checkpoint import load
    old = tmp_path / "old"
    shutil.copytree(judge_dir, old)
    (old / "state.json").write_text(json.dumps({"step": 1, "config": {
        "method": "jsft", "judge_template": "compact_v1", "likelihood": "pair"}}))
    want = (f"error: {old / 'state.json'} records judge_template 'compact_v1', which is unknown here (override "
            f"it with --judge_template); choose from {', '.join(judge.TEMPLATES)}; did you mean 'compact'?")
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(SystemExit) as e:
        judge.main(["--init_from", str(old), "--pairs", str(f)])
    assert str(e.value) == want
    cfg = argparse.Namespace(init_from=str(old), judge_from="", judge_template="", likelihood="")
    with pytest.raises(SystemExit) as e:
        onpolicy.judging_defaults("vocab")(cfg)
    assert str(e.value) == want
    model, tok = load(str(old))
    a = sample.parse_args(["--init_from", str(old), "--prompt", "q", "--best_of", "2", "--device", "cpu"])
    with pytest.raises(SystemExit) as e:
        sample.best_of_main(a, model, tok, ["q"])
    assert str(e.value) == want
    # the flag overrides the recorded name (and only the one it names: the rule stays the recorded one)
    cfg.judge_template = "compact"
    assert onpolicy.judging_defaults("vocab")(cfg) == {"likelihood": "pair"}
    judge.main(["--init_from", str(old), "--pairs", str(f), "--judge_template", "compact"])
    assert list(json.loads(capsys.readouterr().out)) == ["row", "line", "p(a>b)"]


def test_the_judge_command_runs_without_a_warning():
    """`python -m nanoalign.judge` printed a RuntimeWarning on every run ('found in sys.modules after
    import of package'): the package imports judge.py (every method file does), and `-m` then runs it
    a second time. The command line is a module nothing imports; any warning here is an error."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-W", "error", "-m", "nanoalign.judge_cli", "--help"], cwd=root,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "python -m nanoalign.judge_cli --init_from DIR --pairs pairs.jsonl" in p.stdout


def test_a_pair_too_long_for_the_context_and_a_batch_of_none_are_one_line_errors(judge_dir, tmp_path, capsys):
    """A pair whose judgment outgrows the model's context was a TooLongForContext traceback, and
    --batch_size 0 a ValueError from range(); sample.py --best_of says the first in one line."""
    from nanoalign.judge_cli import main
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q " * 300, "a": "x " * 200, "b": "y"}) + "\n")
    for template, hint in (("ultrafeedback", True), ("compact", False)):
        with pytest.raises(SystemExit) as e:
            main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", template, "--device", "cpu"])
        msg = str(e.value)
        assert msg.startswith(f"error: a judgment of a pair in --pairs {f} is too long: ") and \
            "longer than the model's context (max_position_embeddings = 1024)" in msg, msg
        # the hint, where there is one, is all that follows the context's numbers
        assert msg.endswith("(max_position_embeddings = 1024)" +
                            ("; a shorter --judge_template such as 'compact' may fit" if hint else "")), msg
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--batch_size", "0"])
    assert e.value.code == 2 and "--batch_size must be >= 1, got 0" in capsys.readouterr().err
