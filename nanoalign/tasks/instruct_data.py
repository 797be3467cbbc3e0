"""
On-policy preference data for a built-in task (the `instruct` task, nanoalign/tasks/instruct.py, whose
command line this is): K samples per prompt from the start model, scored by the task's oracle,
written as the JSONL kinds nanoalign reads.

    python -m nanoalign.tasks.instruct build --init_from checkpoints/smollm2-135m --out out/instruct_data \
        --k 4 --n_prompts 2000 --seed 1 [--n_val 256] [--temperature 0.7] [--top_p 0.9]

The directory it writes:
  samples.jsonl      one line per prompt: {split, prompt, responses: [K texts], scores: [K oracle
                     score dicts], truncated: [K bools: the sample hit max_new_tokens]}
  pref.train.jsonl   preference rows {prompt, chosen, rejected, labels, objectives, scores}: every
  pref.val.jsonl     pair of a prompt's distinct samples whose overall scores differ (the MetaAligner
                     and principle-aware JSFT schema; JSFT's judgment rows are derived from these by
                     the library; on-policy methods read their prompts)
  build.json         the sidecar: the command, the seed and every setting that decides the samples,
                     the task's name and VERSION, counts and mean scores

Deterministic given the seed: prompts come from the task's prompts(n, seed, split), and
batch b of a split samples with its own torch.Generator seeded from (seed, split, b), so the same
settings on the same hardware give the same files, and an interrupted build (samples.partial.jsonl)
continues where it stopped. A directory whose build.json holds the same settings is reused as it is
(nothing is sampled); one built with other settings is an error, never overwritten.

A checkpoint without a chat template is an error (NoChatTemplateError): the task's prompts are chat
turns, and a base model's raw continuation of them says nothing about the instruct policy.

The task is an argument (a module with NAME, VERSION, SPLITS, prompts, oracle_scores and
pairs_from_samples), so this file imports nothing of the task and the task imports it.
"""
import argparse
import json
import os
import shlex
import sys
import time

import torch

from model.files import CheckpointError, atomic_write_json

SIDECAR = "build.json"
SAMPLES = "samples.jsonl"
PARTIAL = "samples.partial.jsonl"


class NoChatTemplateError(CheckpointError):
    """The tokenizer cannot render a chat prompt: no template of its own and no named format."""


class BuildError(CheckpointError):
    """A data directory that holds another build."""


def encode_prompt(tok, prompt):
    """Token ids of a user prompt up to where the assistant speaks, through the checkpoint's chat
    template: the one place this module asks a tokenizer for prompt ids. Works with nanoalign's
    Tokenizer (encode_prompt) and with any tokenizer that has apply_chat_template; a tokenizer with
    neither a template (chat_template / template) nor a named fallback format (chat_format) is a
    NoChatTemplateError."""
    has_template = any(getattr(tok, a, None) is not None for a in ("chat_template", "template", "chat_format"))
    if not has_template:
        name = getattr(tok, "name", None) or type(tok).__name__
        raise NoChatTemplateError(
            f"{name}: the tokenizer has no chat template and no named chat format, so the task's chat "
            f"prompts cannot be rendered; use an instruct checkpoint with its template (in "
            f"tokenizer_config.json or chat_template.jinja), or name a fallback format with "
            f"\"nanoalign_chat_format\" in tokenizer_config.json")
    if hasattr(tok, "encode_prompt"):
        return list(tok.encode_prompt(prompt))
    if hasattr(tok, "apply_chat_template"):
        return list(tok.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True))
    raise NoChatTemplateError(f"{type(tok).__name__}: neither encode_prompt nor apply_chat_template")


def settings(task, init_from, k, n_prompts, n_val, seed, temperature, top_p, max_new_tokens, batch_size):
    """What decides the samples: the cache key of a build."""
    return {"task": task.NAME, "task_version": task.VERSION, "init_from": init_from, "k": k,
            "n_prompts": n_prompts, "n_val": n_val, "seed": seed, "temperature": temperature,
            "top_p": top_p, "max_new_tokens": max_new_tokens, "batch_size": batch_size}


def _generator(seed, split, b, device):
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + ("train", "val", "test").index(split) * 7919 + b) % (2 ** 63))
    return g


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(rows, path):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def sample_split(model, tok, task, split, n, s, partial_f, done):
    """Scored sample records of one split's n prompts, batch by batch; batches already in `done`
    (an interrupted build's records) are taken as they are."""
    from nanoalign.onpolicy import sample
    device = next(model.parameters()).device
    prompts = task.prompts(n, s["seed"], split)
    stop = set(model.cfg.eos_ids + [tok.eos_id])
    out = []
    for b, i in enumerate(range(0, n, s["batch_size"])):
        batch = prompts[i:i + s["batch_size"]]
        if all((split, i + j) in done for j in range(len(batch))):
            out += [done[(split, i + j)] for j in range(len(batch))]
            continue
        ids = [encode_prompt(tok, p) for p in batch]
        samples = sample(model, tok, ids, s["k"], s["temperature"], s["top_p"], s["max_new_tokens"],
                         _generator(s["seed"], split, b, device))
        for j, (p, cands) in enumerate(zip(batch, samples)):
            texts = [tok.decode(c).strip() for c in cands]
            rec = {"split": split, "index": i + j, "prompt": p, "responses": texts,
                   "scores": [task.oracle_scores(p, t) for t in texts],
                   "truncated": [not c or c[-1] not in stop for c in cands]}
            out.append(rec)
            partial_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        partial_f.flush()
    return out


def _summary(task, records, pairs):
    n = sum(len(r["responses"]) for r in records) or 1
    mean = {k: sum(s[k] for r in records for s in r["scores"]) / n for k in list(task.OBJECTIVES) + ["overall"]}
    return {"prompts": len(records), "samples": n, "pairs": pairs, "mean_scores": mean,
            "truncated": sum(sum(r["truncated"]) for r in records) / n}


def build(task, out, k=4, n_prompts=1000, seed=0, n_val=None, model=None, tok=None, init_from=None,
          temperature=0.7, top_p=0.9, max_new_tokens=128, batch_size=16, device="cpu", command=None,
          log=print):
    """Build (or reuse) the on-policy data directory `out` of a task; returns its sidecar dict (with
    "reused": True when nothing was sampled). The model comes from `init_from` (loaded only when
    sampling is needed) unless `model` and `tok` are given; `init_from` is recorded either way and is
    part of the cache key. n_val defaults to max(16, n_prompts // 8)."""
    n_val = max(16, n_prompts // 8) if n_val is None else n_val
    s = settings(task, init_from, k, n_prompts, n_val, seed, temperature, top_p, max_new_tokens, batch_size)
    side = os.path.join(out, SIDECAR)
    if os.path.exists(side):
        with open(side) as f:
            old = json.load(f)
        if {key: old.get(key) for key in s} != s:
            diff = ", ".join(f"{key} {old.get(key)!r} (asked {v!r})" for key, v in s.items() if old.get(key) != v)
            raise BuildError(f"{side}: this directory holds another build ({diff}); pass another --out, or "
                             f"delete {out} to rebuild")
        if old.get("finished"):
            log(f"{out}: reusing the samples built by `{old.get('command')}`")
            return {**old, "reused": True}
    os.makedirs(out, exist_ok=True)
    atomic_write_json({**s, "command": command, "finished": False}, side)
    partial = os.path.join(out, PARTIAL)
    done = {}
    if os.path.exists(partial):
        for rec in _read_jsonl(partial):
            done[(rec["split"], rec["index"])] = rec
        log(f"{out}: continuing an interrupted build ({len(done)} prompts sampled)")
    if model is None:
        from model.checkpoint import load
        if not init_from:
            raise BuildError("build: give init_from (a checkpoint directory) or a model and its tokenizer")
        model, tok = load(init_from, torch.float32, device)
    encode_prompt(tok, "Hi")   # a checkpoint without a chat template fails here, before any sampling
    t0 = time.time()
    with open(partial, "a", encoding="utf-8") as pf:
        records = []
        for split, n in (("train", n_prompts), ("val", n_val)):
            records += sample_split(model, tok, task, split, n, s, pf, done)
            log(f"{split}: {n} prompts x {k} samples ({time.time() - t0:.0f}s)")
    _write_jsonl(records, os.path.join(out, SAMPLES))
    counts = {}
    for split in ("train", "val"):
        rows = task.pairs_from_samples([r for r in records if r["split"] == split])
        _write_jsonl(rows, os.path.join(out, f"pref.{split}.jsonl"))
        counts[split] = _summary(task, [r for r in records if r["split"] == split], len(rows))
    side_data = {**s, "command": command, "finished": True, "seconds": round(time.time() - t0, 1),
                 "counts": counts}
    atomic_write_json(side_data, side)
    os.remove(partial)
    return {**side_data, "reused": False}


def load_samples(path, split=None):
    """The sample records of a built directory (one split, or all)."""
    f = os.path.join(path, SAMPLES)
    if not os.path.exists(f):
        raise BuildError(f"{f}: missing; build it with `python -m nanoalign.tasks.<task> build --out {path} ...`")
    recs = _read_jsonl(f)
    return [r for r in recs if split is None or r["split"] == split]


def main(task, argv=None):
    """The `build` command line of a task module: python -m nanoalign.tasks.<task> build ..."""
    argv = sys.argv[1:] if argv is None else argv
    prog = f"python -m {task.__name__ if task.__name__ != '__main__' else 'nanoalign.tasks.' + task.NAME} build"
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init_from", required=True, help="checkpoint directory of the start model")
    ap.add_argument("--out", required=True, help="data directory (reused when built with these settings)")
    ap.add_argument("--k", type=int, default=4, help="samples per prompt")
    ap.add_argument("--n_prompts", type=int, default=1000, help="training prompts")
    ap.add_argument("--n_val", type=int, default=None, help="validation prompts (default n_prompts/8, >= 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top_p", type=float, default=0.9)
    ap.add_argument("--max_new_tokens", type=int, default=task.MAX_NEW_TOKENS)
    ap.add_argument("--batch_size", type=int, default=16, help="prompts per generate call (x k rows)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    a = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    command = f"{prog} " + " ".join(shlex.quote(x) for x in argv)
    try:
        side = build(task, a.out, a.k, a.n_prompts, a.seed, a.n_val, init_from=a.init_from,
                     temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                     batch_size=a.batch_size, device=device, command=command)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for split, c in side.get("counts", {}).items():
        print(f"{split}: {c['prompts']} prompts, {c['samples']} samples, {c['pairs']} pairs, truncated "
              f"{c['truncated']:.2f}; mean " + ", ".join(f"{k} {v:.3f}" for k, v in c["mean_scores"].items()))
    print(f"preference rows: {os.path.join(a.out, 'pref.train.jsonl')} (val: pref.val.jsonl)")
    return side

