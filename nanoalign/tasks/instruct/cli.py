"""
The `instruct` task's command line (python -m nanoalign.tasks.instruct, through __main__.py):

    python -m nanoalign.tasks.instruct build --init_from checkpoints/smollm2-135m --out out/instruct_data \\
        --k 4 --n_prompts 2000 --seed 1       # on-policy preference data (samples.py; see build --help)
    python -m nanoalign.tasks.instruct examples --n 5        # prompts, written answers and their scores
"""
import argparse
import os
import random
import shlex
import sys

import nanoalign.tasks.instruct.samples as samples
from model.chat_template import CHAT_FORMAT_HELP, CHAT_FORMATS
from model.files import CheckpointError
from model.tokenizer import NoChatTemplate
from nanoalign.dist import resolve_device
from nanoalign.tasks.instruct.generate import make_spec
from nanoalign.tasks.instruct.responses import STYLES, write_response
from nanoalign.tasks.instruct.scoring import oracle_scores
from nanoalign.tasks.instruct.tables import NAME, SPLITS
from nanoalign.tasks.instruct.wording import render


def build_main(argv):
    """The `build` command: samples.build from the command line; returns the sidecar dict."""
    prog = f"python -m nanoalign.tasks.{NAME} build"
    ap = argparse.ArgumentParser(prog=prog, description=samples.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--init_from", required=True, help="checkpoint directory of the start model")
    ap.add_argument("--out", required=True, help="data directory (reused when built with these settings)")
    ap.add_argument("--k", type=int, default=4, help="samples per prompt (default: %(default)s)")
    ap.add_argument("--n_prompts", type=int, default=1000, help="training prompts (default: %(default)s)")
    ap.add_argument("--n_val", type=int, default=None, help="validation prompts (default n_prompts/8, >= 16)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompts and of the sampling "
                    "(default: %(default)s)")
    ap.add_argument("--temperature", type=float, default=0.7, help="sampling temperature "
                    "(default: %(default)s)")
    ap.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling: keep the most likely "
                    "tokens whose probabilities sum to this (default: %(default)s)")
    ap.add_argument("--max_new_tokens", type=int, default=samples.MAX_NEW_TOKENS,
                    help="most new tokens per sample (default: %(default)s)")
    ap.add_argument("--batch_size", type=int, default=16, help="prompts per generate call (x k rows) "
                    "(default: %(default)s)")
    ap.add_argument("--chat_format", default="", choices=CHAT_FORMATS, metavar="NAME",
                    help=CHAT_FORMAT_HELP + " (default: '')")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="'auto' = cuda when a GPU is visible, else cpu (default: %(default)s)")
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    command = f"{prog} " + " ".join(shlex.quote(x) for x in argv)
    try:
        side = samples.build(a.out, a.k, a.n_prompts, a.seed, a.n_val, init_from=a.init_from,
                             temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                             batch_size=a.batch_size, device=device, command=command,
                             chat_format=a.chat_format or None)
    except NoChatTemplate as e:    # its message names load()'s argument; this command has a flag
        print(f"error: {NoChatTemplate(e.name, how='--chat_format')}", file=sys.stderr)
        sys.exit(2)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for split, c in side.get("counts", {}).items():
        print(f"{split}: {c['prompts']} prompts, {c['samples']} samples, {c['pairs']} pairs, truncated "
              f"{c['truncated']:.2f}; mean " + ", ".join(f"{k} {v:.3f}" for k, v in c["mean_scores"].items()))
    print(f"preference rows: {os.path.join(a.out, 'pref.train.jsonl')} (val: pref.val.jsonl)")
    return side


def main(argv=None):
    """Either command; `build` returns the build's sidecar dict."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["build"]:
        return build_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m nanoalign.tasks.instruct",
                                 description="build: on-policy preference data (see `build --help`); "
                                             "examples: prompts with the task's written answers, scored",
                                 allow_abbrev=False)
    ap.add_argument("command", choices=["build", "examples"], help="'build' (its own flags: "
                    "build --help) or 'examples'")
    ap.add_argument("--n", type=int, default=5, help="examples: how many prompts (default: %(default)s)")
    ap.add_argument("--split", default="train", choices=SPLITS, help="examples: the split the prompts "
                    "come from (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="examples: seed of the prompts "
                    "(default: %(default)s)")
    a = ap.parse_args(argv)
    if a.command == "build":   # not first: flags before it are the examples' (--n 2 build ...)
        ap.error("'build' comes first, its flags after it: python -m nanoalign.tasks.instruct build --help")
    rng = random.Random(a.seed)
    for _ in range(a.n):
        spec = make_spec(rng, a.split)
        p = render(spec)
        print(f"\n{p}")
        for style in STYLES:
            r = write_response(spec, style)
            s = oracle_scores(p, r)
            print(f"  [{style}] {r!r}\n      " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))
