"""The fixed-point benchmark runs end to end (tiny configuration), writes its table, and
fails when an innerloop row fails."""

import json
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

# One process runs the benchmark's main() once per sabotage (a fresh process per
# sabotage spent most of its time recompiling the same untouched rows). The contenders'
# constructors are memoised on their arguments, so an untouched row reuses its jitted
# functions (the same computation, called again); the sabotaged row is built each run.
# main() ends a failed run with sys.exit(message): the process's exit status 1, its
# message on stderr; caught here and written out per sabotage.
RUNNER = """
import importlib.util, json, sys
import jax, jax.numpy as jnp
sys.path.insert(0, {bench!r})
spec = importlib.util.spec_from_file_location("fixed_point_bench", {script!r})
fp = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fp)


def key(x):
    if isinstance(x, (tuple, list)):
        return tuple(key(v) for v in x)
    if hasattr(x, "__dict__") and not isinstance(x, type):
        return (type(x).__qualname__, tuple((k, key(v)) for k, v in sorted(vars(x).items())))
    return repr(x)


def memoised(fns):
    memo = {{}}

    def build(p, *args, **kwargs):
        k = (p.name, key(args), key(sorted(kwargs.items())))
        if k not in memo:
            memo[k] = fns(p, *args, **kwargs)
        return memo[k]
    return build


for name in ("innerloop_fns", "bare_fns", "plain_unroll_fns", "jaxopt_fns", "optimistix_fns"):
    setattr(fp, name, memoised(getattr(fp, name)))
orig = fp.innerloop_fns
{sabotages}
results = {{}}
for name, sabotaged in SABOTAGED.items():
    fp.innerloop_fns = sabotaged
    out = {out!r} + "/" + name + ".md"
    try:
        fp.main(["--quick", "--out", out])
        results[name] = dict(exit=0, out=out)
    except SystemExit as e:
        results[name] = dict(exit=e.code, out=out)
print("RESULTS " + json.dumps(results))
"""
SABOTAGED_FN = """
def sabotaged_{i}(p, solver, grad, max_steps=None):
    forward, vg0 = orig(p, solver, grad, max_steps)
    vg = vg0
    if isinstance(solver, fp.Anderson):
{body}
    return forward, vg
"""


@pytest.mark.subprocess
def test_fixed_point_benchmark_fails_when_an_innerloop_row_fails(tmp_path):
    sabotages = "".join(SABOTAGED_FN.format(i=i, body=textwrap.indent(
        textwrap.dedent(SABOTAGE[name]), " " * 8)) for i, name in enumerate(SABOTAGE))
    sabotages += "SABOTAGED = {" + ", ".join(
        f"{name!r}: sabotaged_{i}" for i, name in enumerate(SABOTAGE)) + "}\n"
    runner = RUNNER.format(bench=str(SCRIPT.parent), script=str(SCRIPT), out=str(tmp_path),
                           sabotages=sabotages)
    proc = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    results = json.loads(proc.stdout.split("RESULTS ")[-1])
    assert list(results) == list(SABOTAGE), results
    wrong = {name: problem for name in SABOTAGE
             if (problem := _sabotage_problem(name, results[name]))}
    assert not wrong, wrong


def _sabotage_problem(name, result):
    """What is wrong with the benchmark's reaction to sabotage `name` (None: nothing)."""
    code = result["exit"]
    # sys.exit(message): exit status 1 with the message on stderr
    if not (isinstance(code, str) and "RUN FAILED" in code):
        return f"exit {code!r}: not a failed run"
    text = Path(result["out"]).read_text()  # what it had is written, marked
    if not (text.count("RUN FAILED") == 1 and "### orthogonal" in text):
        return "the report is not marked RUN FAILED once, or lacks the orthogonal section"
    if "### hard" in text:
        return "it did not stop after the failing problem"
    failed = [line for line in text.splitlines() if "INNERLOOP ROW FAILED" in line]
    if not (failed and all("Anderson(5) / Implicit()" in line for line in failed)):
        return f"failed rows: {failed}"
    if EXPECTED[name] not in failed[0]:
        return f"{EXPECTED[name]!r} not in {failed[0]!r}"
    # The untouched innerloop rows pass.
    if "orthogonal problem, innerloop Iteration" in text:
        return "an untouched Iteration row failed"
    return None
