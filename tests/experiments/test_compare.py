"""The comparison tool (experiments/compare.py): its instruct preset, CPU-sized, runs every method of
the four papers, and it judges each run as the run itself judges (template, rule, principles)."""
import dataclasses
import json
import re

import pytest
import torch

import train
from experiments import compare
from model.checkpoint import save_model
from model.model import Transformer, config_from_preset
from nanoalign import onpolicy
from nanoalign.tasks import arith as task
from tests.helpers import PRINCIPLES


def test_instruct_smoke_preset_runs_every_method_with_seeds_in_parallel(tmp_path, capsys):
    """The GPU command's wiring (--jobs: each seed in a process of its own, then one table from their
    cached results), at the smoke preset's size, two seeds at once."""
    torch.manual_seed(0)
    start = str(tmp_path / "start")
    save_model(Transformer(config_from_preset("tiny")), start, task.build_tokenizer())
    root = tmp_path / "out" / "instruct_smoke"
    compare.main(["--preset", "instruct_smoke", "--seeds", "1,2", "--jobs", "2", "--start", start,
                  "--n_test", "3", "--answer_tokens", "8", "--out", str(tmp_path / "out"), "--",
                  "--max_length", "512"])
    out = capsys.readouterr().out
    assert "== the start" in out and "follows" in out and "explains" in out
    table = out[out.index("instruct_smoke: 2 seed(s)"):]
    for label, _, _ in compare.PRESETS["instruct_smoke"]:
        assert f"| {label} |" in table, label
        for s in (1, 2):                                  # each run trained once, in its seed's process
            assert (root / f"{label}-s{s}" / "result.json").exists(), (label, s)
            # a finished run keeps its weights (later runs start from them), not its optimizer state
            kept = [p.name for p in (root / f"{label}-s{s}").rglob("*.safetensors")]
            assert "model.safetensors" in kept and "train_state.safetensors" not in kept, (label, s, kept)
    for s in (1, 2):
        assert (root / f"data-s{s}" / "build.json").exists()
        assert f"== {compare.PRESETS['instruct_smoke'][0][0]} seed {s}" in (root / f"seed-{s}.log").read_text()
    # the parent trained nothing itself: every result was there before it made the table
    assert "== seed 1: done" in out and "== seed 2: done" in out


def test_a_failing_seed_process_stops_the_comparison_with_its_log(tmp_path):
    # both seeds fail here, and whichever process ends first is the one reported: either is right
    with pytest.raises(SystemExit, match=r"seed [12] failed \(exit 1\)") as e:
        compare.main(["--preset", "instruct_smoke", "--seeds", "1,2", "--jobs", "2", "--start",
                      str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert "seed-" in str(e.value) and "missing: does not exist" in str(e.value)  # the log's end, shown


def test_the_comparisons_own_forwards_run_on_the_training_device(tmp_path, monkeypatch):
    """On a GPU machine (--device auto, CUDA there) the task's data build, the start's answers and
    each run's evaluation load their models on CUDA, as train.py's runs do, and the SJ batches meet
    the model on its device; never the CPU by default. Here the loads record the device they were
    asked for and load on the CPU, and 'auto' is resolved as a GPU machine resolves it."""
    torch.manual_seed(0)
    start = str(tmp_path / "start")
    save_model(Transformer(config_from_preset("tiny")), start, task.build_tokenizer())
    asked, real_load = [], compare.load

    def load(d, *args, device="cpu", **kw):
        asked.append(("load", device))
        return real_load(d, *args, device="cpu", **kw)
    built = []
    instruct = compare.get_task("instruct")
    real_build = instruct.build
    monkeypatch.setattr(instruct, "build", lambda *a, device="cpu", **kw: (built.append(device),
                                                                          real_build(*a, device="cpu", **kw))[1])
    monkeypatch.setattr(compare, "load", load)
    monkeypatch.setattr(compare, "resolve_device", lambda d: "cuda" if d == "auto" else d)
    # this machine's CUDA is make-believe: torch's deterministic mode for it would outlive the test
    monkeypatch.setattr(train, "set_deterministic", lambda cfg, device: False)
    batches = []
    real_sj = compare.sj_batches
    monkeypatch.setattr(compare, "sj_batches", lambda *a, **kw: (batches.append(kw.get("device")),
                                                                 real_sj(*a, **kw))[1])
    compare.main(["--preset", "instruct_smoke", "--seeds", "1", "--methods", "orpo", "--start", start,
                  "--n_test", "2", "--n_judge", "4", "--answer_tokens", "4", "--out", str(tmp_path / "out"),
                  "--", "--max_length", "512"])
    assert built == ["cuda"]
    assert asked and all(dev == "cuda" for _, dev in asked), asked   # the start's, then the run's
    assert [str(d) for d in batches] == ["cpu"]          # the model's own device (loaded on the CPU here)


def test_deterministic_algorithms_are_set_before_the_comparisons_first_forward(tmp_path, monkeypatch):
    """cuBLAS reads its workspace setting (CUBLAS_WORKSPACE_CONFIG, which train.py's --deterministic
    sets) when its handle is made, at the first matmul. The comparison's own forwards (the instruct
    data's samples, the start's greedy answers) ran before the first run's train() set it up, so
    on a GPU every run of a comparison trained on the handle they made (train.main sets it up first
    for its own 'before' table)."""
    torch.manual_seed(0)
    start = str(tmp_path / "start")
    save_model(Transformer(config_from_preset("tiny")), start, task.build_tokenizer())
    order, real_det, real_answers = [], train.set_deterministic, compare.greedy_answers
    monkeypatch.setattr(train, "set_deterministic", lambda *a: order.append("deterministic") or real_det(*a))
    monkeypatch.setattr(compare, "greedy_answers", lambda *a, **kw: order.append("forward")
                        or real_answers(*a, **kw))
    instruct = compare.get_task("instruct")
    real_build = instruct.build
    monkeypatch.setattr(instruct, "build", lambda *a, **kw: order.append("forward") or real_build(*a, **kw))
    compare.main(["--preset", "instruct_smoke", "--seeds", "1", "--methods", "orpo", "--start", start,
                  "--n_test", "2", "--answer_tokens", "4", "--out", str(tmp_path / "out"), "--",
                  "--max_length", "512", "--max_steps", "1"])
    assert order[0] == "deterministic" and "forward" in order, order


# -- each run is judged as the run judges ----------------------------------------------------------
def test_compare_judges_each_run_as_the_run_judges(tmp_path, monkeypatch):
    """experiments/compare.py's judge_acc and bestN use the run's own template, likelihood rule and
    principles, not a fixed 'compact' template."""
    from experiments import compare
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / onpolicy.PRINCIPLES_FILE).write_text(json.dumps(dict(PRINCIPLES[:2])))
    cfg = train.make_config(method="self_judge", judge_template="compact_principle", out_dir=str(tmp_path))
    j = compare.judging(cfg)
    assert (j["t"].name, j["principles"], j["likelihood"], j["combine"]) == \
        ("compact_principle", PRINCIPLES[:2], "vocab", "win_rate")
    cfg = train.make_config(method="osp", judge_template="compact_principle", principles="a:b",
                            out_dir=str(tmp_path))
    j = compare.judging(cfg)
    assert (j["principles"], j["likelihood"], j["combine"]) == ([("a", "b")], "pair", "mean")
    j = compare.judging(train.make_config(method="orpo"))
    assert (j["t"].name, j["principles"], j["likelihood"]) == ("compact", None, "vocab")
    seen = []

    def spy(model, tok, t, items, principles=None, batch_size=64, likelihood="vocab", combine="win_rate"):
        seen.append((t.name, principles, likelihood, combine))
        return torch.ones(len(items))
    monkeypatch.setattr(compare, "judge_pairs", spy)
    assert compare.label_judge_accuracy(None, None, cfg, n=4) == 1.0
    assert seen == [("compact_principle", [("a", "b")], "pair", "mean")]


def test_every_presets_on_policy_runs_judge_as_before_their_start_was_read(tmp_path):
    """An on-policy run takes the template and rule its start records (onpolicy.judging_defaults):
    every preset's on-policy run still judges with 'compact' and its method's paper's rule, as when
    that was all a run could take. OSP's runs from the JSFT start say OSP's rule themselves: JSFT
    records Self-Judge's."""
    want = {"self_judge": "vocab", "self_judge_offpolicy": "vocab", "osp": "pair"}
    for preset, runs in compare.PRESETS.items():
        flags = {label: fl for label, fl, _ in runs}
        for label, fl, _ in runs:
            method, argv = fl[fl.index("--method") + 1], list(fl)
            if method not in want:
                continue
            if "--init_from" in argv:                    # "{jsft}": that run's checkpoint, as it saves it
                i = argv.index("--init_from") + 1
                start = tmp_path / preset / argv[i].strip("{}") / "ckpt"
                start.mkdir(parents=True, exist_ok=True)
                saved = dataclasses.asdict(train.parse_config(flags[argv[i].strip("{}")]))
                (start / "state.json").write_text(json.dumps({"step": 1, "config": saved}))
                argv[i] = str(start)
            cfg = train.parse_config(argv)
            assert (cfg.judge_template, cfg.likelihood) == ("compact", want[method]), (preset, label)


def test_help_shows_the_presets_own_defaults(capsys, monkeypatch):
    """`--preset instruct_cpu --help` shows the defaults that preset runs with, not mo_orpo's."""
    with pytest.raises(SystemExit) as e:
        compare.main(["--preset", "instruct_cpu", "--help"])
    assert e.value.code == 0
    options = capsys.readouterr().out.split("\noptions:\n", 1)[1]
    blocks = {b.split()[0]: " ".join(b.split()) for b in re.split(r"\n(?=  -)", options)}
    for flag, value in compare.DEFAULTS["instruct_cpu"].items():
        assert f"(default: {value})" in blocks[f"--{flag}"], blocks[f"--{flag}"]



@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_label_the_preset_lacks_is_refused_with_the_presets_labels(jobs, tmp_path, monkeypatch, capsys):
    """--methods orpo,conjoind (a typo) ran orpo alone and left conjoined out of the table without a
    word. It is a usage error before anything runs, with --jobs too (the seeds' processes)."""
    def ran(*args, **kw):
        raise AssertionError("the comparison ran")
    monkeypatch.setattr(compare, "start_of", ran)
    monkeypatch.setattr(compare, "run_seeds_in_parallel", ran)
    with pytest.raises(SystemExit) as e:
        compare.main(["--preset", "mo_orpo", "--methods", "orpo,conjoind", "--seeds", "1,2",
                      "--jobs", jobs, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--methods" in err and "'conjoind'" in err, err
    assert ", ".join(label for label, _, _ in compare.PRESETS["mo_orpo"]) in err, err


@pytest.mark.parametrize("seeds", ["1,x", "1,,2", "", "1.5"])
def test_seeds_that_are_not_whole_numbers_are_a_usage_error(seeds, tmp_path, monkeypatch, capsys):
    """--seeds 1,x stopped with a ValueError's traceback from int(); it is a usage error naming the
    flag, before anything runs."""
    def ran(*args, **kw):
        raise AssertionError("the comparison ran")
    monkeypatch.setattr(compare, "start_of", ran)
    monkeypatch.setattr(compare, "run_seeds_in_parallel", ran)
    with pytest.raises(SystemExit) as e:
        compare.main(["--preset", "mo_orpo", "--seeds", seeds, "--jobs", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--seeds {seeds!r}" in err and "whole numbers" in err, err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_seed_named_twice_is_a_usage_error(jobs, tmp_path, monkeypatch, capsys):
    """--seeds 1,1 trained seed 1 twice (the second run over the first's directory) and counted it
    as two seeds: the table's mean was one run's and its spread an understatement of the seeds'."""
    def ran(*args, **kw):
        raise AssertionError("the comparison ran")
    monkeypatch.setattr(compare, "start_of", ran)
    monkeypatch.setattr(compare, "run_seeds_in_parallel", ran)
    with pytest.raises(SystemExit) as e:
        compare.main(["--preset", "mo_orpo", "--seeds", "1,2,1", "--jobs", jobs, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--seeds '1,2,1'" in err and "more than once" in err, err


# -- a comparison stopped part-way -----------------------------------------------------------------
def test_a_run_stopped_part_way_is_resumed_by_the_next_comparison_not_redone(tmp_path, monkeypatch, capsys):
    """Ctrl-C in a run prints train.py's --resume command; a comparison started again found the run
    without its result.json, deleted it and trained it again from step 0 (also the one resumed by that
    command, finished). Now it resumes a stopped run of the same settings, and evaluates a finished
    one: each ends with the weights of a run never stopped."""
    from safetensors.torch import load_file
    torch.manual_seed(0)
    start = str(tmp_path / "start")
    save_model(Transformer(config_from_preset("tiny")), start, task.build_tokenizer())

    def compare_run(out):
        compare.main(["--preset", "instruct_smoke", "--seeds", "1", "--methods", "orpo", "--start", start,
                      "--n_test", "2", "--answer_tokens", "4", "--out", str(tmp_path / out), "--",
                      "--max_length", "512", "--max_steps", "3"])
    compare_run("unbroken")
    real_train, calls = train.train, []

    def stopped_at_1(cfg, task=None, stop_at=None):
        calls.append(cfg.resume)
        real_train(cfg, task, stop_at=1)
        raise SystemExit(130)                                # as Ctrl-C: a checkpoint, then exit
    for finish_by_hand in (False, True):
        out = f"stopped{int(finish_by_hand)}"
        monkeypatch.setattr(train, "train", stopped_at_1)
        with pytest.raises(SystemExit):
            compare_run(out)
        run = tmp_path / out / "instruct_smoke" / "orpo-s1"
        if finish_by_hand:                                   # the command the stopped run printed
            monkeypatch.setattr(train, "train", real_train)
            train.main(["--out_dir", str(run), "--resume"])
        monkeypatch.setattr(train, "train", lambda cfg, task=None: calls.append(cfg.resume) or real_train(cfg, task))
        calls.clear()
        compare_run(out)
        assert calls == ([] if finish_by_hand else [True])  # finished: evaluated only; else resumed
        ours = load_file(str(run / "ckpt" / "model.safetensors"))
        theirs = load_file(str(tmp_path / "unbroken" / "instruct_smoke" / "orpo-s1" / "ckpt" / "model.safetensors"))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_each_seeds_log_is_written_as_its_lines_are_printed(tmp_path, monkeypatch):
    """A seed run in a process of its own (--jobs) printed to its log file block-buffered: the log of
    a run watched with `tail -f` stayed empty for minutes, and a killed seed lost its last lines."""
    envs = []

    class Done:
        returncode = 0

        def __init__(self, cmd, stdout=None, stderr=None, env=None):
            envs.append(env)

        def poll(self):
            return 0
    monkeypatch.setattr(compare.subprocess, "Popen", Done)
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)   # as on most machines (this one sets it)
    compare.run_seeds_in_parallel(["--preset", "mo_orpo"], [1, 2], 2, str(tmp_path))
    assert len(envs) == 2 and all(e.get("PYTHONUNBUFFERED") == "1" for e in envs)


def test_a_finished_run_found_again_drops_the_optimizer_state_it_still_holds(tmp_path):
    # a run finished before runs dropped it (or stopped between result.json and the drop) kept ~1 GB
    # of AdamW state for good: the next comparison returns its result and drops it then
    run = tmp_path / "orpo-s1"
    (run / "ckpt").mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"label": "orpo", "seed": 1}))
    for name in ("train_state.safetensors", "model.safetensors"):
        (run / "ckpt" / name).write_bytes(b"x")
    got = compare.run_one(str(tmp_path), "orpo", [], [], 1, None, None, None)
    assert got == {"label": "orpo", "seed": 1}
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["model.safetensors"]
