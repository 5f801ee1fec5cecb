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


def test_no_command_prints_help_and_exits_2():
    proc = run_module()
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "demo" in proc.stderr


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


def test_tiny_demo_writes_png_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "MEMORY_MAX_STEPS", (4, 8))
    monkeypatch.setattr(demo, "EVAL_EVERY", 2)
    out = tmp_path / "out"
    code = cli.main(["demo", "--modes", "implicit,jacobianfree", "--steps", "3",
                     "--solver", "iteration", "--seed", "1", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and "Jacobian regularisation" in printed
    png = out / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "demo.json").read_text())
    assert set(report["modes"]) == {"implicit", "jacobianfree"}
    for entry in report["modes"].values():
        assert 0 <= entry["test_acc"] <= 1 and entry["temp_bytes"] > 0
        assert entry["step_ms"] > 0 and entry["fwd_iters"] > 0
    assert set(report["memory_temp_bytes"]["implicit"]) == {"4", "8"}
    assert {"with", "without"} <= set(report["jacobian_regularisation"])
    assert report["config"]["steps"] == 3 and report["config"]["seed"] == 1
    assert os.path.getsize(png) > 10_000
