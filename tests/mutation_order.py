"""A pytest plugin for the mutation run (.ci/mutation, docs/mutation.md), loaded by setup.cfg's
[mutmut] pytest_add_cli_args (`-p tests.mutation_order`) with `--hypothesis-profile=mutation`; not a
test file (pytest collects only test_*.py):

- each mutant's tests run fastest first, by the durations mutmut measured in its stats run
  (mutants/mutmut-stats.json). mutmut stops a mutant's run at its first failing test, so a mutant
  most tests kill costs the quickest of them. Without that file (the stats run) pytest's order.
- the hypothesis profile 'mutation': the 'dev' profile of tests/conftest.py (10 examples, no
  deadline) without the shrink phase and without the example database. A mutant only needs to
  fail; shrinking its counterexample took up to five minutes per mutant, and a saved
  counterexample of one mutant must not be replayed against the next.
"""
import json
import os

from hypothesis import Phase, settings

settings.register_profile("mutation", deadline=None, max_examples=10, database=None,
                          phases=(Phase.explicit, Phase.reuse, Phase.generate))


def pytest_collection_modifyitems(session, config, items):
    try:
        with open(os.path.join(str(config.rootpath), "mutmut-stats.json")) as f:
            seconds = json.load(f)["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda item: seconds.get(item.nodeid, float("inf")))   # stable; unknown last
