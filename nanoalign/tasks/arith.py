"""
The built-in task: "What is 17 + 8?", answered by a tiny model, scored by an exact oracle.

Why this task: every response can be scored exactly and instantly, a tiny byte-level model learns
it on a laptop CPU in minutes but only partly (a in 0..19 plus b in 0..9: 200 facts; with larger
operands 0.8M parameters learned no sums at all in 2000 steps), and it has objectives that sometimes agree, sometimes conflict and
often tie, like UltraFeedback's principles:

  correct  1 if the last number in the response is the sum, else 0
  concise  1 if at most 6 characters, 0.5 if at most 16, else 0
  format   1 if the response ends with a period, else 0
  overall  their weighted mean, correctness counted twice (a wrong sum should rarely win on style
           alone); a pair's chosen response has the higher overall score

"3 + 4 = 7." is correct and formatted but not concise; "7" is correct and concise but unformatted:
they tie on correctness and conflict on the other two. The SFT data mixes all answer styles and
25% wrong sums (like real SFT data of mixed quality), so alignment has room to show.

Everything is generated from a seed, in the same JSONL conventions as user data (see rows.py), so
the built-in task exercises exactly the code path a real data set does. The default model is the
"tiny" preset with a byte-level tokenizer built here in milliseconds (256 bytes + 6 specials).
"""
import os
import random
import re
from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

from model.checkpoint import read_json
from model.tokenizer import Tokenizer
from nanoalign import dist
from nanoalign.checkpoint import saved_step
from nanoalign.common import option

NAME = "arith"
MAX_NEW_TOKENS = 32

OBJECTIVES = {
    "correct": "the number given as the answer is the true sum",
    "concise": "the answer is as short as possible",
    "format": "the answer is a sentence that ends with a period",
}
WEIGHTS = {"correct": 2.0, "concise": 1.0, "format": 1.0}
STYLES = ["{n}", "{n}.", "= {n}.", "The sum is {n}.", "{a} + {b} = {n}.", "{a} + {b} = {n}",
          "The answer is {n}", "I think it is {n}.", "Sure! {a} plus {b} equals {n}"]
SPECIALS = ["<|bos|>", "<|end|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
PROMPT_RE = re.compile(r"What is (\d+) \+ (\d+)\?")


@dataclass
class Options:
    """The arithmetic task's sizes: its rows, and the SFT warm-up a default run starts from."""
    n_train: int = option(4000, "built-in task: training rows", minimum=1)
    n_val: int = option(256, "built-in task: validation rows", minimum=1)
    n_warm: int = option(4000, "built-in task: SFT rows of the warm-up for --init_from default", minimum=1)
    warm_steps: int = option(800, "built-in task: SFT warm-up steps for --init_from default", minimum=1)
    warm_lr: float = option(2e-3, "built-in task: SFT warm-up learning rate", above=0.0)


ROW_OPTIONS = ("n_train", "n_val")


# -- the oracle ----------------------------------------------------------------------------------
def parse_prompt(prompt):
    m = PROMPT_RE.search(prompt if isinstance(prompt, str) else prompt[-1]["content"])
    if not m:
        raise ValueError(f"not a built-in task prompt: {prompt!r}")
    return int(m.group(1)), int(m.group(2))


def oracle_scores(prompt, response):
    """{objective: score in [0, 1]} for one response, plus 'overall' (their weighted mean)."""
    a, b = parse_prompt(prompt)
    r = response.strip()
    nums = re.findall(r"-?\d+", r)
    s = {"correct": float(bool(nums) and int(nums[-1]) == a + b),
         "concise": 1.0 if len(r) <= 6 else 0.5 if len(r) <= 16 else 0.0,
         "format": float(r.endswith("."))}
    s["overall"] = sum(WEIGHTS[k] * s[k] for k in OBJECTIVES) / sum(WEIGHTS.values())
    return s


# -- the generator -------------------------------------------------------------------------------
def _response(rng, a, b, p_correct):
    n = a + b
    if rng.random() >= p_correct:  # a plausible mistake: off by a little, or a dropped carry
        n = rng.choice([n + rng.choice([-10, -2, -1, 1, 2, 10]), (a % 10 + b % 10) % 10 + 10 * ((a // 10 + b // 10) % 10)])
        n = n if n != a + b else n + 1
    return rng.choice(STYLES).format(a=a, b=b, n=n)


def _prompt(a, b):
    return f"What is {a} + {b}?"


def _operands(rng, split):
    # All splits draw from the same 200 facts: the tiny model memorizes sums rather than learning
    # to add (it scored 0% on pairs never seen in training, 90% on seen ones), so holding pairs out
    # would measure nothing. Splits differ in their sampled responses and preference pairs; the
    # evaluation measures the answer policy a method learns, not generalization to new sums.
    return rng.randrange(0, 20), rng.randrange(0, 10)


def sft_rows(n, seed, split="train", p_correct=0.75):
    rng = random.Random(f"sft-{seed}-{split}")
    rows = []
    for _ in range(n):
        a, b = _operands(rng, split)
        rows.append({"prompt": _prompt(a, b), "response": _response(rng, a, b, p_correct)})
    return rows


def preference_rows(n, seed, split="train", p_correct=0.6):
    """Rows {prompt, chosen, rejected, labels, objectives, scores}; `labels` is one of 1/2/equal per
    objective (response 1 = chosen) and `objectives` their text markers {name: description}: the
    MetaAligner schema (rows.py). Pairs whose overall scores tie are skipped."""
    rng = random.Random(f"pref-{seed}-{split}")
    rows = []
    while len(rows) < n:
        a, b = _operands(rng, split)
        p = _prompt(a, b)
        r1, r2 = _response(rng, a, b, p_correct), _response(rng, a, b, p_correct)
        s1, s2 = oracle_scores(p, r1), oracle_scores(p, r2)
        if s1["overall"] == s2["overall"]:
            continue
        if s2["overall"] > s1["overall"]:
            r1, r2, s1, s2 = r2, r1, s2, s1
        labels = {k: "1" if s1[k] > s2[k] else "2" if s2[k] > s1[k] else "equal" for k in OBJECTIVES}
        rows.append({"prompt": p, "chosen": r1, "rejected": r2, "labels": labels,
                     "objectives": OBJECTIVES, "scores": [s1, s2]})
    return rows


def weak_rows(n, seed):
    """A weak policy's answers (MetaAligner's test of correcting any policy): 30% right sums."""
    return sft_rows(n, seed, "weak", p_correct=0.3)


def rationale(prompt, response, principle=None):
    """A short, true justification of a response's scores (the oracle's 'rationale' for JSFT)."""
    s, r = oracle_scores(prompt, response), response.strip()
    parts = {"correct": "right sum" if s["correct"] else "wrong sum",
             "concise": f"{len(r)} chars",
             "format": "ends with a period" if s["format"] else "no period"}
    return parts[principle] if principle else ", ".join(parts.values())


def rows(kind, split, seed, options):
    """A split's rows of a row kind ('sft', 'pref' or 'prompt': preference rows have prompts too),
    options.n_train or options.n_val of them."""
    n = options.n_train if split == "train" else options.n_val
    return sft_rows(n, seed, split) if kind == "sft" else preference_rows(n, seed, split)


def warm_start(shared, train_fn):
    """The SFT start of every default run (--init_from default): `shared` = the run's shared and task options;
    trained once by train_fn(**config) and cached under out/_warm, keyed by its own settings and by
    where it trains (a device other than the CPU, more than one rank)."""
    key = f"{shared['model_preset']}-s{shared['seed']}-n{shared['n_warm']}-w{shared['warm_steps']}-" \
          f"lr{shared['warm_lr']:g}"
    # Where it trains changes its weights too: --dtype auto is bf16 on CUDA (with fused AdamW), and W
    # torchrun ranks train at W times the batch. One process on the CPU keeps the key it always had
    # (earlier caches stay valid). The run's own --dtype never reaches the warm-up: not in the key
    device = dist.setup(shared["device"])   # this rank's device; joins torchrun's group, if launched by it
    kind, ranks = device.split(":")[0], dist.world()
    key += ("" if kind == "cpu" else f"-{kind}") + ("" if ranks == 1 else f"-x{ranks}")
    path = os.path.join("out", "_warm", key)
    # a warm-up stopped by Ctrl-C leaves a checkpoint of its last step: continue it, never use it,
    # and with its own settings (a resumed run refuses others; this run's may differ, max_length say)
    ckpt = os.path.join(path, "ckpt")
    done = saved_step(ckpt)
    if done < shared["warm_steps"]:
        print(f"== SFT warm-up of a '{shared['model_preset']}' model on the built-in task -> {path}"
              + (f" (continued from step {done} of {shared['warm_steps']})" if done else
                 f" ({shared['warm_steps']} steps, once: a later run of the same --model_preset, --seed, "
                 f"--n_warm, --warm_steps and --warm_lr starts from it; --init_from scratch starts "
                 f"without one)"))
        # the key's settings, the run's device, and every other option at its default: whatever else
        # the run sets (its batch size, LoRA, the method's own max_length) is not the warm-up's, which
        # the next run, with other settings, will take from the cache
        fresh = {k: shared[k] for k in ("model_preset", "seed", "n_warm", "warm_steps", "warm_lr", "device")}
        fresh.update(method="sft", init_from="scratch", out_dir=path, n_train=shared["n_warm"],
                     max_steps=shared["warm_steps"], lr=shared["warm_lr"], final_eval=False, warmup_steps=20,
                     resume=False)
        # (continued: its saved settings, but the run's device, which a resume may change: one stopped
        # under --device auto on a GPU machine is continued by a run given --device cuda, whose key
        # is the same)
        train_fn(**({**read_json(os.path.join(ckpt, "state.json"))["config"], "resume": True,
                     "device": shared["device"]} if done else fresh))
        print("== warm-up done")
    return os.path.join(path, "ckpt")


def test_prompts(n=200, seed=0):
    rng = random.Random(f"test-{seed}")
    return [_prompt(*_operands(rng, "test")) for _ in range(n)]


# -- the tokenizer -------------------------------------------------------------------------------
def _bytes_to_unicode():
    """GPT-2's reversible map from the 256 bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer():
    """Byte-level tokenizer, no merges: ids 0-255 are bytes, 256-261 the special tokens."""
    b2u = _bytes_to_unicode()
    vocab = {b2u[i]: i for i in range(256)}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    return Tokenizer(tok, bos_id=ids["<|bos|>"], eos_id=ids["<|end|>"], pad_id=ids["<|pad|>"],
                     add_bos=False, chat_format="selfjudge")
