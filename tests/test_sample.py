"""sample.py's command line: every flag explains itself and shows its default, greedy decoding is the
default, prefixes of flags are errors (an unknown flag's naming the closest flag), and the help's
example commands are printed intact. And the compiled static-cache decode (generate(...,
compiled=True)) against the eager one: the same greedy tokens, the same samples from a seeded
generator, the same logits step by step."""
import argparse
import json
import os
import re
import shlex

import pytest
import torch

import sample
from tests.helpers import ctrl_c_while_starting, tiny


@pytest.fixture
def help_text(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")       # argparse wraps to the terminal width
    with pytest.raises(SystemExit) as e:
        sample.parse_args(["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def flag_blocks(text):
    """{'--flag': its help text, whitespace collapsed} from the options section of --help."""
    options = text.split("\noptions:\n", 1)[1]
    blocks = re.split(r"\n(?=  -)", options)
    return {b.split()[0].rstrip(","): " ".join(b.split()) for b in blocks if b.startswith("  --")}


def test_help_explains_every_flag_and_shows_its_default(help_text):
    blocks = flag_blocks(help_text)
    defaults = vars(sample.parse_args(["--init_from", "DIR"]))
    assert set(blocks) == {f"--{k}" for k in defaults}            # every flag is in the help
    for flag, block in blocks.items():
        default = defaults[flag[2:]]
        words = block.split(" (default: ")[0].split()
        assert len(words) >= 4, f"{flag} is not explained: {block!r}"
        assert "(default: " in block, f"{flag} does not show its default: {block!r}"
        if default not in (None, False, []) and flag != "--init_from":
            assert str(default) in block.split("(default: ", 1)[1], (flag, default, block)


def test_greedy_decoding_is_the_default(help_text):
    assert sample.parse_args(["--init_from", "DIR"]).temperature == 0
    assert "0 is greedy decoding" in flag_blocks(help_text)["--temperature"]


@pytest.mark.parametrize("argv,prefix", [(["--temp", "0"], "--temp"),
                                         (["--best", "4"], "--best"),
                                         (["--max_new", "8"], "--max_new")])
def test_a_prefix_of_a_flag_is_an_error(argv, prefix, capsys):
    with pytest.raises(SystemExit) as e:
        sample.parse_args(["--init_from", "DIR"] + argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {prefix}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, guess", [(["--promt", "hi"], "--prompt"),
                                        (["--temprature", "0.5"], "--temperature"),
                                        (["--max_new", "8"], "--max_new_tokens"),   # a prefix
                                        (["--zzz_qqq", "1"], None)])
def test_an_unknown_flag_gets_the_closest_flag(argv, guess, capsys):
    with pytest.raises(SystemExit) as e:
        sample.parse_args(["--init_from", "DIR"] + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: " + " ".join(argv) in err
    if guess:
        assert f"did you mean {guess}?" in err
    else:
        assert "did you mean" not in err


@pytest.mark.parametrize("argv", [["--promt", "what does --temperature do?"],     # a prompt naming a flag
                                  ["--promt", "hi", "--promt", "ho"]])              # one flag, twice
def test_only_the_unknown_flags_themselves_get_a_guess_each_once(argv, capsys):
    """argparse's refusal joins the leftovers with spaces, so words inside a leftover value read as
    flags of their own: a prompt's '--temperature do?' got 'did you mean --temperature?', a flag the
    parser knows; and a flag given twice got its guess twice."""
    with pytest.raises(SystemExit):
        sample.parse_args(["--init_from", "DIR"] + argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("unrecognized arguments: " + " ".join(argv) + "; did you mean --prompt?"), err


def test_help_examples_are_printed_intact(help_text):
    description = help_text.split("\noptions:\n", 1)[0]
    lines = description.splitlines()
    commands, current, indent = [], None, 0
    for line in lines:
        if current is not None:                       # the continuation of a `\`-ended line
            assert len(line) - len(line.lstrip()) > indent, f"a broken continuation: {line!r}"
            current += " " + line.strip()
        elif line.lstrip().startswith("python sample.py "):
            current, indent = line.strip(), len(line) - len(line.lstrip())
        else:
            assert "python sample.py" not in line, f"an example that lost its start: {line!r}"
            continue
        # two spaces inside an example: a `\` newline that Python, not the shell, swallowed
        assert "  " not in line.strip(), f"a garbled example line: {line!r}"
        if current.endswith(" \\"):
            current = current[:-2]
        else:
            commands.append(current)
            current = None
    assert current is None and len(commands) >= 5
    for cmd in commands:                              # each one is a command line sample.py accepts
        argv = shlex.split(cmd)
        assert argv[:2] == ["python", "sample.py"]
        sample.parse_args(argv[2:])


def test_self_rejection_after_self_training_under_principles(tmp_path, capsys, monkeypatch):
    """The Self-Judge paper's Table 6 row "Self-Judge (JM-PR) + Self-Rejection", at tiny size:
    principle-aware JSFT, self-training from it, then sample.py --best_of from the self-trained
    checkpoint judges under the JSFT principles (kept with every checkpoint) by win rate, with the
    Self-Judge likelihood rule; --principles overrides them."""
    import train
    from nanoalign.tasks import arith as task
    from nanoalign import judge
    from nanoalign.onpolicy import PRINCIPLES_FILE
    common = ["--max_steps", "1", "--final_eval", "false", "--val_data", "", "--judge_template",
              "compact_principle"]
    jsft, sj = tmp_path / "jsft", tmp_path / "self_judge"
    train.main(["--method", "jsft", "--init_from", "scratch", "--batch_size", "4", "--n_train", "8",
                "--out_dir", str(jsft)] + common)
    train.main(["--method", "self_judge", "--init_from", str(jsft / "ckpt"), "--batch_size", "2",
                "--n_train", "4", "--gen_max_tokens", "4", "--out_dir", str(sj)] + common)
    assert json.load(open(sj / "ckpt" / PRINCIPLES_FILE)) == task.OBJECTIVES
    capsys.readouterr()
    seen, real = [], judge.win_rate

    def spy(P, tie=None):
        seen.append(P.shape[0])                               # principles per judged pair
        return real(P, tie)
    monkeypatch.setattr(judge, "win_rate", spy)
    argv = ["--init_from", str(sj / "ckpt"), "--prompt", "What is 1 + 2?", "--best_of", "4",
            "--max_new_tokens", "4"]
    outs = sample.main(argv)
    assert len(outs) == 1 and seen == [len(task.OBJECTIVES)] * 2      # two rounds of the win rate
    out = capsys.readouterr().out
    assert (f"best of 4 (template 'compact_principle', likelihood 'vocab', principles "
            f"{', '.join(task.OBJECTIVES)} by win rate)") in out
    seen.clear()
    sample.main(argv + ["--principles", "honesty:tells the truth", "--likelihood", "pair"])
    assert seen == [1, 1] and "likelihood 'pair', principles honesty by win rate" in capsys.readouterr().out


def test_self_rejection_winners_are_what_the_aligner_corrects(tmp_path, capsys, monkeypatch):
    """--best_of N --aligner DIR: the tournament's winners, one per prompt, go to MetaAligner (once
    the correction was silently skipped); --num_samples beside --best_of is refused."""
    from model.checkpoint import save_model
    from nanoalign.tasks import arith
    tok = arith.build_tokenizer()
    save_model(tiny(1, vocab_size=tok.vocab_size, max_seq_len=256), str(tmp_path / "m"), tok)
    got, real = {}, sample.best_of_main

    def spy_best_of(*args):
        got["winners"] = real(*args)
        return got["winners"]

    def spy_correct(aligner, atok, prompts, answers, objectives, max_new_tokens, batch_size):
        got["pairs"] = list(zip(prompts, answers))
        return [f"fixed {i}" for i in range(len(answers))]
    monkeypatch.setattr(sample, "best_of_main", spy_best_of)
    monkeypatch.setattr(sample, "correct", spy_correct)
    prompts = ["What is 1 + 2?", "What is 3 + 4?"]
    sample.main(["--init_from", str(tmp_path / "m"), "--prompt", prompts[0], "--prompt", prompts[1],
                 "--best_of", "3", "--judge_template", "compact", "--max_new_tokens", "3",
                 "--aligner", str(tmp_path / "m"), "--device", "cpu"])
    assert len(got["winners"]) == 2
    assert got["pairs"] == [(p, tok.decode(w)) for p, w in zip(prompts, got["winners"])]
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["prompt"], r["corrected"]) for r in rows] == [(prompts[0], "fixed 0"), (prompts[1], "fixed 1")]
    with pytest.raises(SystemExit) as e:
        sample.parse_args(["--init_from", "DIR", "--best_of", "2", "--num_samples", "2"])
    assert e.value.code == 2 and "drop --num_samples" in capsys.readouterr().err


@pytest.mark.parametrize("flags, what, hint", [
    (["--best_of", "2", "--judge_template", "compact"], "--best_of", False),
    (["--best_of", "2", "--judge_template", "ultrafeedback"], "--best_of", True),   # 'compact' may fit
    (["--aligner", "SMALL"], "--aligner", False)])
def test_a_judge_or_edit_prompt_beyond_the_context_is_an_error_not_a_traceback(tmp_path, flags, what,
                                                                                hint):
    """... naming the flag; a judge template other than 'compact' suggests that shorter one."""
    from model.checkpoint import save_model
    from nanoalign.tasks import arith
    tok = arith.build_tokenizer()
    save_model(tiny(1, vocab_size=tok.vocab_size, max_seq_len=256), str(tmp_path / "m"), tok)
    save_model(tiny(1, vocab_size=tok.vocab_size, max_seq_len=40), str(tmp_path / "small"), tok)
    flags = [str(tmp_path / "small") if f == "SMALL" else f for f in flags]
    init = tmp_path / ("small" if what == "--best_of" else "m")
    with pytest.raises(SystemExit) as e:
        sample.main(["--init_from", str(init), "--prompt", "What is 1 + 2?", "--max_new_tokens", "3",
                     "--device", "cpu"] + flags)
    assert str(e.value).startswith(f"error: {what}: ") and "tokens is longer than the model's context" in str(e.value)
    assert ("a shorter --judge_template such as 'compact' may fit" in str(e.value)) == hint


def test_best_of_judges_as_the_on_policy_methods_do_where_the_checkpoint_records_no_template(
        tmp_path, capsys, help_text):
    """One default, nanoalign/judge.py JUDGE_TEMPLATE ('compact'): --best_of took 'ultrafeedback',
    whose 500-odd tokens do not fit a small model's context ('sequence of 629 tokens is longer than
    the model's context'), where an on-policy run judging with the same checkpoint takes 'compact'."""
    from model.checkpoint import save_model
    from nanoalign.judge import JUDGE_TEMPLATE
    from nanoalign.tasks import arith
    tok = arith.build_tokenizer()
    save_model(tiny(1, vocab_size=tok.vocab_size, max_seq_len=256), str(tmp_path / "m"), tok)
    capsys.readouterr()
    sample.main(["--init_from", str(tmp_path / "m"), "--prompt", "What is 1 + 2?", "--best_of", "2",
                 "--max_new_tokens", "3", "--device", "cpu"])
    assert f"best of 2 (template '{JUDGE_TEMPLATE}', likelihood 'vocab')" in capsys.readouterr().out
    assert f"else '{JUDGE_TEMPLATE}'" in flag_blocks(help_text)["--judge_template"]


def parse_error(argv, capsys):
    """The message of the usage error (exit 2) that parse_args gives for argv."""
    with pytest.raises(SystemExit) as e:
        sample.parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "nan"], "--temperature must be a finite number, not nan"),
    (["--temperature", "inf"], "--temperature must be a finite number, not inf"),
    (["--temperature", "1", "--top_p", "nan"], "--top_p must be a finite number, not nan"),
    (["--temperature", "1", "--top_k", "-1"], "--top_k must be >= 1"),
    (["--temperature", "1", "--top_k", "0"], "--top_k must be >= 1"),     # once quietly 'no cut'
    (["--device", "tpu"], "--device 'tpu': use cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device 'cuda:x': use cpu, cuda or cuda:N"),
    (["--compile", "--best_of", "2"], "--compile applies to plain sampling only"),
    (["--compile", "--aligner", "A"], "--compile applies to plain sampling only"),
    (["--judge_template", "compact"], "--judge_template applies only with --best_of"),
    (["--principles", "a:b"], "--principles applies only with --best_of"),
    (["--likelihood", "pair"], "--likelihood applies only with --best_of"),
    (["--objectives", "concise"], "--objectives applies only with --aligner"),
    (["--answers_file", "F"], "--answers_file applies only with --aligner"),
    (["--aligner", "A", "--answers_file", "F"], "--answers_file gives the prompts and answers to "
                                                "correct; drop --init_from"),
    (["--system", "be brief", "--raw"], "--system goes into the chat template, which --raw skips"),
    (["--top_k", "5"], "--top_k applies only when sampling"),
    (["--top_p", "0.9"], "--top_p applies only when sampling"),
    (["--best_of", "4", "--batch_size", "8"], "--batch_size applies to plain sampling and --aligner"),
])
def test_bad_numbers_devices_and_ignored_flags_are_usage_errors(argv, message, capsys):
    """Each was a torch traceback (nan, top_k -1, an unknown device) or a flag silently ignored."""
    assert message in parse_error(["--init_from", "DIR"] + argv, capsys)


@pytest.mark.parametrize("argv, field, value", [
    (["--init_from", "DIR", "--temperature", "0.8", "--top_k", "5", "--top_p", "0.9"], "top_p", 0.9),
    (["--init_from", "DIR", "--best_of", "2", "--top_k", "5", "--likelihood", "pair"], "top_k", 5),
    (["--init_from", "DIR", "--aligner", "A", "--objectives", "concise"], "objectives", "concise"),
    (["--aligner", "A", "--answers_file", "F", "--objectives", "concise"], "answers_file", "F"),
    (["--init_from", "DIR", "--compile", "--temperature", "0.8", "--system", "hi"], "system", "hi"),
    (["--init_from", "DIR", "--best_of", "2", "--aligner", "A", "--batch_size", "8"], "batch_size", 8),
])
def test_the_flags_are_accepted_where_they_apply(argv, field, value):
    """--best_of samples (at 1.0 when --temperature is 0), so --top_k applies there."""
    assert getattr(sample.parse_args(argv), field) == value


@pytest.mark.parametrize("flags", [["--best_of", "4"], ["--num_samples", "3"], ["--temperature", "0.7"],
                                   ["--raw"], ["--seed", "5"], ["--system", "hi"]])
def test_sampling_flags_beside_an_answers_file_are_refused(flags, capsys):
    """--answers_file gives the answers: flags that shape the policy's sampling did nothing."""
    err = parse_error(["--aligner", "A", "--answers_file", "F"] + flags, capsys)
    assert f"{flags[0]} shape(s) the policy's sampling, and --answers_file gives the answers" in err


@pytest.mark.parametrize("flag", ["--init_from", "--prompts_file", "--aligner", "--answers_file"])
def test_an_empty_path_is_named(flag, capsys):
    """`--init_from ''` said 'error: : not a directory'; an empty --aligner or file was ignored."""
    argv = ["--aligner", "A", "--answers_file", ""] if flag == "--answers_file" else \
        [flag, ""] if flag == "--init_from" else ["--init_from", "DIR", flag, ""]
    assert f"{flag} is empty" in parse_error(argv, capsys)


def test_the_device_is_checked_before_loading(monkeypatch, capsys):
    """--device cuda on a CPU-only torch was an AssertionError from deep in torch; cuda:N beyond
    the visible GPUs a RuntimeError."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "--device cuda: this torch sees no CUDA GPU" in parse_error(
        ["--init_from", "DIR", "--device", "cuda"], capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert "--device cuda:2: this torch sees 2 GPU(s), cuda:0 to cuda:1" in parse_error(
        ["--init_from", "DIR", "--device", "cuda:2"], capsys)
    assert [sample.parse_args(["--init_from", "DIR", "--device", d]).device
            for d in ("cuda", "cuda:1", "cpu")] == ["cuda", "cuda:1", "cpu"]


def run_aligner(tmp_path, rows, capsys, monkeypatch, raw=None):
    """sample.main on an --answers_file of `rows` (JSON-encoded unless `raw` bytes are given), the
    correction stubbed: (the pairs it was given, or the SystemExit message)."""
    f = tmp_path / "answers.jsonl"
    f.write_bytes(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows).encode())
    got = {}

    def spy_correct(aligner, atok, prompts, answers, objectives, max_new_tokens, batch_size):
        got["pairs"] = list(zip(prompts, answers))
        return ["fixed"] * len(answers)
    monkeypatch.setattr(sample, "correct", spy_correct)
    monkeypatch.setattr(sample, "load_for_sampling", lambda a, path: (None, None))
    try:
        sample.main(["--aligner", str(tmp_path), "--answers_file", str(f), "--dtype", "float32"])
    except SystemExit as e:
        return str(e)
    return got["pairs"]


def test_answers_file_rows_are_checked_and_read_as_utf8(tmp_path, capsys, monkeypatch):
    """An int answer was a TypeError later, an empty file exited 0 with no output, a BOM made line 1
    malformed JSON, and a non-UTF-8 byte was a UnicodeDecodeError traceback."""
    f = tmp_path / "answers.jsonl"
    chat = [{"role": "user", "content": "q"}]
    reply = [{"role": "assistant", "content": "4"}]
    assert run_aligner(tmp_path, [{"prompt": "q", "answer": "a"}, {"prompt": chat, "answer": reply}],
                       capsys, monkeypatch) == [("q", "a"), (chat, reply)]   # messages, as template reads
    assert run_aligner(tmp_path, [{"prompt": "q", "answer": "a"}, {"prompt": "q", "answer": 2}],
                       capsys, monkeypatch) == (f"error: --answers_file {f}:2: field 'answer' must be a string or a "
                                                f"list of {{\"role\", \"content\"}} messages, got int")
    assert run_aligner(tmp_path, [{"prompt": 7, "answer": "a"}], capsys, monkeypatch).startswith(
        f"error: --answers_file {f}:1: field 'prompt' must be a string")
    assert run_aligner(tmp_path, [{"prompt": "q", "answer": chat}], capsys, monkeypatch).startswith(
        f"error: --answers_file {f}:1: field 'answer' is a message list with no assistant message")   # no answer in it
    # a turn after the answer is not corrected (the aligner reads the last assistant message); the
    # error, shared with training's rows, said it "would not be trained", where nothing is trained
    assert run_aligner(tmp_path, [{"prompt": "q", "answer": reply + chat}], capsys, monkeypatch) == (
        f"error: --answers_file {f}:1: field 'answer' ends with a 'user' message: the response is the last assistant "
        f"message (message 1), and the turns after it, from message 2, would be ignored; end the list "
        f"at the response")
    assert run_aligner(tmp_path, None, capsys, monkeypatch, raw=b"\n") == \
        f"error: --answers_file {f}: no usable rows: the file is empty (or blank lines only)"
    assert run_aligner(tmp_path, [{"prompt": "q", "anwser": "a"}], capsys, monkeypatch) == (
        f"error: --answers_file {f}:1: missing field 'answer' (an --answers_file row needs prompt, answer); "
        f"the row has 'anwser': did you mean 'answer'?")
    bom = "\ufeff" + json.dumps({"prompt": "q", "answer": "a"}) + "\n"
    assert run_aligner(tmp_path, None, capsys, monkeypatch, raw=bom.encode()) == [("q", "a")]
    latin1 = (json.dumps({"prompt": "q", "answer": "a"}) + "\n" + '{"prompt": "caf\xe9", "answer": "a"}\n')
    assert run_aligner(tmp_path, None, capsys, monkeypatch, raw=latin1.encode("latin-1")) == \
        f"error: --answers_file {f}:2: not UTF-8 text (byte 0xe9 at column 16; Latin-1 or " \
        f"Windows-1252?); re-save the file as UTF-8"


@pytest.mark.parametrize("text", [
    '{"prompt": "q", "answer": "a"}\n{"prompt": "q", "answer": }\n',      # a bad line 2
    '{"prompt": "q", "answer": "a"}\n{"prompt": "q", "answer": "b"\n',    # its '}' missing, at the end
    '[{"prompt": "q", "answer": "a"}]\n'])                                  # a JSON document, no JSONL
def test_malformed_json_in_an_answers_file_is_named_as_train_py_names_it(tmp_path, capsys, monkeypatch, text):
    """Line 2 was 'answers.jsonl:2: need a JSON object with 'prompt' and 'answer' (Expecting value:
    line 1 column 27 (char 26))', two line numbers; train.py's data says 'FILE:2: malformed JSON
    (Expecting value at column 27)'. Both now read a line as nanoalign/data.py parse_line does."""
    from nanoalign.data import read_jsonl
    from nanoalign.textfile import DataError
    f = tmp_path / "answers.jsonl"
    f.write_text(text)
    with pytest.raises(DataError) as train_says:
        read_jsonl(str(f), "prompt")
    got = run_aligner(tmp_path, None, capsys, monkeypatch, raw=text.encode())
    assert got == f"error: --answers_file {train_says.value}", got
    assert "line 1" not in got and len(got.splitlines()) == 1


def test_an_answer_whose_turns_before_it_are_not_its_prompt_is_refused(tmp_path, capsys, monkeypatch):
    """The aligner corrects the answer of a list (its last assistant message) after 'prompt': turns
    before it that are not the prompt's own were ignored without a word, as a training row's were
    (nanoalign/rows.py check_turns_before_answer)."""
    f = tmp_path / "answers.jsonl"
    chat = [{"role": "user", "content": "q"}]
    reply = [{"role": "assistant", "content": "4"}]
    joke = [{"role": "user", "content": "Tell me a joke"}]
    assert run_aligner(tmp_path, [{"prompt": "q", "answer": joke + reply}], capsys, monkeypatch) == (
        f"error: --answers_file {f}:1: field 'answer': the messages before its answer are not the 'prompt' field's "
        f"conversation (from message 1), and would be ignored (the answer goes after 'prompt'); give "
        f"'answer' as the answer alone, or as the prompt's messages then the answer")
    assert run_aligner(tmp_path, [{"prompt": "q", "answer": chat + reply}, {"prompt": chat, "answer": chat + reply}],
                       capsys, monkeypatch) == [("q", chat + reply), (chat, chat + reply)]


def test_an_aligner_checkpoint_of_another_method_is_refused(tmp_path, capsys, monkeypatch):
    """A policy checkpoint (ORPO, say) as --aligner 'corrected' by answering the edit prompt; a
    checkpoint that records method meta_aligner, or none (from elsewhere), is used."""
    rows = [{"prompt": "q", "answer": "a"}]
    (tmp_path / "state.json").write_text(json.dumps({"step": 1, "config": {"method": "orpo"}}))
    assert run_aligner(tmp_path, rows, capsys, monkeypatch) == (
        f"error: --aligner {tmp_path}: a 'orpo' checkpoint (its state.json), not a MetaAligner; "
        f"train one with train.py --method meta_aligner")
    (tmp_path / "state.json").write_text(json.dumps({"step": 1, "config": {"method": "meta_aligner"}}))
    assert run_aligner(tmp_path, rows, capsys, monkeypatch) == [("q", "a")]


@pytest.fixture
def saved_tiny(tmp_path):
    from model.checkpoint import save_model
    from nanoalign.tasks import arith
    save_model(tiny(1, vocab_size=arith.build_tokenizer().vocab_size, max_seq_len=40),
               str(tmp_path / "m"), arith.build_tokenizer())
    return str(tmp_path / "m")


def test_prompts_file_errors_name_the_file_and_a_bom_is_dropped(saved_tiny, tmp_path, capsys,
                                                                  monkeypatch):
    """A missing file or a directory was a FileNotFoundError/IsADirectoryError traceback, a
    non-UTF-8 byte a UnicodeDecodeError one, and a BOM stayed in the first prompt as '\\ufeff'."""
    def run(path):
        with pytest.raises(SystemExit) as e:
            sample.main(["--init_from", saved_tiny, "--prompts_file", str(path), "--device", "cpu"])
        return str(e.value)
    assert run(tmp_path / "nope.txt") == f"error: --prompts_file {tmp_path / 'nope.txt'}: cannot open " \
                                         f"(No such file or directory)"
    assert run(tmp_path) == f"error: --prompts_file {tmp_path}: cannot open (Is a directory)"
    (tmp_path / "p.txt").write_bytes(b"hi\n\xff\n")
    assert run(tmp_path / "p.txt").startswith(f"error: --prompts_file {tmp_path / 'p.txt'}:2: not UTF-8 "
                                              f"text (byte 0xff at column 1;")
    for utf16 in ("hi\nyo\n".encode("utf-16"), "hi\nyo\n".encode("utf-16-le")):   # with a BOM, without
        (tmp_path / "p.txt").write_bytes(utf16)                    # (once read as prompts 'h\x00i\x00')
        assert run(tmp_path / "p.txt") == f"error: --prompts_file {tmp_path / 'p.txt'}:1: the file looks " \
                                          f"like UTF-16 (what Windows PowerShell's '>' writes), not UTF-8; " \
                                          f"re-save it as UTF-8"
    (tmp_path / "p.txt").write_bytes(b"\n  \n")
    assert run(tmp_path / "p.txt") == f"error: --prompts_file {tmp_path / 'p.txt'}: no prompts " \
                                      f"(every line is blank)"
    seen = []
    monkeypatch.setattr(sample, "generate", lambda model, batch, *a, **kw: seen.extend(batch) or
                        [[1] for _ in batch])
    (tmp_path / "p.txt").write_bytes("\ufeffhi\r\nyo\n".encode())
    sample.main(["--init_from", saved_tiny, "--prompts_file", str(tmp_path / "p.txt"), "--raw",
                 "--device", "cpu"])
    assert seen == [list(b"hi"), list(b"yo")]


def test_a_jsonl_prompts_file_is_read_as_prompt_rows(saved_tiny, tmp_path, capsys, monkeypatch, help_text):
    """The rows an on-policy method trains on ({"prompt": P}, P a string or chat messages, other
    fields beside it) are prompts to sample from: each line was taken as one plain-text prompt,
    and the model was asked to answer the JSON text '{"prompt": "What is 2 + 3?", ...}'."""
    said = flag_blocks(help_text)["--prompts_file"]
    assert "JSONL" in said and '{"prompt": ...}' in said and "one prompt per line" in said, said
    from model.checkpoint import load
    from nanoalign.data import read_jsonl
    from tests.helpers import FIX
    rows, _ = read_jsonl(os.path.join(FIX, "pref.jsonl"), "prompt")
    want = [r["prompt"] for r in rows]
    assert any(isinstance(p, list) for p in want) and any(isinstance(p, str) for p in want)
    tok = load(saved_tiny)[1]
    seen = []
    monkeypatch.setattr(sample, "generate", lambda model, batch, *a, **kw: seen.extend(batch) or
                        [[1] for _ in batch])
    sample.main(["--init_from", saved_tiny, "--prompts_file", os.path.join(FIX, "pref.jsonl"),
                 "--device", "cpu"])
    assert seen == [tok.encode_prompt(p) for p in want]
    out = capsys.readouterr().out
    assert f"--- prompt 0 sample 0: {want[0]!r}" in out and '"prompt"' not in out
    # --best_of's judge and --aligner are shown a row's messages after --system's, not inside a turn
    msgs = [{"role": "user", "content": "What is 10 + 7?"}]
    assert sample.conversation(argparse.Namespace(system="be brief"), msgs) == \
        [{"role": "system", "content": "be brief"}] + msgs
    # plain text stays one prompt a line, a line that looks like JSON but is not an object too
    (tmp_path / "p.txt").write_text('{x} + 1 = ?\n"quoted"\n\nhello\n')
    seen.clear()
    sample.main(["--init_from", saved_tiny, "--prompts_file", str(tmp_path / "p.txt"), "--device", "cpu"])
    assert seen == [tok.encode_prompt(p) for p in ('{x} + 1 = ?', '"quoted"', "hello")]


def test_an_implicit_prompt_preference_file_is_a_prompts_file(saved_tiny, tmp_path, monkeypatch):
    """TRL's {chosen, rejected} rows without a prompt, which dpo and orpo train on and the on-policy
    methods read, their prompt the shared beginning, are prompts to sample from: --prompts_file reads
    its rows as train.py does (nanoalign/rows.py read_prompt)."""
    from model.checkpoint import load
    user = {"role": "user", "content": "What is 2 + 3?"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "5"}],
             "rejected": [user, {"role": "assistant", "content": "6"}]},
            {"chosen": "What is 2 + 3? 5", "rejected": "What is 2 + 3? 6"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load(saved_tiny)[1]
    seen = []
    monkeypatch.setattr(sample, "generate", lambda model, batch, *a, **kw: seen.extend(batch) or
                        [[1] for _ in batch])
    sample.main(["--init_from", saved_tiny, "--prompts_file", str(tmp_path / "p.jsonl"), "--device", "cpu"])
    assert seen == [tok.encode_prompt(p) for p in ([user], "What is 2 + 3?")]


@pytest.mark.parametrize("text, argv, error", [
    ('{"prompt": "a"}\nplain text\n', [], ":2: not a JSON object, and line 1 is one"),
    ('plain text\n\n{"prompt": "a"}\n', [], ":1: not a JSON object, and line 3 is one"),
    ('{"prompt": "a"}\n{"prompt": "b"\n', [], ":2: not a JSON object: malformed JSON (Expecting ',' "
                                             "delimiter at column 15), and line 1 is one"),
    ('{"prompt": "a"}\n{"prompt": "b",}\n', [], ":2: not a JSON object: malformed JSON: a trailing comma "
                                              "before '}' at column 15 (JSON allows none), and line 1 is one"),
    ('{"prompt": "a"}\n{"question": "b"}\n', [], ":2: missing field 'prompt' (a prompt row needs prompt; or, with no "
                                                "prompt, chosen and rejected conversations that begin with it)"),
    ('{"prompt": 3}\n', [], ":1: field 'prompt' must be a string or a list of"),
    ('{"prompt": [{"role": "user", "content": "a"}]}\n', ["--raw"],
     ":1: a prompt of chat messages needs the chat template, which --raw skips; drop --raw"),
    ('{"prompt": "a"}\n{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]}\n',
     ["--system", "be brief"], ":2: the prompt has a system message of its own; drop --system"),
])
def test_a_prompts_file_of_rows_and_text_or_a_bad_row_is_one_error_naming_its_line(
        saved_tiny, tmp_path, text, argv, error):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        sample.main(["--init_from", saved_tiny, "--prompts_file", str(path), "--device", "cpu"] + argv)
    msg = str(e.value)
    assert msg.startswith(f"error: --prompts_file {path}{error}"), msg
    assert len(msg.splitlines()) == 1


def test_samples_cut_by_the_context_are_counted(saved_tiny, capsys, monkeypatch):
    """generate() stops every row where the model's context is full, before --max_new_tokens and
    without a word; sample.py says how many samples it cut."""
    from model.tokenizer import Tokenizer
    monkeypatch.setattr(Tokenizer, "stop_ids", property(lambda self: []))   # no row stops early
    argv = ["--init_from", saved_tiny, "--prompt", "1 + 2 =", "--prompt", "3 + 4 =", "--raw",
            "--device", "cpu"]
    outs = sample.main(argv + ["--max_new_tokens", "100"])
    assert [len(o) for o in outs] == [40 - 7] * 2
    assert ("--- 2 of 2 samples cut short by the model's context (40 tokens) before "
            "--max_new_tokens 100") in capsys.readouterr().err
    outs = sample.main(argv + ["--max_new_tokens", "5"])
    assert [len(o) for o in outs] == [5, 5] and "cut short" not in capsys.readouterr().err


@pytest.mark.parametrize("params,has_bf16,dtype,want", [
    (0, True, "auto", (torch.float32, torch.bfloat16)),        # a big model, a bf16 CPU: autocast
    (10**12, True, "auto", (torch.float32, None)),             # the tiny model: float32
    (0, False, "auto", (torch.float32, None)),                 # no bf16 instructions: float32
    (0, True, "float32", (torch.float32, None)),
    (0, True, "bfloat16", (torch.bfloat16, None)),             # bf16 weights, no autocast
])
def test_dtype_auto_samples_in_bf16_wherever_the_cpu_has_bf16_instructions(tmp_path, monkeypatch,
                                                                           params, has_bf16, dtype, want):
    """--dtype auto keeps float32 weights and autocasts to bfloat16 exactly where the model has
    FAST_MIN_PARAMS or more and the CPU bf16 instructions (decoding's rule: bf16 halves the bytes a
    step reads, even where train.py's --dtype auto keeps float32, which is forced here); an explicit
    dtype loads the weights in it, without autocast. --compile reaches generate()."""
    from nanoalign import compute
    from model.checkpoint import save_model
    from nanoalign.tasks import arith
    tok = arith.build_tokenizer()
    save_model(tiny(1, vocab_size=tok.vocab_size), str(tmp_path / "m"), tok)
    monkeypatch.setattr(compute, "FAST_MIN_PARAMS", params)
    monkeypatch.setattr(compute, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(compute, "cpu_bf16_trains_faster", lambda: False)
    seen = []

    def spy(model, *args, compiled=False, **kw):
        seen.append((next(model.parameters()).dtype,
                     torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                     compiled))
        return [[1]]
    monkeypatch.setattr(sample, "generate", spy)
    sample.main(["--init_from", str(tmp_path / "m"), "--prompt", "hi", "--raw", "--dtype", dtype,
                 "--device", "cpu"])
    sample.main(["--init_from", str(tmp_path / "m"), "--prompt", "hi", "--raw", "--dtype", dtype,
                 "--device", "cpu", "--compile"])
    assert seen == [want + (False,), want + (True,)]


# -- many prompts: decoded --batch_size at a time, each batch printed when it is done ---------------
def batch_run(saved_tiny, tmp_path, n, extra=()):
    (tmp_path / "p.txt").write_text("".join(f"{i} + {i % 7} =\n" for i in range(n)))
    return ["--init_from", saved_tiny, "--prompts_file", str(tmp_path / "p.txt"), "--raw", "--device", "cpu",
            "--max_new_tokens", "6", *extra]


def test_prompts_are_decoded_in_batches_printed_as_each_is_done(saved_tiny, tmp_path, capsys, monkeypatch):
    """A prompts file once went through one generate() call: a few thousand prompts filled the memory
    with their KV cache, and nothing was printed before the last token of the last prompt. Batches of
    --batch_size give the same greedy samples, each batch printed before the next one starts."""
    argv = batch_run(saved_tiny, tmp_path, 7)
    whole = sample.main(argv + ["--batch_size", "64"])
    whole_out = capsys.readouterr().out
    sizes, printed, real = [], [], sample.generate

    def spy(model, batch, *a, **kw):
        sizes.append(len(batch))
        printed.append(capsys.readouterr().out)              # what was printed before this batch
        return real(model, batch, *a, **kw)
    monkeypatch.setattr(sample, "generate", spy)
    assert sample.main(argv + ["--batch_size", "3"]) == whole
    printed.append(capsys.readouterr().out)
    assert sizes == [3, 3, 1] and "".join(printed) == whole_out
    assert printed[1].count("--- prompt") == 3 and printed[2].count("--- prompt") == 3
    with pytest.raises(SystemExit):
        sample.parse_args(["--init_from", "DIR", "--batch_size", "0"])


def test_compiled_decoding_pads_the_last_batch_to_the_others_size(saved_tiny, tmp_path, capsys, monkeypatch):
    """The compiled step is compiled per batch size (minutes on a CPU): a smaller last batch would
    compile it again. It is padded with copies of its last prompt, whose samples are not printed."""
    calls = []
    monkeypatch.setattr(sample, "generate", lambda model, batch, *a, compiled=False, **kw:
                        calls.append((len(batch), compiled)) or [[65 + i] for i in range(len(batch))])
    outs = sample.main(batch_run(saved_tiny, tmp_path, 7, ["--batch_size", "3", "--compile"]))
    assert calls == [(3, True)] * 3 and len(outs) == 7
    assert capsys.readouterr().out.count("--- prompt") == 7


def test_ctrl_c_keeps_the_batches_printed_and_says_how_many(saved_tiny, tmp_path, capsys, monkeypatch):
    calls = []

    def interrupted_in_batch_2(model, batch, *a, **kw):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [[65] for _ in batch]
    monkeypatch.setattr(sample, "generate", interrupted_in_batch_2)
    with pytest.raises(SystemExit) as e:
        sample.main(batch_run(saved_tiny, tmp_path, 7, ["--batch_size", "3"]))
    out, err = capsys.readouterr()
    assert e.value.code == 130 and out.count("--- prompt") == 3
    assert "stopped (Ctrl-C): 3 of 7 samples printed" in err


# -- Ctrl-C in every phase: one line saying what was printed, exit code 130, no traceback ----------
def stopped(argv, capsys):
    """(stdout, stderr) of sample.main(argv) stopped by Ctrl-C, which must exit 130 (128 + SIGINT)."""
    with pytest.raises(SystemExit) as e:
        sample.main(argv)
    out, err = capsys.readouterr()
    assert e.value.code == 130, (e.value.code, err)
    return out, err


@pytest.fixture
def judging_tiny(tmp_path):
    """A tiny checkpoint with the context a 'compact' judgment needs (saved_tiny's 40 tokens do not)."""
    from model.checkpoint import save_model
    from nanoalign.tasks import arith
    save_model(tiny(1, vocab_size=arith.build_tokenizer().vocab_size, max_seq_len=512),
               str(tmp_path / "j"), arith.build_tokenizer())
    return str(tmp_path / "j")


def test_ctrl_c_while_torch_imports_is_one_line_and_exit_130(saved_tiny):
    """The first seconds of `python sample.py` import torch, before main() and its Ctrl-C handling:
    a Ctrl-C there printed KeyboardInterrupt's traceback through torch's import machinery."""
    code, err = ctrl_c_while_starting("sample.py", "--init_from", saved_tiny, "--prompt", "What is 1 + 2?",
                                      "--device", "cpu", "--max_new_tokens", "2")
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (code, err)
    assert err.startswith("stopped (Ctrl-C)"), err


@pytest.mark.parametrize("nth, what", [(1, "the policy"), (2, "the aligner")])
def test_ctrl_c_while_a_checkpoint_loads_says_nothing_was_printed(saved_tiny, capsys, monkeypatch, nth,
                                                                  what):
    """A 135M checkpoint takes seconds to load, its tokenizer too: Ctrl-C then was a traceback."""
    calls, real = [], sample.load

    def load(path, *a, **kw):
        calls.append(path)
        if len(calls) == nth:
            raise KeyboardInterrupt
        return real(path, *a, **kw)
    monkeypatch.setattr(sample, "load", load)
    out, err = stopped(["--init_from", saved_tiny, "--prompt", "What is 1 + 2?", "--aligner", saved_tiny,
                        "--device", "cpu", "--max_new_tokens", "2"], capsys)
    assert out == "" and f"stopped (Ctrl-C): nothing printed (loading {saved_tiny})" in err, what


@pytest.mark.parametrize("when, printed", [("sampling", 0), ("judging", 1)])
def test_ctrl_c_during_best_of_keeps_the_winners_printed_and_says_how_many(judging_tiny, capsys,
                                                                           monkeypatch, when, printed):
    """--best_of samples every prompt's candidates, then judges one prompt's at a time, printing its
    winner: Ctrl-C in either was a traceback."""
    real_sample, real_best_of = sample.sample_responses, sample.best_of

    def sample_responses(*a, **kw):
        if when == "sampling":
            raise KeyboardInterrupt
        return real_sample(*a, **kw)

    def best_of(model, tok, t, prompt, *a, **kw):
        if prompt == "What is 3 + 4?":
            raise KeyboardInterrupt
        return real_best_of(model, tok, t, prompt, *a, **kw)
    monkeypatch.setattr(sample, "sample_responses", sample_responses)
    monkeypatch.setattr(sample, "best_of", best_of)
    out, err = stopped(["--init_from", judging_tiny, "--prompt", "What is 1 + 2?", "--prompt", "What is 3 + 4?",
                        "--best_of", "2", "--judge_template", "compact", "--max_new_tokens", "2",
                        "--device", "cpu"], capsys)
    assert out.count("best of 2") == printed
    assert f"stopped (Ctrl-C): {printed} of 2 winners printed" in err


def test_best_of_winners_are_corrected_in_batches_that_ctrl_c_keeps(judging_tiny, capsys, monkeypatch):
    """--best_of N --aligner: the winners were corrected all at once and printed at the end, so
    --batch_size did not bound the aligner's batch and Ctrl-C there was a traceback that lost them all."""
    sizes = []

    def correct(aligner, atok, prompts, answers, objectives, max_new_tokens, batch_size):
        sizes.append(len(prompts))
        if len(sizes) == 3:
            raise KeyboardInterrupt
        return ["fixed"] * len(prompts)
    monkeypatch.setattr(sample, "correct", correct)
    argv = ["--init_from", judging_tiny, "--best_of", "2", "--judge_template", "compact", "--max_new_tokens",
            "2", "--aligner", judging_tiny, "--device", "cpu", "--batch_size", "2"]
    for p in ("What is 1 + 2?", "What is 3 + 4?", "What is 5 + 6?", "What is 7 + 8?", "What is 9 + 1?"):
        argv += ["--prompt", p]
    out, err = stopped(argv, capsys)
    assert sizes == [2, 2, 1] and out.count('"corrected": "fixed"') == 4
    assert "stopped (Ctrl-C): 4 of 5 samples printed" in err


def test_best_of_with_an_aligner_checks_the_objectives_before_sampling(judging_tiny, capsys, monkeypatch):
    """The aligner (and its --objectives) came after the whole tournament: a missing description
    was reported minutes later, once every winner was printed."""
    sampled = []
    monkeypatch.setattr(sample, "sample_responses", lambda *a, **kw: sampled.append(1) or [])
    with pytest.raises(SystemExit) as e:
        sample.main(["--init_from", judging_tiny, "--prompt", "What is 1 + 2?", "--best_of", "2",
                     "--aligner", judging_tiny, "--objectives", "polite", "--device", "cpu"])
    assert "objective 'polite' needs a description" in str(e.value) and sampled == []


@pytest.mark.parametrize("flags, note", [
    ([], None),                                                      # the record: no note
    (["--likelihood", "pair"], None),                                # the record, given: none
    (["--judge_template", "compact"], "--judge_template hh"),
    (["--judge_template", "compact", "--likelihood", "vocab"], "--judge_template hh --likelihood pair"),
])
def test_best_of_says_when_a_flag_judges_other_than_the_checkpoint_records(judging_tiny, capsys, flags, note):
    """A run's judge told by a flag to judge other than its checkpoint records says so (train.py's
    onpolicy.judging_said); --best_of obeyed such a flag without a word, though a judge asked in a
    template it did not train on may judge near chance."""
    state = os.path.join(judging_tiny, "state.json")
    with open(state, "w") as f:
        json.dump({"step": 1, "config": {"method": "jsft", "judge_template": "hh", "likelihood": "pair"}}, f)
    sample.main(["--init_from", judging_tiny, "--prompt", "1 + 2?", "--best_of", "2", "--max_new_tokens", "1",
                 "--device", "cpu"] + flags)
    out, err = capsys.readouterr()
    assert out.count("best of 2") == 1, out
    if note is None:
        assert "note" not in err, err
    else:
        assert f"note: the judge {judging_tiny} records {note} (its state.json)" in err, err
        assert "as given" in err, err


@pytest.mark.parametrize("kept, flag, expected", [
    (True, None, [("polite", "says please"), ("brief", "five words, at most")]),
    (True, "brief", [("brief", "five words, at most")]),
    (True, "brief,kind:never rude", [("brief", "five words, at most"), ("kind", "never rude")]),
    (False, None, [("correct", "the number given as the answer is the true sum"),
                   ("concise", "the answer is as short as possible"),
                   ("format", "the answer is a sentence that ends with a period")]),
])
def test_the_aligner_corrects_towards_what_it_trained_on_unless_told(judging_tiny, monkeypatch, kept, flag,
                                                                      expected):
    """Without --objectives an aligner corrected towards the arith task's three, with their
    descriptions, whatever it trained on: a run on the instruct task or a data file was asked for
    objectives it never saw. The objectives kept with it (objectives.json) are the default now, and
    describe a bare name; an aligner without the file (an older run) keeps the arith three."""
    from nanoalign.meta_aligner import OBJECTIVES_FILE
    if kept:
        with open(os.path.join(judging_tiny, OBJECTIVES_FILE), "w") as f:
            json.dump({"polite": "says please", "brief": "five words, at most"}, f)
    got = []
    monkeypatch.setattr(sample, "correct", lambda aligner, tok, prompts, answers, objs, *a: got.append(objs)
                        or ["fixed"] * len(answers))
    sample.main(["--init_from", judging_tiny, "--prompt", "What is 1 + 2?", "--max_new_tokens", "2",
                 "--aligner", judging_tiny, "--device", "cpu"] + (["--objectives", flag] if flag else []))
    assert got == [expected]


@pytest.mark.parametrize("kept, flag, said", [
    (True, None, "--- the aligner corrects towards polite, brief (those it trained on: its objectives.json)"),
    (True, "brief", "--- the aligner corrects towards brief (--objectives)"),
    (False, None, "--- the aligner corrects towards correct, concise, format (the arith task's: the aligner "
                  "has no objectives.json)"),
])
def test_the_aligner_says_what_it_corrects_towards(judging_tiny, capsys, monkeypatch, kept, flag, said):
    """Nothing printed said which objectives the answers were corrected towards: those the aligner
    trained on by default, but for an aligner without objectives.json (a run from before it was kept)
    the arith task's three, which an aligner trained on one's own data never saw. One line on stderr
    says which and why, as --best_of's line names its template; stdout stays the JSONL rows."""
    from nanoalign.meta_aligner import OBJECTIVES_FILE
    if kept:
        with open(os.path.join(judging_tiny, OBJECTIVES_FILE), "w") as f:
            json.dump({"polite": "says please", "brief": "five words, at most"}, f)
    monkeypatch.setattr(sample, "correct", lambda aligner, tok, prompts, answers, objs, *a: ["fixed"] * len(answers))
    sample.main(["--init_from", judging_tiny, "--prompt", "What is 1 + 2?", "--max_new_tokens", "2",
                 "--aligner", judging_tiny, "--device", "cpu"] + (["--objectives", flag] if flag else []))
    out, err = capsys.readouterr()
    assert said in err.splitlines()
    assert [json.loads(line)["corrected"] for line in out.splitlines()] == ["fixed"]


# -- --system: part of the conversation the judge and the aligner are shown ------------------------
@pytest.mark.parametrize("system", [None, "Answer in words."])
def test_the_judge_and_the_aligner_see_the_system_message_the_policy_answered(judging_tiny, capsys,
                                                                             monkeypatch, system):
    """--system reached the policy's prompt only: the --best_of judge and the aligner were shown the
    user's question alone, so they judged and corrected answers to another conversation than the one
    answered. They now read it as they read a data row with a system message ('System: ...' before
    'User: ...', nanoalign.judge.prompt_text); the checkpoint's own default system message, no part
    of the question, is not shown, as for a row without one."""
    from nanoalign import judge, meta_aligner
    from nanoalign.tasks import arith
    judged, edited, real_judge_pairs = [], [], judge.judge_pairs

    def judge_pairs(model, tok, t, items, *a, **kw):
        judged.extend(prompt for prompt, *_ in items)
        return real_judge_pairs(model, tok, t, items, *a, **kw)

    def generate(model, ids, *a, **kw):
        edited.extend(arith.build_tokenizer().decode(i) for i in ids)
        return [[] for _ in ids]
    monkeypatch.setattr(judge, "judge_pairs", judge_pairs)
    monkeypatch.setattr(meta_aligner, "generate", generate)
    sample.main(["--init_from", judging_tiny, "--prompt", "What is 1 + 2?", "--best_of", "2",
                 "--judge_template", "compact", "--max_new_tokens", "2", "--aligner", judging_tiny,
                 "--objectives", "concise", "--device", "cpu"] + (["--system", system] if system else []))
    shown = "What is 1 + 2?" if system is None else "System: Answer in words.\nUser: What is 1 + 2?"
    assert judged and all(judge.prompt_text(p) == shown for p in judged)
    assert len(edited) == 1 and f"| Question: {shown} | Answer:" in edited[0]
    row = json.loads(capsys.readouterr().out.splitlines()[-1])     # fed back as an --answers_file row
    assert meta_aligner.prompt_text(row["prompt"]) == shown
    # plain sampling corrected by the aligner: the same conversation
    edited.clear()
    sample.main(["--init_from", judging_tiny, "--prompt", "What is 1 + 2?", "--max_new_tokens", "2",
                 "--aligner", judging_tiny, "--objectives", "concise", "--device", "cpu"]
                + (["--system", system] if system else []))
    assert len(edited) == 1 and f"| Question: {shown} | Answer:" in edited[0]


# -- a checkpoint without a chat template: one error naming the flag that fixes it, --chat_format ---
@pytest.fixture
def no_template(tmp_path):
    """A tiny checkpoint (a 256-token context, enough for a 'compact' judgment) whose tokenizer has
    no chat template and no named format: its tokenizer_config.json deleted."""
    from model.checkpoint import save_model
    from nanoalign.tasks import arith
    save_model(tiny(1, vocab_size=arith.build_tokenizer().vocab_size, max_seq_len=256),
               str(tmp_path / "nt"), arith.build_tokenizer())
    os.remove(tmp_path / "nt" / "tokenizer_config.json")
    return str(tmp_path / "nt")


@pytest.mark.parametrize("flags", [[], ["--best_of", "2"]])
def test_a_checkpoint_without_a_chat_template_is_one_error_naming_chat_format(no_template, flags):
    """It was a CheckpointError traceback pointing at a Python API, load(..., chat_format=...)."""
    with pytest.raises(SystemExit) as e:
        sample.main(["--init_from", no_template, "--prompt", "hi", "--max_new_tokens", "2",
                     "--device", "cpu"] + flags)
    msg = e.value.code
    assert isinstance(msg, str) and len(msg.splitlines()) == 1, msg          # exit 1, as sample.py's others
    assert msg.startswith(f"error: {no_template}: no chat template"), msg
    assert "with --chat_format" in msg and "load(" not in msg, msg


def test_a_checkpoint_that_is_not_there_is_named_with_the_flag_that_gave_it(no_template, tmp_path):
    # 'error: /x: does not exist' left a user of --init_from and --aligner guessing which one
    missing = str(tmp_path / "nope")
    for flags, flag in ((["--init_from", missing], "--init_from"),
                        (["--init_from", no_template, "--chat_format", "selfjudge", "--aligner", missing],
                         "--aligner")):
        with pytest.raises(SystemExit) as e:
            sample.main(flags + ["--prompt", "hi", "--max_new_tokens", "2", "--device", "cpu"])
        assert e.value.code == f"error: {flag} {missing}: does not exist", e.value.code


@pytest.mark.parametrize("flags", [[], ["--best_of", "2", "--judge_template", "compact"]])
def test_chat_format_names_the_format_of_a_checkpoint_without_a_template(no_template, capsys, flags):
    outs = sample.main(["--init_from", no_template, "--prompt", "What is 1 + 2?", "--max_new_tokens", "2",
                        "--chat_format", "selfjudge", "--device", "cpu"] + flags)
    assert len(outs) == 1 and ("best of 2" in capsys.readouterr().out) == bool(flags)


def test_chat_format_is_train_pys_flag_with_its_help_and_choices(help_text, capsys):
    """The same wording and choices as train.py's --chat_format (model/chat_template.py); refused where
    nothing reads it: --raw skips the template, and --answers_file samples nothing."""
    import dataclasses
    from nanoalign.config import SharedConfig
    train_flag = next(f for f in dataclasses.fields(SharedConfig) if f.name == "chat_format")
    ours = flag_blocks(help_text)["--chat_format"]
    shared = " ".join(train_flag.metadata["help"].split(". Not with --init_from scratch")[0].split())
    assert shared in ours and "(default: '')" in ours, ours
    action = next(x for x in sample.build_parser()._actions if x.dest == "chat_format")
    assert tuple(action.choices) == train_flag.metadata["choices"]
    assert sample.parse_args(["--init_from", "DIR", "--chat_format", "chatml"]).chat_format == "chatml"
    assert "--chat_format goes into the chat template, which --raw skips" in parse_error(
        ["--init_from", "DIR", "--raw", "--chat_format", "raw"], capsys)
    assert "--chat_format shape(s) the policy's sampling" in parse_error(
        ["--aligner", "A", "--answers_file", "F", "--chat_format", "chatml"], capsys)
    assert "invalid choice: 'chatm'" in parse_error(["--init_from", "DIR", "--chat_format", "chatm"], capsys)


def test_a_chat_format_over_the_checkpoints_own_template_is_said(judging_tiny, capsys):
    """As train.py says it: the prompts are not the ones the checkpoint learned."""
    sample.main(["--init_from", judging_tiny, "--prompt", "What is 1 + 2?", "--max_new_tokens", "2",
                 "--chat_format", "chatml", "--device", "cpu"])
    assert ("note: --chat_format chatml replaces the checkpoint's own chat template "
            f"({os.path.join(judging_tiny, 'tokenizer_config.json')} ('nanoalign_chat_format': 'selfjudge'))"
            in capsys.readouterr().err)
    sample.main(["--init_from", judging_tiny, "--prompt", "What is 1 + 2?", "--max_new_tokens", "2",
                 "--chat_format", "selfjudge", "--device", "cpu"])
    assert "replaces" not in capsys.readouterr().err
