"""Configuration (train.py): flags, config files and help; bad flags, unknown keys, wrong types,
argument prefixes and another method's options are refused (a mistyped name with the closest known
one, another method's option naming whose it is); resuming refuses another method or a changed
setting."""
import dataclasses
import json
import os
import re

import pytest

import train
from nanoalign import REGISTRY, config
from tests.helpers import FIX, _short_run


# -- bad flags, config files, help -----------------------------------------------------------------
@pytest.mark.parametrize("argv,pattern", [
    (["--method", "nope"], "--method 'nope' is unknown"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--resume", "maybe"], "argument --resume: expected true/false, got 'maybe'"),
    (["--chat_format", "bogus"], "--chat_format must be one of '', chatml, inst, selfjudge, raw, got 'bogus'"),
    (["--method", "dpo", "--beta", "0"], "--beta must be > 0.0, got 0.0"),        # DPO would learn nothing
    (["--method", "ipo", "--beta=-1"], "--beta must be > 0.0, got -1.0"),
    (["--method", "scalarization", "--w1", "1.5"], "--w1 must be <= 1.0, got 1.5"),  # SJ weight -0.5
    (["--beta2", "1"], "--beta2 must be < 1.0, got 1.0"),                       # AdamW refuses it
    (["--lr=-1e-4"], "--lr must be >= 0.0, got -0.0001"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),                 # passes any bound
    (["--lora_alpha", "inf"], "--lora_alpha must be a finite number, got inf"),
    (["--min_lr_ratio", "2"], "--min_lr_ratio must be <= 1.0, got 2.0"),          # lr above its peak
    (["--model_preset", "huge"], "--model_preset must be one of tiny, smollm2-135m, mistral-7b, llama3-8b"),
])
def test_a_bad_flag_value_exits_2_saying_what_is_wrong(argv, pattern, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_config(argv)
    assert e.value.code == 2                 # argparse's usage error, as for an unknown flag
    assert pattern in capsys.readouterr().err


def test_config_file_rejects_unknown_keys_and_wrong_types(tmp_path, capsys):
    p = tmp_path / "c.json"
    for content, message in (({"lr": "high"}, "'lr' must be float"),
                             ({"learning_rate": 1e-3}, "unknown config key 'learning_rate'")):
        p.write_text(json.dumps(content))
        with pytest.raises(SystemExit) as e:
            train.parse_config(["--config", str(p)])
        assert e.value.code == 2 and f"{p}: " in capsys.readouterr().err
        with pytest.raises(SystemExit):
            train.parse_config(["--config", str(p)])
        assert message in capsys.readouterr().err
    p.write_text(json.dumps({"lr": 1e-3, "max_steps": 7}))
    cfg = train.parse_config(["--config", str(p), "--max_steps", "9"])
    assert (cfg.lr, cfg.max_steps) == (1e-3, 9)


def test_a_config_file_that_is_a_folder_or_not_an_object_is_one_line(tmp_path, capsys):
    (tmp_path / "list.json").write_text("[1]")
    for path, message in ((tmp_path, f"error: {tmp_path}: cannot read (Is a directory)"),
                          (tmp_path / "list.json", "a config file holds one JSON object")):
        with pytest.raises(SystemExit) as e:
            train.parse_config(["--config", str(path)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err


def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path, monkeypatch):
    """Checked on the config the run ends with: a --config file's 'cuda' that a flag overrides, or
    a resumed run's, is not refused."""
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit, match="--device cuda, but this torch .* sees no CUDA GPU"):
        train.train(train.make_config(device="cuda", out_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    (tmp_path / "c.json").write_text(json.dumps({"device": "cuda"}))
    assert train.parse_config(["--config", str(tmp_path / "c.json"), "--device", "cpu"]).device == "cpu"


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(config.SharedConfig):
        assert f"--{f.name}" in out


def test_help_shows_each_options_bounds(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")             # one line per flag
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "scalarization", "--help"])
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("--")}
    assert lines["--w1"].endswith("(default: 0.6; >= 0.0; <= 1.0)")
    assert lines["--beta1"].endswith("(default: 0.9; >= 0.0; < 1.0)")
    assert lines["--batch_size"].endswith("(default: 16; >= 1)")
    assert lines["--dtype"].endswith("one of auto, float32, bfloat16)")
    # --method's names (the registry's, checked by it, not argparse: none were listed), and what a
    # bare --packed or --prompt_loss means
    from nanoalign import REGISTRY
    assert lines["--method"].endswith(f"(default: 'scalarization'; one of {', '.join(REGISTRY)}, list)")
    assert lines["--packed"].endswith("one of auto, true, false; the flag alone = true)")
    assert lines["--prompt_loss"].endswith("(default: False; the flag alone = true)")


# -- resume cannot mix runs; no argument prefixes; another method's options ------------------------
def test_resume_refuses_another_method_or_a_changed_setting(tmp_path, capsys):
    _short_run(tmp_path, capsys)
    run = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--method", "orpo", "--out_dir", run, "--resume"])
    assert e.value.code == 2 and "'method' was 'sft'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "sft", "--out_dir", run, "--resume", "--lr", "0.1"])
    err = capsys.readouterr().err
    assert "'lr' was 0.0 in this run" in err and "got 0.1" in err and "max_steps" in err   # 0: auto
    cfg = train.parse_config(["--method", "sft", "--out_dir", run, "--resume", "--max_steps", "5"])
    assert cfg.max_steps == 5 and cfg.n_train == 16          # allowed, and the rest is the run's
    cfg = train.parse_config(["--out_dir", run, "--resume"])   # the method comes from the run
    assert cfg.method == "sft"


@pytest.mark.parametrize("argv, want", [
    ([], "auto"), (["--grad_checkpoint"], "true"), (["--grad_checkpoint", "True"], "true"),
    (["--grad_checkpoint", "no"], "false"), (["--grad_checkpoint", "half"], "half"),
])
def test_grad_checkpoint_takes_a_bools_spellings_as_well_as_half_and_auto(argv, want):
    """--grad_checkpoint was a bool until it took 'half' and 'auto': the old spellings still work, on
    the command line and as a JSON bool (a config file, a saved run)."""
    from nanoalign.config import config_from_dict
    assert train.parse_config(["--method", "sft"] + argv).grad_checkpoint == want
    for old in (True, False):
        for where, saved in (("run.json", False), ("state.json", True)):
            assert config_from_dict({"method": "sft", "grad_checkpoint": old}, where,
                                    saved).grad_checkpoint == str(old).lower()


def test_a_resumed_run_may_change_grad_checkpointing(tmp_path, capsys):
    """Checkpointing changes no number, so a resume may turn it on or off; a run saved when it was a
    bool resumes too (the SFT warm-up resumes with every option of the run that needs it)."""
    _short_run(tmp_path, capsys)
    run = str(tmp_path / "run")
    cfg = train.parse_config(["--out_dir", run, "--resume", "--grad_checkpoint", "true"])
    assert cfg.grad_checkpoint == "true" and cfg.method == "sft"
    state = tmp_path / "run" / "ckpt" / "state.json"
    st = json.loads(state.read_text())
    st["config"]["grad_checkpoint"] = False                  # as saved before 2026-12-06
    state.write_text(json.dumps(st))
    assert train.parse_config(["--out_dir", run, "--resume"]).grad_checkpoint == "false"
    assert train.parse_config(["--out_dir", run, "--resume", "--grad_checkpoint", "auto"]).grad_checkpoint == "auto"


def test_argument_prefixes_are_refused(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--max_step", "5"])
    assert "unrecognized arguments: --max_step" in capsys.readouterr().err


def test_another_methods_option_is_refused_not_dropped(tmp_path, capsys):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"method": "self_judge_offpolicy", "judge": "policy"}))
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--config", str(p)])
    assert e.value.code == 2 and "'judge' is not an option of --method self_judge_offpolicy" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit, match="'w1' is not an option of --method orpo"):
        train.make_config(method="orpo", w1=0.5)


# -- a mistyped name gets the closest known one, a far-off name no guess -----------------------------
def usage_error(argv, capsys):
    """The last line of the usage error (exit 2) that parse_config gives for argv."""
    with pytest.raises(SystemExit) as e:
        train.parse_config(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def owners_of(name):
    """The methods whose own options include `name`."""
    return {n for n, m in REGISTRY.items() if name in {f.name for f in dataclasses.fields(m.options)}}


@pytest.mark.parametrize("method, unknown, guess", [
    ("orpo", ["--max_stepz", "3"], "--max_steps"),
    ("orpo", ["--max_stepz=3"], "--max_steps"),
    ("orpo", ["--max_step", "3"], "--max_steps"),           # a prefix: refused all the same
    ("dpo", ["--betta", "0.2"], "--beta"),                  # the method's own option
    ("orpo", ["--batchsize", "4"], "--batch_size"),
    ("orpo", ["--zzz_qqq", "3"], None),
    ("orpo", ["--learning_rate", "1e-4"], None),            # not a spelling of --lr: no guess
    ("conjoined", ["--foo", "-1"], None),                   # a value, not a flag '-1' close to --w1
    ("orpo", ["--MAX_STEPS", "3"], "--max_steps"),          # caps lock: the letters are all there
])
def test_an_unknown_flag_gets_the_closest_flag(method, unknown, guess, capsys):
    err = usage_error(["--method", method] + unknown, capsys)
    assert "unrecognized arguments: " + " ".join(unknown) in err     # argparse's words, kept
    if guess:
        assert f"did you mean {guess}?" in err
    else:
        assert "did you mean" not in err


def test_several_unknown_flags_each_get_their_guess(capsys):
    err = usage_error(["--max_stepz", "3", "--zzz_qqq", "1", "--batchsize", "4"], capsys)
    assert "--max_stepz: did you mean --max_steps?" in err and "--batchsize: did you mean --batch_size?" in err
    assert "--zzz_qqq:" not in err


def test_another_methods_flag_says_whose_it_is(capsys):
    """The parser has only the chosen method's options: another's flag is not a typo to guess at."""
    err = usage_error(["--method", "dpo", "--orpo_lambda", "1"], capsys)
    assert "unrecognized arguments: --orpo_lambda 1" in err
    named = set(err.split("it is an option of --method ", 1)[1].split(", "))
    assert named == owners_of("orpo_lambda") and "dpo" not in named
    err = usage_error(["--task", "instruct", "--n_warm", "5"], capsys)     # a task's option
    assert "it is an option of --task arith" in err
    err = usage_error(["--method", "dpo", "--orpo_lamda", "1"], capsys)    # and mistyped
    assert "did you mean --orpo_lambda (an option of --method orpo" in err


@pytest.mark.parametrize("argv, guess", [
    (["--method", "dpp"], "'dpo'"),
    (["--method", "self_judge_offpolic"], "'self_judge_offpolicy'"),
    (["--method", "lst"], "'list'"),
    (["--method", "zzz"], None),
    (["--task", "arithm"], "'arith'"),
    (["--task", "zzz"], None),
    (["--model_preset", "tinny"], "'tiny'"),                # an option's choices
    (["--dtype", "bf16"], "'bfloat16'"),
    (["--model_preset", "huge"], None),
])
def test_an_unknown_method_task_or_choice_gets_the_closest_one(argv, guess, capsys):
    err = usage_error(argv, capsys)
    assert ("is unknown; choose from" in err) != ("must be one of" in err)   # the refusal, kept
    if guess:
        assert err.endswith(f"; did you mean {guess}?")
    else:
        assert "did you mean" not in err


def test_a_config_file_with_a_mistyped_key_method_or_value_gets_the_closest_one(tmp_path, capsys):
    p = tmp_path / "c.json"
    for content, refused, guess in (
            ({"max_stepz": 3}, "unknown config key 'max_stepz'", "did you mean 'max_steps'?"),
            ({"zzz_qqq": 3}, "unknown config key 'zzz_qqq'", None),
            ({"method": "dpo", "dtype": "bf16"}, "'dtype' must be one of", "did you mean 'bfloat16'?"),
            ({"method": "dpo", "orpo_lambda": 1}, "'orpo_lambda' is not an option of --method dpo",
             "it is an option of --method orpo"),
            # another method's key, mistyped: guessed as a flag would be, saying whose it is
            ({"method": "dpo", "orpo_lamda": 1}, "unknown config key 'orpo_lamda'",
             "did you mean 'orpo_lambda' (an option of --method orpo")):
        p.write_text(json.dumps(content))
        err = usage_error(["--config", str(p)], capsys)
        assert f"{p}: {refused}" in err
        assert (guess in err) if guess else ("did you mean" not in err and "it is an option" not in err)
    # make_config (tests, experiments/) reads its method and task by the same rule
    with pytest.raises(SystemExit, match="method 'dpp' is unknown.*; did you mean 'dpo'\\?$"):
        config.make_config(method="dpp")
    with pytest.raises(SystemExit, match="task 'instrukt' is unknown.*; did you mean 'instruct'\\?$"):
        config.make_config(task="instrukt")


@pytest.mark.parametrize("method", ["self_judge", "osp"])
@pytest.mark.parametrize("val", ["val.jsonl", "builtin"])
def test_val_data_for_an_on_policy_method_is_refused_not_ignored(method, val, capsys):
    # an on-policy method has no held-out loss (it would need a rollout per evaluation): train.py
    # never read the file, and the run printed no val loss and no word about it
    with pytest.raises(SystemExit):
        train.parse_config(["--method", method, "--val_data", val])
    assert "--val_data" in capsys.readouterr().err
    for none in ("auto", ""):          # the default, and none at all, are fine
        assert train.parse_config(["--method", method, "--val_data", none]).val_data == none


def test_the_built_in_tasks_row_options_are_refused_with_a_file_not_ignored(tmp_path, capsys):
    """--n_train 2 with --train_data FILE trained on every row of the file and said nothing (the run
    said '8 train examples'); the task's row options are refused where the run reads none of its
    rows, and allowed where it reads some (its validation rows, with --val_data builtin)."""
    f = os.path.join(FIX, "pref.jsonl")
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"train_data": f, "n_val": 8}))
    for argv, flag in ((["--train_data", f, "--n_train", "2"], "--n_train"), (["--config", str(p)], "--n_val"),
                       (["--task", "instruct", "--train_data", f, "--task_data", "d"], "--task_data")):
        with pytest.raises(SystemExit) as e:
            train.parse_config(["--method", "dpo"] + argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and (f"{flag} shapes the built-in task's rows, and this run reads none: "
                                      f"--train_data {f} trains on every row of the file") in err, err
    assert train.parse_config(["--method", "dpo", "--n_train", "2"]).n_train == 2
    assert train.parse_config(["--method", "dpo", "--train_data", f, "--val_data", "builtin",
                               "--n_val", "8"]).n_val == 8
    assert train.parse_config(["--method", "dpo", "--train_data", f, "--n_warm", "8"]).n_warm == 8


def test_chat_format_with_init_from_scratch_is_refused_not_ignored(tmp_path, capsys):
    # a model from scratch gets the task's byte tokenizer, which speaks selfjudge: the named format
    # was never used, and the run said nothing of it
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"init_from": "scratch", "chat_format": "chatml"}))
    for argv in (["--init_from", "scratch", "--chat_format", "chatml"], ["--config", str(p)]):
        with pytest.raises(SystemExit) as e:
            train.parse_config(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--chat_format chatml" in err and "--init_from scratch" in err, err
    for ok in (["--init_from", "scratch"], ["--init_from", "some_dir", "--chat_format", "chatml"],
               ["--chat_format", "inst"]):                  # --init_from default: a checkpoint's
        train.parse_config(ok)


# -- an on-policy run judges as its judge checkpoint records ---------------------------------------
def recorded(path, **judging):
    """A checkpoint directory whose state.json records a run's config: all the config reads of it."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "state.json").write_text(json.dumps({"step": 2, "config": {"method": "jsft", **judging}}))
    return str(path)


@pytest.mark.parametrize("method, rule, other", [("self_judge", "vocab", "pair"),
                                                 ("self_judge_offpolicy", "vocab", "pair"),
                                                 ("osp", "pair", "vocab")])
def test_an_on_policy_run_judges_with_the_template_and_rule_its_judge_records(tmp_path, method, rule, other):
    """The judge (the start, which the policy is too, or a --judge_from checkpoint) judges with the
    template its JSFT / pref_aug run trained it on and the rule recorded with it, unless a flag or a
    config file says otherwise; a judge that records neither: 'compact' and the method's paper's rule.
    The run judged with 'compact' whatever template its JSFT start had trained on."""
    jsft = recorded(tmp_path / "jsft", judge_template="ultrafeedback", likelihood=other)
    judge = recorded(tmp_path / "judge", judge_template="hh")           # an older record: no rule

    def judging(argv, **kw):
        cfg = train.parse_config(["--method", method] + argv)
        made = train.make_config(method=method, **kw)                   # tests', experiments/' configs
        assert (made.judge_template, made.likelihood) == (cfg.judge_template, cfg.likelihood)
        return cfg.judge_template, cfg.likelihood
    assert judging(["--init_from", jsft], init_from=jsft) == ("ultrafeedback", other)
    assert judging(["--init_from", jsft, "--judge_from", judge], init_from=jsft,
                   judge_from=judge) == ("hh", rule)
    assert judging(["--init_from", jsft, "--judge_template", "compact"], init_from=jsft,
                   judge_template="compact") == ("compact", other)
    assert judging(["--init_from", jsft, "--likelihood", rule], init_from=jsft,
                   likelihood=rule) == ("ultrafeedback", rule)
    assert judging(["--init_from", jsft, "--judge_template", ""], init_from=jsft,
                   judge_template="") == ("ultrafeedback", other)           # '' says: the judge's own
    for start in ("scratch", "default", str(tmp_path / "no_record")):
        assert judging(["--init_from", start], init_from=start) == ("compact", rule)
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"init_from": jsft, "judge_template": "compact_principle"}))
    cfg = train.parse_config(["--method", method, "--config", str(p)])
    assert (cfg.judge_template, cfg.likelihood) == ("compact_principle", other)


def test_a_judge_record_of_no_known_template_is_one_error_naming_its_file(tmp_path, capsys):
    gone = recorded(tmp_path / "old", judge_template="renamed")
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--method", "self_judge", "--init_from", gone])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert str(tmp_path / "old" / "state.json") in err and "'renamed'" in err and "--judge_template" in err
    cfg = train.parse_config(["--method", "self_judge", "--init_from", gone, "--judge_template", "hh"])
    assert cfg.judge_template == "hh"                      # given: the record is not read for it


def test_a_resumed_on_policy_run_judges_with_the_template_of_its_first_start(tmp_path, capsys):
    """The template and rule taken from the start are the run's settings, saved with its checkpoint:
    a resume judges as the run began even if the start's record has changed since, and a config
    that would now take another (train.train's check of the config it is given) is refused."""
    jsft = recorded(tmp_path / "jsft", judge_template="ultrafeedback", likelihood="pair")
    run = tmp_path / "run"
    cfg = train.parse_config(["--method", "self_judge", "--init_from", jsft, "--out_dir", str(run)])
    (run / "ckpt").mkdir(parents=True)                                   # as train.py saves it
    (run / "ckpt" / "state.json").write_text(json.dumps({"step": 1, "config": dataclasses.asdict(cfg)}))
    recorded(tmp_path / "jsft", judge_template="hh", likelihood="vocab")  # retrained in place
    cfg = train.parse_config(["--out_dir", str(run), "--resume"])
    assert (cfg.judge_template, cfg.likelihood) == ("ultrafeedback", "pair")
    # '' given again (the first command, --resume added): the same "what the start records", which
    # for this run is what it recorded at its start, not a change of setting to refuse
    cfg = train.parse_config(["--out_dir", str(run), "--resume", "--judge_template", "", "--likelihood", ""])
    assert (cfg.judge_template, cfg.likelihood) == ("ultrafeedback", "pair")
    with pytest.raises(SystemExit, match="'judge_template' was 'ultrafeedback' in this run"):
        config.resume_config(dataclasses.asdict(train.make_config(
            method="self_judge", init_from=jsft, out_dir=str(run), resume=True)))


def test_help_says_an_on_policy_judge_takes_its_checkpoints_template_and_rule(capsys):
    for method, rule in (("self_judge", "vocab"), ("osp", "pair"), ("jsft", None)):
        with pytest.raises(SystemExit):
            train.parse_config(["--method", method, "--help"])
        options = capsys.readouterr().out.split("\noptions:\n", 1)[1]       # each flag's whole help
        lines = {b.split()[0]: " ".join(b.split()) for b in re.split(r"\n(?=  -)", options)}
        if rule is None:                             # JSFT trains a judge: its template is a choice
            assert "(default: 'compact'; one of hh," in lines["--judge_template"]
            continue
        for flag, fallback in (("--judge_template", "compact"), ("--likelihood", rule)):
            assert "(default: ''; one of ''," in lines[flag], lines[flag]
            assert "'' = " in lines[flag] and "--judge_from" in lines[flag] and "state.json" in lines[flag]
            assert f"else '{fallback}'" in lines[flag], lines[flag]
