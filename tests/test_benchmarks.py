"""The fixed-point benchmark runs end to end (tiny configuration), writes its table, and
fails when an innerloop row fails."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fixed_point.py"


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _median(cell):
    """'1.23 [1.10, 1.40]' -> (1.23, 1.10, 1.40)."""
    med, rest = cell.split(" [")
    q1, q3 = rest.rstrip("]").split(", ")
    return float(med), float(q1), float(q3)


@pytest.mark.subprocess
def test_fixed_point_benchmark_quick(tmp_path):
    out = tmp_path / "fp.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "RUN FAILED" not in text
    for row in ("bare limit", "Iteration / Implicit()", "Anderson(5) / Implicit()",
                "jaxopt FixedPointIteration", "EQX_ON_ERROR=off: no runtime checks",
                "jaxopt AndersonAcceleration (second process)",
                "cost per iteration, in units of one f"):
        assert row in text, row
    assert "jax" in proc.stdout and "command" in proc.stdout.lower()
    # The rows the README quotes: every example converged, the implicit gradient
    # within its bound of the float64 reference, Anderson needing fewer iterations
    # than plain iteration on the hard problem; every time and ratio a median with its
    # quartiles, the ratio to jaxopt computed by the script.
    iters = {}
    for line in text.splitlines():
        cells = _cells(line)
        if cells[0] in ("innerloop Iteration / Implicit()", "innerloop Anderson(5) / Implicit()"):
            done, total = cells[2].split("/")
            assert done == total, line
            assert float(cells[10]) <= 1e-3, line  # grad err
            for cell in cells[3:9]:  # fwd ms, / bare, / jaxopt, v&g ms, / bare, / jaxopt
                med, q1, q3 = _median(cell)
                assert 0 < q1 <= med <= q3, line
            iters.setdefault(cells[0], []).append(int(cells[1]))
        if cells[0] == "jaxopt FixedPointIteration" and len(cells) == 14:  # main tables
            assert _median(cells[5])[0] == 1.0 and _median(cells[8])[0] == 1.0, line
    assert len(iters) == 2 and all(len(v) == 2 for v in iters.values()), iters
    assert iters["innerloop Anderson(5) / Implicit()"][1] < \
        iters["innerloop Iteration / Implicit()"][1] / 2


# Each sabotage replaces the Anderson(5) contender inside the benchmark's process.
SABOTAGE = {
    "raises": """
        def forward(*a):
            raise RuntimeError("sabotaged contender")
    """,
    "nan": """
        def vg(*a):
            loss, g = vg0(*a)
            return loss, jax.tree.map(lambda x: x * jnp.nan, g)
    """,
    "wrong-gradient": """
        def vg(*a):
            loss, g = vg0(*a)
            return loss, jax.tree.map(lambda x: 1.5 * x, g)
    """,
    "unconverged": """
        forward, vg = orig(p, solver, grad, max_steps=3)
    """,
}
EXPECTED = {"raises": "raised RuntimeError: sabotaged contender",
            "nan": "non-finite value, loss or gradient",
            "wrong-gradient": "grad err 5.0e-01 above its bound 0.001",
            "unconverged": "examples converged"}


@pytest.mark.parametrize("sabotage", list(SABOTAGE))
@pytest.mark.subprocess
def test_fixed_point_benchmark_fails_when_an_innerloop_row_fails(tmp_path, sabotage):
    out = tmp_path / "fp.md"
    runner = textwrap.dedent("""
        import importlib.util, sys
        import jax, jax.numpy as jnp
        sys.path.insert(0, {bench!r})
        spec = importlib.util.spec_from_file_location("fixed_point_bench", {script!r})
        fp = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fp)
        orig = fp.innerloop_fns

        def sabotaged(p, solver, grad, max_steps=None):
            forward, vg0 = orig(p, solver, grad, max_steps)
            vg = vg0
            if isinstance(solver, fp.Anderson):
        {body}
            return forward, vg

        fp.innerloop_fns = sabotaged
        fp.main(["--quick", "--out", {out!r}])
    """).format(bench=str(SCRIPT.parent), script=str(SCRIPT), out=str(out),
                body=textwrap.indent(textwrap.dedent(SABOTAGE[sabotage]), " " * 8))
    proc = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "RUN FAILED" in proc.stderr, proc.stderr[-3000:]
    text = out.read_text()  # what it had is written, marked
    assert text.count("RUN FAILED") == 1 and "### orthogonal" in text
    assert "### hard" not in text  # it stopped after the failing problem
    failed = [line for line in text.splitlines() if "INNERLOOP ROW FAILED" in line]
    assert failed and all("Anderson(5) / Implicit()" in line for line in failed), failed
    assert EXPECTED[sabotage] in failed[0], failed
    # The untouched innerloop rows pass.
    assert "orthogonal problem, innerloop Iteration" not in text
