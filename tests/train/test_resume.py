"""Stopping and resuming (train.py): a resumed run gives the same losses, a copied run reads and writes
only the copy, Ctrl-C writes a checkpoint, a stopped run prints the command that resumes it, a
damaged train state is one clear line."""
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
from tests.helpers import ROOT, _short_run, run_cfg


# -- exact resume, a copied run, Ctrl-C ------------------------------------------------------------
def test_resume_gives_the_same_losses(tmp_path):
    straight = train.train(run_cfg(tmp_path / "a", method="dpo"))
    first = train.train(run_cfg(tmp_path / "b", method="dpo"), stop_at=3)
    assert len(first) == 3
    second = train.train(run_cfg(tmp_path / "b", method="dpo", resume=True))
    assert first + second == straight                     # float32 on the CPU: bit for bit
    st = json.load(open(tmp_path / "b" / "run" / "ckpt" / "state.json"))
    assert st["step"] == 6 and st["config"]["method"] == "dpo"


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


def test_ctrl_c_writes_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-u", "train.py", "--method", "sft", "--init_from", "scratch",
                          "--max_steps", "100000", "--final_eval", "false", "--n_train", "64",
                          "--batch_size", "4", "--log_every", "1", "--out_dir", str(out)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:          # wait until training is under way
        if line.startswith("step"):
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    rest = p.stdout.read()
    assert p.wait(60) == 130, rest
    st = json.load(open(out / "ckpt" / "state.json"))
    assert 0 < st["step"] < 100000 and "checkpoint" in rest


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
