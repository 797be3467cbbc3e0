"""
The MO-ORPO paper's Figure 3 from runs' metrics files (out/<run>/metrics.jsonl).

    python -m experiments.plot out/compare/mo_orpo/*-s1 --out fig3.png

left:  the log odds ratio of the alignment task (z_align) and of the self-judgement task (z_sj)
       over optimizer steps, one pair of curves per run
right: final alignment loss against final self-judgement loss, one point per run, the non-dominated
       (Pareto) points marked: no other run has both losses lower or equal and one strictly lower

"Final" = the mean of the last 3 logged values (training records are noisy at this batch size).
The text table always prints; the figure needs matplotlib (optional: pip install matplotlib).
"""
import argparse
import json
import os
import sys


def read_metrics(run):
    path = run if run.endswith(".jsonl") else os.path.join(run, "metrics.jsonl")
    with open(path) as f:
        return [r for r in map(json.loads, filter(str.strip, f)) if r.get("split") == "train"]


def final(recs, key, last=3):
    vals = [r[key] for r in recs if key in r][-last:]
    return sum(vals) / len(vals) if vals else float("nan")


def pareto(points):
    """Indices of the non-dominated points of [(f1, f2), ...], both minimized."""
    keep = []
    for i, (a, b) in enumerate(points):
        dominated = any(c <= a and d <= b and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i)
        if not dominated:
            keep.append(i)
    return keep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    ap.add_argument("--out", default="fig3.png", help="image file to write (default: %(default)s)")
    a = ap.parse_args(argv)
    recs = {r.rstrip("/"): read_metrics(r) for r in a.runs}
    names = [os.path.basename(os.path.dirname(r) if r.endswith(".jsonl") else r) for r in recs]
    pts = [(final(v, "L_align"), final(v, "L_sj")) for v in recs.values()]
    front = set(pareto([p for p in pts if p == p]))  # NaN-free points only
    print(f"{'run':28s} {'L_align':>8s} {'L_sj':>8s}  pareto")
    for i, (n, (la, ls)) in enumerate(zip(names, pts)):
        print(f"{n:28s} {la:8.4f} {ls:8.4f}  {'*' if i in front else ''}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("the figure needs matplotlib: pip install matplotlib (the table above needs nothing)")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for n, v in zip(names, recs.values()):
        for key, style in (("z_align", "-"), ("z_sj", "--")):
            xs = [r["step"] for r in v if key in r]
            left.plot(xs, [r[key] for r in v if key in r], style, label=f"{n} {key}")
    left.set_xlabel("optimizer step")
    left.set_ylabel("log odds ratio")
    left.legend(fontsize=6)
    for i, (n, (la, ls)) in enumerate(zip(names, pts)):
        right.scatter([la], [ls], marker="*" if i in front else "o", s=120 if i in front else 40)
        right.annotate(n, (la, ls), fontsize=7)
    right.set_xlabel("final alignment loss")
    right.set_ylabel("final self-judgement loss")
    right.set_title("Pareto front (*)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
