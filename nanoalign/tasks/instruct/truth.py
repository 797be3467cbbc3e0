"""
The right answer to a question of the `instruct` task, from its spec's fact: what `correct`
(scoring.py) checks a response against and what the written answers (responses.py) state.
In the mutation run's scope with scoring.py (setup.cfg [mutmut], docs/mutation.md).
"""
from nanoalign.tasks.instruct.tables import CAPITALS


def answer(spec):
    """The right answer: an int, a city, or the sorted list of words."""
    f, fam = spec["fact"], spec["family"]
    if fam == "sum":
        return f["a"] + f["b"]
    if fam == "product":
        return f["a"] * f["b"]
    if fam == "capital":
        return CAPITALS[f["country"]]
    if fam == "units":
        return f["q"] * f["factor"]
    if fam == "letters":
        return f["word"].count(f["letter"])
    return sorted(f["words"])
