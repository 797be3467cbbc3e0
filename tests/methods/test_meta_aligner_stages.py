"""MetaAligner's stages and corrector (nanoalign/meta_aligner.py): one stage is one run, 'all' chains
warm-up, equal and preference runs; each stage's rows follow the run's seed; the corrector is greedy
decoding of the edit prompt, 48 new tokens in batches of 64 by default."""
import dataclasses
import json
import os
import shlex
import shutil

import pytest
import torch
from safetensors.torch import load_file

import train
from model.files import CheckpointError
from nanoalign.testing import tiny_model
from nanoalign.meta_aligner import run_stages
from tests.helpers import meta_row, method_config, run_cfg


# -- 'all' chains three runs -----------------------------------------------------------------------
def test_stage_all_chains_three_runs(tmp_path):
    from nanoalign.meta_aligner import run_stages
    from tests.helpers import run_cfg
    cfg = dataclasses.replace(run_cfg(tmp_path, method="meta_aligner", max_steps=2, val_data="",
                                      n_train=64, max_length=384), meta_stage="all")
    final = run_stages(cfg, train.train)
    for st in ("warmup", "equal", "preference"):
        saved = json.load(open(tmp_path / "run" / st / "ckpt" / "state.json"))["config"]
        assert saved["meta_stage"] == st
    assert final.endswith("preference/ckpt")
    assert json.load(open(tmp_path / "run" / "equal" / "ckpt" / "state.json"))["config"]["init_from"] \
        .endswith("warmup/ckpt")


def meta_chain(d, **kw):
    return dataclasses.replace(run_cfg(d, method="meta_aligner", max_steps=3, val_data="", n_train=32,
                                       max_length=384, batch_size=2, grad_accum=1, **kw), meta_stage="all")


def same_stage_weights(a, b):
    for st in ("warmup", "equal", "preference"):
        ours, theirs = (load_file(str(d / "run" / st / "ckpt" / "model.safetensors")) for d in (a, b))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), st


def stopped_in_equal(c):
    """A chain's train_fn that stops in stage 'equal' as Ctrl-C does: a checkpoint, then exit 130."""
    if c.meta_stage != "equal":
        return train.train(c)
    train.train(c, stop_at=1)
    raise SystemExit(130)


def test_a_stopped_chain_resumes_from_its_directory_to_the_unbroken_chains_weights(tmp_path, capsys):
    """Ctrl-C in stage 'equal' of --meta_stage all: `--out_dir DIR --resume`, as the stopped run
    prints, continues that stage and runs the next; the chain ends with the weights of one never
    stopped, and a second resume has nothing to do."""
    run_stages(meta_chain(tmp_path / "a"), train.train)

    with pytest.raises(SystemExit):
        run_stages(meta_chain(tmp_path / "b"), stopped_in_equal)
    b = tmp_path / "b" / "run"
    assert f"python train.py --out_dir {b} --resume" in capsys.readouterr().out
    cfg = train.parse_config(["--out_dir", str(b), "--resume"])
    assert cfg.method == "meta_aligner" and cfg.meta_stage == "all" and cfg.resume
    assert run_stages(cfg, train.train) == str(b / "preference" / "ckpt")
    out = capsys.readouterr().out
    assert "stage 'warmup'" in out and "done at step 1, skipped" in out and "(resumed at step 1)" in out
    same_stage_weights(tmp_path / "a", tmp_path / "b")
    with pytest.raises(CheckpointError, match="nothing to resume"):
        run_stages(cfg, train.train)


def test_a_chain_stopped_before_a_stages_first_step_prints_only_the_chains_resume_command(tmp_path, capsys):
    """Ctrl-C while a stage loads its model or reads its data (or a second Ctrl-C, which aborts a
    step) stops the stage before it prints a resume command of its own; the chain still said 'that
    resumes stage 'equal' alone', of a command never printed. It prints the chain's alone."""
    def loading_equal(c):
        if c.meta_stage != "equal":
            return train.train(c)
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_stages(meta_chain(tmp_path), loading_equal)
    out = capsys.readouterr().out
    assert "that resumes" not in out
    assert out.endswith(f"to resume the chain (this stage, then the rest):\n"
                        f"  python train.py --out_dir {tmp_path / 'run'} --resume\n")


def test_a_stopped_chain_copied_elsewhere_resumes_in_the_copy(tmp_path):
    """A run directory may be copied or moved and resumed there (config.resume_config); a chain's
    stages start from checkpoints inside it, DIR/warmup/ckpt, which move with it. The copy's 'equal'
    once refused to resume: its init_from 'was' the original's DIR/warmup/ckpt."""
    run_stages(meta_chain(tmp_path / "a"), train.train)

    with pytest.raises(SystemExit):
        run_stages(meta_chain(tmp_path / "b"), stopped_in_equal)
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    shutil.rmtree(tmp_path / "b")                          # moved: the original is gone
    cfg = train.parse_config(["--out_dir", str(tmp_path / "c" / "run"), "--resume"])
    assert run_stages(cfg, train.train) == str(tmp_path / "c" / "run" / "preference" / "ckpt")
    same_stage_weights(tmp_path / "a", tmp_path / "c")


def test_a_stopped_chain_resumed_from_another_directory_reads_its_rows_from_the_one_it_started_in(
        tmp_path, monkeypatch):
    """A chain's config is kept in its run_config.json, not a checkpoint: it records the directory
    the chain started in too, so that its relative --train_data is found from another directory."""
    objectives = {"correct": "the sum is right", "polite": "says please", "brief": "short"}
    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}, please.", "rejected": "no",
             "labels": {"correct": "1", "polite": "equal", "brief": "2"}, "objectives": objectives}
            for i in range(4)]
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(proj)
    run_stages(dataclasses.replace(meta_chain(proj / "a", train_data="m.jsonl"), out_dir="a/run"),
               train.train)
    with pytest.raises(SystemExit):
        run_stages(dataclasses.replace(meta_chain(proj / "b", train_data="m.jsonl"), out_dir="b/run"),
                   stopped_in_equal)
    monkeypatch.chdir(tmp_path)
    cfg = train.parse_config(["--out_dir", str(proj / "b" / "run"), "--resume"])
    assert run_stages(cfg, train.train) == str(proj / "b" / "run" / "preference" / "ckpt")
    same_stage_weights(proj / "a", proj / "b")


def test_a_resumed_chain_replaces_the_stages_an_older_chain_left_in_its_directory(tmp_path):
    """A chain killed before its first checkpoint, in a directory where an older chain (another seed)
    finished every stage: its resume must train all three, not take the older ones as its own."""
    run_stages(meta_chain(tmp_path / "a"), train.train)
    run_stages(meta_chain(tmp_path / "b", seed=4), train.train)

    def killed(c):
        raise SystemExit(137)
    with pytest.raises(SystemExit):
        run_stages(meta_chain(tmp_path / "b"), killed)
    run_stages(train.parse_config(["--out_dir", str(tmp_path / "b" / "run"), "--resume"]), train.train)
    same_stage_weights(tmp_path / "a", tmp_path / "b")


def trained_into(log):
    """A chain's train_fn that notes the stages it trains."""
    def train_fn(c):
        log.append(c.meta_stage)
        return train.train(c)
    return train_fn


def finished_equal_then(stop):
    """A chain's train_fn whose stage 'equal' trains to its last step and is then stopped before it
    returns: Ctrl-C in that last step (a complete checkpoint, then exit 130), or a second Ctrl-C in
    its end-of-run save just after the checkpoint was renamed into place."""
    def train_fn(c):
        if c.meta_stage != "equal":
            return train.train(c)
        train.train(c, stop_at=c.max_steps)
        raise stop
    return train_fn


@pytest.mark.parametrize("stop", [SystemExit(130), KeyboardInterrupt()], ids=["last_step", "final_save"])
def test_a_chain_stopped_after_a_stage_finished_resumes_without_training_it_again(tmp_path, capsys, stop):
    """A stage stopped once its last checkpoint was in place is finished: the chain's resume used to
    train it again from scratch (the right weights, its time lost), as it recorded a stage as done
    only when its run returned. It takes it now, and runs the rest."""
    run_stages(meta_chain(tmp_path / "a"), train.train)

    with pytest.raises(type(stop)):
        run_stages(meta_chain(tmp_path / "b"), finished_equal_then(stop))
    assert "stage 'equal' is complete; to resume the chain" in capsys.readouterr().out
    b, trained = tmp_path / "b" / "run", []
    cfg = train.parse_config(["--out_dir", str(b), "--resume"])
    assert run_stages(cfg, trained_into(trained)) == str(b / "preference" / "ckpt")
    assert trained == ["preference"]
    assert f"stage 'equal' -> {b / 'equal'}: done at step 3, skipped" in capsys.readouterr().out
    same_stage_weights(tmp_path / "a", tmp_path / "b")
    assert json.load(open(b / "run_config.json"))["stages_done"] == ["warmup", "equal", "preference"]


def chain_in(out, resume=False, stages_done=(), steps=None):
    """A chain's config (--max_steps 10: the warm-up's 2) in `out`, where the stages hold checkpoints
    at `steps` ({stage: step}; a state.json alone, all the chain reads of one) and, to resume, a
    record of the stages it finished."""
    for st, step in (steps or {}).items():
        os.makedirs(out / st / "ckpt")
        (out / st / "ckpt" / "state.json").write_text(json.dumps({"step": step}))
    if resume:
        (out / "run_config.json").write_text(json.dumps({"config": {}, "stages_done": list(stages_done)}))
    return train.make_config(method="meta_aligner", meta_stage="all", out_dir=str(out), max_steps=10,
                             resume=resume)


@pytest.mark.parametrize("resume, stages_done, steps, want", [
    # a new chain trains every stage from its start, whatever an older one left in its directory
    (False, [], {"warmup": 1, "equal": 5}, {"warmup": False, "equal": False, "preference": False}),
    # stopped at step 1 of 'equal': the resume continues 'equal', and the stage after it starts afresh
    (True, ["warmup"], {"warmup": 2, "equal": 1, "preference": 10}, {"equal": True, "preference": False}),
    # a complete 'warmup' this chain did not record (an older chain's) is trained again, from its start
    (True, [], {"warmup": 2}, {"warmup": False, "equal": False, "preference": False}),
], ids=["new_chain", "stopped_in_equal", "older_warmup"])
def test_a_chain_resumes_only_the_stage_it_was_stopped_in(tmp_path, capsys, resume, stages_done, steps, want):
    """Which stages train, and which of them resume from their checkpoint (and say so): only a stage
    of this chain stopped before its last step. Resuming a stage trained from scratch gives the same
    weights as training it afresh on this tiny chain, so the weights alone do not show it."""
    seen = []
    run_stages(chain_in(tmp_path / "o", resume, stages_done, steps), seen.append)
    assert {c.meta_stage: c.resume for c in seen} == want
    said = {line.split("'")[1]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith("== MetaAligner stage")}
    for st, resumed in want.items():
        assert said[st].endswith(f" (resumed at step {steps[st]})") if resumed else "resumed" not in said[st]


@pytest.mark.parametrize("stop, complete, says", [
    (SystemExit(130), False, "that resumes stage 'equal' alone"),   # Ctrl-C before its last checkpoint
    (KeyboardInterrupt(), True, "stage 'equal' is complete"),       # a second Ctrl-C in its final save
    (SystemExit(143), True, "stage 'equal' is complete"),           # SIGTERM in its last step
    (SystemExit(2), False, None),                                   # an error: nothing to resume
    (SystemExit("error: --resume: no such run"), False, None),
], ids=["stopped", "final_save", "last_step", "exit_2", "error_message"])
def test_a_stage_stopped_by_a_signal_prints_the_chains_resume_command(tmp_path, capsys, stop, complete, says):
    """A stage stopped by Ctrl-C or SIGTERM (exit 128 + the signal) prints how to resume the chain
    (its directory quoted: here it holds a space), and is recorded as finished if its last checkpoint
    was in place; a stage that fails (an exit code below 128, or an error message) offers no resume.
    Either way the chain stops with the stage's own exception."""
    out = tmp_path / "my run"

    def train_fn(c):
        if c.meta_stage == "equal":
            if complete:
                os.makedirs(os.path.join(c.out_dir, "ckpt"))
                with open(os.path.join(c.out_dir, "ckpt", "state.json"), "w") as f:
                    json.dump({"step": c.max_steps}, f)
            raise stop
    with pytest.raises(type(stop)) as e:
        run_stages(chain_in(out), train_fn)
    assert e.value is stop
    printed = capsys.readouterr().out.splitlines()
    if says:
        assert says in printed[-2]
        assert shlex.split(printed[-1]) == ["python", "train.py", "--out_dir", str(out), "--resume"]
    else:
        assert not any("--resume" in line for line in printed)
    assert json.load(open(out / "run_config.json"))["stages_done"] == ["warmup"] + ["equal"] * complete


def test_a_chain_stopped_in_its_last_stages_last_step_does_not_offer_a_resume(tmp_path, capsys):
    """Ctrl-C (or SIGTERM) in the last step of stage 'preference', once its checkpoint is in place:
    the stage is finished, and so is the chain. It printed 'to resume the chain (the stages after
    it)' with a --resume command, which then stopped with "has finished all its stages: nothing to
    resume": there are no stages after it. It says the chain is complete and where its aligner is."""
    out = tmp_path / "o"

    def last_step_stopped(c):             # each stage's checkpoint at its last step (all the chain reads)
        os.makedirs(os.path.join(c.out_dir, "ckpt"))
        with open(os.path.join(c.out_dir, "ckpt", "state.json"), "w") as f:
            json.dump({"step": c.max_steps}, f)
        if c.meta_stage == "preference":
            raise SystemExit(130)
    with pytest.raises(SystemExit):
        run_stages(chain_in(out), last_step_stopped)
    printed = capsys.readouterr().out
    assert json.load(open(out / "run_config.json"))["stages_done"] == ["warmup", "equal", "preference"]
    for line in printed.splitlines():       # every resume command it prints has something to resume
        if "--resume" in line:
            run_stages(train.parse_config(shlex.split(line)[2:]), lambda c: None)
    assert str(out / "preference" / "ckpt") in printed


# -- one stage is one run; the corrector is greedy decoding ----------------------------------------
def test_meta_aligner_one_stage_is_one_run(tmp_path):
    import train
    from nanoalign.meta_aligner import run_stages
    seen = []
    cfg = train.make_config(method="meta_aligner", meta_stage="equal", out_dir=str(tmp_path / "o"))
    assert run_stages(cfg, seen.append) == str(tmp_path / "o" / "ckpt")
    assert seen == [cfg]


def test_meta_aligner_all_chains_warmup_equal_preference(tmp_path, capsys):
    import train
    from nanoalign.meta_aligner import run_stages
    seen = []
    out = tmp_path / "o"
    for steps, warm in ((100, 20), (4, 1), (9, 1), (10, 2)):
        seen.clear()
        cfg = train.make_config(method="meta_aligner", meta_stage="all", out_dir=str(out), init_from="start",
                                max_steps=steps, final_eval=True)
        assert run_stages(cfg, seen.append) == str(out / "preference" / "ckpt")
        assert [c.meta_stage for c in seen] == ["warmup", "equal", "preference"]
        assert [c.out_dir for c in seen] == [str(out / s) for s in ("warmup", "equal", "preference")]
        assert [c.init_from for c in seen] == ["start", str(out / "warmup" / "ckpt"), str(out / "equal" / "ckpt")]
        assert [c.max_steps for c in seen] == [warm, steps, steps]
        assert all(c.final_eval is False for c in seen)                    # a bool option stays a bool
        assert cfg.meta_stage == "all" and cfg.out_dir == str(out)          # the caller's config is kept
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [f"== MetaAligner stage '{s}' -> {out / s}" for s in ("warmup", "equal", "preference")]


def test_meta_aligner_correct_is_greedy_decoding_of_the_edit_prompt():
    from model.generate import generate
    from nanoalign.meta_aligner import correct, template
    from nanoalign.testing import tiny_model
    from tests.helpers import byte_tokenizer
    tok = byte_tokenizer()
    model = tiny_model(1, vocab_size=264, max_seq_len=256, init_std=0.3)
    qs = ["What is 1 + 1?", [{"role": "user", "content": "And 2 + 2?"}], "Hi"]
    ys = ["3", "four", "hello"]
    objs = [("correct", "the sum is right")]
    got = correct(model, tok, qs, ys, objs, max_new_tokens=6, batch_size=2)
    assert len(got) == 3
    for q, y, g in zip(qs, ys, got):
        ids = tok.encode_prompt(template(q, y, objs, "better"))
        one = generate(model, [ids], 6, model.cfg.eos_ids + [tok.eos_id], temperature=0, pad_id=tok.pad_id)
        assert g == tok.decode(one[0]).strip()
    assert correct(model, tok, qs, ys, objs, max_new_tokens=6) == got        # batching changes nothing
    assert correct(model, tok, [], [], objs) == []


# -- each stage's rows follow the run's seed; the corrector's defaults -----------------------------
def objective_order(prompt):
    return prompt.split("objectives: ")[1].split(" | Question")[0]


def test_stage_rows_shuffle_objectives_with_the_run_seed():
    from nanoalign.meta_aligner import build_sets, stage_rows
    rows = [meta_row({n: "1" for n in "abcdef"})]              # six winning objectives: 720 orders
    orders = set()
    for seed in range(6):
        cfg = method_config("meta_aligner", meta_stage="preference", seed=seed)
        got = stage_rows(rows, cfg, "train")
        assert got == build_sets(rows, seed)[0]                # Algorithm 1 with the run's seed
        assert got == stage_rows(rows, cfg, "train")           # the same seed, the same order
        orders.add(objective_order(got[0]["prompt"]))
    assert len(orders) > 1                                     # the seed decides the order


def test_warmup_subset_is_a_function_of_the_seed():
    from nanoalign.meta_aligner import stage_rows
    rows = [meta_row({"a": "equal"}, y1=f"g{i}", y2=f"b{i}") for i in range(40)]
    picks = {}
    for seed in (0, 1):
        cfg = method_config("meta_aligner", meta_stage="warmup", seed=seed, batch_size=4)
        first, again = stage_rows(rows, cfg, "train"), stage_rows(rows, cfg, "train")
        assert first == again and len(first) == 4             # max(batch_size, 10% of 40)
        picks[seed] = [w["input"] for w in first]
    assert picks[0] != picks[1]


class FakeTok:
    """What `correct` uses of a tokenizer; no end-of-turn id, so nothing stops a generation early."""
    stop_ids = []

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def encode_prompt(self, text):
        return [3 + len(text) % 50, 4, 5 + len(text) % 7]

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_correct_defaults_to_48_new_tokens_in_batches_of_64(monkeypatch):
    from nanoalign import meta_aligner
    sizes, real = [], meta_aligner.generate

    def spy(model, ids, *a, **kw):
        sizes.append(len(ids))
        return real(model, ids, *a, **kw)

    monkeypatch.setattr(meta_aligner, "generate", spy)
    n = 65
    out = meta_aligner.correct(tiny_model(seed=4, max_seq_len=128), FakeTok(pad_id=0),
                               [f"q{i}" for i in range(n)], [f"y{i}" for i in range(n)], [("c", "right")])
    assert sizes == [64, 1]
    assert len(out) == n and all(len(o.split()) == 48 for o in out)


def test_correct_pads_with_0_when_the_tokenizer_has_no_pad_id():
    from nanoalign.meta_aligner import correct
    out = correct(tiny_model(seed=5, max_seq_len=64), FakeTok(pad_id=None), ["What is 1 + 1?", "Hi"],
                  ["3", "hello there"], [("c", "right")], max_new_tokens=3)
    assert len(out) == 2 and all(len(o.split()) == 3 for o in out)


def test_a_chain_ends_by_printing_a_sample_command_that_corrects_with_its_last_stage(tmp_path, monkeypatch,
                                                                                       capsys):
    """It once printed `--init_from DIR/ckpt`, a directory the chain never writes, and would have
    sampled the aligner as a policy; the aligner corrects the answers of a policy, here the start."""
    monkeypatch.chdir(tmp_path)                            # the warm-up's cache is out/_warm, under the cwd
    out = tmp_path / "m"
    train.main(["--method", "meta_aligner", "--n_warm", "16", "--warm_steps", "2", "--max_steps", "2",
                "--n_train", "16", "--batch_size", "2", "--val_data", "", "--final_eval", "false",
                "--out_dir", str(out)])
    line = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert line[:2] == ["python", "sample.py"]
    flags = dict(zip(line[2::2], line[3::2]))
    assert flags["--aligner"] == str(out / "preference" / "ckpt") and os.path.isdir(flags["--aligner"])
    assert os.path.isdir(flags["--init_from"]) and "_warm" in flags["--init_from"]


@pytest.mark.parametrize("stage", ["all", "warmup", "equal", "preference"])
@pytest.mark.parametrize("start", ["a directory", "scratch"])
def test_the_sample_command_takes_the_runs_start_as_the_policy_only_where_it_is_one(tmp_path, stage, start):
    """The aligner corrects a policy's answers. The start of the chain or of the warm-up stage is the
    policy the run began from; a later stage starts from an aligner, and 'scratch' was never saved, so
    there the command leaves the policy to the user: POLICY_DIR."""
    from nanoalign.meta_aligner import sample_flags
    init = "scratch"
    if start == "a directory":
        init = str(tmp_path / "my start")
        os.makedirs(init)
    cfg = method_config("meta_aligner", meta_stage=stage, init_from=init)
    flags = shlex.split(sample_flags(cfg, str(tmp_path / "my run" / "ckpt")))
    policy = init if stage in ("all", "warmup") and start == "a directory" else "POLICY_DIR"
    assert flags == ["--init_from", policy, "--aligner", str(tmp_path / "my run" / "ckpt")]


def test_a_chain_resumes_as_a_chain_in_a_directory_where_one_stage_ran_before(tmp_path):
    """Both runs' default out_dir is out/meta_aligner: a --meta_stage warmup run there leaves DIR/ckpt,
    which a chain never writes nor replaces. The chain's resume command once resumed that older single
    stage (DIR/ckpt/state.json always won over DIR/run_config.json); the newer run in DIR must."""
    d = tmp_path / "b" / "run"
    train.train(dataclasses.replace(meta_chain(tmp_path / "b"), meta_stage="warmup"))

    with pytest.raises(SystemExit):
        run_stages(meta_chain(tmp_path / "b"), stopped_in_equal)
    cfg = train.parse_config(["--out_dir", str(d), "--resume"])
    assert cfg.meta_stage == "all" and run_stages(cfg, train.train) == str(d / "preference" / "ckpt")
    # and the other way round: a single stage stopped in the chain's directory resumes as itself
    train.train(dataclasses.replace(meta_chain(tmp_path / "b"), meta_stage="warmup"), stop_at=1)
    assert train.parse_config(["--out_dir", str(d), "--resume"]).meta_stage == "warmup"


def test_the_printed_sample_command_corrects_towards_the_objectives_the_aligner_trained_on(tmp_path, capsys,
                                                                                         monkeypatch):
    """sample.py without --objectives corrected towards the arith task's three with the arith
    descriptions ('correct': the true sum), whatever the aligner trained on. Run through sample.py as
    printed, the command now corrects towards the run's objectives, kept with its checkpoint (its
    held-out one left out: naming that is the zero-shot test), descriptions with commas intact."""
    import shlex
    import sample
    from model.checkpoint import save_model
    from nanoalign.tasks import arith
    tok = arith.build_tokenizer()
    save_model(tiny_model(vocab_size=tok.vocab_size, max_seq_len=512), str(tmp_path / "policy"), tok)
    objectives = {"correct": "the answer is right, as checked: twice", "polite": "says please",
                  "brief": "no more than five words"}
    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}, please.", "rejected": "no",
             "labels": {"correct": "1", "polite": "equal", "brief": "2"}, "objectives": objectives}
            for i in range(4)]
    data = tmp_path / "pref.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train.main(["--method", "meta_aligner", "--meta_stage", "warmup", "--init_from", str(tmp_path / "policy"),
                "--train_data", str(data), "--val_data", "", "--final_eval", "false", "--max_steps", "1",
                "--batch_size", "2", "--meta_holdout", "brief", "--out_dir", str(tmp_path / "my run")])
    argv = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert argv[:2] == ["python", "sample.py"]
    got = {}

    def spy_correct(aligner, atok, prompts, answers, objs, max_new_tokens, batch_size):
        got["objectives"] = objs
        return ["fixed"] * len(answers)
    monkeypatch.setattr(sample, "correct", spy_correct)
    sample.main(argv[2:] + ["--device", "cpu", "--max_new_tokens", "2"])
    assert dict(got["objectives"]) == {k: v for k, v in objectives.items() if k != "brief"}
