"""bench/train_speed.py's harness: its tiny preset runs our training step in a child process and
prints a table row for it (TRL's side is optional and left out here). A benchmark's numbers are not
tested; that it still runs after the code under it moved is."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_tiny_preset_runs_our_step_and_prints_its_row():
    r = subprocess.run([sys.executable, "-m", "bench.train_speed", "--preset", "tiny", "--methods",
                        "orpo,dpo", "--trl_python", "", "--threads", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.split()[:2] in (["orpo", "ours"],
                                                                                  ["dpo", "ours"])]
    assert [row[0] for row in rows] == ["orpo", "dpo"], r.stdout
    for row in rows:                 # a step time and a peak memory, both positive numbers
        step_s, peak = float(row[-2]), float(row[-1])
        assert step_s > 0 and peak > 0, row


def test_a_relative_checkpoint_reaches_trls_side_as_an_absolute_path(tmp_path, monkeypatch):
    """TRL's child runs in a directory outside the repository: a relative --checkpoint handed on as
    it was named would not be found there (and transformers would then look for it on the Hub)."""
    from bench.train_speed import PRESETS, model_dir
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    d = model_dir(PRESETS["cpu"], str(tmp_path / "work"), "ckpt")
    assert os.path.isabs(d) and os.path.samefile(d, tmp_path / "ckpt")
