"""Forward solvers: convergence, per-example stopping under vmap, traces, safety of
Anderson's mixing step, and acceleration."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import innerloop as il
from innerloop.solvers import Anderson, Broyden, Iteration, SteadyState
from innerloop.solvers._anderson import mixing_coefficients, spd_solve
from innerloop.testing import contractive_problems, tanh_problem

SOLVERS = [Iteration(), Iteration(damping=0.7), Anderson(), Anderson(memory=1),
           Anderson(memory=3, mixing=0.5), Broyden(), Broyden(memory=2), SteadyState()]


def _true_residual(f, z, theta):
    fz = f(z, theta)
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])  # noqa
    return float(jnp.linalg.norm(flat(fz) - flat(z)))


@eqx.filter_jit
def _solve(f, z0, theta, solver, tol, max_steps):
    # One compilation per (solver, shapes): hypothesis examples only change values.
    return il.fixed_point(f, z0, theta, solver=solver, tol=tol, max_steps=max_steps)


@pytest.mark.parametrize("solver", SOLVERS, ids=repr)
@given(problem=contractive_problems(dtype=jnp.float32, lipschitz=(0.1, 0.9)))
def test_solver_converges_on_contractions_and_reports_true_residual(solver, problem):
    sol = _solve(problem.f, problem.z0, problem.theta, solver, 1e-5, 500)
    assert bool(sol.converged)
    assert sol.value.dtype == jnp.float32
    true = _true_residual(problem.f, sol.value, problem.theta)
    # f(z) evaluated in two compiled programs differs by rounding: about an ulp of z.
    ulps = 2 * float(jnp.finfo(jnp.float32).eps) * (1 + float(jnp.linalg.norm(sol.value)))
    np.testing.assert_allclose(float(sol.residual), true, rtol=1e-3, atol=ulps)
    assert float(sol.residual) <= 1e-5 * (1 + float(jnp.linalg.norm(sol.value)))


@pytest.mark.parametrize("solver", SOLVERS[:6], ids=repr)
def test_vmap_each_example_stops_on_its_own(solver):
    problem = tanh_problem(dtype=jnp.float32)
    # Scaling the injection changes how far each example is from its fixed point.
    scales = jnp.asarray([0.0, 0.1, 1.0, 3.0], jnp.float32)
    z0 = jnp.zeros(8, jnp.float32)

    def solve(s):
        theta = dict(problem.theta, b=s * problem.theta["b"], U=s * problem.theta["U"])
        return il.fixed_point(problem.f, z0, theta, solver=solver, tol=1e-5,
                              max_steps=300)

    batched = jax.jit(jax.vmap(solve))(scales)
    loop = [solve(s) for s in scales]
    assert batched.steps.shape == (4,)
    assert int(batched.steps[0]) == 0  # z0 = 0 is already the fixed point
    assert len(set(np.asarray(batched.steps).tolist())) > 1
    for i, sol in enumerate(loop):
        # float32 round-off differs between a batched and a single matmul, which can
        # move the step at which the residual crosses tol by one.
        assert abs(int(batched.steps[i]) - int(sol.steps)) <= 1
        np.testing.assert_allclose(batched.value[i], sol.value, rtol=1e-4, atol=1e-5)


def test_converged_examples_stop_changing_under_vmap():
    problem = tanh_problem(dtype=jnp.float32)

    def solve(s, max_steps):
        theta = dict(problem.theta, b=jnp.float32(s) * problem.theta["b"])
        return il.fixed_point(problem.f, jnp.zeros(8, jnp.float32), theta, solver=Anderson(),
                              tol=1e-5, max_steps=max_steps)

    steps = {float(s): int(solve(s, 300).steps) for s in (0.05, 0.2, 1.0, 3.0)}
    easy, hard = min(steps, key=steps.get), max(steps, key=steps.get)
    assert steps[easy] < steps[hard]
    mixed = jax.vmap(lambda s: solve(s, 300))(jnp.asarray([easy, hard], jnp.float32))
    same = jax.vmap(lambda s: solve(s, 300))(jnp.asarray([easy, easy], jnp.float32))
    # The easy example stops at its own step and its value does not depend on how
    # long the other example in its batch kept iterating.
    assert int(mixed.steps[0]) == steps[easy] and int(mixed.steps[1]) == steps[hard]
    np.testing.assert_array_equal(np.asarray(mixed.value[0]), np.asarray(same.value[0]))


@pytest.mark.parametrize("solver", [Iteration(), Anderson(), Broyden(), SteadyState()],
                         ids=repr)
def test_trace_has_fixed_length_and_matches_the_solve(solver):
    problem = tanh_problem(dtype=jnp.float32)
    sol = il.fixed_point(problem.f, problem.z0, problem.theta, solver=solver,
                         tol=1e-5, max_steps=50, trace=True)
    assert sol.trace.shape == (51,)
    finite = np.isfinite(np.asarray(sol.trace))
    last = int(finite.sum()) - 1
    assert finite[: last + 1].all() and not finite[last + 1:].any()
    if not isinstance(solver, SteadyState):  # its trace is per accepted ODE step
        assert last == int(sol.steps)
    # Same point; float32 cancellation in f(z) - z near convergence limits agreement
    # between the batched (trace) and single evaluation.
    np.testing.assert_allclose(float(sol.trace[last]), float(sol.residual), rtol=1e-2)


def test_jitted_solvers_reach_a_float64_reference():
    problem = tanh_problem(dtype=jnp.float32)
    theta64 = jax.tree.map(lambda x: np.asarray(x, np.float64), problem.theta)
    z = np.zeros(np.shape(problem.z0))
    for _ in range(2000):  # plain float64 iteration of the same map, in NumPy
        z = np.tanh(theta64["W"] @ z + theta64["U"] @ theta64["x"] + theta64["b"])
    for solver in (Iteration(), Anderson(), Broyden()):
        sol = jax.jit(lambda t, solver=solver: il.fixed_point(
            problem.f, problem.z0, t, solver=solver, tol=1e-5))(problem.theta)
        assert bool(sol.converged)
        np.testing.assert_allclose(sol.value, z, rtol=1e-4, atol=1e-4)


def test_nonconvergence_is_reported():
    # tanh(3 z + 1) on R^1 oscillates/converges slowly: not contractive.
    f = lambda z, t: jnp.tanh(-3.0 * z + t)  # noqa: E731
    sol = il.fixed_point(f, jnp.zeros(1), 0.5, solver=Iteration(), tol=1e-6,
                         max_steps=20)
    assert not bool(sol.converged)
    assert int(sol.steps) == 20
    assert float(sol.residual) > 1e-6


def test_nan_from_f_stops_unconverged():
    f = lambda z, t: z * jnp.nan  # noqa: E731
    sol = il.fixed_point(f, jnp.ones(3), None, solver=Anderson(), max_steps=50)
    assert not bool(sol.converged)
    assert int(sol.steps) == 0


# ----------------------------------------------------------- Anderson safety


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 8), rank=st.integers(0, 3),
       scale=st.floats(-30, 10))
# An all-zero history: with pivots floored at the smallest normal number, y was about
# 1e37 per entry and 1 / sum(y) flushed to zero, so alpha came out all zero.
@example(seed=0, m=3, rank=0, scale=0.0)
def test_mixing_coefficients_are_finite_and_sum_to_one_for_singular_histories(
        seed, m, rank, scale):
    rng = np.random.default_rng(seed)
    # residuals of rank <= `rank` (rank 0: all zero), at scales from 1e-30 to 1e10
    basis = rng.normal(size=(max(rank, 1), 16)) * (rank > 0)
    rs = rng.normal(size=(m, max(rank, 1))) @ basis * 10.0**scale
    for dtype in (jnp.float32, jnp.float64):
        with jax.enable_x64(dtype == jnp.float64):
            valid = np.arange(m) < rng.integers(1, m + 1)
            alpha = _mix_history(jnp.asarray(rs, dtype), valid)
            assert alpha.dtype == dtype and np.all(np.isfinite(alpha))
            np.testing.assert_allclose(float(np.sum(alpha)), 1.0, rtol=1e-4)
            assert np.all(np.where(valid, True, alpha == 0))


# Jitted, as Anderson calls it (inside a compiled solve): eagerly every op compiled per m.
@jax.jit
def _mix_history(r, valid):
    return mixing_coefficients(r @ r.T, valid, 1e-4)


@pytest.mark.parametrize("dtype, scales", [
    (jnp.float32, (1e-30, 1.0, 1e30, 1e37)), (jnp.float64, (1e-300, 1.0, 4e306))])
def test_mixing_coefficients_are_scale_invariant_up_to_overflow(dtype, scales):
    # Under jit, XLA turned gram / top into gram * (1 / top), which flushed to zero for
    # top above 1 / tiny (float32 scale 1e37 here) and gave a uniform alpha.
    r = np.random.default_rng(0).normal(size=(3, 20))
    g = r @ r.T
    ref = np.linalg.solve(g + 1e-4 * np.diag(np.diag(g)), np.ones(3))
    ref = ref / ref.sum()
    mix = jax.jit(mixing_coefficients, static_argnums=2)
    with jax.enable_x64(dtype == jnp.float64):
        for scale in scales:
            alpha = mix(jnp.asarray(g * scale, dtype), jnp.ones(3, bool), 1e-4)
            np.testing.assert_allclose(np.asarray(alpha), ref, rtol=1e-4, atol=1e-6,
                                       err_msg=f"scale {scale:g}")


def test_mixing_coefficients_solve_the_constrained_least_squares_problem():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        r = jnp.asarray(rng.normal(size=(4, 10)))
        g = r @ r.T
        alpha = mixing_coefficients(g, jnp.ones(4, bool), 0.0)
        # KKT: G alpha = mu 1 with sum(alpha) = 1.
        y = np.linalg.solve(np.asarray(g), np.ones(4))
        np.testing.assert_allclose(alpha, y / y.sum(), rtol=1e-9)


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 12))
def test_spd_solve_solves_spd_systems(seed, m):
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        a = rng.normal(size=(m, m))
        a = a @ a.T + 0.1 * np.eye(m)
        b = rng.normal(size=m)
        np.testing.assert_allclose(spd_solve(jnp.asarray(a), jnp.asarray(b)),
                                   np.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("f", [
    lambda z, t: jnp.full_like(z, 0.3),          # constant map: residual hits 0
    lambda z, t: z,                               # every point fixed: residual 0
    lambda z, t: 0.5 * z + 1.0,                   # 1-D affine: collinear residuals
    lambda z, t: jnp.zeros_like(z),               # fixed point at the norm floor
], ids=["constant", "identity", "affine", "zero"])
def test_anderson_singular_history_never_produces_nan(f):
    for dtype in (jnp.float32,):
        z0 = jnp.ones(5, dtype)
        sol = il.fixed_point(f, z0, None, solver=Anderson(memory=5), tol=1e-6,
                             max_steps=50)
        assert bool(jnp.all(jnp.isfinite(sol.value)))
        assert bool(sol.converged)


def test_anderson_accelerates_on_an_ill_conditioned_problem():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    w = (q * np.linspace(0, 0.99, 32)) @ q.T
    theta = {"W": jnp.asarray(w, jnp.float32),
             "c": jnp.asarray(0.05 * rng.normal(size=32), jnp.float32)}
    f = lambda z, t: jnp.tanh(t["W"] @ z + t["c"])  # noqa: E731
    it = il.fixed_point(f, jnp.zeros(32, jnp.float32), theta, solver=Iteration(), tol=1e-5,
                        max_steps=2000)
    an = il.fixed_point(f, jnp.zeros(32, jnp.float32), theta, solver=Anderson(memory=5),
                        tol=1e-5,
                        max_steps=2000)
    br = il.fixed_point(f, jnp.zeros(32, jnp.float32), theta, solver=Broyden(), tol=1e-5,
                        max_steps=2000)
    assert bool(it.converged) and bool(an.converged) and bool(br.converged)
    assert int(an.steps) * 4 <= int(it.steps)
    assert int(br.steps) * 2 <= int(it.steps)


def test_steady_state_has_no_stepping_interface():
    """SteadyState is driven by diffrax: it is a solver (solve) but not an iterative
    one, and it does not carry init/step methods that could only raise."""
    from innerloop.solvers import AbstractIterativeSolver, AbstractSolver
    s = SteadyState()
    assert isinstance(s, AbstractSolver) and not isinstance(s, AbstractIterativeSolver)
    assert not hasattr(s, "init") and not hasattr(s, "step")
    assert isinstance(Anderson(), AbstractIterativeSolver)
