"""benchmarks/learned_optimizer.py runs end to end (--quick) and writes its tables."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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
    for task, group in (("digits w32 seed 0", "in"), ("wine w32", "out")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == group and len(cells) == 12, row
        losses = [float(c.split()[0]) for c in cells[2:6]]
        accs = [float(c.split()[0]) for c in cells[6:10]]
        assert all(x >= 0 for x in losses) and all(0 <= a <= 1 for a in accs)
        for c in cells[10:12]:  # "steps (ratio)" or ">400 (>2)"
            assert c.endswith(")") and "(" in c, c
    for name in ("| MLPLOpt |", "| RNNMLPLOpt |"):
        assert sum(line.startswith(name) for line in text.splitlines()) == 2, name
    assert "median ratio in-family" in text and "Acceptance targets" in text
    # The runs are resumable: meta_train's checkpoint plus the budget ledger.
    for name in ("MLPLOpt", "RNNMLPLOpt"):
        assert (run_dir / name / "checkpoint.npz").exists()
        assert (run_dir / name / "budget.json").exists()
