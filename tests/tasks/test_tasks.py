"""The task registry (nanoalign/tasks/__init__.py): names resolve to the built-in tasks, which share one
interface; an unknown name is an error."""
import pytest

from nanoalign.tasks import Task, UnknownTaskError, get_task, instruct as I


# -- the clear errors ----------------------------------------------------------------------------------
def test_an_unknown_task_name_is_an_error():
    assert get_task("arith").OBJECTIVES["correct"] and get_task("instruct") is I
    with pytest.raises(UnknownTaskError, match="task 'arithmetic' is unknown; choose from arith, instruct"):
        get_task("arithmetic")


def test_the_tasks_share_one_interface():
    for name in ("arith", "instruct"):
        t = get_task(name)
        assert isinstance(t, Task), name              # every member of the protocol
        for attr in ("sft_rows", "preference_rows"):
            assert hasattr(t, attr), (name, attr)
