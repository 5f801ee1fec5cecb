"""MDEQ: the multiscale state's shapes (1-D and 2-D), bad input, every gradient mode,
the implicit gradient against `check_gradients` in float64, variational dropout held
fixed within a solve, and the warm-up switch. Tiny models: two branches (lengths 8/4)."""

import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import innerloop as il
from innerloop.implicit import MDEQ, DEQStats
from innerloop.testing import check_gradients

ROOT = Path(__file__).resolve().parents[2]
CH, L, G = (2, 4), 8, 2  # channels per branch, highest-resolution length, GroupNorm groups


def tiny(dtype=jnp.float32, **kw):
    """A two-branch 1-D MDEQ made contractive (about 0.2 per iteration): every
    normalisation makes f scale-invariant in its input, so at initialisation f need not
    contract; here the injection (gain 100) dominates the high-resolution branch and the
    low-resolution branch's output and residual scales are 0.1."""
    kw.setdefault("solver", il.solvers.Iteration())  # compiles faster than Anderson
    kw.setdefault("tol", 1e-5)
    kw.setdefault("max_steps", 60)
    m = MDEQ(1, CH, L, key=jax.random.key(0), groups=G, dtype=dtype, **kw)
    return eqx.tree_at(
        lambda m: (m.injection.weight, m.cell.norms[1].weight, m.cell.blocks[1].norm2.weight),
        m, (100 * m.injection.weight, 0.1 * m.cell.norms[1].weight,
            0.1 * m.cell.blocks[1].norm2.weight))


def inputs(n=3, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(1), (n, 1, L), dtype)


def state_norm(z):
    return jnp.sqrt(sum(jnp.sum(a * a) for a in jax.tree.leaves(z)))


@eqx.filter_jit
def residual(m, z, x, masks=None):
    """||f(z) - z|| and ||z|| (one compiled function for every test)."""
    return (state_norm(jax.tree.map(jnp.subtract, m.cell(z, m.injection(x), masks), z)),
            state_norm(z))


@eqx.filter_jit
def call(m, x, key=None, step=None, inference=False):
    return m(x, key=key, step=step, inference=inference)


# ------------------------------------------------------------------ shapes and errors


def test_state_is_a_tuple_of_halving_resolutions_1d_and_2d():
    m = tiny()
    x = inputs()
    z, stats = eqx.filter_jit(lambda m, x: m(x, batched=True))(m, x)
    assert isinstance(stats, DEQStats)
    assert [a.shape for a in z] == [(3, 2, 8), (3, 4, 4)]
    assert m.branch_shapes == ((2, 8), (4, 4))
    assert bool(jnp.all(stats.converged)) and stats.steps.shape == (3,)
    # z* solves the multiscale equation, every branch at once.
    r, norm = jax.vmap(residual, in_axes=(None, 0, 0))(m, z, x)
    assert bool(jnp.all(r <= 1e-5 * norm + 1e-5)), (r, norm)

    m2 = MDEQ(2, CH, (4, 6), key=jax.random.key(0), groups=G, solver=il.solvers.Iteration(),
              max_steps=3)
    z2, s2 = eqx.filter_jit(m2)(jnp.ones((2, 4, 6)))
    assert [a.shape for a in z2] == [(2, 4, 6), (4, 2, 3)]
    assert int(s2.steps) == 3  # stopped at max_steps: the 2-D state went through f


@pytest.mark.parametrize("make, match", [
    (lambda: MDEQ(1, (2, 4, 8), 10, key=jax.random.key(0), groups=2),
     r"^MDEQ: .*divisible by 2\^2 = 4"),
    (lambda: MDEQ(1, (2, 4), (8, 5), key=jax.random.key(0), groups=2),
     r"^MDEQ: .*divisible by 2\^1 = 2.*\(8, 5\)"),
    (lambda: MDEQ(1, (6, 8), 8, key=jax.random.key(0), groups=4),
     r"^MDEQ: every branch's channel count must be divisible by the GroupNorm groups \(4\); "
     r"\[6\]"),
    (lambda: MDEQ(1, (2, 4), 8, key=jax.random.key(0), groups=2, dropout=1.0),
     r"^MDEQ: dropout"),
    (lambda: MDEQ(1, (2, 4), 8, key=jax.random.key(0), groups=2, kernel_size=2),
     r"^MDEQ: kernel_size must be odd"),
    (lambda: MDEQ(1, (2, 4), 8, key=jax.random.key(0), groups=2, solver="anderson"),
     r"^MDEQ: solver"),
])
def test_bad_construction_is_a_clear_error(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_input_is_a_clear_error():
    m = MDEQ(1, CH, L, key=jax.random.key(0), groups=G)
    with pytest.raises(ValueError, match=r"^MDEQ: the input must have shape .*\(1, 8\).*"
                                         r"got \(1, 6\)"):
        m(jnp.ones((1, 6)))  # a length that is not the highest resolution's
    with pytest.raises(ValueError, match=r"^MDEQ: .*got \(2, 8\)"):
        m(jnp.ones((2, 8)))  # wrong channel count
    with pytest.raises(ValueError, match=r"^MDEQ: .*batched=True"):
        m(jnp.ones((5, 1, 8)))  # a batch without batched=True
    with pytest.raises(ValueError, match=r"^MDEQ: .*\(N, in_channels, \*shape\)"):
        m(jnp.ones((5, 1, 4)), batched=True)
    dropout = MDEQ(1, CH, L, key=jax.random.key(0), groups=G, dropout=0.2)
    with pytest.raises(ValueError, match=r"^MDEQ: dropout > 0 .* need a PRNG key"):
        dropout(jnp.ones((1, 8)))


# --------------------------------------------------------------------- gradients


@pytest.mark.filterwarnings("ignore::innerloop.BackwardNotConvergedWarning")
@pytest.mark.parametrize("grad", [il.Implicit(), il.Unroll(), il.Truncated(2), il.Phantom(2),
                                  il.JacobianFree()],
                         ids=["implicit", "unroll", "truncated", "phantom", "jacobianfree"])
def test_every_gradient_mode_runs_and_gives_finite_gradients(grad):
    m = tiny(grad=grad, max_steps=30)
    x = inputs(1)[0]

    def loss(m):
        z, stats = m(x)
        return sum(jnp.sum(jnp.sin(a)) for a in z), stats

    (value, stats), g = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))(m)
    assert bool(jnp.all(stats.converged))
    leaves = jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array))
    assert leaves and all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)
    # Every branch's parameters and the injection are reached.
    for part in (g.injection.weight, g.cell.blocks[0].conv1.weight,
                 g.cell.blocks[1].conv2.weight, g.cell.fuse[0][1].conv.weight,
                 g.cell.fuse[1][0].convs[0].weight):
        assert float(jnp.linalg.norm(part)) > 0


def test_implicit_gradient_passes_check_gradients_in_float64(x64):
    m = tiny(dtype=jnp.float64)
    x = inputs(1, jnp.float64)[0]
    u = m.injection(x)

    def f(z, theta):
        cell, u_ = theta
        return cell(z, u_)

    # Implicit() against the dense implicit-function-theorem reference, and forward
    # against reverse mode; the reference differentiates every parameter of f and u.
    # atol: the convolutions' biases feed GroupNorms, which remove them (zero gradient).
    result = check_gradients(f, m.z_init(jnp.float64), (m.cell, u),
                             solver=il.solvers.Iteration(), modes=[il.Implicit()], rtol=1e-6,
                             atol=1e-10, tol=1e-11, max_steps=300)
    assert result.converged


# ----------------------------------------------------------------------- dropout


def test_dropout_mask_is_drawn_once_per_solve_and_held_fixed():
    """z* is the fixed point of f with the one mask `masks(key)`: were the mask drawn
    again at every iteration, the solve would chase a moving map and its result would
    not satisfy the equation of any single mask."""
    m = tiny(dropout=0.5, tol=1e-6, max_steps=100)
    x = inputs(1)[0]
    key = jax.random.key(5)
    z, stats = call(m, x, key)
    assert bool(stats.converged)
    masks = m.masks(key, jnp.float32)
    assert all(set(np.unique(np.asarray(a)).tolist()) == {0.0, 2.0} for a in masks)
    r, norm = residual(m, z, x, masks)
    assert float(r) <= 1e-5 * float(norm) + 1e-5
    r_other, _ = residual(m, z, x, m.masks(jax.random.key(6), jnp.float32))
    assert float(r_other) > 100 * (1e-5 * float(norm) + 1e-5)  # the mask matters


# ----------------------------------------------------------------------- warm-up


def test_warmup_runs_the_unrolled_network_below_n_then_solves():
    n, depth = 3, 2
    m = tiny(warmup_steps=n, warmup_depth=depth)
    x = inputs(1)[0]
    unrolled = jax.jit(lambda u: jax.lax.fori_loop(0, depth, lambda _, z: m.cell(z, u),
                                                    m.z_init(jnp.float32)))(m.injection(x))
    for step in (0, n - 1):  # a traced step: both behaviours behind one lax.cond
        z, stats = call(m, x, step=jnp.asarray(step))
        assert int(stats.steps) == depth
        for a, b in zip(z, unrolled):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    z, stats = call(m, x, step=jnp.asarray(n))
    assert bool(stats.converged) and int(stats.steps) > depth
    r, norm = residual(m, z, x)
    assert float(r) <= 1e-5 * float(norm) + 1e-5
    # A Python int picks the branch when tracing (no solve compiled at all here).
    z, stats = call(m, x, step=n - 1)
    assert int(stats.steps) == depth
    np.testing.assert_allclose(z[1], unrolled[1], rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------- the experiment


@pytest.mark.subprocess
def test_experiment_quick_memory_is_flat_for_the_mdeq_and_grows_unrolled(tmp_path):
    out = tmp_path / "mdeq.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mdeq.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "- command: python benchmarks/mdeq.py --quick" in text and "innerloop" in text
    rows = {int(line.split("|")[1]): [int(c) for c in line.split("|")[2:4]]
            for line in text.splitlines() if line.startswith("| 4 |") or
            line.startswith("| 32 |")}
    (mdeq4, unr4), (mdeq32, unr32) = rows[4], rows[32]
    # The claims the run enforces, read back from its table.
    assert max(mdeq4, mdeq32) <= 1.1 * min(mdeq4, mdeq32), rows
    assert unr32 > 1.1 * unr4, rows
    assert "does NOT hold" not in text and text.count(": holds") == 2
