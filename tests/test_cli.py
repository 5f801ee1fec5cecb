"""The command line: `python -m innerloop [demo ...]`."""

import json
import os
import subprocess
import sys

import pytest

from innerloop import __main__ as cli
from innerloop import demo


def run_module(*args):
    return subprocess.run([sys.executable, "-m", "innerloop", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.subprocess
def test_no_command_prints_help_and_exits_2():
    proc = run_module()
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "demo" in proc.stderr


@pytest.mark.subprocess
def test_unknown_flag_is_a_one_line_error():
    proc = run_module("demo", "--no-such-flag")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--no-such-flag" in lines[0] and "error" in lines[0]


@pytest.mark.parametrize("argv", [
    ["demo", "--steps", "0"],
    ["demo", "--steps", "abc"],
    ["demo", "--steps"],
    ["demo", "--seed", "-1"],
    ["demo", "--modes", "implicit,nonsense"],
    ["demo", "--modes", ","],
    ["demo", "--solver", "newton"],
    ["nonsense"],
    ["--bogus"],
])
def test_bad_values_exit_2_with_one_line(argv, capsys):
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "error" in err


def test_demo_main_reports_bad_values_too(capsys):
    assert demo.main(["--steps", "-3"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_help_exits_0(capsys):
    assert cli.main(["demo", "--help"]) == 0
    assert "--modes" in capsys.readouterr().out


def test_quick_demo_holds_the_claim_and_writes_png_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["demo", "--quick", "--solver", "iteration", "--seed", "2",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    report = json.loads((out / "demo.json").read_text())
    assert set(report["modes"]) == {"implicit", "jacobianfree"}
    # The headline claim at the smallest scale that reaches it (100 steps: 0.96-0.97
    # over seeds; a zero implicit gradient gives 0.89-0.91, a flipped one 0.01-0.06).
    assert report["modes"]["implicit"]["test_acc"] > 0.95
    assert code == 0
    assert "test acc" in printed and "Jacobian regularisation" in printed
    png = out / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 10_000
    assert report["claim"] == dict(min_steps=100, implicit_test_acc_above=0.95,
                                   checked=True, holds=True)
    for entry in report["modes"].values():
        assert entry["temp_bytes"] > 0 and entry["fwd_iters"] > 0
        assert entry["compile_s"] > 0 and entry["step_ms"] > 0
    # The adjoint count is of the solve the trained mode runs: it reproduces the
    # mode's gradient exactly.
    adjoint = report["modes"]["implicit"]["adjoint"]
    assert adjoint["max_steps"] == demo.ADJOINT_MAX_STEPS and adjoint["vjps"] >= 1
    assert adjoint["grad_rel_err"] <= 1e-6
    assert set(report["memory_temp_bytes"]["implicit"]) == {
        str(n) for n in demo.MEMORY_MAX_STEPS}
    assert {"with", "without"} <= set(report["jacobian_regularisation"])
    assert report["config"]["steps"] == 100 and report["config"]["seed"] == 2
    assert report["config"]["modes"] == ["implicit", "jacobianfree"]


def test_a_run_below_the_claim_fails():
    assert demo.check_claim({"implicit": dict(test_acc=0.97)}, 100) is None
    message = demo.check_claim({"implicit": dict(test_acc=0.95)}, 100)
    assert message and "0.950" in message and "Implicit" in message
    assert demo.check_claim({"implicit": dict(test_acc=0.5)}, 99) is None  # too short
    assert demo.check_claim({"unroll": dict(test_acc=0.5)}, 400) is None
