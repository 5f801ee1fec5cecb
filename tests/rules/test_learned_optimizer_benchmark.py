"""benchmarks/learned_optimizer.py runs end to end (--quick) and writes its tables."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.subprocess
def test_learned_optimizer_benchmark_quick(tmp_path):
    out = tmp_path / "learned_optimizer.md"
    run_dir = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learned_optimizer.py"), "--quick",
         "--out", str(out), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "command" in proc.stdout.lower() and "jax" in proc.stdout
    # One row per held-out task, with every optimizer's loss, accuracy and VeLO ratio.
    for task, group, classes in (("digits w32 seed 0", "in", 10), ("wine w32", "out", 3)):
        row = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == group and len(cells) == 12, row
        losses = [float(c.split()[0]) for c in cells[2:6]]
        accs = [float(c.split()[0]) for c in cells[6:10]]
        # After 200 steps every optimizer, learned ones included, has left chance: a
        # loss below that of the uniform prediction, an accuracy above 1 / classes.
        assert all(x < np.log(classes) for x in losses), row
        assert all(a > 1 / classes for a in accs), row
        for c in cells[10:12]:  # "steps (ratio)" or ">400 (>2)"
            assert c.endswith(")") and "(" in c, c
    for name in ("| MLPLOpt |", "| RNNMLPLOpt |"):
        assert sum(line.startswith(name) for line in text.splitlines()) == 2, name
    assert "median ratio in-family" in text and "Acceptance targets" in text
    # The fixed-learning-rate reference: one row per grid point (its ratios are <= 1 by
    # construction, a min over a grid that includes the row, so there is nothing to check).
    ref = text.split("### Reference: Adam at one learning rate")[1].split("###")[0]
    fixed = [line for line in ref.splitlines() if line.startswith("| ") and
             not line.startswith("| Adam") and "---" not in line]
    assert len(fixed) == 14, ref
    assert "best out-of-family median of any single grid rate" in ref
    # The run fails when a claim does not hold; both learned optimizers' verdicts:
    claims = text.split("### Claims (checked by every run)")[1].split("###")[0]
    assert claims.count(": holds") == 4 and "does NOT hold" not in claims, claims
    # The runs are resumable: meta_train's checkpoint plus the budget ledger.
    for name in ("MLPLOpt", "RNNMLPLOpt"):
        assert (run_dir / name / "checkpoint.npz").exists()
        assert (run_dir / name / "budget.json").exists()
