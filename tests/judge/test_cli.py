"""The judge's command line (python -m nanoalign.judge_cli): the swapped probability of each row, principles
by win rate, one-line errors that blame a row only for its own error, help for every flag."""
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
    assert str(e.value) == f"error: {f}:3: bad row (KeyError('b')); need prompt, a, b"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n{not json\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact"])
    assert str(e.value).startswith(f"error: {f}:2: bad row (JSONDecodeError(")
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(f), "--judge_template", "compact_principle"])
    assert str(e.value).startswith("error: judge template 'compact_principle' judges under principles")
    with pytest.raises(SystemExit) as e:
        main(["--init_from", judge_dir, "--pairs", str(tmp_path / "none.jsonl"), "--judge_template", "compact"])
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
    import nanoalign.judge_cli as judge_cli
    from nanoalign.judge_cli import main

    def broken(d):
        raise KeyError("factor")
    monkeypatch.setattr(judge_cli, "load", broken)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "q", "a": "x", "b": "y"}) + "\n")
    with pytest.raises(KeyError, match="factor"):
        main(["--init_from", str(tmp_path), "--pairs", str(f)])


def test_judge_cli_help_names_every_flag_and_argparse_guards_the_rest(judge_dir, capsys):
    """The parser is left out of the mutation run (its help texts are prose); its rules are tested here."""
    import nanoalign.judge_cli as judge
    with pytest.raises(SystemExit) as e:
        judge.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and judge.__doc__.strip().splitlines()[0] in out
    for flag in ("--init_from", "--pairs", "--judge_template", "--principles", "--batch_size"):
        assert flag in out
    flat = " ".join(out.split())
    assert "default: the one the checkpoint trained with, else 'compact'" in flat and "default: 16" in flat
    with pytest.raises(SystemExit) as e:
        judge.main(["--init_from", judge_dir])
    assert e.value.code == 2 and "required: --pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        judge.main(["--init_from", judge_dir, "--pairs", "p.jsonl", "--judge_template", "no_such"])
    assert e.value.code == 2 and "invalid choice: 'no_such'" in capsys.readouterr().err


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
    so, as sample.py --best_of does; a flag overrides it."""
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
    judge.main(["--init_from", str(trained), "--pairs", str(f), "--judge_template", "compact", "--likelihood", "vocab"])
    judge.main(["--init_from", judge_dir, "--pairs", str(f)])
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
    assert list(json.loads(capsys.readouterr().out)) == ["row", "p(a>b)"]


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
