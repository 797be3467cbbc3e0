"""bench/train_speed.py's harness: its tiny preset runs our training step in a child process and
prints a table row for it (TRL's side is optional and left out here). A benchmark's numbers are not
tested; that it still runs after the code under it moved is."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def test_the_tiny_preset_runs_our_step_and_prints_its_row():
    r = subprocess.run([sys.executable, "-m", "bench.train_speed", "--preset", "tiny", "--methods",
                        "orpo,dpo", "--trl_python", "", "--threads", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.split()[:2] in (["orpo", "ours"],
                                                                                  ["dpo", "ours"])]
    assert [row[0] for row in rows] == ["orpo", "dpo"], r.stdout
    for row in rows:   # a step time and a peak memory, both positive; the step-1 log-probs, negative
        step_s, peak, chosen, rejected = map(float, row[-4:])
        assert step_s > 0 and peak > 0 and chosen < 0 and rejected < 0, row


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("method", ["orpo", "dpo"])
def test_the_step_1_logps_are_what_trl_logs_of_the_first_batch(method, packed):
    """TRL logs logps/chosen and logps/rejected: each response's log-prob (ORPO: a mean over its
    tokens, get_batch_logps(average_log_prob=True); DPO: their sum), averaged over the pairs (trl
    1.16's experimental/orpo/orpo_trainer.py and trainer/dpo_trainer.py). Ours of the same batch,
    beside TRL's in the table, must be that quantity, computed here from the model's own logits."""
    import random

    from bench.train_speed import first_logps
    from nanoalign.data import make_batch
    from tests.helpers import lp_mean, lp_sum, method_config, tiny
    rng = random.Random(1)

    def seq(n):
        return [rng.randrange(3, 101) for _ in range(n)]
    ex = []
    for n_prompt, n_w, n_l in [(3, 1, 5), (1, 6, 2), (5, 4, 4)]:   # lengths apart: a sum is not a mean
        p = seq(n_prompt)
        ex.append({"chosen": p + seq(n_w), "n_prompt_chosen": n_prompt,
                   "rejected": p + seq(n_l), "n_prompt_rejected": n_prompt})
    model = tiny()
    got = first_logps(model, make_batch(ex, "pref", 0, "cpu", packed), method,
                      method_config(method, dtype="float32"))
    lp = lp_mean if method == "orpo" else lp_sum
    for side, key in (("chosen", "logps/chosen"), ("rejected", "logps/rejected")):
        want = sum(lp(model, e[side], e[f"n_prompt_{side}"]) for e in ex) / len(ex)
        assert abs(got[key] - want) < 1e-4 * max(1.0, abs(want)), (key, got[key], want)


def test_a_relative_checkpoint_reaches_trls_side_as_an_absolute_path(tmp_path, monkeypatch):
    """TRL's child runs in a directory outside the repository: a relative --checkpoint handed on as
    it was named would not be found there (and transformers would then look for it on the Hub)."""
    from bench.train_speed import PRESETS, model_dir
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    d = model_dir(PRESETS["cpu"], str(tmp_path / "work"), "ckpt")
    assert os.path.isabs(d) and os.path.samefile(d, tmp_path / "ckpt")


def test_the_largest_batch_search_frees_the_last_try_before_the_next():
    """A try's model can outlive its step in a reference cycle (TRL's: accelerate wraps
    model.forward in a method bound to the model, so a finished trainer's model is freed only by
    the cycle collector). Left to Python's automatic collection it would still hold GPU memory
    during the next, larger try, and the search would stop early for that side alone. Here a
    'GPU' of 12 units: a model of 4 and one unit a pair; freed between tries, 8 pairs fit."""
    import gc
    import weakref

    import torch
    from bench.train_speed import largest_batch
    models = []

    class Model:
        def __init__(self):
            self.me = self                      # a reference cycle, as TRL's trainer leaves
            models.append(weakref.ref(self))

    def step(b):
        m = Model()
        if 4 * sum(r() is not None for r in models) + b > 12:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test's)")
        del m

    was = gc.isenabled()
    gc.disable()                                # no automatic collection comes to the rescue
    try:
        assert largest_batch(step) == 8
    finally:
        if was:
            gc.enable()


def test_ours_at_trls_equal_settings_turns_determinism_off():
    """Ours' rows run with train.py's --deterministic (default true, compute.set_deterministic); the
    row at TRL's equal settings turns it off, as TRL runs."""
    from bench.train_speed import PRESETS
    ours = PRESETS["gpu_1p7b"]["ours"]
    assert "deterministic" not in ours[0] and ours[1]["deterministic"] is False


def test_stopped_by_sigterm_it_prints_the_rows_measured_so_far():
    """bench/gpu.sh stops a step at its time limit with SIGTERM (`timeout`, which sends it twice: to
    the command, then to its process group): the table of the rows measured by then is printed,
    said to be cut short, and the status is not 0."""
    import signal
    p = subprocess.Popen(["timeout", "600", sys.executable, "-m", "bench.train_speed", "--preset", "tiny",
                          "--methods", "orpo,dpo", "--trl_python", "", "--threads", "1"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:                    # the first row is measured: stop the run
            if line.startswith("  orpo ours"):
                p.send_signal(signal.SIGTERM)    # `timeout` passes it on as at its limit
                break
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    rows = [line.split() for line in out.splitlines() if line.split()[:2] == ["orpo", "ours"]]
    assert len(rows) == 1 and float(rows[0][-4]) > 0, out + err[-2000:]
    assert "cut short" in out and p.returncode != 0, out


def test_a_failed_largest_batch_search_says_why():
    """A search whose child failed prints the child's error in its row, not 'None'."""
    from bench.train_speed import PRESETS, table

    class A:
        preset, layers, threads = "gpu_1p7b", None, 1
    r = {"error": ["ModuleNotFoundError: No module named 'pyarrow'"]}
    out = table([("orpo", "TRL", "default", {"max_batch": None, **r}),
                 ("orpo", "TRL", "liger", {"max_batch": None, "skipped": "liger_kernel does not import"}),
                 ("orpo", "ours", {}, {"max_batch": 8})], PRESETS["gpu_1p7b"], A)
    lines = out.splitlines()
    assert "pyarrow" in lines[2] and "largest batch" in lines[2] and "None" not in lines[2], out
    assert "liger_kernel does not import" in lines[3], out
    assert lines[4].endswith("largest batch at max_length 2048: 8"), out


def test_the_largest_batch_searches_come_after_every_timed_row(monkeypatch, tmp_path):
    """The searches (a child per try size, each loading the 1.7B model again) take longest: they run
    after the timed rows of every method, so a time limit cuts them, not DPO's rows;
    --largest_batch skip leaves them out (gpu.sh's step 2), only runs them alone (its step 6)."""
    import types

    import bench.train_speed as ts
    ran = []

    def run_child(cmd, cwd, env=None):
        spec = json.loads(cmd[-1])
        ran.append((spec["method"], "search" if spec.get("max_batch") else "timed"))
        return {"max_batch": 1} if spec.get("max_batch") else {"times": [1.0], "peak_mib": 1, "compute": "x"}
    monkeypatch.setattr(ts, "run_child", run_child)
    p = dict(ts.PRESETS["gpu_1p7b"])

    def measure(largest_batch):
        ran.clear()
        a = types.SimpleNamespace(methods="orpo,dpo", largest_batch=largest_batch)
        results = []
        ts.measure(a, p, {"model_dir": "m", "rows": "r"}, str(tmp_path), {}, ["ours"], ["theirs"],
                   results, {})
        return list(ran), len(results)
    order, n = measure("with")
    assert order == [("orpo", "timed")] * 5 + [("dpo", "timed")] * 5 + [("orpo", "search")] * 4 \
        + [("dpo", "search")] * 4 and n == 18, order
    assert measure("skip")[0] == [("orpo", "timed")] * 5 + [("dpo", "timed")] * 5
    assert measure("only")[0] == [("orpo", "search")] * 4 + [("dpo", "search")] * 4


def test_largest_batch_only_needs_a_preset_that_searches():
    r = subprocess.run([sys.executable, "-m", "bench.train_speed", "--preset", "tiny", "--largest_batch",
                        "only", "--trl_python", ""], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--largest_batch only: the preset 'tiny'" in r.stderr, r.stderr[-2000:]


def test_layers_with_the_cpu_presets_real_checkpoint_is_refused(monkeypatch, tmp_path, capsys):
    """--preset cpu times the real SmolLM2-135M-Instruct, which keeps its 30 layers (the --layers
    help): --layers 2 was ignored, yet the table's header said '(2 layers)'."""
    import bench.train_speed as ts

    def model_dir(*args, **kw):
        raise AssertionError("the benchmark ran")
    monkeypatch.setattr(ts, "model_dir", model_dir)
    monkeypatch.setattr(sys, "argv", ["train_speed", "--preset", "cpu", "--layers", "2", "--trl_python", ""])
    with pytest.raises(SystemExit) as e:
        ts.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--layers" in err and "--preset tiny or gpu_1p7b" in err, err


def _refused(monkeypatch, capsys, *args):
    """main() on these flags, the benchmark stubbed out to fail the test if it starts: (exit
    status, stderr)."""
    import bench.train_speed as ts

    def model_dir(*args, **kw):
        raise AssertionError("the benchmark ran")
    monkeypatch.setattr(ts, "model_dir", model_dir)
    monkeypatch.setattr(sys, "argv", ["train_speed", *args, "--trl_python", ""])
    with pytest.raises(SystemExit) as e:
        ts.main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("methods", ["orpo,ipo", "simpo", "dpo,"])
def test_a_method_trls_side_does_not_have_is_refused_with_the_known_ones(methods, monkeypatch, capsys):
    """TRL's side runs ORPOTrainer for 'orpo' and DPOTrainer for anything else: --methods ipo timed
    our IPO against TRL's DPO under one label. Only orpo and dpo are measured on both sides."""
    code, err = _refused(monkeypatch, capsys, "--preset", "tiny", "--methods", methods)
    bad = [m for m in methods.split(",") if m not in ("orpo", "dpo")]
    assert code == 2 and f"--methods {bad[0]!r}" in err and "orpo, dpo" in err, (code, err)


@pytest.mark.parametrize("methods", ["orpo,orpo", "dpo,orpo,dpo"])
def test_a_method_named_twice_is_refused_not_timed_twice(methods, monkeypatch, capsys):
    """--methods orpo,orpo measured ORPO twice, both sides, and its table held two ORPO rows."""
    code, err = _refused(monkeypatch, capsys, "--preset", "tiny", "--methods", methods)
    twice = methods.split(",")[-1]
    assert code == 2 and f"--methods {twice!r}" in err and "more than once" in err, (code, err)


@pytest.mark.parametrize("preset", ["tiny", "gpu_1p7b"])
@pytest.mark.parametrize("layers", ["0", "-1"])
def test_layers_below_one_is_refused_not_the_presets_default(preset, layers, monkeypatch, capsys):
    """--layers 0 built the preset's full model (`layers or 24`) and its table's header named no
    layer count: a rehearsal asked for none and silently got all of them."""
    code, err = _refused(monkeypatch, capsys, "--preset", preset, "--layers", layers)
    assert code == 2 and f"--layers {layers}: at least 1" in err, (code, err)


@pytest.mark.parametrize("warmup", ["0", "-1"])
def test_no_untimed_first_step_is_refused(warmup, monkeypatch, capsys):
    """The first step pays one-time setup on both sides, and ours' step-1 log-probs run a forward
    before it that would have paid ours' alone: a timed first step would favour ours."""
    code, err = _refused(monkeypatch, capsys, "--preset", "tiny", "--warmup", warmup)
    assert code == 2 and f"--warmup {warmup}: at least 1" in err, err


def test_every_column_starts_where_its_header_does_with_entries_missing():
    """A row without step-1 log-probs (a TRL that logs other names) or without TRL's default to
    divide by (--trl_python '') leaves those columns blank; the columns after them stay under their
    headers, up to DPO's log-prob sums at 1.7B (~-5000: ten characters)."""
    from bench.train_speed import PRESETS, table

    class A:
        preset, layers, threads = "gpu_1p7b", None, 1
    first = {"logps/chosen": -4925.1234, "logps/rejected": -5012.9876}
    rows = [("dpo", "ours", {}, {"times": [1.0], "peak_mib": 100, "compute": "bf16", "first": first}),
            ("dpo", "TRL", "liger", {"times": [2.0], "peak_mib": 200, "compute": "bf16, liger"})]
    lines = table(rows, PRESETS["gpu_1p7b"], A).splitlines()
    header, ours, theirs = lines[1], lines[2], lines[3]
    # no TRL default here: the ratio columns are blank, and the log-probs still end where their
    # headers end
    assert ours.endswith("-4925.1234  -5012.9876") and len(ours) == len(header), (header, ours)
    assert header.endswith("step-1 logps chosen    rejected"), header
    # TRL's liger row: no log-probs, so nothing after its memory column but blanks
    assert theirs.rstrip().endswith("200"), theirs
