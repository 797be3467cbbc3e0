"""The figures (experiments/plot.py): the Pareto front is exactly the set of points no other point
dominates."""
from hypothesis import given, strategies as st

from experiments.plot import pareto


# -- schedules, defaults, metrics, the figure's Pareto front --------------------------------------
@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 5)), min_size=1, max_size=10))
def test_pareto_front(points):
    front = set(pareto(points))
    for i, (a, b) in enumerate(points):
        dominated = any(c <= a and d <= b and (c, d) != (a, b) for c, d in points)
        assert (i in front) == (not dominated)
