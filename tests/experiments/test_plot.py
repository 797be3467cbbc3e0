"""The figures (experiments/plot.py): the Pareto front is exactly the set of points no other point
dominates; a prefix of a flag is refused, as by every command line of the project."""
import json

import pytest
from hypothesis import given, strategies as st

from experiments.plot import main, pareto


# -- the figure's Pareto front, and its command line ----------------------------------------------
@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 5)), min_size=1, max_size=10))
def test_the_pareto_front_is_the_points_no_other_point_dominates(points):
    front = set(pareto(points))
    for i, (a, b) in enumerate(points):
        dominated = any(c <= a and d <= b and (c, d) != (a, b) for c, d in points)
        assert (i in front) == (not dominated)


def test_argument_prefixes_are_refused(tmp_path, capsys):
    # --ou was taken for --out: a prefix that would also match a flag added later
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 1, "L_align": 1.0,
                                                        "L_sj": 1.0}) + "\n")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--ou", str(tmp_path / "fig.png")])
    assert e.value.code == 2 and "unrecognized arguments: --ou" in capsys.readouterr().err
