"""benchmarks/flows_2d.py: its densities are symmetric about the axes, its two flows have
the same parameter count, and `--quick` holds the claim (the run fails when it does not)."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_densities_are_symmetric_about_both_axes():
    import flows_2d

    for name in flows_2d.DENSITIES:
        x = flows_2d.sample(name, np.random.default_rng(0), 40000)
        quadrant = (x[:, 0] > 0) * 2 + (x[:, 1] > 0)
        # Each quadrant holds a quarter of the points, and the same distribution of |x|
        # (its mean and spread), within sampling noise.
        np.testing.assert_allclose(np.bincount(quadrant, minlength=4) / len(x), 0.25,
                                   atol=0.01)
        for q in range(4):
            a = np.abs(x[quadrant == q])
            np.testing.assert_allclose(a.mean(0), np.abs(x).mean(0), atol=0.05)
            np.testing.assert_allclose(a.std(0), np.abs(x).std(0), atol=0.05)


def test_the_two_flows_have_the_same_parameter_count():
    import flows_2d

    cfg = flows_2d.Config(**flows_2d.QUICK)
    counts = {flows_2d.n_params(build(jax.random.key(0), cfg))
              for build in flows_2d.MODELS.values()}
    assert len(counts) == 1


@pytest.mark.subprocess
@pytest.mark.slow
def test_flows_2d_benchmark_quick(tmp_path):
    out = tmp_path / "flows_2d.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flows_2d.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for density in ("checkerboard", "eight Gaussians", "two moons", "rings"):
        assert f"| {density} |" in text
    assert text.count(": holds") == 1 and "does NOT hold" not in text
