"""
The `instruct` task's generated data, deterministic given a seed and a split: prompt specs (a fact
and wording of the split, one or two instructions that can share a prompt and that the task's own
short answer satisfies), prompt texts, the held-out test prompts, and the SFT rows of written
answers, in the JSONL schema of nanoalign/rows.py.
"""
import functools
import random

from nanoalign.tasks.instruct.responses import STYLES, _wrong, write_response
from nanoalign.tasks.instruct.scoring import instruction_results, is_correct
from nanoalign.tasks.instruct.tables import (BULLETS, END_PHRASES, JSON_KEYS, KEYWORDS, MAX_WORDS, NAME, SPLITS,
                                             UNITS, facts)
from nanoalign.tasks.instruct.wording import INSTRUCTION_TEMPLATES, QUESTIONS, WORDING_SPLIT, render

# -- generating prompts ----------------------------------------------------------------------------------
FAMILIES = tuple(QUESTIONS)
# kinds that cannot share a prompt (JSON is one object: no bullets, no closing phrase, no comma-free
# two-key object, and its keys and quotes make word limits a trap)
EXCLUDES = {("json", "bullets"), ("json", "end_phrase"), ("json", "no_commas"), ("json", "max_words")}


@functools.lru_cache(maxsize=None)
def _split_facts(family, split):
    return [k for k, s in facts(family).items() if s == split]


def _make_fact(family, key, rng):
    if family in ("sum", "product"):
        a, b = key if rng.random() < 0.5 else key[::-1]
        return {"a": a, "b": b}
    if family == "capital":
        return {"country": key}
    if family == "units":
        row = next(u for u in UNITS if u[0] == key)
        return dict(one=row[0], many=row[1], into=row[2], factor=row[3], q=rng.randint(2, 12))
    if family == "letters":
        return {"word": key, "letter": rng.choice(sorted(set(key)))}
    order = list(key)
    while order == sorted(order):
        rng.shuffle(order)
    return {"words": sorted(key), "order": order}


def _make_instructions(rng, split):
    ids = [i for i, s in enumerate(WORDING_SPLIT) if s == split]
    kinds = []
    for _ in range(rng.choice([1, 2])):
        ok = [k for k in INSTRUCTION_TEMPLATES if k not in kinds and
              not any((k, o) in EXCLUDES or (o, k) in EXCLUDES for o in kinds)]
        kinds.append(rng.choice(ok))
    out = []
    for k in kinds:
        params = {"max_words": lambda: {"n": rng.choice(MAX_WORDS)}, "bullets": lambda: {"n": rng.choice(BULLETS)},
                  "keyword": lambda: {"k": rng.choice(KEYWORDS)}, "end_phrase": lambda: {"p": rng.choice(END_PHRASES)},
                  "json": lambda: {"keys": rng.choice(JSON_KEYS)}}.get(k, lambda: {})()
        out.append({"kind": k, "t": rng.choice(ids), "params": params})
    return out


def make_spec(rng, split):
    """One prompt's spec of a split: a fact and wording of that split, and instructions that the
    task's own short answer can satisfy (so every prompt has a correct, compliant answer)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; the '{NAME}' task has {', '.join(SPLITS)}")
    fam = rng.choice(FAMILIES)
    key = rng.choice(_split_facts(fam, split))
    spec = {"family": fam, "q": rng.choice([i for i, s in enumerate(WORDING_SPLIT) if s == split]),
            "fact": _make_fact(fam, key, rng)}
    while True:
        spec["instructions"] = _make_instructions(rng, split)
        short = write_response(spec, "short")
        if all(ok for _, ok in instruction_results(spec, short)) and is_correct(spec, short):
            return spec


def prompts(n, seed, split):
    """n prompt texts of a split, deterministic given (seed, split)."""
    rng = random.Random(f"instruct-prompts-{seed}-{split}")
    return [render(make_spec(rng, split)) for _ in range(n)]


def test_prompts(n=200, seed=0):
    return prompts(n, f"test{seed}", "test")


test_prompts.__test__ = False   # not a pytest test when imported into a test module


# -- rows, in the JSONL schema of nanoalign/rows.py -------------------------------------------------------
def sft_rows(n, seed, split="train", p_correct=1.0, p_follow=1.0):
    """Rows {prompt, response}: the task's written answers, short / plain / explained in equal parts
    (a shorter style where a word limit leaves no room), right with probability p_correct and
    following all instructions with probability p_follow (otherwise one instruction is ignored)."""
    rng = random.Random(f"instruct-sft-{seed}-{split}")
    rows = []
    for _ in range(n):
        spec = make_spec(rng, split)
        value = None if rng.random() < p_correct else _wrong(spec, rng)
        skip = () if rng.random() < p_follow else (rng.choice(spec["instructions"])["kind"],)
        style = rng.choice(STYLES)
        # a word limit may leave no room for a sentence or a reason: the longest style that fits
        while style != "short" and not all(ok for _, ok in instruction_results(
                spec, write_response(spec, style))):
            style = STYLES[STYLES.index(style) - 1]
        rows.append({"prompt": render(spec), "response": write_response(spec, style, value, skip)})
    return rows


def weak_rows(n, seed):
    """A weak policy's answers (MetaAligner's test of correcting any policy): test prompts, 30% right,
    half of them ignoring an instruction."""
    return sft_rows(n, seed, "test", p_correct=0.3, p_follow=0.5)
