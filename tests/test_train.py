"""The training loop: gradient accumulation, exact resume, Ctrl-C, non-finite losses, bad input."""
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
import torch

import train
from model.model import ModelConfig, Transformer
from experiments import task
from nanoalign import REGISTRY
from nanoalign.data import DataError, make_batch, read_jsonl, tokenize_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")


def small_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=264, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   hidden_dim=48, max_seq_len=128, tie_embeddings=True,
                                   bos_token_id=256, eos_token_id=257, pad_token_id=258))


def grads_of(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("method", ["sft", "orpo"])
def test_grad_accumulation_equals_one_big_batch(method):
    m = REGISTRY[method]
    tok = task.build_tokenizer()
    rows = (task.sft_rows if m.eats == "sft" else task.preference_rows)(8, 0)
    ex, _ = tokenize_rows(rows, tok, m.eats, 128)
    lengths = {len(e["ids"] if m.eats == "sft" else e["chosen"]) for e in ex}
    assert len(lengths) > 2                                   # uneven response lengths
    cfg = train.make_config(method=method)
    model = small_model()
    train.accumulate_gradients(model, m, [make_batch(ex, m.eats, tok.pad_id)], None, cfg)
    one = grads_of(model)
    model.zero_grad()
    micro = [make_batch(ex[i:i + 2], m.eats, tok.pad_id) for i in range(0, 8, 2)]
    train.accumulate_gradients(model, m, micro, None, cfg)
    for a, b in zip(one, grads_of(model)):
        assert (a - b).abs().max().item() <= 1e-6


def run_cfg(tmp_path, **kw):
    base = dict(method="orpo", init_from="scratch", model_preset="tiny", out_dir=str(tmp_path / "run"),
                max_steps=6, batch_size=4, grad_accum=2, n_train=64, n_val=16, log_every=1,
                eval_every=3, eval_batches=1, final_eval=False, warmup_steps=2, lr=1e-3, seed=3)
    return train.make_config(**{**base, **kw})


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
    with pytest.raises(SystemExit, match="non-finite"):
        train.train(run_cfg(tmp_path, ckpt_every=2, eval_every=0))
    st = json.load(open(tmp_path / "run" / "ckpt" / "state.json"))
    assert st["step"] == 2


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


# -- bad input: one clear error naming the file, line and field (or the flag) ---------------------
def write(tmp_path, text):
    p = tmp_path / "data.jsonl"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text,pattern", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n', r":2: malformed JSON"),
    ('{"prompt": "a", "chosen": "b"}\n', r":1: missing field 'rejected'"),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}\n', r":1: field 'chosen' must be a string or a list"),
    ('\n{"prompt": "a", "chosen": "b", "rejected": "  "}\n', r":2: field 'rejected' is empty"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=r"data\.jsonl" + pattern):
        read_jsonl(path, "pref")


def test_prompt_longer_than_max_length(tmp_path):
    path = write(tmp_path, '{"prompt": "%s", "chosen": "b", "rejected": "c"}\n' % ("x" * 200))
    rows, _ = read_jsonl(path, "pref")
    with pytest.raises(DataError, match=r"data\.jsonl:1: field 'prompt' is \d+ tokens"):
        tokenize_rows(rows, task.build_tokenizer(), "pref", 64)


def test_skip_bad_rows_counts(tmp_path):
    path = write(tmp_path, '{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n'
                           '{"prompt": "a"}\n{"prompt": "%s", "chosen": "b", "rejected": "c"}\n' % ("x" * 200))
    rows, skipped = read_jsonl(path, "pref", skip_bad=True)
    ex, dropped = tokenize_rows(rows, task.build_tokenizer(), "pref", 64, skip_bad=True)
    assert (len(ex), skipped, dropped) == (1, 2, 1)


def test_fixtures_load_in_both_formats():
    tok = task.build_tokenizer()
    for kind, name in (("pref", "pref.jsonl"), ("sft", "sft.jsonl")):
        rows, _ = read_jsonl(os.path.join(FIX, name), kind)
        ex, _ = tokenize_rows(rows, tok, kind, 128)
        b = make_batch(ex, kind, tok.pad_id)
        assert len(ex) == 4 and b["n_tokens"] > 0
        # the response mask covers exactly response + EOS tokens
        key = "ids" if kind == "sft" else "chosen"
        resp = rows[0]["response" if kind == "sft" else "chosen"]
        assert b["mask"][0].sum().item() == len(tok.encode(resp)) + 1
        assert b["targets"][0][b["mask"][0].bool()].tolist() == ex[0][key][-(len(tok.encode(resp)) + 1):]


@pytest.mark.parametrize("argv,pattern", [
    (["--method", "nope"], "--method 'nope' is unknown"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--batch_size", "0"], "--batch_size must be >= 1"),
    (["--resume", "maybe"], "argument --resume: expected true/false, got 'maybe'"),
])
def test_bad_flags(argv, pattern, capsys):
    with pytest.raises(SystemExit):
        train.parse_config(argv)
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


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(train.SharedConfig):
        assert f"--{f.name}" in out
