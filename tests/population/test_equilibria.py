"""Equilibria of zero-sum matrix games: `nash` against golden cases and scipy's
linprog, the envelope-theorem gradient of its value, `qre`'s gradients in every mode
against finite differences, the learning dynamics' exploitability bounds, the errors."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy.optimize import linprog

import innerloop as il
from innerloop.population import (
    PDHG,
    FictitiousPlay,
    RegretMatchingPlus,
    Replicator,
    Simplex,
    blotto_payoff,
    exploitability,
    nash,
    qre,
)
from innerloop.solvers import Iteration

ROOT = Path(__file__).resolve().parents[2]
RPS = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
# Weighted RPS: the equilibrium (1/4, 1/2, 1/4) is not where the dynamics start.
WRPS = np.array([[0.0, -1.0, 2.0], [1.0, 0.0, -1.0], [-2.0, 1.0, 0.0]])

_nash = jax.jit(nash)
_nash_batch = jax.jit(jax.vmap(nash))
# The two exact solvers: every golden case and the linprog comparison run for each.
SOLVERS = {"simplex": Simplex(), "pdhg": PDHG()}
_NASH = {k: jax.jit(lambda a, s=s: nash(a, solver=s)) for k, s in SOLVERS.items()}
_NASH_BATCH = {k: jax.jit(jax.vmap(lambda a, s=s: nash(a, solver=s)))
               for k, s in SOLVERS.items()}


def _f64(a):
    return jnp.asarray(a, jnp.float64)


def _gap(a, x, y):
    """max_i (A y)_i - min_j (x A)_j in float64 NumPy, independent of the library."""
    a, x, y = (np.asarray(v, np.float64) for v in (a, x, y))
    return float((a @ y).max() - (x @ a).min())


def _linprog_value(a):
    """max_x min_j (x^T A)_j as an LP in (x, v)."""
    m, n = a.shape
    c = np.zeros(m + 1)
    c[-1] = -1.0
    res = linprog(c, A_ub=np.hstack([-a.T, np.ones((n, 1))]), b_ub=np.zeros(n),
                  A_eq=np.hstack([np.ones((1, m)), np.zeros((1, 1))]), b_eq=[1.0],
                  bounds=[(0, None)] * m + [(None, None)], method="highs")
    assert res.status == 0
    return -res.fun


# ------------------------------------------------------------------ golden cases


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", SOLVERS)
def test_rps_is_uniform_with_value_zero(solver):
    eq = _NASH[solver](_f64(RPS))
    np.testing.assert_allclose(eq.row, np.full(3, 1 / 3), atol=1e-6)
    np.testing.assert_allclose(eq.col, np.full(3, 1 / 3), atol=1e-6)
    assert abs(float(eq.value)) <= 1e-6
    assert bool(eq.converged) and 0 <= float(eq.exploitability) <= 1e-6


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", SOLVERS)
def test_transitive_game_gives_the_dominant_pure_strategy(solver):
    # Strength s: A[i, j] = s_i - s_j; both players pick the strongest.
    s = np.array([0.0, 1.0, 2.0])
    eq = _NASH[solver](_f64(s[:, None] - s[None, :]))
    np.testing.assert_allclose(eq.row, [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(eq.col, [0, 0, 1], atol=1e-6)
    assert abs(float(eq.value)) <= 1e-6


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", SOLVERS)
def test_matching_pennies_and_weighted_rps(solver):
    eq = _NASH[solver](_f64([[1.0, -1.0], [-1.0, 1.0]]))
    np.testing.assert_allclose(eq.row, [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(eq.col, [0.5, 0.5], atol=1e-6)
    eq = _NASH[solver](_f64(WRPS))
    np.testing.assert_allclose(eq.row, [0.25, 0.5, 0.25], atol=1e-6)
    np.testing.assert_allclose(eq.col, [0.25, 0.5, 0.25], atol=1e-6)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", SOLVERS)
def test_dominated_row_gets_no_mass_non_square(solver):
    # Row 2 is strictly dominated by row 0; the 2x2 core is matching pennies shifted.
    a = _f64([[3.0, 1.0], [1.0, 3.0], [2.0, 0.0]])
    eq = _NASH[solver](a)
    np.testing.assert_allclose(eq.row, [0.5, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(eq.col, [0.5, 0.5], atol=1e-6)
    assert abs(float(eq.value) - 2.0) <= 1e-6


# --------------------------------------------------------------- against linprog


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("solver", SOLVERS)
def test_values_match_linprog_on_random_games(solver):
    a = jax.random.normal(jax.random.key(3), (50, 32, 32), jnp.float64)
    eq = _NASH_BATCH[solver](a)
    assert bool(jnp.all(eq.converged))
    assert float(jnp.max(eq.exploitability)) <= 1e-6
    # 32x32 keeps the CI tier short; benchmarks/nash.py checks 1000 games of 50x50.
    # The reported gap is the gap of the returned strategies.
    gaps = [_gap(g, x, y) for g, x, y in zip(a, eq.row, eq.col)]
    np.testing.assert_allclose(eq.exploitability, gaps, atol=1e-12)
    assert max(gaps) <= 1e-6
    # The public exploitability against the same NumPy gap, at a non-equilibrium pair.
    x, y = jnp.full(32, 1 / 32, jnp.float64), jax.nn.softmax(a[1, 0])
    assert float(exploitability(a[0], x, y)) == pytest.approx(_gap(a[0], x, y), abs=1e-12)
    lp = np.array([_linprog_value(np.asarray(g)) for g in a])
    assert np.max(np.abs(np.asarray(eq.value) - lp)) <= 1e-6


_SIMPLEX_ONLY = jax.jit(lambda a: nash(a, solver=Simplex(fallback=False)))
_SIMPLEX_UNPERTURBED = jax.jit(lambda a: nash(a, solver=Simplex(perturbation=0.0,
                                                                fallback=False)))


@pytest.mark.usefixtures("x64")
@given(seed=st.integers(0, 2**16), shape=st.sampled_from([(6, 6), (4, 7), (7, 4)]),
       levels=st.integers(1, 3))
def test_simplex_alone_is_exact_on_degenerate_integer_games(seed, shape, levels):
    # Payoffs in {-levels, ..., levels}: ties in the ratio test and many equilibria,
    # where a naive pivot rule cycles or divides by near-zero pivots. No fallback.
    a = np.random.default_rng(seed).integers(-levels, levels + 1, shape).astype(np.float64)
    eq = _SIMPLEX_ONLY(_f64(a))
    assert bool(eq.converged)
    assert _gap(a, eq.row, eq.col) <= 1e-9
    assert abs(float(eq.value) - _linprog_value(a)) <= 1e-9


@pytest.mark.usefixtures("x64")
def test_simplex_alone_solves_blotto_exactly():
    # Colonel Blotto with 10 soldiers on 3 fields: 66 x 66, highly degenerate (a plain
    # minimum-ratio test without the perturbation leaves a gap of 0.12 here).
    a = _f64(blotto_payoff(10, 3))
    for solve in (_SIMPLEX_ONLY, _SIMPLEX_UNPERTURBED):  # Harris's test alone suffices
        eq = solve(a)
        assert bool(eq.converged)
        assert _gap(a, eq.row, eq.col) <= 1e-10
        assert abs(float(eq.value)) <= 1e-10  # symmetric game


@pytest.mark.usefixtures("x64")
def test_simplex_hands_over_to_pdhg_when_its_pivots_run_out():
    a = jax.random.normal(jax.random.key(5), (16, 16), jnp.float64)
    run = jax.jit(lambda a, fb: nash(a, solver=Simplex(max_pivots=4, fallback=fb)),
                  static_argnums=1)
    alone = run(a, False)  # 4 pivots are far from the optimum (16x16 takes ~16)
    assert not bool(alone.converged) and _gap(a, alone.row, alone.col) > 1e-3
    assert int(alone.steps) == 4
    eq = run(a, True)  # PDHG finishes from the 4-pivot point
    assert bool(eq.converged) and _gap(a, eq.row, eq.col) <= 1e-6
    assert int(eq.steps) > 4


def test_float32_default_tolerance_is_reached():
    # Three of these games end the float32 simplex above 1e-4: PDHG must finish them.
    a = jax.random.normal(jax.random.key(0), (256, 8, 8), jnp.float32)
    eq = _nash_batch(a)
    assert bool(jnp.all(eq.converged))
    tol = 1e-4 if eq.value.dtype == jnp.float32 else 1e-6
    assert float(jnp.max(eq.exploitability)) <= tol


# ------------------------------------------------------------------ gradients


def _mixed_game(x, y, b, shift):
    """A square game whose unique equilibrium is the fully mixed (x, y) with value
    `shift`: b is made equalising against y (rows) and x (columns)."""
    a1 = b - (b @ y)[:, None]
    a = a1 - (x @ a1)[None, :]
    return a + shift


def _interior(n):
    return st.lists(st.floats(0.2, 1.0), min_size=n, max_size=n).map(
        lambda v: np.asarray(v) / np.sum(v))


def _nash_value_check(a):
    """The gradient of nash's value, the outer product at the solution, and central
    differences on every entry (one vmapped call)."""
    value = lambda m: nash(m, tol=1e-12).value  # noqa: E731
    eq = nash(a, tol=1e-12)
    eps = 1e-5
    basis = jnp.eye(a.size, dtype=a.dtype).reshape(a.size, *a.shape) * eps
    fd = (jax.vmap(value)(a + basis) - jax.vmap(value)(a - basis)) / (2 * eps)
    return jax.grad(value)(a), jnp.outer(eq.row, eq.col), fd.reshape(a.shape)


_NASH_VALUE_CHECK = jax.jit(_nash_value_check)


@pytest.mark.usefixtures("x64")
@given(x=_interior(3), y=_interior(3), seed=st.integers(0, 2**16),
       shift=st.floats(-1.0, 1.0))
def test_nash_value_gradient_is_outer_product_and_matches_fd(x, y, seed, shift):
    b = np.asarray(jax.random.normal(jax.random.key(seed), (3, 3), jnp.float64))
    a = _mixed_game(x, y, b, shift)
    # Unique when a - shift has rank n - 1 (x and y span its null spaces).
    assume(np.linalg.svd(a - shift, compute_uv=False)[-2] > 0.1)
    g, outer, fd = _NASH_VALUE_CHECK(_f64(a))
    np.testing.assert_allclose(outer, np.outer(x, y), atol=1e-6)
    np.testing.assert_allclose(g, np.outer(x, y), atol=1e-6)
    np.testing.assert_allclose(g, fd, atol=1e-5)


QRE_SHAPE = (4, 3)
MODES = {"implicit": (il.Implicit(), None),
         # Unrolled plain iteration: its derivative converges with the iterates.
         "unroll": (il.Unroll(), Iteration())}
_W_ROW = np.arange(1.0, 5.0)
_W_COL = np.arange(1.0, 4.0)


def _qre_outputs(mode):
    grad, solver = MODES[mode]

    def f(a, tau):
        eq = qre(a, tau, grad=grad, solver=solver, tol=1e-13, max_steps=3000)
        return jnp.stack([eq.value, eq.row @ _W_ROW.astype(a.dtype),
                          eq.col @ _W_COL.astype(a.dtype)])
    return f


def _qre_check(mode):
    """Directional derivatives of (value, row . w, col . w) along d (payoffs) and along
    tau: by the mode (jacrev) and by central differences."""
    f = _qre_outputs(mode)

    def check(a, tau, d):
        ja, jt = jax.jacrev(f, argnums=(0, 1))(a, tau)
        eps = 1e-5
        fd_a = (f(a + eps * d, tau) - f(a - eps * d, tau)) / (2 * eps)
        fd_t = (f(a, tau + eps) - f(a, tau - eps)) / (2 * eps)
        return jnp.sum(ja * d, axis=(1, 2)), jt, fd_a, fd_t

    return jax.jit(check)


_QRE_CHECK = {m: _qre_check(m) for m in MODES}
_QRE_DEFAULT = jax.jit(qre)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("mode", MODES)
@given(seed=st.integers(0, 2**16), tau=st.floats(0.2, 1.0))
def test_qre_gradients_match_finite_differences(mode, seed, tau):
    a = jax.random.normal(jax.random.key(seed), QRE_SHAPE, jnp.float64)
    d = jax.random.normal(jax.random.key(seed + 1), QRE_SHAPE, jnp.float64)
    da, dt, fd_a, fd_t = _QRE_CHECK[mode](a, jnp.asarray(tau, jnp.float64), d)
    np.testing.assert_allclose(da, fd_a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dt, fd_t, rtol=1e-5, atol=1e-7)


@pytest.mark.usefixtures("x64")
def test_qre_is_the_logit_fixed_point_and_jvp_matches_grad():
    a = jax.random.normal(jax.random.key(7), QRE_SHAPE, jnp.float64)
    tau = jnp.asarray(0.4, jnp.float64)
    eq = qre(a, tau, tol=1e-13)
    np.testing.assert_allclose(eq.row, jax.nn.softmax(a @ eq.col / tau), atol=1e-10)
    np.testing.assert_allclose(eq.col, jax.nn.softmax(-(eq.row @ a) / tau), atol=1e-10)
    # Forward mode through the implicit rule agrees with reverse mode and with
    # central differences.
    f = _qre_outputs("implicit")
    d = jax.random.normal(jax.random.key(8), QRE_SHAPE, jnp.float64)
    _, tangent = jax.jit(lambda a, t, d: jax.jvp(f, (a, t), (d, jnp.ones_like(t))))(a, tau, d)
    da, dt, fd_a, fd_t = _QRE_CHECK["implicit"](a, tau, d)
    np.testing.assert_allclose(tangent, da + dt, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(tangent, fd_a + fd_t, rtol=1e-5, atol=1e-7)


@pytest.mark.usefixtures("x64")
def test_qre_approaches_nash_value_as_tau_falls():
    a = jax.random.normal(jax.random.key(9), (5, 5), jnp.float64)
    v = float(_nash(a).value)
    errors = []
    for tau in (0.3, 0.1, 0.03):
        eq = _QRE_DEFAULT(a, jnp.asarray(tau, jnp.float64))
        assert bool(eq.converged)
        # |QRE value - Nash value| <= 2 tau log(max(m, n)) (entropy terms at most log n).
        err = abs(float(eq.value) - v)
        assert err <= 2 * tau * np.log(5), (tau, err)
        errors.append(err)
    assert errors[-1] < errors[0]


# ------------------------------------------------------------ learning dynamics


DYNAMICS = {  # solver, steps, bound on the average's exploitability
    "replicator": (Replicator(), 4000, 0.05),
    "rm+": (RegretMatchingPlus(), 4000, 2e-3),
    "fictitious": (FictitiousPlay(), 4000, 0.05),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("name", DYNAMICS)
def test_learning_dynamics_reach_their_bound(name):
    solver, steps, bound = DYNAMICS[name]
    run = jax.jit(lambda a: nash(a, solver=solver, tol=bound, max_steps=steps))
    a = jax.random.normal(jax.random.key(11), (6, 6), jnp.float64)
    for game in (_f64(WRPS), a):
        eq = run(game)
        gap = _gap(game, eq.row, eq.col)
        assert gap <= bound and bool(eq.converged), (name, gap)
        np.testing.assert_allclose(float(eq.exploitability), gap, atol=1e-12)
        # Not already there at the start (uniform play is exploitable in both games).
        assert int(eq.steps) > 0


# ------------------------------------------------------------------- errors


def test_errors_are_clear():
    with pytest.raises(ValueError, match="^nash: payoff must be a 2-D"):
        nash(jnp.ones((3,)))
    with pytest.raises(ValueError, match="^nash: payoff contains NaN"):
        nash(jnp.array([[0.0, jnp.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="^nash: tol must be"):
        nash(jnp.eye(2), tol=0.0)
    with pytest.raises(ValueError, match="^qre: temperature must be > 0"):
        qre(jnp.eye(2), 0.0)
    with pytest.raises(ValueError, match="^qre: temperature must be > 0"):
        qre(jnp.eye(2), -1.0)
    with pytest.raises(ValueError, match="^qre: payoff contains NaN"):
        qre(jnp.array([[0.0, jnp.nan], [1.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="^qre: tol must be"):
        qre(jnp.eye(2), 1.0, tol=-1.0)
    with pytest.raises(TypeError, match="^nash: solver must be"):
        nash(jnp.eye(2), solver="pdhg")


def test_errors_under_jit():
    with pytest.raises((RuntimeError, ValueError), match="nash: payoff contains NaN"):
        jax.block_until_ready(_nash(jnp.array([[0.0, jnp.nan], [1.0, 0.0]])))
    with pytest.raises((RuntimeError, ValueError), match="qre: temperature must be > 0"):
        jax.block_until_ready(jax.jit(lambda a, t: qre(a, t).value)(jnp.eye(2), -0.5))


# ------------------------------------------------------------------ benchmark


@pytest.mark.subprocess
def test_nash_benchmark_quick(tmp_path):
    # A child process: the script enables float64 for itself.
    out = tmp_path / "nash.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nash.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for row in ("innerloop jit(vmap(nash))", "OpenSpiel lp_solver", "nashpy",
                "values equal linprog's to 1e-06 on 64 random 16x16 games",
                "every one of 64 games at exploitability <= 1e-06", "- command:"):
        assert row in text, row
