"""
The built-in tasks: preference data generated from a seed, and an oracle that scores any response,
so that a method trains and is measured with no download.

    from nanoalign.tasks import get_task
    task = get_task("arith")          # a module that has every member of `Task`

  arith     nanoalign/tasks/arith.py      "What is 17 + 8?", a tiny byte-level model (the default)
  instruct  nanoalign/tasks/instruct/     questions with IFEval-style format instructions, for
                                          SmolLM2-135M-Instruct; preference data built on-policy

train.py looks the task up once and hands it on: its rows feed the loop as a data file's would, its
oracle only lends metrics to the methods (run.task) and scores the before/after table; it never
decides a pair. A task's own options (`Options`) become flags of train.py beside the method's.
"""
import importlib
from typing import Protocol, runtime_checkable

TASKS = {"arith": "nanoalign.tasks.arith", "instruct": "nanoalign.tasks.instruct"}


@runtime_checkable
class Task(Protocol):
    """What train.py, sample.py and experiments/ may ask of a built-in task (a module)."""
    NAME: str                 # its --task name
    OBJECTIVES: dict          # {objective: what it rewards}; the oracle scores each in [0, 1]
    MAX_NEW_TOKENS: int       # the answer length its evaluation generates
    Options: type             # a dataclass of its own options (nanoalign.common.option fields)
    ROW_OPTIONS: tuple        # those of its options that shape its rows (n_train, ...): a run that
                              # reads none of its rows (--train_data FILE) refuses them, not ignores

    def oracle_scores(self, prompt, response) -> dict:
        """{objective: score, 'overall': weighted mean}; a ValueError for a prompt not of the task."""

    def rationale(self, prompt, response, principle=None) -> str:
        """A short true justification of a response's scores (JSFT's rationale templates)."""

    def rows(self, kind, split, seed, options) -> list:
        """Rows of a row kind ('sft', 'pref' or 'prompt') for one split, sized by `options`."""

    def test_prompts(self, n=200, seed=0) -> list:
        """Held-out prompts for the before/after table."""

    def warm_start(self, options, train_fn) -> str:
        """The checkpoint directory a default run starts from (--init_from default); `options` is
        the run's shared and task options as a dict; train_fn(**config) trains a warm-up if needed."""

    def build_tokenizer(self):
        """The tokenizer of a model trained from scratch on this task."""


class UnknownTaskError(ValueError):
    """A task name that is not in TASKS."""


def get_task(name):
    """The module of a built-in task, by name."""
    if name not in TASKS:
        raise UnknownTaskError(f"task {name!r} is unknown; choose from {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
