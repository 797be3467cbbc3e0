"""
On-policy preference data for the `instruct` task: K samples per prompt from the start model,
scored by the task's oracle, written as the JSONL kinds nanoalign reads, and read back as
preference rows (the task's 'pref' rows, train.py --task_data DIR).

    python -m nanoalign.tasks.instruct build --init_from checkpoints/smollm2-135m --out out/instruct_data \\
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

A checkpoint without a chat template (or a named fallback format, `chat_format`) is an error
(model/tokenizer.py NoChatTemplate): the task's prompts are chat turns, and a base model's raw
continuation of them says nothing about the instruct policy.
"""
import json
import os
import random
import time
from itertools import combinations

import torch

from model.files import CheckpointError, atomic_write_json
from nanoalign.tasks.instruct.generate import prompts
from nanoalign.tasks.instruct.scoring import OBJECTIVES, oracle_scores
from nanoalign.tasks.instruct.tables import NAME

# the version of the task's prompts and scores that a build records (build.json): bump it when
# wording.py, generate.py, truth.py or scoring.py change what they give
VERSION = 2
MAX_NEW_TOKENS = 128      # answers here are longer than the arithmetic task's 32 tokens
SIDECAR = "build.json"
SAMPLES = "samples.jsonl"
PARTIAL = "samples.partial.jsonl"


class BuildError(CheckpointError):
    """A data directory that holds another build."""


# -- sampling ------------------------------------------------------------------------------------------
def settings(init_from, k, n_prompts, n_val, seed, temperature, top_p, max_new_tokens, batch_size,
             chat_format=None):
    """What decides the samples: the cache key of a build (a build.json written before chat_format
    was a setting reads as None, the checkpoint's own template, which it was)."""
    return {"task": NAME, "task_version": VERSION, "init_from": init_from, "chat_format": chat_format,
            "k": k, "n_prompts": n_prompts, "n_val": n_val, "seed": seed, "temperature": temperature,
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


def sample_split(model, tok, split, n, s, partial_f, done):
    """Scored sample records of one split's n prompts, batch by batch; batches already in `done`
    (an interrupted build's records) are taken as they are."""
    from nanoalign.onpolicy import sample
    device = next(model.parameters()).device
    texts_of_split = prompts(n, s["seed"], split)
    stop = set(model.cfg.eos_ids + [tok.eos_id])
    out = []
    for b, i in enumerate(range(0, n, s["batch_size"])):
        batch = texts_of_split[i:i + s["batch_size"]]
        if all((split, i + j) in done for j in range(len(batch))):
            out += [done[(split, i + j)] for j in range(len(batch))]
            continue
        ids = [tok.encode_prompt(p) for p in batch]
        samples = sample(model, tok, ids, s["k"], s["temperature"], s["top_p"], s["max_new_tokens"],
                         _generator(s["seed"], split, b, device))
        for j, (p, cands) in enumerate(zip(batch, samples)):
            texts = [tok.decode(c).strip() for c in cands]
            rec = {"split": split, "index": i + j, "prompt": p, "responses": texts,
                   "scores": [oracle_scores(p, t) for t in texts],
                   "truncated": [not c or c[-1] not in stop for c in cands]}
            out.append(rec)
            partial_f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        partial_f.flush()
    return out


# -- preference rows from scored samples -----------------------------------------------------------------
def preference_row(prompt, r1, r2, s1=None, s2=None):
    """A preference row {prompt, chosen, rejected, labels, objectives, scores} of two scored
    responses (the one with the higher overall score is chosen), or None when they tie."""
    s1, s2 = s1 or oracle_scores(prompt, r1), s2 or oracle_scores(prompt, r2)
    if s1["overall"] == s2["overall"]:
        return None
    if s2["overall"] > s1["overall"]:
        r1, r2, s1, s2 = r2, r1, s2, s1
    labels = {k: "1" if s1[k] > s2[k] else "2" if s2[k] > s1[k] else "equal" for k in OBJECTIVES}
    return {"prompt": prompt, "chosen": r1, "rejected": r2, "labels": labels, "objectives": OBJECTIVES,
            "scores": [s1, s2]}


def pairs_from_samples(records):
    """Preference rows from scored samples [{prompt, responses, ...}]: every pair of distinct
    responses of a prompt whose overall scores differ, in a fixed order."""
    rows = []
    for rec in records:
        texts = list(dict.fromkeys(t for t in rec["responses"] if t.strip()))
        scores = {t: oracle_scores(rec["prompt"], t) for t in texts}
        for a, b in combinations(texts, 2):
            row = preference_row(rec["prompt"], a, b, scores[a], scores[b])
            if row:
                rows.append(row)
    return rows


# -- the data directory ----------------------------------------------------------------------------------
def _summary(records, pairs):
    n = sum(len(r["responses"]) for r in records) or 1
    mean = {k: sum(s[k] for r in records for s in r["scores"]) / n for k in list(OBJECTIVES) + ["overall"]}
    return {"prompts": len(records), "samples": n, "pairs": pairs, "mean_scores": mean,
            "truncated": sum(sum(r["truncated"]) for r in records) / n}


def build(out, k=4, n_prompts=1000, seed=0, n_val=None, model=None, tok=None, init_from=None,
          temperature=0.7, top_p=0.9, max_new_tokens=128, batch_size=16, device="cpu", command=None,
          log=print, chat_format=None):
    """Build (or reuse) the task's on-policy data directory `out`; returns its sidecar dict (with
    "reused": True when nothing was sampled). The model comes from `init_from` (loaded only when
    sampling is needed) unless `model` and `tok` are given; `init_from` is recorded either way and is
    part of the cache key, as is `chat_format` (a named format the loaded checkpoint speaks instead of
    its own template; a `tok` given speaks its own). n_val defaults to max(16, n_prompts // 8)."""
    n_val = max(16, n_prompts // 8) if n_val is None else n_val
    s = settings(init_from, k, n_prompts, n_val, seed, temperature, top_p, max_new_tokens, batch_size,
                 chat_format)
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
    if model is None:
        from model.checkpoint import load
        if not init_from:
            raise BuildError("build: give init_from (a checkpoint directory) or a model and its tokenizer")
        model, tok = load(init_from, torch.float32, device, chat_format)
    # a checkpoint without a chat template fails here, before the directory is claimed for these
    # settings (the same command with --chat_format must find it free)
    tok.encode_prompt("Hi")
    os.makedirs(out, exist_ok=True)
    atomic_write_json({**s, "command": command, "finished": False}, side)
    partial = os.path.join(out, PARTIAL)
    done = {}
    if os.path.exists(partial):
        for rec in _read_jsonl(partial):
            done[(rec["split"], rec["index"])] = rec
        log(f"{out}: continuing an interrupted build ({len(done)} prompts sampled)")
    t0 = time.time()
    with open(partial, "a", encoding="utf-8") as pf:
        records = []
        for split, n in (("train", n_prompts), ("val", n_val)):
            records += sample_split(model, tok, split, n, s, pf, done)
            log(f"{split}: {n} prompts x {k} samples ({time.time() - t0:.0f}s)")
    _write_jsonl(records, os.path.join(out, SAMPLES))
    counts = {}
    for split in ("train", "val"):
        rows = pairs_from_samples([r for r in records if r["split"] == split])
        _write_jsonl(rows, os.path.join(out, f"pref.{split}.jsonl"))
        counts[split] = _summary([r for r in records if r["split"] == split], len(rows))
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


def _records(source, split):
    if isinstance(source, (str, os.PathLike)):
        return load_samples(str(source), split)
    return [r for r in source if r.get("split", split) == split]


def preference_rows(n, seed, split="train", samples=None):
    """Up to n preference rows of a split from on-policy samples: a directory built by
    `python -m nanoalign.tasks.instruct build`, or sample records {prompt, responses, split}. Every
    non-tied pair of a prompt's samples is a row; the seed shuffles them. Fewer than n pairs: all of
    them, never repeats."""
    if not samples:
        from nanoalign.data import DataError
        raise DataError(f"the '{NAME}' task's preference rows are built on-policy from the start model: "
                        f"run `python -m nanoalign.tasks.instruct build --init_from CKPT --out DIR --k 4 "
                        f"--n_prompts N --seed S`, then pass --task_data DIR")
    rows = pairs_from_samples(_records(samples, split))
    random.Random(f"instruct-pref-{seed}-{split}").shuffle(rows)
    return rows[:n]
