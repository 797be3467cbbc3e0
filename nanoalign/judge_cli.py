"""
The judge's command line: a checkpoint judges pairs from a file, as the methods and sample.py
--best_of ask it (nanoalign/judge.py, whose functions this calls).

    python -m nanoalign.judge_cli --init_from DIR --pairs pairs.jsonl [--judge_template ultrafeedback]
    python -m nanoalign.judge_cli ... --judge_template principle --principles "honesty:tells the truth,..."
    python -m nanoalign.judge_cli ... --likelihood pair            # OSP's rule instead of Self-Judge's

prints, per {prompt, a, b} row, p(a > b) scored in both position orders (and under each principle,
combined by win rate, for a principle template). A module of its own, not judge.py's `main`:
`python -m` runs a module a second time when its package already imported it, which the package
does for judge.py (every method file imports it), and Python warns each time.
"""
import argparse
import json

from model.checkpoint import CheckpointError, load
from model.tokenizer import answer_text
from nanoalign.judge import (LIKELIHOODS, TEMPLATES, JudgeError, check_template, judge_pairs, judging,
                             parse_principles)


def main(argv=None):
    # The parser is prose (help texts) and argparse's rules; tests/judge/test_cli.py checks its behaviour,
    # and mutating the wording of each help text would only test the tests' copy of it (docs/mutation.md).
    # pragma: no mutate start
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--init_from", required=True, help="checkpoint directory of the judge model")
    ap.add_argument("--pairs", required=True, help="JSONL of {prompt, a, b} rows (also accepts "
                    "{prompt, chosen, rejected}: a = chosen, b = rejected)")
    ap.add_argument("--judge_template", "--template", default=None, choices=sorted(TEMPLATES),
                    help="judgment template (the Self-Judge paper's appendix A.5, or a compact one; "
                         "default: the one the checkpoint trained with, else 'compact', as "
                         "sample.py --best_of and the on-policy methods; --template is the same flag)")
    ap.add_argument("--principles", default="", help="for a principle template: name:description,... "
                    "judged under each, decided by win rate; a description may hold commas, only a comma "
                    "followed by a new 'name:' starts the next principle (a name is letters, "
                    "digits, _ and -) (default: none; a principle template needs them)")
    ap.add_argument("--batch_size", type=int, default=16, help="rows per forward pass (default: %(default)s)")
    ap.add_argument("--likelihood", default=None, choices=sorted(LIKELIHOODS),
                    help="how label probabilities become p(a>b), a choice: 'vocab' = "
                         f"{LIKELIHOODS['vocab']}; 'pair' = {LIKELIHOODS['pair']} (default: the rule "
                         "the checkpoint records, else 'vocab')")
    # pragma: no mutate end
    a = ap.parse_args(argv)
    try:
        used = judging(a.init_from, vars(a))    # a judge judges as it trained, as in sample.py --best_of
        model, tok = load(a.init_from)
        t = check_template(tok, TEMPLATES[used["judge_template"]])
        principles = parse_principles(a.principles)
        items = []
        with open(a.pairs) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:    # only a row's own error is blamed on the row (not, say, a KeyError in load)
                    r = json.loads(line)
                    x, y = (r["a"], r["b"]) if "a" in r else (r["chosen"], r["rejected"])
                    items.append((r["prompt"], answer_text(x), answer_text(y)))
                except (KeyError, json.JSONDecodeError) as e:
                    raise SystemExit(f"error: {a.pairs}:{i}: bad row ({e!r}); need prompt, a, b") from None
        ps = judge_pairs(model, tok, t, items, principles, a.batch_size, likelihood=used["likelihood"])
    except (CheckpointError, JudgeError, OSError) as e:
        raise SystemExit(f"error: {e}")
    for i, p in enumerate(ps.tolist()):
        print(json.dumps({"row": i, "p(a>b)": round(p, 4)}))


if __name__ == "__main__":
    main()
