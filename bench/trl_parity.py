"""
Our DPO beside TRL's DPOTrainer at identical settings, step by step: each step's loss, gradient norm
(before clipping) and reward margin on both sides, and the largest differences. bench/train_speed.py
times the two; this shows that what it times is the same computation.

    python -m bench.trl_parity                   # SmolLM2-135M-Instruct on the CPU, 8 steps (~2 min)
    python -m bench.trl_parity --preset tiny     # a random 0.1M model: checks the harness (seconds)

What is made equal: the rows (bench/train_speed.py's conversations) in the file's order, 4 pairs a
step, max_length 256, float32 with no gradient checkpointing, DPO's sigmoid loss at beta 0.1 over the
responses' summed log-probs, AdamW at TRL's defaults (betas 0.9 / 0.999, eps 1e-8, no weight decay)
at a constant rate of 5e-6 (larger than TRL's default 1e-6, so that 8 steps move the weights well
away from their start; TRL is told lr_scheduler_type 'constant'), the gradient clipped at norm 1.
The rows are random word strings in which neither answer is the better one, so the loss wanders
around log 2 rather than falls: the point is that both sides wander alike. What is
left to differ is the order of the arithmetic (ours packs a batch's rows padding-free and computes
the log-probs in vocabulary chunks), and one thing transformers does: it builds the embedding with
padding_idx = pad_token_id, so that row gets no gradient from the inputs. SmolLM2's pad token is its
EOS <|im_end|>, which ends every chat turn, so TRL's gradient lacks that row's input part and its
norm is ~1e-4 below ours (model/model.py trains the row); on the tiny preset (a byte tokenizer
whose pad never appears) the columns agree to float32's rounding.

DPO only. Our ORPO differs from TRL's ORPOTrainer by choice (docs/methods.md#orpo: which tokens the
NLL counts, and TRL's extra EOS), so there the losses differ by design, not by error.

Ours runs in this process, the training loop's own step (train.py: make_batch,
accumulate_gradients, clip, AdamW); TRL in its own environment as in bench/train_speed.py (this file
as a script under `python -I`, outside the repository, --trl_python).
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

# the settings both sides take (the docstring says why each)
SETTINGS = dict(lr=5e-6, beta=0.1, batch=4, max_length=256, grad_clip=1.0)
# this script's own presets (fewer rows than bench/train_speed.py's: at least steps x batch are made)
PRESETS = {"cpu": dict(model="smollm2-135m", rows=64, prompt=18, response=45, steps=8),
           "tiny": dict(model="tiny", rows=16, prompt=6, response=6, steps=3)}


def ours(spec):
    """[{loss, grad_norm, margin}] of each step of our DPO."""
    import torch
    import train
    from model.checkpoint import load
    from nanoalign import REGISTRY
    from nanoalign.common import Run, frozen_copy
    from nanoalign.data import make_batch
    from nanoalign.tasks import get_task
    cfg = train.make_config(method="dpo", init_from=spec["model_dir"], train_data=spec["rows"], val_data="",
                            batch_size=spec["batch"], max_length=spec["max_length"], dtype="float32",
                            grad_checkpoint="false", beta=spec["beta"], beta1=0.9, beta2=0.999,
                            weight_decay=0.0, grad_clip=spec["grad_clip"])
    method = REGISTRY["dpo"]
    model, tok = load(cfg.init_from, torch.float32, "cpu")
    run = Run(tok=tok, ref=frozen_copy(model))
    ex = train.load_split(cfg, method, get_task(cfg.task), "train", run)
    opt = train.make_optimizer(model, cfg)
    for g in opt.param_groups:          # a constant rate (train.py's schedule sets it each step)
        g["lr"] = spec["lr"]
    out, B = [], cfg.batch_size
    for i in range(spec["steps"]):
        batch = make_batch(ex[i * B:(i + 1) * B], method.eats, tok.pad_id, "cpu", train.packed_batches(cfg, model))
        loss, m = train.accumulate_gradients(model, method, [batch], run, cfg)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append({"loss": loss, "grad_norm": norm.item(), "margin": m["margin"]})
    return out


# -- TRL (a child process in TRL's environment; imports nothing of this repository) ------------------
def trl_child(spec):
    import dataclasses

    import torch
    from datasets import Dataset          # TRL's own dependency, as in bench/train_speed.py
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    order = {}
    if any(f.name == "train_sampling_strategy" for f in dataclasses.fields(DPOConfig)):
        order = dict(train_sampling_strategy="sequential")      # the rows in the file's order
        InOrder = DPOTrainer
    else:                                 # an older transformers: its sampler hook instead
        class InOrder(DPOTrainer):
            def _get_train_sampler(self, *args, **kwargs):
                return torch.utils.data.SequentialSampler(self.train_dataset)
    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=spec["batch"],
                     gradient_accumulation_steps=1, max_steps=spec["steps"], max_length=spec["max_length"],
                     beta=spec["beta"], learning_rate=spec["lr"], lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
                     max_grad_norm=spec["grad_clip"], bf16=False, gradient_checkpointing=False,
                     use_cpu=True, seed=0, logging_steps=1, report_to="none", save_strategy="no",
                     dataloader_num_workers=0, **order)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    t = InOrder(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(spec["model_dir"]),
                train_dataset=Dataset.from_list([json.loads(line) for line in open(spec["rows"])]))
    t.train()
    import transformers
    import trl
    return {"steps": [{"loss": h["loss"], "grad_norm": h["grad_norm"], "margin": h["rewards/margins"]}
                      for h in t.state.log_history if "loss" in h],
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"}


# -- the parent ------------------------------------------------------------------------------------
def table(mine, theirs):
    """The steps side by side, and the largest difference of each quantity (relative for the
    gradient norm). Without TRL's side, ours alone."""
    keys = ("loss", "grad_norm", "margin")
    lines = [f"{'step':>4s} " + " ".join(f"{'ours ' + k:>15s} {'TRL ' + k:>15s}" for k in keys)]
    for i, m in enumerate(mine):
        t = theirs[i] if theirs and i < len(theirs) else {}
        lines.append(f"{i + 1:4d} " + " ".join(
            f"{m[k]:15.6f} " + (f"{t[k]:15.6f}" if k in t else f"{'':15s}") for k in keys))
    if theirs and len(theirs) == len(mine):
        worst = {k: max(abs(m[k] - t[k]) / (abs(t[k]) if k == "grad_norm" else 1) for m, t in zip(mine, theirs))
                 for k in keys}
        lines.append(f"largest difference over the {len(mine)} steps: loss {worst['loss']:.2e}, grad_norm "
                     f"{worst['grad_norm']:.2e} (relative), margin {worst['margin']:.2e}")
    return "\n".join(lines)


def main():
    from bench.train_speed import REPO, make_rows, model_dir, run_child
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--preset", default="cpu", choices=tuple(PRESETS),
                    help="'cpu' = SmolLM2-135M-Instruct, 'tiny' = a random 0.1M model (checks the "
                    "harness) (default: %(default)s)")
    ap.add_argument("--steps", type=int, help="optimizer steps on each side, at least 1 (default: the preset's)")
    ap.add_argument("--checkpoint", default=os.path.join(REPO, "checkpoints", "smollm2-135m"),
                    help="the converted SmolLM2-135M-Instruct (made from the GGUF if missing) "
                    "(default: checkpoints/smollm2-135m in the repository)")
    ap.add_argument("--trl_python", default=os.environ.get("TRL_PYTHON", "/work/venv-trl/bin/python"),
                    help="the interpreter of TRL's environment; '' = ours only "
                    "(default: $TRL_PYTHON, else /work/venv-trl/bin/python)")
    a = ap.parse_args()
    p = dict(PRESETS[a.preset])
    if a.steps is not None:
        if a.steps < 1:
            ap.error(f"--steps {a.steps}: at least 1")
        p["steps"] = a.steps
    p["rows"] = max(p["rows"], p["steps"] * SETTINGS["batch"])    # every step a fresh batch, one pass
    work = tempfile.mkdtemp(prefix="trl_parity_")
    try:
        rows = os.path.join(work, "rows.jsonl")
        with open(rows, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in make_rows(p["rows"], p["prompt"], p["response"]))
        spec = dict(SETTINGS, rows=rows, steps=p["steps"],
                    model_dir=model_dir({"model": p["model"]}, work, a.checkpoint))
        # TRL's side first (it reads the rows and the model directory, nothing of ours): its
        # {"steps", "versions"}, or run_child's {"error": [its last line]}
        trl = {"error": [f"not run: no interpreter at --trl_python {a.trl_python!r}"]}
        ran = bool(a.trl_python) and os.path.exists(a.trl_python)
        if ran:
            trl = run_child([a.trl_python, "-I", os.path.abspath(__file__), "--trl-child", json.dumps(spec)],
                            work)
        mine = ours(spec)
        print(f"DPO, {a.preset}: {p['model']} on cpu, float32, {p['steps']} steps of {SETTINGS['batch']} pairs, "
              f"max_length {SETTINGS['max_length']}, lr {SETTINGS['lr']} constant, beta {SETTINGS['beta']}, "
              f"AdamW (0.9, 0.999), clip {SETTINGS['grad_clip']}")
        theirs = trl.get("steps")
        print(table(mine, theirs))
        if theirs is None:
            print(f"TRL's side: {' '.join(trl['error'])}")
        else:
            print(f"TRL's environment: {trl['versions']}")
            if len(theirs) != len(mine):
                print(f"TRL logged {len(theirs)} steps, ours ran {len(mine)}: not compared")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if ran and "error" in trl:     # TRL's side ran and failed: no comparison, not a success
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--trl-child":
        print("RESULT " + json.dumps(trl_child(json.loads(sys.argv[2]))))
    else:
        main()
