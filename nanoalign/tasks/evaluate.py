"""
Evaluation on the built-in task: greedy answers to held-out test prompts, scored by the oracle.

    python -m nanoalign.tasks.evaluate --init_from out/orpo/ckpt [--compare out/_warm/ckpt]

Reports, per objective, the mean oracle score of the greedy answers (for 'correct' that is the
accuracy), the weighted 'overall' score, and the mean response length in characters.
"""
import argparse

import torch

from nanoalign.tasks import TASKS, get_task
from model.generate import generate


@torch.no_grad()
def greedy_answers(model, tok, prompts, max_new_tokens=32, batch_size=128):
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [tok.encode_prompt(p) for p in prompts[i:i + batch_size]]
        gen = generate(model, ids, max_new_tokens, tok.stop_ids, temperature=0,
                       pad_id=tok.pad_id)
        out += [tok.decode(g) for g in gen]
    return out


def oracle_eval(model, tok, prompts=None, task=None):
    """{metric: value} of greedy answers to a task's test prompts (or the given ones): the mean
    oracle score per objective, 'overall', and the mean answer length in characters."""
    task = task or get_task("arith")
    prompts = prompts or task.test_prompts()
    answers = greedy_answers(model, tok, prompts, getattr(task, "MAX_NEW_TOKENS", 32))
    scores = [task.oracle_scores(p, a) for p, a in zip(prompts, answers)]
    res = {k: sum(s[k] for s in scores) / len(scores) for k in list(task.OBJECTIVES) + ["overall"]}
    res["length"] = sum(len(a.strip()) for a in answers) / len(answers)
    res["examples"] = list(zip(prompts[:3], answers[:3]))
    return res


def format_table(before, after, extra_rows=()):
    """A plain-text table: metric | before | after | change."""
    lines = [f"{'metric':16s} {'before':>8s} {'after':>8s} {'change':>8s}", "-" * 43]
    for k in [k for k in after if k != "examples"]:
        name = k + (" (acc)" if k == "correct" else " (chars)" if k == "length" else "")
        lines.append(f"{name:16s} {before[k]:8.3f} {after[k]:8.3f} {after[k] - before[k]:+8.3f}")
    for name, b, a in extra_rows:
        lines.append(f"{name:16s} {b:8.3f} {a:8.3f} {a - b:+8.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    from model.checkpoint import load
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--init_from", required=True, help="checkpoint directory to evaluate")
    ap.add_argument("--compare", default=None, help="a second checkpoint, shown as 'before'")
    ap.add_argument("--n", type=int, default=200, help="number of test prompts (default: 200)")
    ap.add_argument("--task", default="arith", choices=sorted(TASKS), help="built-in task (default: arith)")
    a = ap.parse_args()
    task = get_task(a.task)
    prompts = task.test_prompts(a.n)
    after = oracle_eval(*load(a.init_from), prompts, task)
    before = oracle_eval(*load(a.compare), prompts, task) if a.compare else after
    print(format_table(before, after))
