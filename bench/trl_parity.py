"""
Our DPO beside TRL's DPOTrainer, or our SFT beside its SFTTrainer, at identical settings, step by
step: each step's loss, gradient norm (before clipping) and (DPO) reward margin on both sides, and
the largest differences. bench/train_speed.py times ours against TRL; this shows that what it
times is the same computation.

    python -m bench.trl_parity                   # DPO, SmolLM2-135M-Instruct on the CPU, 8 steps (~2 min)
    python -m bench.trl_parity --method sft      # SFT on the chosen answers, TRL's prompt-completion rows
    python -m bench.trl_parity --preset tiny     # a random 0.1M model: checks the harness (seconds)

What is made equal: the rows (bench/train_speed.py's conversations; for SFT each one's prompt and
chosen answer as TRL's {prompt, completion}) in the file's order, 4 rows a step, max_length 256,
float32 with no gradient checkpointing, AdamW at TRL's defaults (betas 0.9 / 0.999, eps 1e-8, no
weight decay) at a constant rate (TRL is told lr_scheduler_type 'constant'), the gradient clipped at
norm 1. DPO: the sigmoid loss at beta 0.1 over the responses' summed log-probs, at 5e-6 (larger
than TRL's default 1e-6, so that 8 steps move the weights well away from their start); the rows are
random word strings in which neither answer is the better one, so the loss wanders around log 2
rather than falls: the point is that both sides wander alike. SFT: the mean NLL of the batch's
completion tokens (TRL's completion_only_loss, its default for such rows), at TRL's default 2e-5.
What is
left to differ is the order of the arithmetic (ours packs a batch's rows padding-free and computes
the log-probs in vocabulary chunks), and one thing transformers does: it builds the embedding with
padding_idx = pad_token_id, so that row gets no gradient from the inputs. SmolLM2's pad token is its
EOS <|im_end|>, which ends every chat turn, so TRL's gradient lacks that row's input part and its
norm is ~1e-4 below ours (model/model.py trains the row); on the tiny preset (a byte tokenizer
whose pad never appears) the columns agree to float32's rounding.

No ORPO: ours differs from TRL's ORPOTrainer by choice (docs/methods.md#orpo: which tokens the NLL
counts, and TRL's extra EOS), so there the losses differ by design, not by error.

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

# the settings both sides take (the docstring says why each), and each method's own
SETTINGS = dict(batch=4, max_length=256, grad_clip=1.0)
METHODS = {"dpo": dict(lr=5e-6, beta=0.1), "sft": dict(lr=2e-5)}
# this script's own presets (fewer rows than bench/train_speed.py's: at least steps x batch are made)
PRESETS = {"cpu": dict(model="smollm2-135m", rows=64, prompt=18, response=45, steps=8),
           "tiny": dict(model="tiny", rows=16, prompt=6, response=6, steps=3)}


def ours(spec):
    """[{loss, grad_norm(, margin)}] of each step of our DPO or SFT (train.py's step: see
    bench/train_speed.py our_trainer)."""
    import train
    from bench.train_speed import our_trainer
    own = {"beta": spec["beta"]} if spec["method"] == "dpo" else {}
    cfg = train.make_config(method=spec["method"], init_from=spec["model_dir"], train_data=spec["rows"],
                            val_data="", batch_size=spec["batch"], max_length=spec["max_length"],
                            dtype="float32", grad_checkpoint="false", beta1=0.9, beta2=0.999,
                            weight_decay=0.0, grad_clip=spec["grad_clip"], **own)
    _, _, _, ex, step = our_trainer(cfg, "cpu", lr=spec["lr"])
    out, B = [], cfg.batch_size
    for i in range(spec["steps"]):
        _, loss, m, norm = step(ex[i * B:(i + 1) * B])
        out.append({"loss": loss, "grad_norm": norm.item(), **({"margin": m["margin"]} if "margin" in m else {})})
    return out


# -- TRL (a child process in TRL's environment; imports nothing of this repository) ------------------
def trl_child(spec):
    import importlib.util

    import torch
    import transformers
    import trl
    from datasets import Dataset          # TRL's own dependency, as in bench/train_speed.py
    from transformers import AutoModelForCausalLM, AutoTokenizer
    Config, Trainer = ((trl.DPOConfig, trl.DPOTrainer) if spec["method"] == "dpo"
                       else (trl.SFTConfig, trl.SFTTrainer))
    own = {"beta": spec["beta"]} if spec["method"] == "dpo" else {}
    # bench/train_speed.py by its path: out here (python -I, outside the repository) `bench` is no
    # package, and the repository on sys.path would shadow the `kernels` package transformers imports
    where = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_speed.py")
    found = importlib.util.spec_from_file_location("train_speed", where)
    speed = importlib.util.module_from_spec(found)
    found.loader.exec_module(speed)
    InOrder = speed.in_file_order(Trainer, Config, own)      # the rows in the file's order
    args = Config(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=spec["batch"],
                  gradient_accumulation_steps=1, max_steps=spec["steps"], max_length=spec["max_length"],
                  learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
                  weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=spec["grad_clip"],
                  bf16=False, gradient_checkpointing=False, use_cpu=True, seed=0, logging_steps=1,
                  report_to="none", save_strategy="no", dataloader_num_workers=0, **own)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    t = InOrder(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(spec["model_dir"]),
                train_dataset=Dataset.from_list([json.loads(line) for line in open(spec["rows"])]))
    t.train()
    return {"steps": [{"loss": h["loss"], "grad_norm": h["grad_norm"],
                       **({"margin": h["rewards/margins"]} if "rewards/margins" in h else {})}
                      for h in t.state.log_history if "loss" in h],
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}"}


# -- the parent ------------------------------------------------------------------------------------
def table(mine, theirs):
    """The steps side by side, and the largest difference of each quantity (relative for the
    gradient norm). Without TRL's side, ours alone."""
    keys = tuple(mine[0])                    # loss, grad_norm, and DPO's margin
    lines = [f"{'step':>4s} " + " ".join(f"{'ours ' + k:>15s} {'TRL ' + k:>15s}" for k in keys)]
    for i, m in enumerate(mine):
        t = theirs[i] if theirs and i < len(theirs) else {}
        lines.append(f"{i + 1:4d} " + " ".join(
            f"{m[k]:15.6f} " + (f"{t[k]:15.6f}" if k in t else f"{'':15s}") for k in keys))
    if theirs and len(theirs) == len(mine):
        worst = {k: max(abs(m[k] - t[k]) / (abs(t[k]) if k == "grad_norm" else 1) for m, t in zip(mine, theirs))
                 for k in keys}
        lines.append(f"largest difference over the {len(mine)} steps: " + ", ".join(
            f"{k} {worst[k]:.2e}" + (" (relative)" if k == "grad_norm" else "") for k in keys))
    return "\n".join(lines)


def main():
    from bench.train_speed import make_rows, model_dir, peer_flags, run_child
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--method", default="dpo", choices=tuple(METHODS),
                    help="ours against TRL's DPOTrainer or SFTTrainer (default: %(default)s)")
    ap.add_argument("--preset", default="cpu", choices=tuple(PRESETS),
                    help="'cpu' = SmolLM2-135M-Instruct, 'tiny' = a random 0.1M model (checks the "
                    "harness) (default: %(default)s)")
    ap.add_argument("--steps", type=int, help="optimizer steps on each side, at least 1 (default: the preset's)")
    peer_flags(ap)
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
            for r in make_rows(p["rows"], p["prompt"], p["response"]):
                if a.method == "sft":                     # TRL's prompt-completion row of the chosen
                    r = {"prompt": r["prompt"], "completion": r["chosen"]}
                f.write(json.dumps(r) + "\n")
        spec = dict(SETTINGS, **METHODS[a.method], method=a.method, rows=rows, steps=p["steps"],
                    model_dir=model_dir({"model": p["model"]}, work, a.checkpoint))
        # TRL's side first (it reads the rows and the model directory, nothing of ours): its
        # {"steps", "versions"}, or run_child's {"error": [its last line]}
        peer = {"error": [f"not run: no interpreter at --trl_python {a.trl_python!r}"]}
        ran = bool(a.trl_python) and os.path.exists(a.trl_python)
        if ran:
            peer = run_child([a.trl_python, "-I", os.path.abspath(__file__), "--trl-child", json.dumps(spec)],
                            work)
        mine = ours(spec)
        beta = f", beta {spec['beta']}" if "beta" in spec else ""
        print(f"{a.method.upper()}, {a.preset}: {p['model']} on cpu, float32, {p['steps']} steps of "
              f"{spec['batch']} rows, max_length {spec['max_length']}, lr {spec['lr']} constant{beta}, "
              f"AdamW (0.9, 0.999), clip {spec['grad_clip']}")
        theirs = peer.get("steps")
        print(table(mine, theirs))
        if theirs is None:
            print(f"TRL's side: {' '.join(peer['error'])}")
        else:
            print(f"TRL's environment: {peer['versions']}")
            if len(theirs) != len(mine):
                print(f"TRL logged {len(theirs)} steps, ours ran {len(mine)}: not compared")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if ran and "error" in peer:     # TRL's side ran and failed: no comparison, not a success
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--trl-child":
        print("RESULT " + json.dumps(trl_child(json.loads(sys.argv[2]))))
    else:
        main()
