"""benchmarks/unroll.py runs end to end (--quick) and writes its tables."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _evosax_importable() -> bool:
    if importlib.util.find_spec("evosax") is None:
        return False
    proc = subprocess.run([sys.executable, "-c", "import evosax.algorithms"],
                          capture_output=True, timeout=300)
    return proc.returncode == 0


def test_unroll_benchmark_quick(tmp_path):
    out = tmp_path / "unroll.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "unroll.py"), "--quick",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "command" in proc.stdout.lower() and "jax" in proc.stdout
    for row in ("| 100 | Unroll() |", "| 100 | Checkpointed() |",
                "| 100 | Truncated(10) |", "| innerloop ES |", "| innerloop PES |"):
        assert row in text, row
    # Checkpointed is exact: the same gradient as Unroll.
    ck = next(line for line in text.splitlines() if "| 100 | Checkpointed() |" in line)
    assert ck.split("|")[8].strip() in ("0.0e+00",) or float(ck.split("|")[8]) < 1e-5
    if _evosax_importable():
        for row in ("| evosax Open_ES |", "| evosax PersistentES |"):
            assert row in text, row
    else:
        assert "evosax unavailable" in proc.stdout
        assert "evosax unavailable" in text
