"""The plasticity experiments run end to end (--quick) and their pieces do what they say."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _run(script, *args, timeout=600):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "command: python benchmarks/" in proc.stdout and "jax " in proc.stdout
    return proc.stdout


def test_oja_benchmark_quick(tmp_path):
    out = tmp_path / "oja.md"
    _run("oja.py", "--quick", "--out", str(out))
    text = out.read_text()
    for row in ("| Oja's rule (reference, not learned) | 1.000 |",
                "| gradient (BPTT through the lifetime) |", "| ES (antithetic) |"):
        assert row in text, row


def test_oja_meta_gradient_outer_loop_reduces_the_meta_loss():
    import dataclasses

    import oja

    cfg = dataclasses.replace(oja.Config(), T=150, batch=8, steps=80, samples=2, warmup=10,
                              lr=0.01)
    theta, losses = oja.train_gradient(cfg)
    assert losses[-10:].mean() < 0.75 * losses[:10].mean()
    # From theta = 0, the first things learned are Oja's two terms.
    assert oja.coefficient_cosine(theta) > 0.5


def test_oja_es_task_loss_matches_meta_loss():
    import oja

    cfg = oja.Config(T=50, es_batch=4)
    task, theta = oja.OjaTask(cfg), oja.RULE.oja_coefficients()
    key = jax.random.key(0)
    _, loss = task.unroll(task.init(key, theta), theta, cfg.T)
    assert float(loss) == pytest.approx(float(oja.meta_loss(theta, key, cfg, 4)))


def test_hebbian_cartpole_benchmark_quick(tmp_path):
    pytest.importorskip("gymnax")
    out = tmp_path / "cartpole.md"
    _run("hebbian_cartpole.py", "--quick", "--agents", "synapse,static", "--out", str(out))
    text = out.read_text()
    assert "| Hebbian, per synapse | 240 |" in text and "| static | 48 |" in text


def test_cartpole_damage_zeroes_half_the_weights_of_a_static_agent():
    pytest.importorskip("gymnax")
    import dataclasses

    import hebbian_cartpole as hc

    cfg = dataclasses.replace(hc.Config(), sizes=(4, 8, 2), horizon=40, damage_step=1)
    agent = hc.Agent(cfg, None)
    weights = [jnp.ones(s) for s in agent.net.shapes]
    # With all-ones weights the policy is constant; damage makes it depend on the mask,
    # so the returns of clean and damaged episodes differ for some key.
    keys = jax.random.split(jax.random.key(0), 16)
    clean = jax.vmap(lambda k: agent.episode(weights, k))(keys)
    damaged = jax.vmap(lambda k: agent.episode(weights, k, True))(keys)
    assert not np.array_equal(np.asarray(clean), np.asarray(damaged))


def test_cartpole_bad_agents_flag_is_one_line_error():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hebbian_cartpole.py"),
                           "--agents", "nope"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--agents must list" in proc.stderr
