"""benchmarks/unroll.py runs end to end (--quick), writes its tables, and fails when an
innerloop row fails."""

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "unroll.py"


def _evosax_importable() -> bool:
    if importlib.util.find_spec("evosax") is None:
        return False
    proc = subprocess.run([sys.executable, "-c", "import evosax.algorithms"],
                          capture_output=True, timeout=300)
    return proc.returncode == 0


@pytest.mark.subprocess
def test_unroll_benchmark_quick(tmp_path):
    out = tmp_path / "unroll.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "RUN FAILED" not in text
    assert "command" in proc.stdout.lower() and "jax" in proc.stdout
    for row in ("| 100 | Unroll() |", "| 100 | Checkpointed() |",
                "| 100 | Truncated(10) |", "| innerloop ES |", "| innerloop PES |"):
        assert row in text, row
    # Checkpointed recomputes Unroll's steps: the same gradient, within the bound the
    # script enforces (the README quotes it).
    ck = next(line for line in text.splitlines() if "| 100 | Checkpointed() |" in line)
    assert float(ck.split("|")[8]) <= 1e-5, ck
    if _evosax_importable():
        for row in ("| evosax Open_ES |", "| evosax PersistentES |"):
            assert row in text, row
    else:
        assert "evosax unavailable" in proc.stdout
        assert "evosax unavailable" in text


# Each sabotage replaces one innerloop contender inside the benchmark's process.
SABOTAGE = {
    "checkpointed-gradient": ("""
        orig = ub.unroll_vg

        def unroll_vg(mode, *a):
            vg = orig(mode, *a)
            if not isinstance(mode, il.Checkpointed):
                return vg
            return lambda theta: (lambda v, g: (v, 1.5 * g))(*vg(theta))

        ub.unroll_vg = unroll_vg
    """, "T=100 Checkpointed(): gradient differs from Unroll()'s by 5.0e-01"),
    "es-raises": ("""
        orig = ub.innerloop_fn

        def innerloop_fn(est, theta):
            if type(est).__name__ == "ES":
                raise RuntimeError("sabotaged contender")
            return orig(est, theta)

        ub.innerloop_fn = innerloop_fn
    """, "innerloop ES n=16 K=10: raised RuntimeError: sabotaged contender"),
    "pes-nan": ("""
        orig = ub.innerloop_fn

        def innerloop_fn(est, theta):
            fn, state = orig(est, theta)
            if type(est).__name__ != "PES":
                return fn, state

            def nan_fn(key, state):
                g, state = fn(key, state)
                return g * jnp.nan, state

            return nan_fn, state

        ub.innerloop_fn = innerloop_fn
    """, "innerloop PES n=16 K=10: non-finite gradient estimate"),
}


@pytest.mark.parametrize("sabotage", list(SABOTAGE))
@pytest.mark.subprocess
def test_unroll_benchmark_fails_when_an_innerloop_row_fails(tmp_path, sabotage):
    out = tmp_path / "unroll.md"
    patch, expected = SABOTAGE[sabotage]
    runner = textwrap.dedent("""
        import importlib.util, sys
        import jax, jax.numpy as jnp
        import innerloop as il
        sys.path.insert(0, {bench!r})
        spec = importlib.util.spec_from_file_location("unroll_bench", {script!r})
        ub = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ub)
    """).format(bench=str(SCRIPT.parent), script=str(SCRIPT)) + textwrap.dedent(patch) \
        + f"\nub.main(['--quick', '--out', {str(out)!r}])\n"
    proc = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "RUN FAILED" in proc.stderr and expected in proc.stderr, proc.stderr[-3000:]
    text = out.read_text()  # the tables are written, marked
    assert text.count("## RUN FAILED") == 1 and f"- {expected}" in text, text
    failed = [line for line in text.splitlines() if "INNERLOOP ROW FAILED" in line]
    assert len(failed) == 1, failed  # only the sabotaged row
