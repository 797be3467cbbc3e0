"""
The judge's command line: a checkpoint judges pairs from a file, as the methods and sample.py
--best_of ask it (nanoalign/judge.py, whose functions this calls).

    python -m nanoalign.judge_cli --init_from DIR --pairs pairs.jsonl [--judge_template ultrafeedback]
    python -m nanoalign.judge_cli ... --judge_template principle --principles "honesty:tells the truth,..."
    python -m nanoalign.judge_cli ... --likelihood pair            # OSP's rule instead of Self-Judge's

A pair is a {prompt, a, b} row (a and b strings or chat messages), or a preference row as train.py
reads it: {prompt, chosen, rejected}, or TRL's implicit prompt {chosen, rejected} (a = chosen,
b = rejected). Per pair it prints {"row": the pair's index, from 0; "line": its line in the file,
from 1; "p(a>b)": p(a > b)}, scored in both position orders (and under each principle, combined by
win rate, for a principle template). A bad row stops it with one error naming its file, line and
field, before the model loads.
"""
# A module of its own, not judge.py's `main`: `python -m` runs a module a second time when its
# package already imported it, which the package does for judge.py (every method file imports it),
# and Python warns each time (tests/judge/test_cli.py test_the_judge_command_runs_without_a_warning).
import argparse
import json
import os
import sys

import torch

from model.chat_template import CHAT_FORMAT_HELP, CHAT_FORMATS
from model.checkpoint import CheckpointError, load
from model.model import TooLongForContext
from model.tokenizer import NoChatTemplate, answer_text
from nanoalign.compute import device_problem
from nanoalign.data import read_jsonl
from nanoalign.judge import (LIKELIHOODS, TEMPLATES, JudgeError, check_template, judge_pairs, judging,
                             recorded_judging)
from nanoalign.onpolicy import PRINCIPLES_FILE, judging_overridden, principles_for
from nanoalign.rows import read_pair
from nanoalign.textfile import DataError


def build_parser():
    # The parser is prose (help texts) and argparse's rules; tests/judge/test_cli.py checks its behaviour,
    # and mutating the wording of each help text would only test the tests' copy of it (docs/mutation.md).
    # pragma: no mutate start
    ap = argparse.ArgumentParser(prog="python -m nanoalign.judge_cli", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--init_from", required=True, help="checkpoint directory of the judge model")
    ap.add_argument("--pairs", required=True, help="JSONL of {prompt, a, b} rows, or of preference rows "
                    "as train.py reads them ({prompt, chosen, rejected}, or TRL's implicit prompt "
                    "{chosen, rejected}: a = chosen, b = rejected), read and checked as train.py reads "
                    "its data (UTF-8, a BOM allowed)")
    ap.add_argument("--judge_template", "--template", default=None, choices=sorted(TEMPLATES),
                    help="judgment template (the Self-Judge paper's appendix A.5, or a compact one; "
                         "default: the one the checkpoint trained with, else 'compact', as "
                         "sample.py --best_of and the on-policy methods; --template is the same flag)")
    ap.add_argument("--principles", default=None, help="for a principle template: name:description,... "
                    "judged under each, decided by win rate; a description may hold commas, only a comma "
                    "followed by a new 'name:' starts the next principle (a name is letters, "
                    "digits, _ and -) (default: the principles kept in the checkpoint, its "
                    f"{PRINCIPLES_FILE}, as sample.py --best_of)")
    ap.add_argument("--batch_size", type=int, default=16, help="rows per forward pass (default: %(default)s)")
    ap.add_argument("--likelihood", default=None, choices=sorted(LIKELIHOODS),
                    help="how label probabilities become p(a>b), a choice: 'vocab' = "
                         f"{LIKELIHOODS['vocab']}; 'pair' = {LIKELIHOODS['pair']} (default: the rule "
                         "the checkpoint records, else 'vocab')")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", metavar="DEV",
                    help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu; "
                    "here %(default)s)")
    ap.add_argument("--chat_format", default="", choices=CHAT_FORMATS, metavar="NAME",
                    help=CHAT_FORMAT_HELP + ". The judgments are chats in it (default: '')")
    # pragma: no mutate end
    return ap


def read_pairs(path):
    """[(line number, prompt, a, b)] of a --pairs file, a and b the answers' text. Read by train.py's
    reader (data.read_jsonl: UTF-8, a BOM dropped, a file that is no JSONL or no text said to be so at
    once), each row checked by rows.read_pair, so a bad row is a DataError naming its file, line and
    field. Only reading raises DataError: nothing else is blamed on a row."""
    rows, _ = read_jsonl(path, read_pair)
    return [(int(r["_where"].rsplit(":", 1)[1]), r["prompt"], answer_text(r["a"]), answer_text(r["b"]))
            for r in rows]


def principles_of(a, t):
    """onpolicy.principles_for, as sample.py --best_of asks it; kept principles are named on stderr:
    the user gave none."""
    principles = principles_for(t, a.principles, a.init_from)
    if principles is not None and not a.principles:
        print(f"--- judging under principles {', '.join(n for n, _ in principles)} (those kept in the "
              f"checkpoint: {os.path.join(a.init_from, PRINCIPLES_FILE)})", file=sys.stderr)
    return principles


def main(argv=None):
    ap = build_parser()
    a = ap.parse_args(argv)
    if why := device_problem(a.device):     # before loading: a typo is no torch traceback
        ap.error(why)
    if a.batch_size < 1:
        ap.error(f"--batch_size must be >= 1, got {a.batch_size}")
    try:
        used = judging(a.init_from, vars(a))    # a judge judges as it trained, as in sample.py --best_of
        if note := judging_overridden(a.init_from, recorded_judging(a.init_from), used):
            print(note, file=sys.stderr)        # obeyed, but a template it never saw may judge near chance
        t = TEMPLATES[used["judge_template"]]
        principles = principles_of(a, t)
        pairs = read_pairs(a.pairs)             # a bad row said in a second, not after a large model loads
        model, tok = load(a.init_from, torch.float32, a.device, a.chat_format or None)
        if tok.template is None:                # said naming this flag, not load()'s argument
            raise NoChatTemplate(a.init_from, how="--chat_format")
        t = check_template(tok, t)
        ps = judge_pairs(model, tok, t, [p[1:] for p in pairs], principles, a.batch_size,
                         likelihood=used["likelihood"])
    except (CheckpointError, DataError, JudgeError, OSError) as e:
        raise SystemExit(f"error: {e}")
    except TooLongForContext as e:         # a long pair in a long template: say what may fit
        shorter = "" if t.name.startswith("compact") else "; a shorter --judge_template such as 'compact' may fit"
        raise SystemExit(f"error: a judgment of a pair in --pairs {a.pairs} is too long: {e}{shorter}")
    for i, ((line, *_), p) in enumerate(zip(pairs, ps.tolist())):
        print(json.dumps({"row": i, "line": line, "p(a>b)": round(p, 4)}))


if __name__ == "__main__":
    main()
