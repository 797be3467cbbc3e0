"""bench/decode_speed.py's --products harness: it times the decode step's packed products of a
checkpoint and prints a row per batch size and dtype. Its numbers are not tested; that it still runs
after the code under it (model/cpu_pack.py) moved is."""
import subprocess
import sys

import pytest

from model.checkpoint import save_model
from tests.helpers import ROOT, byte_tokenizer, tiny



def test_products_prints_a_row_per_batch_and_dtype(tmp_path):
    save_model(tiny(vocab_size=byte_tokenizer().vocab_size), str(tmp_path), byte_tokenizer())
    r = subprocess.run([sys.executable, "-m", "bench.decode_speed", "--products", "--init_from",
                        str(tmp_path), "--batches", "1,3", "--threads", "1", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines()
            if line.split()[:1] in (["1"], ["3"]) and len(line.split()) == 6]
    assert [(row[0], row[1]) for row in rows] == [("1", "bfloat16"), ("1", "float32"),
                                                 ("3", "bfloat16"), ("3", "float32")], r.stdout
    for row in rows:                 # milliseconds, GB/s, GFLOP/s: positive numbers
        assert all(float(v) > 0 for v in row[2:5]), row


def test_products_refuses_a_gpu_run():
    r = subprocess.run([sys.executable, "-m", "bench.decode_speed", "--products", "--device", "cuda"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--device cpu only" in r.stderr, r.stderr[-2000:]


def test_products_refuses_no_timed_pass():
    """--reps 0 is an error, not the default in disguise (and no min() over zero passes)."""
    r = subprocess.run([sys.executable, "-m", "bench.decode_speed", "--products", "--reps", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--reps 0: at least one timed pass" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("flag,value,known", [("--theirs", "defualt", "default, other"),
                                              ("--ours", "float64", "float32, bf16, bf16_compiled")])
def test_an_unknown_setting_is_refused_with_the_known_ones(flag, value, known, tmp_path):
    """--theirs took any word and ran only the settings it knew; --ours refused one without naming
    the flag or its settings. A missing --init_from: the run fails at once if the flag is let by."""
    r = subprocess.run([sys.executable, "-m", "bench.decode_speed", "--products", "--init_from",
                        str(tmp_path / "missing"), flag, f"{value},{known.split(', ')[0]}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"{flag} '{value}'" in r.stderr and known in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("args,said", [
    (["--layers", "2"], "--layers: --model checkpoint"),
    (["--layers", "2", "--products"], "--layers: --model checkpoint"),
    (["--model", "smollm2-1.7b", "--layers", "0"], "--layers 0: at least 1"),
    (["--batches", "1,x"], "--batches '1,x': comma-separated whole numbers"),   # was a ValueError
    (["--batches", "1,,8"], "--batches '1,,8': comma-separated whole numbers"),
])
def test_flags_it_would_ignore_or_crash_on_are_refused(args, said, monkeypatch, capsys):
    """--layers shapes only --model smollm2-1.7b's random model: with the default --model checkpoint
    (and so with --products) it was dropped without a word, and --layers 0 built all 24 layers
    (`layers or 24`), as bench.train_speed's --layers. --batches that are not whole numbers ended
    in a ValueError traceback."""
    import bench.decode_speed as ds

    def ran(*a, **kw):
        raise AssertionError("the benchmark ran")
    for name in ("transformers_process", "random_1p7b", "products"):
        monkeypatch.setattr(ds, name, ran)
    monkeypatch.setattr(sys, "argv", ["decode_speed", "--device", "cpu", *args])
    with pytest.raises(SystemExit) as e:
        ds.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err, err
