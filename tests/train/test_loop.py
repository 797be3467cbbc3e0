"""The training loop (train.py): gradient accumulation equals one big batch, non-finite losses stop the
run, a bad output directory is one line, a method registered anywhere (a toy one in this file, one
with an on-policy round too) trains through it and a loss must be one number, own data is validated
on its own, and the log explains itself."""
import dataclasses
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass

import pytest
import torch

import train
from model.checkpoint import CheckpointError
from nanoalign import REGISTRY, onpolicy
from nanoalign.common import Method, batch_logps, frozen_copy, option, register
from nanoalign.checkpoint import saved_step
from nanoalign.data import DataError, make_batch
from nanoalign.tasks import arith as task
from tests.helpers import FIX, _short_run, grads_of, one_thread, own_options, run_cfg, small_model


def concatenation(batches, kind, pad_id):
    """One batch of the examples of `batches`, in order: what N micro-batches stand for. What a
    rollout adds beside the examples (OSP's soft targets "p") is concatenated too, and the units are
    the micro-batches' (OSP's n_examples counts prompts, not the pairs its batch holds)."""
    one = make_batch([e for b in batches for e in b["examples"]], kind, pad_id)
    for k in batches[0].keys() - one.keys():
        one[k] = torch.cat([b[k] for b in batches])
    one["n_examples"] = sum(b["n_examples"] for b in batches)
    return one


@pytest.mark.parametrize("method", list(REGISTRY))
def test_grad_accumulation_equals_one_big_batch(method):
    """Every method's promise, as the loop keeps it (train.accumulate_gradients): 4 micro-batches of 2
    give the gradient, loss and metrics of one batch of their 8 examples. The loop divides each
    micro-batch's loss by the units of the whole step, so a loss that is a mean where it should be
    a sum trains each micro-batch at the wrong weight, and a metric is weighted by the units the
    method declares (JSFT's nll_per_token by tokens). The built-in task's rows, read and prepared
    as the loop reads them (MO-ORPO's SJ twin beside each pair); an on-policy method's micro-batches
    are its own rollouts of 2 prompts each, and the one batch their pairs together."""
    m, tok = REGISTRY[method], task.build_tokenizer()
    cfg = train.make_config(method=method, n_train=8, seed=0, **own_options(method, gen_max_tokens=4,
                                                                            osp_k=4))
    with one_thread():
        model = small_model()
        run = train.Run(tok=tok, task=task, ref=frozen_copy(small_model(1)) if m.needs_ref else None)
        if m.setup:
            m.setup(run, cfg, "cpu")
        ex = train.load_split(cfg, m, task, "train", run)[:8]
        micro = [make_batch(ex[i:i + 2], m.eats, tok.pad_id) for i in range(0, 8, 2)]
        if m.rollout:
            torch.manual_seed(0)
            micro, _ = train.rollout(model, m, micro, run, cfg)
        kind = "pref" if "chosen" in micro[0]["examples"][0] else m.eats   # a rollout's: pairs (RAFT: sft)
        if method == "sft":       # micro-batches of unequal token counts: the per-token weights matter
            assert len({b["n_tokens"] for b in micro}) > 1
        loss_one, mets_one = train.accumulate_gradients(model, m, [concatenation(micro, kind, tok.pad_id)],
                                                        run, cfg)
        one = grads_of(model)
        model.zero_grad()
        loss_acc, mets_acc = train.accumulate_gradients(model, m, micro, run, cfg)
    scale = max(g.abs().max().item() for g in one)
    assert scale > 1e-4                                           # a gradient to compare
    for a, b in zip(one, grads_of(model)):       # float32 sums in another order: IPO's are ~50x SFT's
        assert (a - b).abs().max().item() <= 1e-6 * max(1.0, scale)
    # the logged numbers too: SFT's nll_per_token is per token of the step, not a mean of ratios
    assert loss_acc == pytest.approx(loss_one, rel=1e-6)
    assert mets_acc.keys() == mets_one.keys()
    for k in mets_one:
        if not k.endswith("_std"):    # OSP's spreads: each micro-batch's, not a mean (left as logged)
            assert mets_acc[k] == pytest.approx(mets_one[k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_out_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys, resume):
    f = tmp_path / "taken.txt"
    f.write_text("not a run")
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--method", "sft", "--out_dir", str(f)] + resume)
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: --out_dir {f} exists and is not a directory\n"
    assert f.read_text() == "not a run"


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real = REGISTRY["orpo"].loss
    calls = {"n": 0}

    def poisoned(model, batch, run, cfg):
        calls["n"] += 1
        loss, m = real(model, batch, run, cfg)
        return (loss * float("nan") if calls["n"] > 6 else loss), m   # step 4 (2 micro-batches/step)
    monkeypatch.setattr(REGISTRY["orpo"], "loss", poisoned)
    with pytest.raises(SystemExit, match="non-finite") as e:
        train.train(run_cfg(tmp_path, ckpt_every=2, eval_every=0))
    st = json.load(open(tmp_path / "run" / "ckpt" / "state.json"))
    assert st["step"] == 2 and "last good checkpoint (step 2) is intact" in str(e.value)
    calls["n"] = 0            # a new run in the same place, poisoned before its first checkpoint
    with pytest.raises(SystemExit, match="non-finite") as e:
        train.train(run_cfg(tmp_path, ckpt_every=5, eval_every=0))
    assert "this run wrote no checkpoint" in str(e.value)        # not the earlier run's, as its own


@pytest.mark.parametrize("method, kw, flag", [("orpo", {"max_length": 513}, "--max_length 513"),
                                              ("scalarization", {"sj_max_length": 600}, "--sj_max_length 600")])
def test_a_length_limit_beyond_the_models_context_is_refused_before_any_step(tmp_path, method, kw, flag):
    """The tiny preset's context is 512: a longer limit once ran until a long row came, then crashed."""
    with pytest.raises(CheckpointError, match=f"^{flag} is longer than the model's context \\(512 tokens"):
        train.train(run_cfg(tmp_path, method=method, **kw))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_out_dir_that_cannot_be_made_is_one_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match=r"--out_dir .*afile/sub: cannot create it \(Not a directory\)"):
        train.train(run_cfg(tmp_path, out_dir=str(tmp_path / "afile" / "sub")))


def test_a_new_run_in_an_earlier_runs_directory_says_so_and_starts_its_own_metrics(tmp_path, capsys):
    """The note names --resume only where it would have continued the earlier run (the same method,
    short of this run's --max_steps): it said so of a finished run and of another method's. And it
    comes once the run is sure to start: a bad data file replaced nothing, yet the note said it did."""
    train.train(run_cfg(tmp_path, max_steps=3, eval_every=0))
    assert "holds an earlier run" not in capsys.readouterr().out
    train.train(run_cfg(tmp_path, max_steps=2, eval_every=0))
    out = capsys.readouterr().out
    assert f"note: {tmp_path / 'run'} holds an earlier run (orpo, step 3); this run replaces it and its " \
           f"metrics.jsonl\n" in out
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(r["step"], r["split"]) for r in recs] == [(1, "train"), (2, "train"), (2, "val"), (2, "end")]
    train.train(run_cfg(tmp_path, max_steps=4, eval_every=0))       # step 2 of the same method: resumable
    assert "(orpo, step 2); this run replaces it and its metrics.jsonl (--resume would have continued it)" \
        in capsys.readouterr().out
    train.train(run_cfg(tmp_path, method="dpo", max_steps=6, eval_every=0))     # another method's run
    out = capsys.readouterr().out
    assert "(orpo, step 4); this run replaces it and its metrics.jsonl\n" in out and "--resume" not in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError):
        train.train(run_cfg(tmp_path, method="dpo", max_steps=8, eval_every=0, train_data=str(bad)))
    assert "holds an earlier run" not in capsys.readouterr().out
    assert saved_step(str(tmp_path / "run" / "ckpt")) == 6


# -- a method that exists only in a test file trains through train.py ------------------------------
@dataclass
class ToyOptions:
    toy_weight: float = option(0.5, "scale of the toy loss", minimum=0.0)


SEEN = []


def toy_loss(model, batch, run, cfg):
    SEEN.append(cfg.toy_weight)
    lp = batch_logps(model, batch, "sum")
    return -cfg.toy_weight * lp.sum(), {"toy": float(cfg.toy_weight)}


@pytest.fixture
def toy_method():
    register(Method(name="toy_sft", reads="sft", eats="sft", unit="n_tokens", loss=toy_loss,
                    help="a toy: scaled SFT", options=ToyOptions, metrics={"toy": "the toy weight"}))
    yield REGISTRY["toy_sft"]
    del REGISTRY["toy_sft"]


def test_a_method_registered_in_a_test_file_trains_through_the_cli(toy_method, tmp_path, capsys):
    argv = ["--method", "toy_sft", "--toy_weight", "0.25", "--init_from", "scratch", "--max_steps", "2",
            "--batch_size", "4", "--n_train", "16", "--out_dir", str(tmp_path), "--final_eval", "false",
            "--log_every", "1", "--val_data", ""]
    SEEN.clear()
    train.main(argv)
    out = capsys.readouterr().out
    assert SEEN == [0.25, 0.25]                         # its own option reached its loss, twice
    assert "toy = the toy weight" in out                 # its metric is explained in the legend
    assert os.path.exists(tmp_path / "ckpt" / "state.json")
    # its help lists its option; another method's help does not
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "toy_sft", "--help"])
    assert "--toy_weight" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "sft", "--help"])
    assert "--toy_weight" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:                 # and validates it from the declaration
        train.parse_config(["--method", "toy_sft", "--toy_weight", "-1"])
    assert e.value.code == 2 and "--toy_weight must be >= 0.0" in capsys.readouterr().err


# -- a method with an on-policy round, also only in this file ------------------------------------
CALLS = []


def toy_rollout(model, batch, run, cfg):
    """Greedy-free toy round: each prompt's 'sample' is the prompt's last token, paired against the
    first; recorded with whether autograd was on."""
    CALLS.append(("rollout", torch.is_grad_enabled(), model.training))
    prompts = batch["prompts"]
    wins, losses = [[p[-1]] for p in prompts], [[p[0]] for p in prompts]
    pairs = onpolicy.pair_batch(prompts, wins, losses, run.tok.pad_id, model.lm_head.weight.device)
    return pairs, {"toy_rolled": float(len(prompts))}


def toy_pair_loss(model, batch, run, cfg):
    CALLS.append(("loss", torch.is_grad_enabled(), batch["n_examples"]))
    lp = batch_logps(model, batch, "sum")
    B = batch["n_examples"]
    return -(lp[:B] - lp[B:]).sum(), {}


@pytest.fixture
def toy_rollout_method():
    register(Method(name="toy_onpolicy", reads="prompt", eats="prompt", unit="n_examples",
                    rollout=toy_rollout, loss=toy_pair_loss, help="a toy with a rollout"))
    yield REGISTRY["toy_onpolicy"]
    del REGISTRY["toy_onpolicy"]


def test_a_method_with_a_rollout_trains_through_main_rollout_first_and_without_autograd(
        toy_rollout_method, tmp_path, capsys):
    CALLS.clear()
    train.main(["--method", "toy_onpolicy", "--init_from", "scratch", "--max_steps", "2",
                "--batch_size", "3", "--grad_accum", "2", "--n_train", "12", "--out_dir", str(tmp_path),
                "--final_eval", "false", "--log_every", "1", "--val_data", ""])
    kinds = [c[0] for c in CALLS]
    # each step: both micro-batches' rollouts, then both losses; two steps
    assert kinds == ["rollout", "rollout", "loss", "loss"] * 2
    assert all(not grad for k, grad, _ in CALLS if k == "rollout")      # never under autograd
    assert all(grad and n == 3 for k, grad, n in CALLS if k == "loss")  # the loss on 3 pairs, with grads
    assert "toy_rolled 3.0000" in capsys.readouterr().out               # its metrics reach the log
    with pytest.raises(SystemExit):                                     # FSDP refuses a rollout
        train.parse_config(["--method", "toy_onpolicy", "--parallel", "fsdp"])


# -- a method's loss is one number ----------------------------------------------------------------
def per_row_loss(model, batch, run, cfg):
    return -batch_logps(model, batch, "sum"), {}          # (B,): no .sum()


def one_element_loss(model, batch, run, cfg):
    return -batch_logps(model, batch, "sum").sum().reshape(1), {}   # (1,): one number, as backward() takes


def test_a_loss_of_one_element_trains(toy_slip, tmp_path):
    toy_slip(loss=one_element_loss)
    train.main(["--method", "toy_slip", "--init_from", "scratch", "--max_steps", "1", "--batch_size", "4",
                "--n_train", "8", "--out_dir", str(tmp_path), "--final_eval", "false", "--val_data", ""])
    assert os.path.exists(tmp_path / "ckpt" / "state.json")


def test_a_loss_that_is_not_one_number_is_an_error_naming_the_method(toy_slip, tmp_path):
    """A loss returned per row stopped the run in backward() with torch's 'grad can be implicitly
    created only for scalar outputs', which says nothing of the method or of the sum it must be."""
    toy_slip(loss=per_row_loss)
    with pytest.raises(ValueError) as e:
        train.main(["--method", "toy_slip", "--init_from", "scratch", "--max_steps", "1", "--batch_size",
                    "4", "--n_train", "8", "--out_dir", str(tmp_path), "--final_eval", "false",
                    "--val_data", ""])
    assert "--method toy_slip: its loss returned a tensor of shape (4,)" in str(e.value), str(e.value)
    assert "one number, the sum over the micro-batch's n_tokens" in str(e.value), str(e.value)


# -- own data is validated on its own; the log explains itself -------------------------------------
def test_own_data_runs_no_builtin_evaluation_and_validates_at_the_end(tmp_path, capsys):
    out = _short_run(tmp_path, capsys, train_data=os.path.join(FIX, "sft.jsonl"), batch_size=2,
                     final_eval="true", eval_every=100, val_data=os.path.join(FIX, "sft.jsonl"))
    assert "Built-in task" not in out and "What is 7 + 5" not in out
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in recs if r["split"] == "val"] == [2]
    shutil.rmtree(tmp_path / "run")
    out = _short_run(tmp_path, capsys, train_data=os.path.join(FIX, "sft.jsonl"), batch_size=2)
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert not [r for r in recs if r["split"] == "val"]       # 'auto': no built-in validation


def test_responses_cut_to_max_length_are_counted_and_named(tmp_path, capsys):
    """A response longer than fits is cut from the right, and the run says so: how many, and
    where (it was silent: a preference pair cut to the same first tokens trains on nothing)."""
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "What is 1 + 1?", "response": "2."}] * 3 + [{"prompt": "What is 1 + 1?",
                                                                    "response": "2" * 200}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = run_cfg(tmp_path, method="sft", train_data=str(data), max_length=64)
    m = REGISTRY["sft"]
    ex = train.load_split(cfg, m, task, "train", train.Run(tok=task.build_tokenizer()))
    assert len(ex) == 4
    out = capsys.readouterr().out
    assert f"{data} [train]: cut the response of 1 of 4 examples to --max_length 64 " in out
    assert f"{data}:4" in out
    rows[3] = rows[0]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train.load_split(cfg, m, task, "train", train.Run(tok=task.build_tokenizer()))
    assert "cut" not in capsys.readouterr().out


def test_the_start_counts_bad_rows_among_the_rows_read_and_examples_among_the_examples_made(tmp_path,
                                                                                             capsys):
    """JSFT makes three examples of each row read (the chosen response, two judgments): a bad line
    skipped is one of the file's rows, not one of rows and examples added together."""
    data = tmp_path / "p.jsonl"
    rows = [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": "no"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    cfg = run_cfg(tmp_path, method="jsft", train_data=str(data), skip_bad_rows=True)
    ex = train.load_split(cfg, REGISTRY["jsft"], task, "train", train.Run(tok=task.build_tokenizer()))
    assert len(ex) == 12
    assert f"{data} [train]: skipped 1 of 5 rows read; dropped 0 of 12 examples made from them" in \
        capsys.readouterr().out


def test_the_start_names_the_first_rows_it_dropped_and_why(tmp_path, capsys):
    """--skip_bad_rows said 'dropped 1 of 6 rows (bad rows)', naming neither the row nor its
    mistake: the line now gives the first three of them as 'file:line: why', in the order read
    (rows the file refuses, then examples the tokenizer does), and '| ...' when there are more."""
    data = tmp_path / "p.jsonl"
    good = [json.dumps({"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": "no"}) for i in range(4)]
    long = json.dumps({"prompt": "x" * 300, "chosen": "a", "rejected": "b"})
    data.write_text("\n".join(good[:2] + ["not json", long] + good[2:]) + "\n")
    cfg = run_cfg(tmp_path, method="dpo", train_data=str(data), skip_bad_rows=True, max_length=64)
    load = lambda: train.load_split(cfg, REGISTRY["dpo"], task, "train",      # noqa: E731
                                    train.Run(tok=task.build_tokenizer()))
    assert len(load()) == 4
    out = capsys.readouterr().out
    assert (f"{data} [train]: dropped 2 of 6 rows (bad rows): {data}:3: malformed JSON (Expecting value at "
            f"column 1) | {data}:4: field 'prompt' is ") in out, out
    assert out.count("\n") == 1
    data.write_text("\n".join(good + ["{", "[", "3", '{"prompt": "q"}']) + "\n")
    assert len(load()) == 4
    line = capsys.readouterr().out
    assert line.startswith(f"{data} [train]: dropped 4 of 8 rows (bad rows): {data}:5: malformed JSON")
    assert f" | {data}:6: " in line and f" | {data}:7: expected a JSON object, got int | ...\n" in line
    assert f"{data}:8" not in line


@pytest.mark.parametrize("flags, flag", [(["--method", "sft", "--init_from", "MISSING"], "--init_from"),
                                         (["--method", "osp", "--init_from", "scratch", "--judge_from",
                                           "MISSING"], "--judge_from")])
def test_a_checkpoint_that_is_not_there_is_named_with_the_flag_that_gave_it(tmp_path, capsys, flags, flag):
    # 'error: /x: does not exist' did not say whether the start or the judge was missing
    missing = str(tmp_path / "nope")
    with pytest.raises(SystemExit):
        train.main([missing if f == "MISSING" else f for f in flags]
                   + ["--max_steps", "1", "--out_dir", str(tmp_path / "run")])
    assert capsys.readouterr().err.endswith(f"error: {flag} {missing}: does not exist\n")


def test_a_start_without_a_chat_template_names_train_pys_flag_not_a_python_api(tmp_path, capsys, start):
    # the error said "name a fallback format with load(..., chat_format=...)": train.py has --chat_format
    shutil.copytree(start, tmp_path / "bare")
    os.remove(tmp_path / "bare" / "tokenizer_config.json")
    with pytest.raises(SystemExit):
        train.main(["--method", "sft", "--init_from", str(tmp_path / "bare"), "--max_steps", "1",
                    "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bare'}: no chat template") and "load(" not in err, err
    assert "name a fallback format with --chat_format (one of chatml, inst, selfjudge, raw)" in err, err
    # and the flag it names works
    train.main(["--method", "sft", "--init_from", str(tmp_path / "bare"), "--chat_format", "selfjudge",
                "--max_steps", "1", "--out_dir", str(tmp_path / "run"), "--final_eval", "false"])


def test_a_chat_format_over_the_checkpoints_own_template_is_said(tmp_path, capsys, start):
    """--chat_format chatml on SmolLM2 replaced its own template (and the default system prompt it
    adds) without a word, and the checkpoint saved chatml: obeyed, and now said. A format that is
    the checkpoint's own replaces nothing, and says nothing."""
    from model.chat_template import FORMATS
    argv = ["--method", "sft", "--init_from", str(start), "--max_steps", "1", "--final_eval", "false",
            "--out_dir", str(tmp_path / "run")]
    train.main(argv + ["--chat_format", "chatml"])
    cfg_path = os.path.join(start, "tokenizer_config.json")
    assert (f"note: --chat_format chatml replaces the checkpoint's own chat template ({cfg_path} "
            f"('nanoalign_chat_format': 'selfjudge')), with whatever it adds (a default system prompt, "
            f"say); the run trains on chatml's prompts and saves chatml with its checkpoint") in capsys.readouterr().out
    train.main(argv + ["--chat_format", "selfjudge"])
    assert "replaces the checkpoint's own chat template" not in capsys.readouterr().out
    shutil.copytree(start, tmp_path / "own")
    (tmp_path / "own" / "chat_template.jinja").write_text(FORMATS["inst"])
    train.main(argv[:3] + [str(tmp_path / "own")] + argv[4:] + ["--chat_format", "selfjudge"])
    assert (f"replaces the checkpoint's own chat template ({tmp_path / 'own' / 'chat_template.jinja'})"
            in capsys.readouterr().out)


def test_the_start_line_says_what_a_step_is_and_how_rows_became_examples(tmp_path, capsys):
    """'2 steps of 2x1x1' left the user to guess the factors, '1 steps' read oddly, and JSFT's '24
    train examples' from a file of 8 rows was not explained."""
    out = _short_run(tmp_path, capsys, max_steps=1, grad_accum=2, batch_size=2)
    assert "sft: " in out and ", 16 train examples, 1 step of 4 (--batch_size 2 x --grad_accum 2)\n" in out
    pref = os.path.join(FIX, "pref.jsonl")
    out = _short_run(tmp_path, capsys, method="jsft", train_data=pref, max_steps=2, batch_size=2, max_length=384)
    assert f"{pref} [train]: 4 rows make 12 jsft examples (python train.py --method jsft --help says how)\n" in out
    assert ", 12 train examples, 2 steps of 2 (--batch_size 2 x --grad_accum 1)\n" in out
    assert "rows make" not in _short_run(tmp_path, capsys, method="dpo", train_data=pref, batch_size=2)


def test_the_start_line_never_counts_more_trained_weights_than_the_model_has(tmp_path, capsys, start):
    # SmolLM2's full fine-tune printed "134.52M params (135M trained)": the trained count had 3
    # significant digits, the total 2 decimals. A full fine-tune says "all"; LoRA counts its adapters
    first = _short_run(tmp_path, capsys).splitlines()[0]
    assert re.match(r"sft: \d+\.\d\dM params \(all trained\) on cpu x1, ", first), first
    first = _short_run(tmp_path / "lora", capsys, init_from=start, lora_r=2).splitlines()[0]
    total, trained = map(float, re.match(r"sft: ([\d.]+)M params \(([\d.e-]+)M trained\)", first).groups())
    assert 0 < trained < total / 10, first


def test_the_log_names_its_compute_has_a_legend_and_ends_with_where_and_how_to_sample(tmp_path, capsys):
    out = _short_run(tmp_path, capsys)
    assert "compute: float32, padded (--dtype auto, --packed auto, --grad_checkpoint auto)\n" in out
    assert "metrics: loss = " in out and "nll_per_token = " in out
    # the console line has no lr, grad_norm or step_s: the legend says where they are
    assert "\nin out_dir/metrics.jsonl too: lr = learning rate; grad_norm = " in out
    ckpt = os.path.join(str(tmp_path / "run"), "ckpt")
    assert f"checkpoint: {ckpt}" in out and f"python sample.py --init_from {ckpt}" in out


# what the loop itself logs; a method's own metrics are its legend's (Method.metrics)
LOOP_KEYS = {"step", "split", "loss", "lr", "grad_norm", "step_s", "tok_per_s", "elapsed"}


# two epochs of 2 steps for epoch_by_epoch: its schedule trains each task in one of them
RUNS = {"epoch_by_epoch": {"n_train": 16, "max_steps": 4}}


@pytest.mark.parametrize("method, options", [(m, RUNS.get(m, {})) for m in REGISTRY if not REGISTRY[m].main]
                         + [("osp", {"pairing": "raft"})])   # OSP's RAFT logs metrics of its own
def test_a_methods_legend_explains_what_its_steps_log_and_nothing_they_never_log(tmp_path, capsys,
                                                                                   method, options):
    """The legend printed at the start is the reader's key to the log: a logged name it does not
    explain is a number nobody can read, and a name it explains that this run never logs (the
    off-policy baseline's prompt cache in the on-policy Self-Judge's legend) sends them looking for
    a number that is not there. OSP's legend covers its --pairing choices: a RAFT-only name is
    missing from a pair run, a pair-only one from a RAFT run, and each is named for its pairing."""
    train.train(run_cfg(tmp_path, method=method, eval_every=0, **{"max_steps": 2, **options}))
    logged = set().union(*(json.loads(x).keys() for x in open(tmp_path / "run" / "metrics.jsonl")
                           if '"train"' in x)) - LOOP_KEYS
    legend = set(REGISTRY[method].metrics or {})
    assert logged <= legend, f"logged, not in the legend: {sorted(logged - legend)}"
    # on the console each is explained once, above the first line that logs it, and no other is
    # (a legend of all of them up front named the oracle's agreement on the user's own data)
    lines = capsys.readouterr().out.splitlines()
    said = [k.split(" = ")[0] for ln in lines if ln.startswith("metrics: ") for k in ln[9:].split("; ")
            if " = " in k]
    assert sorted(set(said) - LOOP_KEYS) == sorted(said := [k for k in said if k not in LOOP_KEYS])
    assert set(said) == logged, (sorted(said), sorted(logged))
    first = next(i for i, ln in enumerate(lines) if ln.startswith("step "))
    assert lines[first - 1].startswith("metrics: ") or not logged
    unlogged = legend - logged
    if method == "osp":   # the other pairing's names, each saying which pairing it is
        assert all(REGISTRY[method].metrics[k].startswith("RAFT") == (not options) for k in unlogged), \
            sorted(unlogged)
    else:
        assert not unlogged, f"in the legend, never logged: {sorted(unlogged)}"


@pytest.mark.parametrize("warmup, steps", [(5, 3), (3, 3), (1, 3)])
def test_a_run_shorter_than_its_warm_up_says_the_rate_never_reaches_its_peak(tmp_path, capsys, warmup, steps):
    """The start prints the peak rate, but a run shorter than --warmup_steps (20 by default: a
    researcher's first 2-3 step try on their own data) trains at a fraction of it, and the console
    lines do not show the rate: nothing said so. A note names the rate of its last step."""
    train.train(run_cfg(tmp_path, method="sft", warmup_steps=warmup, max_steps=steps, eval_every=0))
    out = capsys.readouterr().out
    last = [json.loads(x)["lr"] for x in open(tmp_path / "run" / "metrics.jsonl") if '"train"' in x][-1]
    said = re.findall(r"^note: --warmup_steps (\d+) is longer than the run \(--max_steps (\d+)\): the rate "
                      r"rises to (\S+) at its last step, not to the peak", out, re.M)
    if warmup > steps:
        assert said == [(str(warmup), str(steps), f"{last:g}")]
        assert last < run_cfg(tmp_path).lr          # below the peak: what the note is for
    else:
        assert said == [] and "warmup_steps" not in out


def test_the_log_reaches_a_pipe_or_a_file_as_each_line_is_printed(tmp_path):
    """`python train.py ... | tee run.log`, nohup, a cluster's log file, torchrun's ranks: there stdout
    is a pipe or a file, which Python fills in 8 KiB blocks, so a run showed nothing until it ended
    (or the block filled), and a run killed without warning (the OOM killer, SIGKILL) lost every
    line it had printed. Here the run kills itself with SIGKILL after its last line: what it printed
    is only what had already gone out."""
    import signal
    import subprocess
    import sys
    from tests.helpers import ROOT
    code = "import os, signal, sys, train; train.main(sys.argv[1:]); os.kill(os.getpid(), signal.SIGKILL)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}   # as a plain shell has it
    p = subprocess.run([sys.executable, "-c", code, "--method", "sft", "--init_from", "scratch",
                        "--max_steps", "2", "--batch_size", "4", "--n_train", "16", "--log_every", "1",
                        "--final_eval", "false", "--out_dir", str(tmp_path / "run")],
                       cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert "step     2 | loss" in p.stdout and "python sample.py --init_from" in p.stdout, p.stdout


def test_main_runs_with_a_stdout_that_cannot_be_line_buffered(monkeypatch):
    """A notebook's stdout (ipykernel's OutStream) is no TextIOWrapper and has no reconfigure():
    train.main([...]) called there must not fail on making the log line-buffered."""
    class NotebookStream:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass
    out = NotebookStream()
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as e:
        train.main(["--method", "sft", "--help"])
    assert e.value.code == 0 and "--max_steps" in out.text


@pytest.mark.parametrize("n_val, batch_size, eval_batches", [(768, 16, 8), (30, 4, 2), (7, 2, 8), (3, 4, 8)])
def test_the_held_out_loss_reads_examples_from_across_the_val_data_not_its_head(monkeypatch, n_val, batch_size,
                                                                                eval_batches):
    """--eval_batches B of --batch_size N read the first B x N held-out examples: JSFT's prepared
    rows put every answer before every judgement (self_judge.jsft_rows), so its val loss never saw a
    judgement (0.38 on the first 128 of 768; 11.0 on the judgements alone). Now the same examples at
    every evaluation, spread evenly over the data, each at most once."""
    seen, real = [], train.make_batch
    monkeypatch.setattr(train, "make_batch", lambda ex, *a, **kw: seen.extend(e["i"] for e in ex) or real(ex, *a, **kw))
    val = [{"ids": [5, 6, 7, 8], "n_prompt": 1, "i": i} for i in range(n_val)]
    cfg = train.make_config(method="sft", batch_size=batch_size, eval_batches=eval_batches)
    train.held_out_loss(small_model(), REGISTRY["sft"], val, train.Run(tok=task.build_tokenizer()), cfg)
    want = min(n_val, batch_size * max(1, min(eval_batches, n_val // batch_size)))
    assert len(seen) == len(set(seen)) == want
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert seen[0] == 0 and max(gaps) - min(gaps) <= 1 and n_val - 1 - seen[-1] <= max(gaps)


# -- a default run's start: the cached SFT warm-up ---------------------------------------------------
def test_the_warm_up_trains_with_its_own_settings_whatever_the_run_sets(tmp_path, monkeypatch):
    """--init_from default: the warm-up is cached under its own settings (preset, seed, rows, steps,
    lr), so it must train with those and the defaults, on the run's device. It once took every other
    shared option from the run: a first run with --batch_size 3 cached a warm-up that later runs of
    any batch size started from, and a --lora_r run failed in its warm-up (LoRA on a scratch model)."""
    monkeypatch.chdir(tmp_path)                             # the cache is out/_warm, under the cwd
    seen = []
    key = dict(n_warm=16, warm_steps=3, warm_lr=1e-3, seed=5, device="cpu")
    other = dict(method="jsft", lora_r=4, batch_size=3, grad_accum=2, max_length=200, lr=1e-5, beta1=0.5,
                 weight_decay=0.1, min_lr_ratio=0.5, grad_clip=0.0, dtype="bfloat16", packed="true",
                 grad_checkpoint="true", n_train=7, n_val=5, eval_every=1, log_every=1)
    for run in ({}, other):
        task.warm_start(train.shared_options(train.make_config(**key, **run)),
                        lambda **kw: seen.append(dataclasses.asdict(train.make_config(**kw))))
    assert seen[0] == seen[1]
    assert {k: seen[0][k] for k in ("method", "lora_r", "n_train", "max_steps", "lr", "seed", "device",
                                    "batch_size")} == dict(method="sft", lora_r=0, n_train=16, max_steps=3,
                                                           lr=1e-3, seed=5, device="cpu", batch_size=16)


def test_a_warm_up_says_how_long_it_is_that_it_is_trained_once_and_how_to_skip_it(tmp_path, monkeypatch,
                                                                                  capsys):
    """A first `python train.py --method M --max_steps 5` trained 800 SFT steps first, minutes on a
    laptop, and its start said only where the warm-up went."""
    monkeypatch.chdir(tmp_path)
    shared = train.shared_options(train.make_config(n_warm=16, warm_steps=3, warm_lr=1e-3, seed=5, device="cpu"))
    task.warm_start(shared, lambda **kw: None)
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.startswith("== SFT warm-up of a 'tiny' model on the built-in task -> out/_warm/"), line
    assert "(3 steps, once: a later run of the same --model_preset, --seed, --n_warm, --warm_steps and " \
           "--warm_lr starts from it; --init_from scratch starts without one)" in line, line


def test_a_stopped_warm_up_continues_on_the_device_of_the_run_that_continues_it(tmp_path, monkeypatch):
    """A warm-up stopped by Ctrl-C is continued by the next default run, with the settings it was
    started with, but its device is the run's (--resume may change it): it took the saved one, so a
    warm-up stopped under --device cuda failed in a run given --device cpu, on a machine without one."""
    monkeypatch.chdir(tmp_path)
    key = dict(n_warm=16, warm_steps=3, seed=5)
    task.warm_start(train.shared_options(train.make_config(**key, device="auto")),
                    lambda **kw: train.train(train.make_config(**kw), task, stop_at=1))
    seen = []
    task.warm_start(train.shared_options(train.make_config(**key, device="cpu")),
                    lambda **kw: seen.append(kw))
    assert seen[0]["resume"] and seen[0]["device"] == "cpu"


def test_a_warm_up_is_not_reused_by_a_run_on_another_device_or_number_of_ranks(tmp_path, monkeypatch):
    """The warm-up trains at --dtype auto on the run's device and ranks: bf16 (and fused AdamW) on
    CUDA, and W torchrun ranks train at W times the batch, so either gives other weights than one
    process on the CPU. Its cache key named neither: whichever trained first was reused by every
    later run. The run's own --dtype never reaches the warm-up, so it stays out of the key; and
    one process on the CPU keeps the key it had, so the caches of earlier default runs stay valid."""
    from nanoalign import dist
    monkeypatch.chdir(tmp_path)                             # the cache is out/_warm, under the cwd
    key = dict(n_warm=16, warm_steps=2, warm_lr=1e-3, seed=5)

    def shared(**run):
        return train.shared_options(train.make_config(**key, **run))
    plain = task.warm_start(shared(device="cpu"), lambda **kw: train.train(train.make_config(**kw), task))
    assert plain == os.path.join("out", "_warm", "tiny-s5-n16-w2-lr0.001", "ckpt")   # the key it had
    assert task.warm_start(shared(device="cpu", dtype="bfloat16"), lambda **kw: pytest.fail(kw)) == plain
    for device, ranks in (("cuda", 1), ("cpu", 2), ("cuda", 2)):
        monkeypatch.setattr(dist, "world", lambda: ranks)   # as under torchrun --nproc_per_node 2
        trained = []
        path = task.warm_start(shared(device=device), lambda **kw: trained.append(kw))
        assert trained and path != plain, (device, ranks)   # a warm-up of its own, not the CPU's


def _other_values(f, v):
    """Other valid values of a config field than v: its other choices, v + 1, half of v (or a small
    float for 0), not v; none for a free string (a path, a name)."""
    ch = f.metadata.get("choices")
    if ch:
        return [c for c in ch if c != v]
    if f.type is bool:
        return [not v]
    return [v + 1] if f.type is int else [v / 2 if v else 1e-3] if f.type is float else []


def test_the_init_from_help_names_what_the_warm_up_is_cached_by(tmp_path, monkeypatch):
    """--init_from default on the arith task starts from the SFT warm-up cached in out/_warm/ under
    some of the run's settings: `train.py --help` names exactly those (each shared or task option
    that, changed alone, makes the run take another cached warm-up). It said only 'the cached SFT
    warm-up', so a user could not tell why a new --seed or --device trained another one, nor that a
    new --lr or --dtype does not."""
    from nanoalign.config import SharedConfig
    monkeypatch.chdir(tmp_path)                             # the cache is out/_warm, under the cwd
    said = re.search(r"cached (.*?);", {f.name: f for f in dataclasses.fields(SharedConfig)}["init_from"]
                     .metadata["help"])                       # '... cached in out/_warm/ under --seed, ...;'
    named = set(re.findall(r"--(\w+)", said.group(1))) if said else set()
    base = train.make_config()

    def start(**change):                                    # the warm-up's checkpoint a default run takes
        return task.warm_start(train.shared_options(dataclasses.replace(base, **change)), lambda **kw: None)
    options = set(train.shared_options(base)) - {"task"}    # the arith task's warm-up, on its options
    keyed = {f.name for f in dataclasses.fields(base) if f.name in options
             and any(start(**{f.name: v}) != start() for v in _other_values(f, getattr(base, f.name)))}
    assert "seed" in keyed and "lr" not in keyed and "dtype" not in keyed
    assert named == keyed


@pytest.mark.parametrize("flag", ["--train_data", "--val_data"])
def test_a_data_files_mistake_is_its_error_before_the_default_start_trains(tmp_path, monkeypatch, capsys, flag):
    """--init_from default (the flag's default) with your own file: a row missing a field was its
    error only after the SFT warm-up had trained, a minute on a first run, for a mistake in the file."""
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "prefs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
                   + json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    warmed = []

    def warm_start(*args):
        warmed.append(args)
        raise RuntimeError("the warm-up ran")
    monkeypatch.setattr(task, "warm_start", warm_start)
    with pytest.raises(SystemExit) as e:
        train.main(["--method", "dpo", flag, str(bad), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and warmed == []
    assert f"{bad}:2" in err and "'rejected'" in err


def test_a_lora_run_from_the_default_start_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train.main(["--method", "orpo", "--lora_r", "4", "--n_warm", "16", "--warm_steps", "2", "--max_steps", "1",
                "--n_train", "8", "--batch_size", "2", "--final_eval", "false", "--val_data", "",
                "--device", "cpu"])
    assert os.path.exists(tmp_path / "out" / "orpo" / "ckpt" / "adapter_config.json")


def test_deterministic_algorithms_are_set_before_the_first_forward_of_a_run(tmp_path, monkeypatch):
    """cuBLAS reads its workspace setting (CUBLAS_WORKSPACE_CONFIG, which --deterministic sets) when
    its handle is made, at the first matmul; the built-in task's "before" evaluation ran its forwards
    before train() set it up."""
    monkeypatch.chdir(tmp_path)
    order, real_det, real_eval = [], train.set_deterministic, train.oracle_eval
    monkeypatch.setattr(train, "set_deterministic", lambda *a: order.append("deterministic") or real_det(*a))
    monkeypatch.setattr(train, "oracle_eval", lambda *a, **kw: order.append("forward") or real_eval(*a, **kw))
    argv = ["--method", "sft", "--n_warm", "16", "--warm_steps", "1", "--max_steps", "1", "--n_train", "8",
            "--batch_size", "2", "--val_data", "", "--device", "cpu"]
    train.main(argv)
    order.clear()
    train.main(argv)                                        # the warm-up cached: no train() before it
    assert order[0] == "deterministic" and "forward" in order


def test_the_first_step_is_said_when_the_log_would_wait_for_the_tenth(tmp_path, capsys):
    """--log_every 10 on a CPU, at seconds a step, left a user staring at the start lines for
    minutes: the first step prints a line (its time and an eta), on the console only."""
    train.train(run_cfg(tmp_path, max_steps=3, log_every=10, eval_every=0))
    steps = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ") and "val loss" not in ln]
    assert len(steps) == 2 and re.match(r"step     1 \| first step done, [\d.]+s \| eta \d+s \| a line every "
                                        r"10 steps \(--log_every\)$", steps[0]), steps
    assert steps[1].startswith("step     3 | loss ")
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [(r["step"], r["split"]) for r in recs if r["split"] != "val"] == [(3, "train"), (3, "end")]
    train.train(run_cfg(tmp_path, max_steps=3, log_every=1, eval_every=0))      # every step logged anyway
    assert "first step done" not in capsys.readouterr().out


def test_max_length_auto_is_trls_1024_or_the_models_context(tmp_path, capsys):
    """The default was 128 tokens, which cut a chat-templated answer of a few sentences on a real
    model where TRL's DPO, ORPO and SFT (max_length 1024) keep it whole. 0 = auto: 1024, or the
    model's context where that is shorter; the run says what it took."""
    import types
    from nanoalign.compute import max_length_of
    cfg = run_cfg(tmp_path)
    assert cfg.max_length == 0
    ctx = lambda n: types.SimpleNamespace(cfg=types.SimpleNamespace(max_seq_len=n))   # noqa: E731
    assert [max_length_of(cfg, ctx(n)) for n in (512, 1024, 8192)] == [512, 1024, 1024]
    assert max_length_of(dataclasses.replace(cfg, max_length=200), ctx(8192)) == 200
    # without a model (load_split called alone, experiments/' SJ batches): TRL's 1024, or the flag
    assert max_length_of(cfg) == 1024 and max_length_of(dataclasses.replace(cfg, max_length=200)) == 200
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"prompt": "What is 1 + 2?", "response": "It is 3. " * 30}) + "\n")
    out = _short_run(tmp_path, capsys, train_data=str(f), batch_size=1, max_steps=1)
    assert "max_length 512 (--max_length 0: auto, TRL's 1024 or the model's context if shorter" in out
    assert "cut the response" not in out
    out = _short_run(tmp_path, capsys, train_data=str(f), batch_size=1, max_steps=1, max_length=128)
    assert f"{f} [train]: cut the response of 1 of 1 examples to --max_length 128" in out
    assert "(--max_length 0: auto" not in out


def test_a_run_that_trained_a_judge_ends_saying_how_to_judge_with_it(tmp_path, capsys):
    """After JSFT the end named only plain sampling: its judge, what the run was for, went unsaid."""
    pref = os.path.join(FIX, "pref.jsonl")
    for method in ("jsft", "pref_aug"):              # Self-Judge's judge, OSP's
        out = _short_run(tmp_path, capsys, method=method, train_data=pref, max_steps=1, batch_size=2)
        ckpt = os.path.join(str(tmp_path / "run"), "ckpt")
        assert (f"judge with it (the template and rule it trained on are kept with it):\n  python sample.py "
                f"--init_from {ckpt} --best_of 4 --prompt 'your prompt'\n  python -m nanoalign.judge_cli "
                f"--init_from {ckpt} --pairs pairs.jsonl\n  python train.py --method M --init_from {ckpt}    "
                f"(on-policy, judged by it; M: self_judge, self_judge_offpolicy, osp)") in out, method
    for method, extra in (("sft", {}), ("jsft", {"jsft_judge": "false"})):
        out = _short_run(tmp_path, capsys, method=method, train_data=os.path.join(FIX, "sft.jsonl" if method == "sft"
                                                                                  else "pref.jsonl"),
                         max_steps=1, batch_size=2, **extra)
        assert "python sample.py --init_from" in out and "judge with it" not in out
