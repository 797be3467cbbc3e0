"""
The built-in tasks by name, so that training, evaluation and comparison select one the same way:

    from experiments.tasks import get_task
    task = get_task("instruct")     # a module: OBJECTIVES, oracle_scores, rationale, rows, ...

  arith     experiments/task.py      "What is 17 + 8?", a tiny byte-level model (the default)
  instruct  experiments/instruct.py  questions with IFEval-style format instructions, for
                                     SmolLM2-135M-Instruct; preference data built on-policy
Each module has the same interface: OBJECTIVES {name: description}; oracle_scores(prompt,
response) -> {objective: score in [0, 1], 'overall'} (a ValueError for a prompt not in the task);
rationale(prompt, response, principle=None); sft_rows / preference_rows(n, seed, split);
rows(kind, n, seed, split); test_prompts(n, seed); warm_start(shared, train_fn); build_tokenizer().
"""
import importlib

TASKS = {"arith": "experiments.task", "instruct": "experiments.instruct"}


class UnknownTaskError(ValueError):
    """A task name that is not in TASKS."""


def get_task(name):
    """The module of a built-in task, by name."""
    if name not in TASKS:
        raise UnknownTaskError(f"task {name!r} is unknown; choose from {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name])
