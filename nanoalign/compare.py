"""
Train several methods on the built-in task with the same seeds and budget; print one table.

    python -m nanoalign.compare --preset mo_orpo --seeds 1,2,3
    python -m nanoalign.compare --preset mo_orpo --seeds 1 --max_steps 30     # a quick look

Each run trains in-process through train.train (the same code as `python train.py`) into
out/compare/<preset>/<label>-s<seed>/ and writes result.json there; a finished run is not redone,
so an interrupted comparison continues where it stopped. The start of every run is the seed's cached
SFT warm-up (train.py --init_from default), whose greedy answers are the "SFT" reference.

Columns (mean ± sample standard deviation over seeds):
  win vs SFT   oracle win rate of the run's greedy answers against the SFT start's, on the 200 test
               prompts; a tie (equal oracle 'overall' score) counts 1/2 (MO-ORPO Table 2's WR, with
               the exact oracle in place of a GPT-4 judge)
  correct      oracle accuracy of the greedy answers; length: mean answer length in characters
  judge acc    self-judgement accuracy on held-out SJ triples (nanoalign.mo_orpo.judge_accuracy)
"""
import argparse
import json
import os
import shutil
import statistics
import time

import torch

import train
from model.checkpoint import load
from nanoalign import task
from nanoalign.data import make_batch, tokenize_rows
from nanoalign.evaluate import greedy_answers
from nanoalign.judge import attach_sj
from nanoalign.mo_orpo import effective_weights, judge_accuracy

# (label, train.py flags). The budget flags (--max_steps, --n_train, --seed) come from this script.
PRESETS = {
    "mo_orpo": [("orpo", ["--method", "orpo"]),
                ("scalarization", ["--method", "scalarization"]),
                ("conjoined", ["--method", "conjoined"]),
                ("conditional", ["--method", "conditional"]),
                ("sj_sft", ["--method", "sj_sft"]),
                ("epoch_by_epoch", ["--method", "epoch_by_epoch"]),
                ("task_by_task", ["--method", "task_by_task"])],
}


def win_rate(prompts, new, old):
    """Oracle win rate of answers `new` over `old` (ties 1/2) on 'overall'."""
    s = 0.0
    for p, a, b in zip(prompts, new, old):
        x, y = task.oracle_scores(p, a)["overall"], task.oracle_scores(p, b)["overall"]
        s += 1.0 if x > y else 0.5 if x == y else 0.0
    return s / len(prompts)


def sj_batches(tok, cfg, n=256, bs=32):
    rows = attach_sj(task.preference_rows(n, cfg.seed, "val"), cfg.seed, "val")
    ex, _ = tokenize_rows(rows, tok, "mo", cfg.max_length, sj_max_length=cfg.sj_max_length)
    return [make_batch([e["sj"] for e in ex[i:i + bs]], "pref", tok.pad_id) for i in range(0, len(ex), bs)]


def evaluate_run(model, tok, cfg, prompts, sft_answers):
    ans = greedy_answers(model, tok, prompts)
    sc = [task.oracle_scores(p, a) for p, a in zip(prompts, ans)]
    return {"win_vs_sft": win_rate(prompts, ans, sft_answers),
            "correct": sum(s["correct"] for s in sc) / len(sc),
            "length": sum(len(a.strip()) for a in ans) / len(ans),
            "judge_acc": judge_accuracy(model, sj_batches(tok, cfg))}


def run_one(root, label, flags, seed, a, prompts, sft_cache):
    out = os.path.join(root, f"{label}-s{seed}")
    res_path = os.path.join(out, "result.json")
    if os.path.exists(res_path):
        with open(res_path) as f:
            return json.load(f)
    shutil.rmtree(out, ignore_errors=True)
    cfg = train.parse_config(flags + ["--seed", str(seed), "--max_steps", str(a.max_steps),
                                      "--n_train", str(a.n_train), "--out_dir", out,
                                      "--final_eval", "false", "--eval_every", "0"] + a.extra)
    start = train.warm_checkpoint(cfg)
    if seed not in sft_cache:
        sft_cache[seed] = greedy_answers(*load(start), prompts)
    t0 = time.time()
    train.train(cfg)
    model, tok = load(os.path.join(out, "ckpt"))
    w1, w2 = effective_weights(cfg.method, cfg)
    res = {"label": label, "seed": seed, "w1": w1, "w2": w2,
           "epochs": cfg.max_steps * cfg.grad_accum * cfg.batch_size / cfg.n_train,
           "train_s": time.time() - t0, **evaluate_run(model, tok, cfg, prompts, sft_cache[seed])}
    with open(res_path, "w") as f:
        json.dump(res, f)
    return res


def fmt(vals):
    if len(vals) < 2:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def table(results, cols):
    labels = list(dict.fromkeys(r["label"] for r in results))
    head = f"| method | w1 | w2 | epochs | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (4 + len(cols))]
    for lab in labels:
        rs = [r for r in results if r["label"] == lab]
        lines.append(f"| {lab} | {rs[0]['w1']:g} | {rs[0]['w2']:g} | {rs[0]['epochs']:g} | " +
                     " | ".join(fmt([r[c] for r in rs]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mo_orpo", choices=sorted(PRESETS), help="which comparison")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    ap.add_argument("--methods", default="", help="comma-separated subset of the preset's labels")
    ap.add_argument("--max_steps", type=int, default=150, help="optimizer steps per run")
    ap.add_argument("--n_train", type=int, default=600, help="training rows (150 steps x 16 = 4 epochs)")
    ap.add_argument("--out", default="out/compare", help="root directory of the runs")
    ap.add_argument("extra", nargs="*", help="more train.py flags for every run, after --")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = [r for r in PRESETS[a.preset] if not a.methods or r[0] in a.methods.split(",")]
    root = os.path.join(a.out, a.preset)
    prompts, sft_cache, results = task.test_prompts(), {}, []
    for seed in seeds:
        for label, flags in runs:
            results.append(run_one(root, label, flags, seed, a, prompts, sft_cache))
            print(f"== {label} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[-1].items()
                                                         if isinstance(v, float)))
    print(f"\n{a.preset}: {len(seeds)} seed(s) {a.seeds}, {a.max_steps} steps, n_train {a.n_train}\n")
    print(table(results, ["win_vs_sft", "judge_acc", "correct", "length"]))


if __name__ == "__main__":
    main()
