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
