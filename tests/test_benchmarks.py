"""The benchmark scripts run end to end (tiny configuration) and write their table."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fixed_point_benchmark_quick(tmp_path):
    out = tmp_path / "fp.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fixed_point.py"), "--quick",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for row in ("bare limit", "Iteration / Implicit()", "Anderson(5) / Implicit()",
                "jaxopt FixedPointIteration", "EQX_ON_ERROR=off: no runtime checks",
                "jaxopt AndersonAcceleration (second process)"):
        assert row in text
    assert "jax" in proc.stdout and "command" in proc.stdout.lower()
    # The rows the README quotes: every example converged, the implicit gradient
    # within float32 accuracy of the float64 reference, and Anderson needing fewer
    # iterations than plain iteration on the hard problem.
    iters = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("innerloop Iteration / Implicit()", "innerloop Anderson(5) / Implicit()"):
            done, total = cells[2].split("/")
            assert done == total, line
            assert float(cells[8]) <= 1e-3, line  # grad err
            iters.setdefault(cells[0], []).append(int(cells[1]))
    assert len(iters) == 2 and all(len(v) == 2 for v in iters.values()), iters
    assert iters["innerloop Anderson(5) / Implicit()"][1] < \
        iters["innerloop Iteration / Implicit()"][1] / 2
