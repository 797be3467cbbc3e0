"""Stopping and resuming (train.py): a resumed run gives the same losses, a copied run reads and writes
only the copy, a run resumed from another directory reads the files it started with, Ctrl-C writes a
checkpoint, a stopped run prints the command that resumes it, a damaged train state is one clear line."""
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import train
from nanoalign import REGISTRY
from tests.helpers import ROOT, _short_run, ctrl_c_while_starting, own_options, run_cfg


# -- exact resume, a copied run, Ctrl-C ------------------------------------------------------------
@pytest.mark.parametrize("method", [m for m in REGISTRY if not REGISTRY[m].main])   # a chain: its own tests
def test_every_method_resumes_to_the_unbroken_runs_losses(tmp_path, method):
    """Exact resume is every method's promise, not DPO's alone: an on-policy method samples with the
    saved RNG stream, a scheduled one (MO-ORPO's task_by_task) picks up its schedule at the saved
    step, JSFT's prepared rows come back in the same order."""
    kw = dict(method=method, eval_every=0, **own_options(method, gen_max_tokens=4, osp_k=4))  # short samples
    straight = train.train(run_cfg(tmp_path / "a", **kw))
    first = train.train(run_cfg(tmp_path / "b", **kw), stop_at=3)
    second = train.train(run_cfg(tmp_path / "b", resume=True, **kw))
    assert first + second == straight                     # float32 on the CPU: bit for bit
    st = json.load(open(tmp_path / "b" / "run" / "ckpt" / "state.json"))
    assert st["step"] == 6 and st["config"]["method"] == method


def test_a_resumed_run_says_from_which_step_it_goes_on(tmp_path, capsys):
    """A resumed run started with the very lines of a new one: nothing said it went on from a
    checkpoint, nor from which step."""
    train.train(run_cfg(tmp_path, method="sft", eval_every=0), stop_at=2)
    capsys.readouterr()
    train.train(run_cfg(tmp_path, method="sft", eval_every=0, resume=True))
    lines = capsys.readouterr().out.splitlines()
    ckpt = os.path.join(str(tmp_path / "run"), "ckpt")
    assert lines[1] == f"resumed from {ckpt} at step 2 of 6"
    train.train(run_cfg(tmp_path / "new", method="sft", eval_every=0, max_steps=1))
    assert not [s for s in capsys.readouterr().out.splitlines() if s.startswith("resumed")]


def test_a_stopped_run_logs_no_end_of_run_validation_and_its_resume_logs_it_once(tmp_path):
    """Ctrl-C ran the whole held-out evaluation before exiting (minutes on a large model, while the
    user waits) and logged it as '(end of run)' at the stopped step; the run's log then held a
    validation row the unbroken run does not have."""
    straight = run_cfg(tmp_path / "a", method="dpo", eval_every=0)
    train.train(straight)
    train.train(run_cfg(tmp_path / "b", method="dpo", eval_every=0), stop_at=3)
    train.train(run_cfg(tmp_path / "b", method="dpo", eval_every=0, resume=True))

    def val_steps(d):
        return [r["step"] for r in map(json.loads, open(d / "run" / "metrics.jsonl")) if r["split"] == "val"]
    assert val_steps(tmp_path / "a") == [6] and val_steps(tmp_path / "b") == [6]


def test_a_run_resumed_after_a_crash_logs_each_step_once(tmp_path, monkeypatch):
    """A crash (not Ctrl-C: no checkpoint of its own) after --ckpt_every's checkpoint at step 2 has
    logged step 3 too; --resume redoes step 3 from the checkpoint, and the log holds each step once,
    with the losses of the run that continued."""
    from nanoalign import REGISTRY
    real, calls = REGISTRY["dpo"].loss, {"n": 0}

    def crashes_in_step_4(model, batch, run, cfg):
        calls["n"] += 1
        if calls["n"] == 7:                                # step 4's first micro-batch (2 a step)
            raise RuntimeError("out of memory")
        return real(model, batch, run, cfg)
    monkeypatch.setattr(REGISTRY["dpo"], "loss", crashes_in_step_4)
    with pytest.raises(RuntimeError, match="out of memory"):
        train.train(run_cfg(tmp_path, method="dpo", ckpt_every=2, eval_every=0))
    monkeypatch.setattr(REGISTRY["dpo"], "loss", real)
    second = train.train(run_cfg(tmp_path, method="dpo", ckpt_every=2, eval_every=0, resume=True))
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    train_recs = [r for r in recs if r["split"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in train_recs[2:]] == second


def file_hashes(root):
    """{path relative to root: sha256 of its bytes} of every file under root."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_resuming_a_copied_run_reads_and_writes_only_the_copy(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(["--method", "sft", "--init_from", "scratch", "--model_preset", "tiny", "--max_steps", "4",
                "--batch_size", "4", "--n_train", "16", "--val_data", "", "--final_eval", "false",
                "--log_every", "1", "--out_dir", str(a)])
    shutil.copytree(a, b)                      # its state.json still says out_dir a
    before = file_hashes(a)
    train.main(["--out_dir", str(b), "--resume", "--max_steps", "6"])
    assert file_hashes(a) == before            # the original: not read into, not written, byte for byte
    st = json.load(open(b / "ckpt" / "state.json"))
    assert st["step"] == 6 and st["config"]["out_dir"] == str(b)
    steps = [json.loads(x)["step"] for x in open(b / "metrics.jsonl") if '"train"' in x]
    assert steps == [1, 2, 3, 4, 5, 6]         # the copy's own log, continued
    assert file_hashes(b)["ckpt/model.safetensors"] != before["ckpt/model.safetensors"]
    assert f"checkpoint: {b / 'ckpt'} (step 6)" in capsys.readouterr().out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])     # Ctrl-C; kill, a preemption
def test_ctrl_c_writes_a_checkpoint(tmp_path, sig):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-u", "train.py", "--method", "sft", "--init_from", "scratch",
                          "--max_steps", "100000", "--final_eval", "false", "--n_train", "64",
                          "--batch_size", "4", "--log_every", "1", "--out_dir", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:          # wait until training is under way
        if line.startswith("step"):
            break
    time.sleep(0.5)
    p.send_signal(sig)
    rest = p.stdout.read()
    assert p.wait(60) == 128 + sig, rest
    st = json.load(open(out / "ckpt" / "state.json"))
    assert 0 < st["step"] < 100000 and "checkpoint" in rest and "--resume" in rest


def test_ctrl_c_while_torch_imports_is_one_line_and_exit_130(tmp_path):
    """The first seconds of `python train.py` import torch, before main() and its Ctrl-C handling:
    a Ctrl-C there printed KeyboardInterrupt's traceback through torch's import machinery."""
    code, err = ctrl_c_while_starting("train.py", "--method", "sft", "--out_dir", str(tmp_path / "run"),
                                      "--max_steps", "1", "--final_eval", "false", "--init_from", "scratch")
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (code, err)
    assert err.startswith("stopped (Ctrl-C)"), err


@pytest.mark.parametrize("phase", ["init_model", "load_split"])        # loading the model; reading the data
def test_ctrl_c_before_the_first_step_is_one_line_saying_what_is_on_disk(tmp_path, capsys, monkeypatch, phase):
    """Ctrl-C while the model loads or the data is read (seconds for a 135M checkpoint, a minute for a
    7B one; when a researcher who has just read the start's settings stops the run) came before the
    loop's handler was installed: a KeyboardInterrupt traceback. Now one line on stderr, saying
    whether out_dir holds a checkpoint (an earlier run's, which --resume would continue), exit 130."""
    argv = ["--method", "sft", "--init_from", "scratch", "--max_steps", "2", "--batch_size", "4",
            "--n_train", "16", "--final_eval", "false", "--out_dir", str(tmp_path / "run")]

    def ctrl_c(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, phase, ctrl_c)
    for before in (None, 2):                         # a fresh out_dir; one with a finished run in it
        if before:
            monkeypatch.undo()
            train.main(argv)
            monkeypatch.setattr(train, phase, ctrl_c)
            capsys.readouterr()
        with pytest.raises((SystemExit, KeyboardInterrupt)) as e:
            train.main(argv)
        assert isinstance(e.value, SystemExit) and e.value.code == 130
        err = capsys.readouterr().err
        said = (f"{tmp_path / 'run' / 'ckpt'} holds a checkpoint of step 2" if before
                else f"no checkpoint in {tmp_path / 'run'}")
        assert err == f"stopped (Ctrl-C); {said}\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])     # Ctrl-C; kill, a preemption
def test_a_second_signal_stops_at_once_naming_the_signal(tmp_path, capsys, monkeypatch, sig):
    """A second signal while training stops at once (the loop's handler raises). Its last line said
    "stopped (Ctrl-C)" and it exited 130 whichever it was: a second `kill` read as a Ctrl-C."""
    def two_signals(cfg, task):                # the loop's handler installed, as train() does
        stop = train.StopFlag()
        try:
            os.kill(os.getpid(), sig)          # the first: finish the step (not reached here)
            os.kill(os.getpid(), sig)          # the second: at once
        finally:
            stop.restore()
    monkeypatch.setattr(train, "train", two_signals)
    out = tmp_path / "run"
    with pytest.raises((SystemExit, KeyboardInterrupt)) as e:
        train.main(["--method", "sft", "--init_from", "scratch", "--final_eval", "false",
                    "--out_dir", str(out)])
    assert isinstance(e.value, SystemExit) and e.value.code == 128 + sig
    name = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}[sig]
    assert capsys.readouterr().err == f"stopped ({name}); no checkpoint in {out}\n"


def test_an_interrupted_warm_up_is_continued_not_used(tmp_path, monkeypatch):
    """--init_from default: a warm-up stopped by Ctrl-C left a checkpoint of its last step, which
    the next run once took for the finished warm-up (it only looked for config.json)."""
    from nanoalign.tasks import arith
    monkeypatch.chdir(tmp_path)                             # the cache is out/_warm, under the cwd
    shared = train.shared_options(train.make_config(n_warm=16, warm_steps=4, batch_size=4))
    calls = []

    def stopped_at_2(**kw):
        calls.append(kw["resume"])
        return train.train(train.make_config(**kw), arith, stop_at=2)
    ckpt = arith.warm_start(shared, stopped_at_2)
    assert calls == [False] and json.load(open(os.path.join(ckpt, "state.json")))["step"] == 2

    def whole(**kw):
        calls.append(kw["resume"])
        return train.train(train.make_config(**kw), arith)
    other = {**shared, "max_length": 256}                   # the next run's own settings differ
    assert arith.warm_start(other, whole) == ckpt           # the warm-up continues with its own
    assert calls == [False, True] and json.load(open(os.path.join(ckpt, "state.json")))["step"] == 4
    assert arith.warm_start(shared, whole) == ckpt and calls == [False, True]     # done: cached


def test_resume_refuses_changed_rows_and_a_run_with_nothing_left(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": "no"} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--method", "orpo", "--init_from", "scratch", "--train_data", str(data), "--val_data", "",
            "--batch_size", "2", "--final_eval", "false", "--out_dir", str(tmp_path / "run")]
    train.main(argv + ["--max_steps", "2"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:                    # finished: nothing to resume
        train.main(["--out_dir", str(tmp_path / "run"), "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is at step 2 and --max_steps is 2: nothing to resume" in err
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1]))       # the same rows, reordered
    with pytest.raises(SystemExit) as e:
        train.main(["--out_dir", str(tmp_path / "run"), "--resume", "--max_steps", "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{data} changed since the run in {tmp_path / 'run' / 'ckpt'} read it" in err
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))              # restored: it resumes
    train.main(["--out_dir", str(tmp_path / "run"), "--resume", "--max_steps", "4"])
    assert json.load(open(tmp_path / "run" / "ckpt" / "state.json"))["step"] == 4


# -- a run resumed from another working directory --------------------------------------------------
def project(root, start):
    """root/proj, as a user keeps it: a start checkpoint and a rows file, and the settings of a DPO
    run that name them by paths relative to root/proj (give it a relative out_dir too)."""
    proj = root / "proj"
    shutil.copytree(start, proj / "start")
    (proj / "data").mkdir()
    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": "no"} for i in range(8)]
    (proj / "data" / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return proj, dict(method="dpo", init_from="start", train_data="data/p.jsonl", val_data="data/p.jsonl")


def test_a_run_resumed_from_another_directory_reads_its_paths_from_the_one_it_started_in(
        tmp_path, monkeypatch, start):
    """A preempted job restarted in another directory: --resume looked for the run's relative paths
    (its rows, its start) from there ("data/p.jsonl: cannot open"), and the same files given again
    by a path that reaches them were refused as a changed setting. The checkpoint records where the
    run started: without the paths, or with paths from here to the same files (one through a
    symlink), it goes on to the unbroken run's losses."""
    proj, kw = project(tmp_path, start)
    monkeypatch.chdir(proj)
    straight = train.train(run_cfg(proj, out_dir="runs/a", **kw))
    first = train.train(run_cfg(proj, out_dir="runs/b", **kw), stop_at=2)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    os.symlink(proj, "link")
    run = str(proj / "runs" / "b")
    cfg = train.parse_config(["--out_dir", run, "--resume"])
    assert (cfg.train_data, cfg.init_from) == (str(proj / "data" / "p.jsonl"), str(proj / "start"))
    second = train.train(cfg, stop_at=4)
    third = train.train(train.parse_config(["--out_dir", run, "--resume", "--train_data", "link/data/p.jsonl",
                                            "--val_data", str(proj / "data" / "p.jsonl"),
                                            "--init_from", "link/start"]))   # same_file: the symlink
    assert first + second + third == straight             # float32 on the CPU: bit for bit


def test_resume_from_another_directory_takes_a_copy_of_the_rows_and_refuses_another_file(
        tmp_path, monkeypatch, capsys, start):
    """A path given again is read from here: --train_data may be a copy of the run's rows (the
    sha256 its checkpoint keeps); another file, for any path setting, is refused as a changed
    setting, naming both files in full; so is the first command's relative path, where it names
    another file here."""
    proj, kw = project(tmp_path, start)
    monkeypatch.chdir(proj)
    train.train(run_cfg(proj, out_dir="runs/b", **kw), stop_at=2)
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    run = str(proj / "runs" / "b")
    shutil.copy(proj / "data" / "p.jsonl", "copy.jsonl")
    cfg = train.parse_config(["--out_dir", run, "--resume", "--train_data", "copy.jsonl"])
    assert cfg.train_data == "copy.jsonl"
    (here / "other.jsonl").write_text((proj / "data" / "p.jsonl").read_text().split("\n", 1)[1])
    shutil.copytree(proj / "start", here / "start")         # the same weights, another start
    for flag, given, was in (("train_data", "other.jsonl", proj / "data" / "p.jsonl"),
                             ("val_data", "copy.jsonl", proj / "data" / "p.jsonl"),
                             ("init_from", "start", proj / "start")):
        with pytest.raises(SystemExit) as e:
            train.parse_config(["--out_dir", run, "--resume", f"--{flag}", given])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"'{flag}' was {str(was)!r} in this run" in err, err
        assert f"got {str(here / given)!r}" in err and "Start a new --out_dir to change it" in err, err


def test_a_run_whose_directory_is_not_recorded_or_gone_resumes_its_paths_from_here_as_before(
        tmp_path, monkeypatch, capsys, start):
    """Where the directory the run started in no longer holds its files (the project moved, with its
    runs), or a checkpoint written before it was recorded, a relative path is read from here."""
    proj, kw = project(tmp_path, start)
    monkeypatch.chdir(proj)
    train.train(run_cfg(proj, out_dir="runs/b", **kw), stop_at=2)
    monkeypatch.chdir(tmp_path)
    shutil.move(proj, tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    cfg = train.parse_config(["--out_dir", "runs/b", "--resume", "--train_data", "data/p.jsonl"])
    assert (cfg.train_data, cfg.val_data, cfg.init_from) == ("data/p.jsonl", "data/p.jsonl", "start")
    assert train.train(cfg, stop_at=3)                     # it reads them
    state = tmp_path / "moved" / "runs" / "b" / "ckpt" / "state.json"
    st = json.loads(state.read_text())
    assert st["cwd"] == str(tmp_path / "moved")            # where its relative paths are read from now
    del st["cwd"]                                          # as written before the directory was recorded
    state.write_text(json.dumps(st))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--out_dir", str(tmp_path / "moved" / "runs" / "b"), "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "started from --init_from start, which is not there" in err


# -- a damaged train state; the command that resumes -----------------------------------------------
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_from_a_damaged_train_state_is_one_clear_line(tmp_path, capsys, damage):
    _short_run(tmp_path, capsys)
    f = tmp_path / "run" / "ckpt" / "train_state.safetensors"
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(SystemExit) as e:
        train.main(["--method", "sft", "--out_dir", str(tmp_path / "run"), "--resume", "--max_steps", "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "train_state.safetensors" in err and "Traceback" not in err
    assert ("missing" in err) == (damage == "missing")


def test_a_stopped_run_prints_the_command_that_resumes_it(tmp_path, capsys):
    cfg = train.make_config(method="sft", init_from="scratch", max_steps=4, batch_size=4, n_train=16,
                            out_dir=str(tmp_path / "run"), final_eval=False)
    train.train(cfg, stop_at=1)
    out = capsys.readouterr().out
    assert f"python train.py --method sft --out_dir {tmp_path / 'run'} --resume" in out
    # stopped after the last step (Ctrl-C in the end-of-run evaluation): complete, no --resume to offer
    train.train(dataclasses.replace(cfg, resume=True), stop_at=4)
    out = capsys.readouterr().out
    assert "--resume" not in out and "stopped after the last step (4): the run is complete" in out


def test_resume_with_another_number_of_processes_is_refused_naming_the_command(tmp_path, capsys):
    """The data position counts global batches (--batch_size x processes): a run of 2 processes
    resumed by one went on at another row of its data, at half the batch, without a word. The
    number is kept in state.json (tests/train/test_scale.py: 2 under torchrun); another is refused,
    saying how to launch the run."""
    cfg = train.make_config(method="sft", init_from="scratch", max_steps=4, batch_size=4, n_train=16,
                            out_dir=str(tmp_path / "run"), final_eval=False)
    train.train(cfg, stop_at=1)
    assert f"  python train.py --method sft --out_dir {tmp_path / 'run'} --resume" in capsys.readouterr().out
    state = tmp_path / "run" / "ckpt" / "state.json"
    st = json.loads(state.read_text())
    assert st["world"] == 1
    state.write_text(json.dumps({**st, "world": 2}))       # as a run of torchrun --nproc_per_node 2 wrote it
    with pytest.raises(SystemExit) as e:
        train.main(["--method", "sft", "--out_dir", str(tmp_path / "run"), "--resume"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {state}: the run trained with 2 process(es), this one has 1; its data position counts "
        f"batches of --batch_size x 2: resume it with torchrun --nproc_per_node 2 train.py ... --resume")
    state.write_text(json.dumps({k: v for k, v in st.items() if k != "world"}))   # written before the key
    train.main(["--method", "sft", "--out_dir", str(tmp_path / "run"), "--resume"])
    assert "resumed" in capsys.readouterr().out.lower()


def test_a_users_run_config_json_in_the_out_dir_is_not_read_as_a_chains_record(tmp_path, capsys):
    """out_dir/run_config.json is where a --meta_stage all chain keeps its config for --resume; a file
    of that name that is not a chain's (the user's own --config, kept with the run) must not be
    taken for one, whenever it was written: it was, and --resume stopped on a KeyError traceback."""
    _short_run(tmp_path, capsys)
    run = tmp_path / "run"
    (run / "run_config.json").write_text(json.dumps({"method": "sft", "lr": 1e-3}))   # after the run
    cfg = train.parse_config(["--out_dir", str(run), "--resume", "--max_steps", "3"])
    assert cfg.method == "sft" and cfg.max_steps == 3 and cfg.lr == 0.0             # the run's own (auto)
    shutil.rmtree(run / "ckpt")
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--out_dir", str(run), "--resume"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{run / 'ckpt' / 'state.json'} does not exist" in err


def test_the_printed_commands_work_as_printed_in_a_directory_with_a_space(tmp_path, capsys):
    # "--out_dir /home/me/my runs/dpo --resume", printed bare, is two arguments to a shell: the
    # command the stop printed failed with "unrecognized arguments", and so did the sample.py one
    import shlex
    import sample
    d = tmp_path / "my runs" / "run"
    cfg = train.make_config(method="sft", init_from="scratch", max_steps=4, batch_size=4, n_train=16,
                            out_dir=str(d), final_eval=False)
    train.train(cfg, stop_at=1)
    line = [s for s in capsys.readouterr().out.splitlines() if "--resume" in s][-1]
    argv = shlex.split(line)
    assert argv[:2] == ["python", "train.py"]
    resumed = train.parse_config(argv[2:])
    assert resumed.resume and resumed.out_dir == str(d)
    train.main(["--method", "sft", "--init_from", "scratch", "--max_steps", "1", "--batch_size", "4",
                "--n_train", "16", "--out_dir", str(d), "--final_eval", "false"])
    line = [s for s in capsys.readouterr().out.splitlines() if "python sample.py" in s][-1]
    argv = shlex.split(line)
    assert sample.parse_args(argv[2:]).init_from == str(d / "ckpt")


def test_a_resumed_built_in_run_ends_with_the_unbroken_runs_table(tmp_path, capsys, monkeypatch):
    """A built-in run stopped by Ctrl-C and resumed ended without its before/after table (the
    "before" scores were taken only by a run's first start). The resume scores the same start."""
    def run(d, *more):
        train.main(["--method", "sft", "--init_from", "scratch", "--model_preset", "tiny", "--max_steps", "4",
                    "--batch_size", "4", "--n_train", "16", "--val_data", "", "--out_dir", str(d), *more])

    def table_of(out):      # the table and its example answers, less the line with the seconds taken
        assert "Built-in task, greedy answers" in out
        return out[out.index("Built-in task"):out.index("sample from it")].split("\n", 1)[1]
    from nanoalign.tasks import arith
    few = arith.test_prompts(24)          # the table's 200 prompts, fewer: the same story, faster
    monkeypatch.setattr(arith, "test_prompts", lambda n=200, seed=0: few)
    run(tmp_path / "a")
    unbroken = table_of(capsys.readouterr().out)
    real = train.train

    def stopped(cfg, task=None):          # Ctrl-C in step 2: its checkpoint, then exit 130
        real(cfg, task, stop_at=2)
        raise SystemExit(130)
    monkeypatch.setattr(train, "train", stopped)
    with pytest.raises(SystemExit):
        run(tmp_path / "b")
    monkeypatch.setattr(train, "train", real)
    capsys.readouterr()
    train.main(["--out_dir", str(tmp_path / "b"), "--resume"])
    assert table_of(capsys.readouterr().out) == unbroken


def test_a_run_whose_start_is_gone_is_refused_by_resume_naming_the_start(tmp_path, capsys):
    """A run copied to another machine without its --init_from: --resume said "X: not a directory"
    from deep in the model loader, not that X is the run's start, which the resume loads again."""
    common = ["--model_preset", "tiny", "--batch_size", "4", "--n_train", "16", "--val_data", "",
              "--final_eval", "false"]
    train.main(["--method", "sft", "--init_from", "scratch", "--max_steps", "1",
                "--out_dir", str(tmp_path / "start"), *common])
    start = str(tmp_path / "start" / "ckpt")
    train.train(train.make_config(method="sft", init_from=start, max_steps=3, out_dir=str(tmp_path / "run"),
                                  batch_size=4, n_train=16, val_data="", final_eval=False), stop_at=1)
    shutil.rmtree(tmp_path / "start")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main(["--out_dir", str(tmp_path / "run"), "--resume"])
    assert e.value.code == 2
    assert f"started from --init_from {start}, which is not there" in capsys.readouterr().err
