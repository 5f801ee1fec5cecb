"""Convergence is never claimed falsely: the tolerance test, result codes, failure
reports, root finding that does not depend on the sign of g, and an implicit gradient
that is right whenever the forward solve converged."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import innerloop as il
from innerloop.solvers import RESULTS, Anderson, Bisection, Broyden, Chord, Iteration, Newton

DTYPES = [jnp.float32, jnp.float64]


def _shift(z, _):
    return z + 1.0


def _no_root(z, _):
    return jnp.stack([jnp.ones_like(z[0]), jnp.tanh(z[1] - 0.5)])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("solver", [Iteration(), Anderson()], ids=repr)
def test_fixed_point_without_solution_is_not_converged(dtype, solver):
    with jax.enable_x64(dtype == jnp.float64):
        sol = il.fixed_point(_shift, jnp.zeros(3, dtype), solver=solver, tol=1e-2,
                             max_steps=1000)
        assert not bool(sol.converged)
        assert sol.result == RESULTS.max_steps_reached
        with pytest.raises(il.NotConvergedError, match="did not converge"):
            il.fixed_point(_shift, jnp.zeros(3, dtype), solver=solver, tol=1e-2,
                           max_steps=1000, throw=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("solver", [None, Broyden(), Chord()], ids=repr)
def test_root_without_solution_is_not_converged(dtype, solver):
    with jax.enable_x64(dtype == jnp.float64):
        z0 = jnp.asarray([0.5, -0.3], dtype)
        sol = il.root(_no_root, z0, solver=solver)
        assert not bool(sol.converged)
        assert float(sol.residual) >= 1.0  # g_0 = 1 everywhere
        with pytest.raises(il.NotConvergedError):
            il.root(_no_root, z0, solver=solver, throw=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_throw_raises_under_jit_with_the_reason_printed_first(dtype, capfd):
    with jax.enable_x64(dtype == jnp.float64):
        run = jax.jit(lambda z0: il.fixed_point(_shift, z0, tol=1e-2, max_steps=200,
                                                throw=True).value)
        with pytest.raises(Exception, match="did not converge"):
            run(jnp.zeros(3, dtype)).block_until_ready()
    err = capfd.readouterr().err
    first = next(line for line in err.splitlines() if line.strip())
    assert first.startswith("NotConvergedError: innerloop.fixed_point did not converge")


def test_fixed_point_at_zero_certifies_with_iteration():
    # jaxopt's geometric decay: z = 0.9 z, whose fixed point is 0 (a relative test
    # ||f(z) - z|| <= rtol ||z|| never holds there).
    sol = il.fixed_point(lambda z, _: 0.9 * z, jnp.ones(4), solver=Iteration(),
                         max_steps=200)
    assert bool(sol.converged) and sol.result == RESULTS.successful
    assert float(jnp.max(jnp.abs(sol.value))) < 1e-4


def test_tolerance_is_atol_plus_rtol_times_norm():
    # z = 0.5 z + c has its fixed point at 2c; the residual after k iterations from 0
    # is ||c|| 0.5^k, so the stopping step is fixed by the tolerance alone.
    c = 100.0 * jnp.ones(4)
    f = lambda z, c: 0.5 * z + c  # noqa: E731
    for rtol, atol in [(1e-3, 0.0), (0.0, 1e-2), (1e-4, 1e-1)]:
        sol = il.fixed_point(f, jnp.zeros(4), c, solver=Iteration(), rtol=rtol,
                             atol=atol, max_steps=200)
        z = np.asarray(sol.value, np.float64)
        r = float(sol.residual)
        assert r <= atol + rtol * np.linalg.norm(z) * (1 + 1e-6)
        prev = 2 * r  # the residual one step before
        assert prev > atol + rtol * np.linalg.norm(z) * 0.99


def test_tol_is_rtol_and_bad_tolerances_are_named():
    a = il.fixed_point(lambda z, _: 0.5 * z + 1, jnp.zeros(2), tol=1e-3)
    b = il.fixed_point(lambda z, _: 0.5 * z + 1, jnp.zeros(2), rtol=1e-3)
    assert int(a.steps) == int(b.steps)
    with pytest.raises(ValueError, match="rtol or tol"):
        il.fixed_point(lambda z, _: z, jnp.zeros(2), tol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="atol must be a finite float >= 0"):
        il.fixed_point(lambda z, _: z, jnp.zeros(2), atol=-1.0)
    with pytest.raises(ValueError, match="both 0"):
        il.fixed_point(lambda z, _: z, jnp.zeros(2), rtol=0.0, atol=0.0)


# ----------------------------------------------------------------- result codes


def test_result_successful():
    sol = il.fixed_point(lambda z, _: 0.5 * z + 1, jnp.zeros(2))
    assert sol.result == RESULTS.successful and bool(sol.converged)
    assert RESULTS[sol.result] == ""


def test_result_max_steps_reached():
    sol = il.fixed_point(lambda z, _: 0.999 * z + 1, jnp.zeros(2), solver=Iteration(),
                         max_steps=5)
    assert sol.result == RESULTS.max_steps_reached and int(sol.steps) == 5
    assert "max_steps" in RESULTS[sol.result]


def test_result_nonfinite():
    sol = il.fixed_point(lambda z, _: 3.0 * z * z + 1, jnp.ones(2), solver=Iteration(),
                         max_steps=100)
    assert sol.result == RESULTS.nonfinite and not bool(sol.converged)
    assert int(sol.steps) < 100  # stops as soon as it overflows


def test_result_stagnated():
    # g(z) = z^2 + 1 has no real root; Newton's trust region closes in on the
    # minimiser of g^2 at 0, where no step decreases ||g||.
    sol = il.root(lambda z, _: z * z + 1.0, jnp.asarray([1.0]), max_steps=500)
    assert sol.result == RESULTS.stagnated and not bool(sol.converged)
    assert int(sol.steps) < 500


def test_result_linear_solve_failed():
    # The chord method factors dg/dz at the start, here singular: diag(0, ...).
    sol = il.root(_no_root, jnp.asarray([0.5, -0.3]), solver=Chord())
    assert sol.result == RESULTS.linear_solve_failed and not bool(sol.converged)


def test_results_are_per_example_under_vmap():
    # z = a z^2 + b z + 1: a contraction, z + 1 (no fixed point, finite), z^2 + 1
    # (overflows within the steps in float32 and float64).
    def solve(ab):
        return il.fixed_point(lambda z, ab: ab[0] * z * z + ab[1] * z + 1, jnp.zeros(2), ab,
                              solver=Iteration(), max_steps=50)

    sols = jax.vmap(solve)(jnp.asarray([[0.1, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    assert np.asarray(sols.converged).tolist() == [True, False, False]
    expected = [RESULTS.successful, RESULTS.max_steps_reached, RESULTS.nonfinite]
    for i, item in enumerate(expected):
        assert bool((sols.result == item)[i])


# ------------------------------------------------------------------ root finding


def _heat(n=100):
    """optimistix's nonlinear heat equation: y = f(y) with f a contraction; g = f - y."""
    x = jnp.linspace(0.0, 1.0, n)
    dx = x[1] - x[0]

    def f(y, _):
        lap = (jnp.roll(y, 1) - 2 * y + jnp.roll(y, -1)).at[0].set(0).at[-1].set(0)
        return 0.5 * (y + 0.1 * jnp.sin(y) + 0.2 * lap / (1 + dx) + jnp.sin(jnp.pi * x))

    return f, jnp.zeros(n)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("solver", [None, Broyden(), Chord()], ids=repr)
def test_root_converges_whatever_the_sign_of_g(sign, solver):
    f, y0 = _heat()
    g = lambda y, _: sign * (f(y, None) - y)  # noqa: E731
    sol = il.root(g, y0, solver=solver, max_steps=200)
    assert bool(sol.converged), RESULTS[sol.result]
    fixed = il.fixed_point(f, y0, solver=Anderson(), rtol=1e-6, max_steps=500)
    np.testing.assert_allclose(sol.value, fixed.value, rtol=1e-4, atol=1e-4)


def test_newton_trust_region_does_not_jump_where_g_saturates():
    # optimistix's tanh problem: a Newton step from 0.7 lands where tanh(2 c) is flat.
    g = lambda z, _: jnp.tanh(2 * z) + 0.0 * z  # noqa: E731
    sol = il.root(g, jnp.asarray([0.7, -0.9, 1.2]), rtol=1e-6, atol=1e-8)
    assert bool(sol.converged)
    np.testing.assert_allclose(sol.value, 0.0, atol=1e-6)
    sol = il.root(lambda z, _: z * z + 1.0, jnp.asarray([1.0]))
    assert sol.result == RESULTS.stagnated


def test_newton_converges_quadratically():
    sol = il.root(lambda z, a: z ** 3 - a, jnp.asarray([1.0, 2.0]), jnp.asarray([8.0, 27.0]),
                  trace=True, rtol=1e-6)
    assert bool(sol.converged) and int(sol.steps) <= 8
    np.testing.assert_allclose(sol.value, [2.0, 3.0], rtol=1e-6)


def test_bisection_finds_a_bracketed_scalar_root():
    sol = il.root(lambda z, a: z ** 3 - a, jnp.asarray(0.0), 2.0,
                  solver=Bisection(lower=0.0, upper=2.0), rtol=1e-6, max_steps=100)
    assert bool(sol.converged)
    np.testing.assert_allclose(float(sol.value), 2 ** (1 / 3), rtol=1e-5)
    grad = jax.grad(lambda a: il.root(lambda z, a: z ** 3 - a, jnp.asarray(0.0), a,
                                      solver=Bisection(0.0, 2.0), rtol=1e-6,
                                      max_steps=100).value)(2.0)
    np.testing.assert_allclose(float(grad), (1 / 3) * 2 ** (-2 / 3), rtol=1e-3)


def test_bisection_reports_a_bracket_without_a_sign_change():
    with pytest.raises(ValueError, match="lower < upper"):
        Bisection(lower=1.0, upper=0.0)
    sol = il.root(lambda z, _: z ** 2 + 1, jnp.asarray(0.0), solver=Bisection(-1.0, 1.0))
    assert sol.result == RESULTS.no_bracket and int(sol.steps) == 0
    with pytest.raises(il.NotConvergedError, match="same sign"):
        il.root(lambda z, _: z ** 2 + 1, jnp.asarray(0.0), solver=Bisection(-1.0, 1.0),
                throw=True)


# -------------------------------------------------------- adjoints and gradients


def _spectrum_map(dtype):
    """f(z, theta) = A z + theta with A symmetric, spectrum in [-7, -4] (jaxopt's
    custom_fixed_point test): plain adjoint iteration diverges."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a = (q * np.linspace(-7, -4, 5)) @ q.T
    return jnp.asarray(a, dtype), jnp.asarray(rng.normal(size=5), dtype)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-4), (jnp.float64, 1e-8)],
                         ids=["float32", "float64"])
def test_default_implicit_gradient_on_a_non_contractive_jacobian(dtype, tol):
    with jax.enable_x64(dtype == jnp.float64):
        a, theta = _spectrum_map(dtype)
        rtol = 1e-5 if dtype == jnp.float32 else 1e-12
        f = lambda z, th: a @ z + th  # noqa: E731

        def solve(th):
            return il.fixed_point(f, jnp.zeros(5, dtype), th, rtol=rtol,
                                  max_steps=200).value

        with warnings.catch_warnings():
            warnings.simplefilter("error", il.BackwardNotConvergedWarning)
            jac = jax.jacrev(solve)(theta)
        expected = np.linalg.inv(np.eye(5) - np.asarray(a, np.float64))
        np.testing.assert_allclose(jac, expected, rtol=tol, atol=tol)
        np.testing.assert_allclose(jax.jacfwd(solve)(theta), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-4), (jnp.float64, 1e-8)],
                         ids=["float32", "float64"])
def test_default_implicit_gradient_when_df_dz_is_minus_one(dtype, tol):
    # f(z, x) = -z + x  (jaxopt's simple_grads): z* = x / 2, dz*/dx = 1/2.
    with jax.enable_x64(dtype == jnp.float64):
        rtol = 1e-6 if dtype == jnp.float32 else 1e-12

        def solve(x):
            return il.fixed_point(lambda z, x: -z + x, jnp.zeros(3, dtype), x, rtol=rtol,
                                  solver=Anderson()).value

        with warnings.catch_warnings():
            warnings.simplefilter("error", il.BackwardNotConvergedWarning)
            jac = jax.jacrev(solve)(jnp.arange(3.0, dtype=dtype))
        np.testing.assert_allclose(jac, 0.5 * np.eye(3), rtol=tol, atol=tol)


def test_backward_warning_points_at_the_users_line():
    a, theta = _spectrum_map(jnp.float32)
    grad = il.Implicit(fallback=None, max_steps=20)
    loss = lambda th: jnp.sum(il.fixed_point(lambda z, t: a @ z + t, jnp.zeros(5, a.dtype), th,  # noqa
                                             grad=grad, rtol=1e-6, max_steps=200).value)
    with warnings.catch_warnings(record=True) as hits:
        warnings.simplefilter("always")
        jax.grad(loss)(theta)
    hits = [w for w in hits if issubclass(w.category, il.BackwardNotConvergedWarning)]
    assert hits and hits[0].filename == __file__


# ----------------------------------------------------------- API conveniences


def test_has_aux_returns_aux_at_the_solution():
    def f(z, th):
        new = 0.5 * z + th
        return new, {"norm": jnp.linalg.norm(new), "twice": 2 * new}

    sol = il.fixed_point(f, jnp.zeros(3), jnp.ones(3), has_aux=True, rtol=1e-7)
    np.testing.assert_allclose(sol.value, 2 * np.ones(3), rtol=1e-5)
    np.testing.assert_allclose(sol.aux["twice"], 4 * np.ones(3), rtol=1e-5)
    g = jax.grad(lambda th: il.fixed_point(f, jnp.zeros(3), th, has_aux=True,
                                           rtol=1e-7).aux["norm"])(jnp.ones(3))
    # norm(0.5 z* + th) with z* = 2 th: d/dth ||2 th|| = 2 th / ||th||.
    np.testing.assert_allclose(g, 2 / np.sqrt(3) * np.ones(3), rtol=1e-4)
    with pytest.raises(TypeError, match="pair"):
        il.fixed_point(lambda z, th: z, jnp.zeros(3), has_aux=True)


def test_custom_fixed_point_differentiates_an_external_solve():
    a, _ = _spectrum_map(jnp.float32)
    a = a / 10.0  # a contraction, so numpy's solve is the fixed point of f

    def f(z, th):
        return a @ z + th

    @il.custom_fixed_point(f)
    def solve(z0, th):
        # Not differentiable by JAX: a host-side solve.
        return jax.pure_callback(
            lambda t: np.linalg.solve(np.eye(5) - np.asarray(a), t).astype(np.float32),
            jax.ShapeDtypeStruct((5,), jnp.float32), th)

    theta = jnp.arange(5.0, dtype=jnp.float32)
    jac = jax.jacrev(lambda th: solve(jnp.zeros(5, jnp.float32), th))(theta)
    np.testing.assert_allclose(jac, np.linalg.inv(np.eye(5) - np.asarray(a)), rtol=1e-4,
                               atol=1e-5)


def test_custom_root_differentiates_an_external_solve():
    @il.custom_root(lambda z, a: z ** 3 - a)
    def cube_root(z0, a):
        return jnp.cbrt(jax.lax.stop_gradient(a))

    g = jax.grad(lambda a: jnp.sum(cube_root(None, a)))(jnp.asarray([8.0, 27.0]))
    np.testing.assert_allclose(g, [1 / 12, 1 / 27], rtol=1e-5)


def test_anderson_under_strict_dtype_promotion():
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        f = lambda z, th: jnp.tanh(0.5 * z + th)  # noqa: E731
        th = jnp.linspace(-1.0, 1.0, 4)
        for solver in (Anderson(), Iteration(), Broyden(), Newton(), Chord()):
            sol = il.fixed_point(f, jnp.zeros(4), th, solver=solver, rtol=1e-10)
            assert bool(sol.converged), repr(solver)
        jax.grad(lambda th: jnp.sum(il.fixed_point(f, jnp.zeros(4), th).value))(th)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.complex128], ids=str)
def test_normal_cg_solves_a_nonsymmetric_system(x64, dtype):
    from innerloop.solvers import NormalCG, solve_linear

    rng = np.random.default_rng(3)
    a = rng.normal(size=(12, 12))  # eigenvalues of A well outside the unit disc
    b = rng.normal(size=12)
    if dtype == jnp.complex128:
        a, b = a + 1j * rng.normal(size=(12, 12)), b - 2j * rng.normal(size=12)
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    x, r, ok = solve_linear(NormalCG(max_steps=500), lambda v: v - a @ v, b, rtol=1e-10,
                            atol=0.0, max_steps=100)
    assert bool(ok)
    np.testing.assert_allclose(x, np.linalg.solve(np.eye(12) - np.asarray(a), b),
                               rtol=1e-7, atol=1e-8)
