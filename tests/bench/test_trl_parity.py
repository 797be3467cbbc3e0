"""bench/trl_parity.py's harness: our DPO steps, printed beside TRL's (TRL's side is optional and left
out here), and the largest differences it reports. The agreement itself is measured, not tested: TRL
is not installed in the test environment (docs/performance.md has the run)."""
import math
import subprocess
import sys

from tests.helpers import ROOT


def test_the_tiny_preset_prints_our_steps_starting_at_dpos_known_loss():
    r = subprocess.run([sys.executable, "-m", "bench.trl_parity", "--preset", "tiny", "--steps", "2",
                        "--trl_python", ""], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"], r.stdout
    # step 1: the policy is its own reference, so h = 0, the loss is log 2 and the margin 0
    loss, grad_norm, margin = map(float, rows[0][1:])
    assert abs(loss - math.log(2)) < 1e-6 and margin == 0 and grad_norm > 0, rows[0]
    assert "largest difference" not in r.stdout                # nothing to compare with


def test_the_largest_differences_are_over_every_step_and_the_gradient_norms_relative():
    from bench.trl_parity import table
    mine = [{"loss": 0.70, "grad_norm": 20.0, "margin": 0.0}, {"loss": 0.60, "grad_norm": 10.0, "margin": 0.5}]
    theirs = [{"loss": 0.71, "grad_norm": 20.2, "margin": 0.0}, {"loss": 0.58, "grad_norm": 10.0, "margin": 0.2}]
    last = table(mine, theirs).splitlines()[-1]
    # loss: 0.02 at step 2; grad norm: 0.2 / 20.2 at step 1; margin: 0.3 at step 2
    assert last == "largest difference over the 2 steps: loss 2.00e-02, grad_norm 9.90e-03 (relative), margin 3.00e-01"


def test_a_failed_trl_side_is_said_and_is_not_a_success():
    """TRL's child failing (here an interpreter that exits 1 at once) prints ours, says why TRL's
    side is missing, compares nothing, and exits 1: a script run for a comparison did not give one."""
    r = subprocess.run([sys.executable, "-m", "bench.trl_parity", "--preset", "tiny", "--steps", "1",
                        "--trl_python", "/bin/false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    assert "TRL's side: exit 1" in r.stdout and "largest difference" not in r.stdout, r.stdout


def test_sft_trains_on_trls_prompt_completion_rows():
    """--method sft writes the rows as TRL's SFTTrainer takes them ({prompt, completion}), and ours
    reads that file as it is: a positive loss each step, and no margin (DPO's alone)."""
    r = subprocess.run([sys.executable, "-m", "bench.trl_parity", "--preset", "tiny", "--method", "sft",
                        "--steps", "2", "--trl_python", ""], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("SFT, tiny:") and "margin" not in r.stdout, r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [len(row) for row in rows] == [3, 3] and all(float(row[1]) > 0 for row in rows), rows
