"""bench/gpu.sh's time budget: the steps' own limits add up to more than a GPU session leaves for
the call, so with --budget S each step runs under what is left of S and a step with too little left
is skipped, saying so; the script ends within S. `python` here is a stub that takes 3 s a step."""
import os
import re
import subprocess
import time

from tests.helpers import ROOT


def test_steps_share_the_budget_and_the_last_are_skipped(tmp_path):
    stub = tmp_path / "python"
    stub.write_text("#!/bin/sh\n[ $# -eq 1 ] && [ \"$1\" = - ] && { cat >/dev/null; echo '== stub'; exit 0; }\n"
                    "sleep 3\n")
    stub.chmod(0o755)
    t0 = time.time()
    r = subprocess.run(["bash", "bench/gpu.sh", "--budget", "45"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    took = time.time() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    ran = [int(n) for n in re.findall(r"^== .*\(limit (\d+)s\)$", r.stdout, re.M)]
    skipped = re.findall(r"^== skipped, -?\d+s left of --budget: ", r.stdout, re.M)
    assert ran and skipped and len(ran) + len(skipped) == 7, r.stdout      # steps 1-6, step 3 twice
    assert ran == sorted(ran, reverse=True) and max(ran) <= 40, ran      # the left of 45 s, less 5
    assert r.stdout.rindex("(limit") < r.stdout.index("== skipped"), r.stdout   # the last ones go
    assert took < 45, took


def test_without_a_budget_each_step_has_its_own_limit(tmp_path):
    stub = tmp_path / "python"
    stub.write_text("#!/bin/sh\n[ $# -eq 1 ] && [ \"$1\" = - ] && { cat >/dev/null; echo '== stub'; exit 0; }\n")
    stub.chmod(0o755)
    r = subprocess.run(["bash", "bench/gpu.sh", "--steps", "1,2,6"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert [int(n) for n in re.findall(r"\(limit (\d+)s\)$", r.stdout, re.M)] == [120, 300, 300], r.stdout
    assert "--largest_batch skip" in r.stdout and "--largest_batch only" in r.stdout, r.stdout
