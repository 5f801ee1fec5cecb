"""Parity with jaxopt's test suite: the same problems, the same expected answers.

Sources (github.com/google/jaxopt): tests/fixed_point_iteration_test.py,
tests/anderson_test.py, tests/picard_test.py, tests/broyden_test.py,
tests/bisection_test.py, tests/root_finding_test.py, tests/implicit_diff_test.py.
The problems themselves live in `problems.py`, each with a note of its source.

Solver mapping: FixedPointIteration / PicardIteration -> Iteration(),
AndersonAcceleration(history_size, ridge) -> Anderson(memory, ridge=...),
Broyden (a root finder on g = f(z) - z) -> il.root(..., solver=Broyden()),
Bisection -> Bisection(lower, upper), implicit_diff=True/False -> Implicit()/Unroll(),
custom_root / custom_fixed_point -> il.custom_root / il.custom_fixed_point.

jaxopt's `tol` bounds the absolute residual ||f(z) - z|| (||g(z)|| for roots);
innerloop's test is ||f(z) - z|| <= atol + rtol ||z||, so a jaxopt tol ports as
atol = tol, rtol = 0 (`absolute(tol)`), except where a test says. Float32 unless
a test says otherwise (jaxopt runs its suite in float32); gradients are checked to
1e-4 in float32 and 1e-8 in float64, finite differences in float64. Like jaxopt's
`check_grads(modes=["rev"])`, most gradient checks take one reverse pass with a
random cotangent w and compare w^T dz*/dtheta with the closed form (a generic w
exposes any wrong entry of the Jacobian); full Jacobians are built where the peer
builds them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import innerloop as il
from parity import problems as P

F32 = jnp.float32


def absolute(tol):
    """jaxopt's tolerance: a bound on the absolute residual alone."""
    return {"rtol": 0.0, "atol": tol}


# Solvers are built lazily (inside each test), so that collecting this module never
# touches the API.
def _iteration():
    return il.solvers.Iteration()


def _anderson(memory=5, ridge=1e-6):
    return lambda: il.solvers.Anderson(memory=memory, ridge=ridge)


def _broyden():
    return il.solvers.Broyden()


def _newton():
    return il.solvers.Newton()


# ======================================================= fixed points and roots


# jaxopt: FixedPointIteration maxiter 8000, AndersonAcceleration history 5 ridge 1e-6
# maxiter 10_000 (tol 1e-5 each).
@pytest.mark.parametrize("make, max_steps", [(_iteration, 8000), (_anderson(), 10_000)],
                         ids=["iteration", "anderson"])
def test_geometric_decay_fixed_point_has_norm_below_1e_2(make, max_steps):
    sol = il.fixed_point(P.geometric_decay, P.geometric_decay_z0(F32), solver=make(),
                         **absolute(1e-5), max_steps=max_steps)
    P.assert_converged(sol)
    assert P.tree_norm(sol.value) < 1e-2


# jaxopt broyden_test: the root of f(z) - z within maxiter = 10 (linear: Newton needs 1).
@pytest.mark.parametrize("make", [_broyden, _newton], ids=["broyden", "newton"])
def test_geometric_decay_root_within_10_steps_has_norm_below_1e_2(make):
    sol = il.root(P.geometric_decay_root, P.geometric_decay_z0(F32), solver=make(),
                  **absolute(1e-5), max_steps=10)
    P.assert_converged(sol)
    assert P.tree_norm(sol.value) < 1e-2


@pytest.mark.parametrize("make", [_iteration, _anderson()], ids=["iteration", "anderson"])
def test_sin_polynomial_pytree_converges_to_zero(make):
    sol = il.fixed_point(P.sin_polynomial, P.sin_polynomial_z0(F32), solver=make(),
                         **absolute(1e-6), max_steps=100)
    P.assert_converged(sol)
    assert P.tree_norm(sol.value) < 1e-6
    P.assert_tree_allclose(sol.value, P.sin_polynomial_expected(), rtol=0, atol=1e-6)


def test_fixed_point_at_zero_is_certified_by_iteration():
    # A purely relative test can never certify z* = 0; atol must (innerloop's defaults,
    # rtol = atol = 1e-5, here).
    sol = il.fixed_point(P.sin_polynomial, P.sin_polynomial_z0(F32), solver=_iteration(),
                         max_steps=100)
    assert P.successful(sol), P.describe(sol)


def test_anderson_solves_sign_flipping_pytree():
    # jaxopt anderson_test: history 3, ridge 1e-6, tol 1e-6, maxiter 100_000
    sol = il.fixed_point(P.sin_polynomial_flip, P.sin_polynomial_flip_z0(F32),
                         solver=_anderson(memory=3)(), **absolute(1e-6),
                         max_steps=100_000)
    P.assert_converged(sol)
    P.assert_tree_allclose(sol.value, P.sin_polynomial_flip_expected(), rtol=0, atol=1e-6)


def test_plain_iteration_reports_failure_on_sign_flipping_pytree():
    # c -> -c keeps ||f(z) - z|| = 2 ||c|| forever: the solve must say it failed.
    sol = il.fixed_point(P.sin_polynomial_flip, P.sin_polynomial_flip_z0(F32),
                         solver=_iteration(), **absolute(1e-6), max_steps=200)
    assert not bool(sol.converged)
    assert bool(sol.result == il.solvers.RESULTS.max_steps_reached), P.describe(sol)


# jaxopt broyden_test poses the sine polynomial as a root (tol 1e-6, maxiter 100) and
# checks only the residual: any of the roots (b = 0 or +-1) will do.
@pytest.mark.parametrize("make", [_broyden, _newton], ids=["broyden", "newton"])
def test_sin_polynomial_root_meets_tolerance_at_returned_value(make):
    z0 = P.sin_polynomial_z0(F32)
    sol = il.root(P.sin_polynomial_root, z0, solver=make(), **absolute(1e-6),
                  max_steps=100)
    P.assert_converged(sol)
    assert P.tree_norm(P.sin_polynomial_root(sol.value, None)) <= 1e-6


# (solve, solver, rtol = atol, max_steps, check atol): jaxopt fixed_point_iteration /
# picard (tol 1e-2, maxiter 100_000, atol 1e-2), anderson (history 4, ridge 1e-6,
# tol 1e-6, maxiter 100, float32 closeness 1e-6), broyden (tol 1e-2, atol 1e-2).
COS_SHIFT_CASES = {
    "iteration": (il.fixed_point, _iteration, 1e-2, 100_000, 1e-2),
    "anderson": (il.fixed_point, _anderson(memory=4), 1e-6, 100, 1e-6),
    "broyden": (il.root, _broyden, 1e-2, 100, 1e-2),
    "newton": (il.root, _newton, 1e-6, 100, 1e-6),
}


@pytest.mark.parametrize("case", list(COS_SHIFT_CASES))
def test_cos_shift_solution_is_dottie_and_half_pi(case):
    solve, make, tol, max_steps, check = COS_SHIFT_CASES[case]
    f = P.cos_shift if solve is il.fixed_point else P.cos_shift_root
    sol = solve(f, P.cos_shift_z0(F32), P.cos_shift_theta(F32), solver=make(),
                **absolute(tol), max_steps=max_steps)
    P.assert_converged(sol)
    P.assert_tree_allclose(sol.value, P.cos_shift_expected(), rtol=check, atol=check)


def test_cos_shift_anderson_solution_in_each_precision(precision):
    d = precision.dtype
    sol = il.fixed_point(P.cos_shift, P.cos_shift_z0(d), P.cos_shift_theta(d),
                         solver=_anderson(memory=4)(), rtol=precision.solve_tol,
                         atol=precision.solve_tol, max_steps=100)
    P.assert_converged(sol)
    assert sol.value.dtype == d
    P.assert_tree_allclose(sol.value, P.cos_shift_expected(), rtol=precision.value_tol,
                           atol=precision.value_tol)


# jaxopt anderson_test (test_support_for_scalars): history 5, ridge 1e-6, tol 1e-4.
@pytest.mark.parametrize("make", [_anderson(), _iteration], ids=["anderson", "iteration"])
def test_scalar_state_converges_to_one(make):
    sol = il.fixed_point(P.half_affine, jnp.asarray(0.0, F32), solver=make(),
                         **absolute(1e-4), max_steps=10_000)
    P.assert_converged(sol)
    assert np.shape(sol.value) == ()
    assert abs(float(sol.value) - 1.0) <= 2e-4  # |z - 1| = 2 |f(z) - z|


def test_anderson_finds_rotation_centre():
    # jaxopt: history 10, ridge 1e-7, maxiter 400, tol 1e-4, centre to 1e-3.
    sol = il.fixed_point(P.rotation, P.rotation_z0(F32), P.rotation_theta(F32),
                         solver=il.solvers.Anderson(memory=10, ridge=1e-7),
                         **absolute(1e-4), max_steps=400)
    P.assert_converged(sol)
    np.testing.assert_allclose(sol.value, np.arange(1.0, 15.0), rtol=0, atol=1e-3)


def test_plain_iteration_reports_failure_on_rotation():
    # Rotations preserve ||z - c||: iteration never gets closer (jaxopt: "Banach
    # theorem does not hold").
    sol = il.fixed_point(P.rotation, P.rotation_z0(F32), P.rotation_theta(F32),
                         solver=_iteration(), **absolute(1e-4), max_steps=400)
    assert not bool(sol.converged)
    assert bool(sol.result == il.solvers.RESULTS.max_steps_reached), P.describe(sol)


def test_rotation_centre_implicit_jacobians_are_identity_and_zero(x64):
    # z* = c for every angle: dz*/dc = I, dz*/dangles = 0, so w^T dz*/d(angles, c)
    # = (0, w).
    d = jnp.float64
    z0 = P.rotation_z0(d)

    def solve(theta):
        return il.fixed_point(P.rotation, z0, theta,
                              solver=il.solvers.Anderson(memory=10, ridge=1e-7),
                              **absolute(1e-12), max_steps=400).value

    w = P.random_like(z0, seed=3)
    _, (g_angles, g_centre) = P.vjp_with_value(solve, P.rotation_theta(d), w)
    np.testing.assert_allclose(g_centre, w, rtol=0, atol=1e-8)
    np.testing.assert_allclose(g_angles, np.zeros(7), rtol=0, atol=1e-8)


# ----------------------------------------------------------- affine contraction

AFFINE_SOLVES = {
    # jaxopt: tol 1e-6 and maxiter 100 (Broyden 5000); z0 = 0. An absolute 1e-6 on
    # this 200-vector (||z*|| = 8.6) is float32 rounding level: rtol = atol = 1e-6.
    "iteration": (il.fixed_point, P.affine, _iteration, 100),
    "anderson": (il.fixed_point, P.affine, _anderson(), 100),
    "broyden": (il.root, P.affine_root, _broyden, 5000),
}


@pytest.mark.parametrize("case", list(AFFINE_SOLVES))
def test_affine_contraction_solution_matches_linear_solve(case):
    solve, f, make, max_steps = AFFINE_SOLVES[case]
    sol = solve(f, jnp.zeros(P.AFFINE_N, F32), P.affine_theta(F32), solver=make(),
                rtol=1e-6, atol=1e-6, max_steps=max_steps)
    P.assert_converged(sol)
    np.testing.assert_allclose(sol.value, P.affine_expected(), rtol=1e-4, atol=1e-4)


def _affine_loss(case, grad):
    solve, f, make, max_steps = AFFINE_SOLVES[case]

    def loss(theta, w):
        z0 = jnp.zeros_like(theta[1])
        z = solve(f, z0, theta, solver=make(), grad=grad, rtol=1e-6, atol=1e-6,
                  max_steps=max_steps).value
        return jnp.vdot(w, z)

    return loss


@pytest.mark.parametrize("case, mode", [("iteration", "implicit"), ("iteration", "unroll"),
                                        ("broyden", "implicit")])
def test_affine_contraction_gradients_match_closed_form(case, mode):
    grad = il.Implicit() if mode == "implicit" else il.Unroll()
    loss = _affine_loss(case, grad)
    g_m, g_b = jax.grad(loss)(P.affine_theta(F32), P.affine_cotangent(F32))
    e_m, e_b = P.affine_loss_gradients()
    np.testing.assert_allclose(g_b, e_b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g_m, e_m, rtol=1e-4, atol=1e-4)


def test_unrolled_affine_gradient_matches_central_differences(x64):
    # jaxopt check_grads(order=1, modes=["rev"]) on (M, b), along a random direction
    # (the implicit gradient's check is the closed form above).
    d = jnp.float64
    grad = il.Unroll()
    solve, f, make, _ = AFFINE_SOLVES["iteration"]

    def loss(m, b):
        z = solve(f, jnp.zeros_like(b), (m, b), solver=make(), grad=grad,
                  **absolute(1e-12), max_steps=200).value
        return jnp.vdot(P.affine_cotangent(d), z)

    theta = P.affine_theta(d)
    analytic, numeric = P.reverse_and_central_difference(
        lambda th: loss(*th), theta, P.random_like(theta, seed=1), jnp.asarray(1.0, d), 1e-5)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------- auxiliary outputs

HAS_AUX_CASES = {
    "iteration": (il.fixed_point, P.cos_with_logistic_aux, _iteration),
    "anderson": (il.fixed_point, P.cos_with_logistic_aux, _anderson()),
    "broyden": (il.root, P.cos_with_logistic_aux_root, _broyden),
}


def _has_aux_solve(case):
    solve, f, make = HAS_AUX_CASES[case]
    r = jnp.asarray([P.LOGISTIC_R], F32)
    return solve(f, jnp.asarray([1.0], F32), r, solver=make(), has_aux=True,
                 **absolute(1e-6), max_steps=1000)


@pytest.mark.parametrize("case", list(HAS_AUX_CASES))
def test_has_aux_state_converges_to_dottie(case):
    sol = _has_aux_solve(case)
    P.assert_converged(sol)
    np.testing.assert_allclose(sol.value, [P.DOTTIE], rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", list(HAS_AUX_CASES))
def test_has_aux_returns_aux_at_the_solution(case):
    sol = _has_aux_solve(case)
    z = np.asarray(sol.value, np.float64)
    np.testing.assert_allclose(sol.aux, P.LOGISTIC_R * z * (1 - z), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sol.aux, P.logistic_aux_expected(), rtol=0, atol=1e-4)


# ------------------------------------------------------ gradients: simple grads
# z = cos z + theta, theta = [0, pi/2]: dz*/dtheta = diag(1 / (1 + sin z*)); at the
# second entry df/dz = -1, so neither the forward nor the adjoint system is a
# contraction there.

SIMPLE_GRAD_CASES = {
    # jaxopt fixed_point_iteration / picard: from [0, pi/4], maxiter 4000, tol 1e-6
    # (the pi/2 entry converges only like 1/sqrt(k): not converged after 4000 steps)
    "iteration": (il.fixed_point, P.cos_shift, _iteration, "grads", 4000),
    # jaxopt anderson_test: from [0, pi/2], history 5, ridge 1e-5, maxiter 100
    "anderson": (il.fixed_point, P.cos_shift, _anderson(ridge=1e-5), "anderson_grads", 100),
    # jaxopt broyden_test: from [0, pi/4], maxiter 400
    "broyden": (il.root, P.cos_shift_root, _broyden, "grads", 400),
}


def _simple_grads_solve(case, dtype, tols, grad=None):
    solve, f, make, start, max_steps = SIMPLE_GRAD_CASES[case]
    z0 = P.cos_shift_z0(dtype, start)

    def run(theta):
        return solve(f, z0, theta, solver=make(), grad=grad, **tols, max_steps=max_steps)

    return run


_W2 = np.array([0.8, -1.3])  # a generic cotangent for the 2-entry problems
_U2 = np.array([-0.6, 1.1])  # and a generic direction


@pytest.mark.parametrize("case", list(SIMPLE_GRAD_CASES))
def test_implicit_gradient_equals_ift_at_the_returned_point(case):
    run = _simple_grads_solve(case, F32, absolute(1e-6))
    z, g = P.vjp_with_value(lambda t: run(t).value, P.cos_shift_theta(F32),
                            jnp.asarray(_W2, F32))
    np.testing.assert_allclose(g, _W2 @ P.cos_shift_jacobian(z), rtol=1e-4, atol=1e-4)


def test_implicit_gradient_matches_closed_form_in_each_precision(precision):
    d = precision.dtype
    tols = {"rtol": precision.solve_tol, "atol": precision.solve_tol}
    run = _simple_grads_solve("anderson", d, tols)
    _, g = P.vjp_with_value(lambda t: run(t).value, P.cos_shift_theta(d),
                            jnp.asarray(_W2, d))
    np.testing.assert_allclose(g, _W2 @ P.cos_shift_jacobian(), rtol=precision.value_tol,
                               atol=precision.value_tol)


def test_implicit_gradient_matches_central_differences(x64):
    d = jnp.float64
    run = _simple_grads_solve("anderson", d, absolute(1e-13))
    analytic, numeric = P.reverse_and_central_difference(
        lambda t: run(t).value, P.cos_shift_theta(d), jnp.asarray(_U2, d),
        jnp.asarray(_W2, d), 1e-5)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["iteration", "anderson"])
def test_unrolled_gradient_matches_central_differences_of_the_same_solve(case, x64):
    # jaxopt implicit_diff=False: check_grads of the unrolled solve against finite
    # differences of that same solve. 400 plain iterations do not converge here
    # (fixed length: a smooth map of theta); Anderson converges.
    solve, f, make, start, _ = SIMPLE_GRAD_CASES[case]
    z0 = P.cos_shift_z0(jnp.float64, start)
    max_steps = 400 if case == "iteration" else 30  # Anderson converges in ~10

    def run(theta):
        return solve(f, z0, theta, solver=make(), grad=il.Unroll(), **absolute(1e-13),
                     max_steps=max_steps).value

    d = jnp.float64
    w = jnp.asarray(_W2, d)
    if case == "anderson":
        # From pi/2 the second entry starts at a fixed point where df/dz = -1: there
        # the derivative of a finite unrolled run has no limit (plain iteration's
        # alternates 0, 1, 0, ...), so only the first, regular entry is compared.
        w = w * jnp.asarray([1.0, 0.0], d)
    analytic, numeric = P.reverse_and_central_difference(
        run, P.cos_shift_theta(d), jnp.asarray(_U2, d), w, 1e-5)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


def test_forward_and_reverse_mode_match_the_closed_form(x64):
    # J u from a jvp and w^T J from a vjp, J = dz*/dtheta in closed form
    d = jnp.float64
    run = _simple_grads_solve("anderson", d, absolute(1e-12))
    theta, u, w = P.cos_shift_theta(d), jnp.asarray(_U2, d), jnp.asarray(_W2, d)
    _, tangent = jax.jvp(lambda t: run(t).value, (theta,), (u,))
    _, g = P.vjp_with_value(lambda t: run(t).value, theta, w)
    jac = P.cos_shift_jacobian()  # closed form, shares no code with either mode
    np.testing.assert_allclose(tangent, jac @ np.asarray(_U2), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(g, jac.T @ np.asarray(_W2), rtol=1e-10, atol=1e-10)


def test_second_derivative_matches_closed_form(x64):
    # z = cos z + theta (scalar): d2z*/dtheta2 = -cos z* / (1 + sin z*)^3.
    def z_star(theta):
        return il.fixed_point(P.cos_shift, jnp.asarray(0.5, jnp.float64), theta,
                              solver=_anderson()(), **absolute(1e-13),
                              max_steps=200).value

    second = jax.grad(jax.grad(z_star))(jnp.asarray(0.0, jnp.float64))
    np.testing.assert_allclose(second, P.cos_shift_second_derivative(), rtol=1e-8, atol=1e-8)


def _cos_shift_scalar_np(theta):
    z = 1.0
    for _ in range(60):  # Newton on cos z + theta - z
        z -= (math.cos(z) + theta - z) / (-math.sin(z) - 1.0)
    return z


def test_vmapped_gradient_matches_closed_form_per_example():
    def z_star(theta):
        return il.fixed_point(P.cos_shift, jnp.asarray(0.5, F32), theta,
                              solver=_anderson()(), **absolute(1e-6),
                              max_steps=200).value

    thetas = jnp.asarray([0.0, 0.5, 1.0], F32)
    grads = jax.vmap(jax.grad(z_star))(thetas)
    expected = [1 / (1 + math.sin(_cos_shift_scalar_np(float(t)))) for t in thetas]
    np.testing.assert_allclose(grads, expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------- flat landscape
# z* = 0 for every theta: every gradient mode must give dz*/dtheta = 0.

GRAD_MODES = {
    "implicit": lambda: il.Implicit(),
    "unroll": lambda: il.Unroll(),
    "truncated": lambda: il.Truncated(5),
    "phantom": lambda: il.Phantom(5, 0.5),
    "jacobian_free": lambda: il.JacobianFree(),
}


@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_flat_landscape_gradient_is_zero_in_every_gradient_mode(mode):
    # jaxopt fixed_point_iteration_test: maxiter 1000, tol 1e-6
    z0 = P.flat_landscape_z0(F32)

    def run(theta):
        return il.fixed_point(P.flat_landscape, z0, theta, solver=_iteration(),
                              grad=GRAD_MODES[mode](), **absolute(1e-6),
                              max_steps=1000).value

    _, g = P.vjp_with_value(run, P.flat_landscape_theta(F32), jnp.asarray(_W2, F32))
    np.testing.assert_allclose(g, np.zeros(2), rtol=0, atol=1e-4)


# The flat landscape's gradient is ~0 for any linear solve; shifted by c it is not:
# z* = c / (1 - theta), dz*/dtheta = c / (1 - theta)^2. The exact modes must give it;
# the approximate ones stay within their bias (Truncated(5): theta^5 <= 3.2e-4 relative;
# Phantom: (1 - 0.5 (1 - theta))^5 <= 0.08; JacobianFree drops (1 - theta)^-1 once).
SHIFT = (1.0, -2.0)
SHIFT_RTOL = {"implicit": 1e-4, "unroll": 1e-4, "truncated": 1e-3, "phantom": 0.2,
              "jacobian_free": 0.25}


@pytest.mark.parametrize("mode", list(GRAD_MODES))
def test_shifted_flat_landscape_gradient_in_every_gradient_mode(mode):
    theta0 = P.flat_landscape_theta(F32)
    c = jnp.asarray(SHIFT, F32)

    def run(theta):
        return il.fixed_point(lambda z, t: P.flat_landscape(z, t) + c,
                              P.flat_landscape_z0(F32), theta, solver=_iteration(),
                              grad=GRAD_MODES[mode](), **absolute(1e-6),
                              max_steps=1000).value

    _, g = P.vjp_with_value(run, theta0, jnp.asarray(_W2, F32))
    t = np.asarray(theta0, np.float64)
    expected = np.asarray(_W2) * np.asarray(SHIFT) / (1 - t) ** 2
    np.testing.assert_allclose(g, expected, rtol=SHIFT_RTOL[mode], atol=1e-6)
    if mode == "jacobian_free":  # biased: df/dtheta = z* alone, without (1 - theta)^-1
        np.testing.assert_allclose(g, np.asarray(_W2) * np.asarray(SHIFT) / (1 - t),
                                   rtol=1e-4)


FLAT_AUX_CASES = {
    # jaxopt picard_test: aux = z + 1, maxiter 1000, tol 1e-6
    "iteration_aux": (il.fixed_point, P.flat_landscape_aux, _iteration, True),
    # jaxopt anderson_test: no aux, history 5, ridge 1e-6, maxiter 10_000, tol 1e-6
    "anderson": (il.fixed_point, P.flat_landscape, _anderson(), False),
    # jaxopt broyden_test: root of theta z - z with aux = z, maxiter 100, tol 1e-6
    "broyden_aux": (il.root, P.flat_landscape_root_aux, _broyden, True),
}


@pytest.mark.parametrize("case", list(FLAT_AUX_CASES))
def test_flat_landscape_gradient_is_zero_for_each_solver(case):
    solve, f, make, has_aux = FLAT_AUX_CASES[case]
    z0 = P.flat_landscape_z0(F32)

    def run(theta):
        return solve(f, z0, theta, solver=make(), has_aux=has_aux, **absolute(1e-6),
                     max_steps=10_000).value

    _, g = P.vjp_with_value(run, P.flat_landscape_theta(F32), jnp.asarray(_W2, F32))
    np.testing.assert_allclose(g, np.zeros(2), rtol=0, atol=1e-4)


# ================================================================ bisection


def _project_by_bisection(x):
    lower, upper = P.simplex_bracket(x)
    tau = il.root(P.simplex_threshold, upper, x,
                  solver=il.solvers.Bisection(lower, upper), **absolute(1e-5),
                  max_steps=100).value
    return jnp.maximum(x - tau, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bisection_simplex_projection_matches_sort_based_projection(seed):
    x = P.simplex_x(seed, F32)
    np.testing.assert_allclose(_project_by_bisection(x), P.projection_simplex_np(x),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_bisection_simplex_projection_jacobian_matches_closed_form(seed):
    x = P.simplex_x(seed, F32)
    jac = jax.jacrev(_project_by_bisection)(x)  # jaxopt compares full Jacobians
    np.testing.assert_allclose(jac, P.projection_simplex_jacobian_np(x), rtol=0, atol=1e-5)


# jaxopt's wrong brackets are degenerate (lower = upper at max x, or at min x - 1/n);
# two proper brackets (lower < upper) that hold no root are added: phi = -1 on all
# of [max x, max x + 1], and phi > 0 on all of [min x - 1/n - 1, min x - 1/n].
BAD_BRACKETS = {
    "degenerate_at_max": lambda lo, hi: (hi, hi),
    "degenerate_at_min": lambda lo, hi: (lo, lo),
    "above_the_root": lambda lo, hi: (hi, hi + 1),
    "below_the_root": lambda lo, hi: (lo - 1, lo),
}


def _bad_bracket_solve(kind, throw):
    x = jnp.asarray(np.random.RandomState(0).randn(5), F32)
    lo, hi = BAD_BRACKETS[kind](*P.simplex_bracket(x))
    sol = il.root(P.simplex_threshold, hi, x, solver=il.solvers.Bisection(lo, hi),
                  throw=throw)
    jax.block_until_ready(sol.value)
    return sol


@pytest.mark.parametrize("kind", list(BAD_BRACKETS))
def test_bisection_bracket_without_sign_change_raises_with_throw(kind):
    with pytest.raises((ValueError, RuntimeError)):
        _bad_bracket_solve(kind, throw=True)


@pytest.mark.parametrize("kind", ["above_the_root", "below_the_root"])
def test_bisection_bracket_without_root_is_reported_without_throw(kind):
    # a well-formed bracket that holds no root: a failed solve, reported (throw=False)
    sol = _bad_bracket_solve(kind, throw=False)
    assert not bool(sol.converged)
    assert not P.successful(sol)


# ==================================================== implicit differentiation


def _ridge_by_fixed_point():
    eig = P.ridge_gradient_step_spectrum()  # the fixture is the hard case jaxopt tests
    assert np.all(eig >= -7) and np.all(eig <= -4), eig

    @il.custom_fixed_point(P.ridge_gradient_step)
    def solve(z0, theta):
        return P.ridge_closed_form(theta)

    return solve


def _ridge_by_root():
    @il.custom_root(P.ridge_optimality)
    def solve(z0, theta):
        return P.ridge_closed_form(theta)

    return solve


DECORATORS = {"custom_fixed_point": _ridge_by_fixed_point, "custom_root": _ridge_by_root}


_W3 = np.array([0.7, -1.2, 0.4])  # a generic cotangent for the 3 ridge weights


def _dlam(solve, theta):
    """w^T dw*/dlam, by one reverse pass."""
    lam, x, y = theta
    z0 = jnp.zeros(x.shape[1], x.dtype)
    return P.vjp_with_value(lambda lm: solve(z0, (lm, x, y)), lam, jnp.asarray(_W3, x.dtype))[1]


@pytest.mark.parametrize("decorator", list(DECORATORS))
def test_decorated_ridge_solver_returns_the_wrapped_solution(decorator):
    theta = P.ridge_theta(F32)
    w = DECORATORS[decorator]()(jnp.zeros(3, F32), theta)
    np.testing.assert_allclose(w, P.ridge_expected(), rtol=1e-4, atol=1e-4)


def test_custom_fixed_point_ridge_dlam_matches_closed_form(precision):
    g = _dlam(_ridge_by_fixed_point(), P.ridge_theta(precision.dtype))
    np.testing.assert_allclose(g, _W3 @ P.ridge_expected_dlam(), rtol=precision.value_tol,
                               atol=precision.value_tol)


def test_custom_root_ridge_dlam_matches_closed_form():
    g = _dlam(_ridge_by_root(), P.ridge_theta(F32))
    np.testing.assert_allclose(g, _W3 @ P.ridge_expected_dlam(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decorator", list(DECORATORS))
def test_decorated_ridge_gradient_wrt_data_matches_autodiff_of_closed_form(decorator, x64):
    solve = DECORATORS[decorator]()
    lam, x, y = P.ridge_theta(jnp.float64)
    z0 = jnp.zeros(3, jnp.float64)
    w = jnp.asarray(_W3, jnp.float64)
    _, got = P.vjp_with_value(lambda xy: solve(z0, (lam,) + xy), (x, y), w)
    _, want = P.vjp_with_value(lambda xy: P.ridge_closed_form((lam,) + xy), (x, y), w)
    P.assert_tree_allclose(got, want, rtol=1e-8, atol=1e-8)


def test_custom_fixed_point_forward_and_reverse_mode_match_the_closed_form(x64):
    # J u from a jvp and w^T J from a vjp, J = dw*/d(lam, y), against the closed form's
    solve = _ridge_by_fixed_point()
    lam, x, y = P.ridge_theta(jnp.float64)
    z0 = jnp.zeros(3, jnp.float64)
    w = jnp.asarray(_W3, jnp.float64)
    u = (jnp.asarray(0.9, jnp.float64), P.random_like(y, seed=4))

    def fn(ly):
        return solve(z0, (ly[0], x, ly[1]))

    def closed(ly):  # autodiff of the closed form shares no code with the IFT rule
        return P.ridge_closed_form((ly[0], x, ly[1]))

    _, tangent = jax.jvp(fn, ((lam, y),), (u,))
    _, g = P.vjp_with_value(fn, (lam, y), w)
    _, tangent_ref = jax.jvp(closed, ((lam, y),), (u,))
    _, g_ref = P.vjp_with_value(closed, (lam, y), w)
    np.testing.assert_allclose(tangent, tangent_ref, rtol=1e-10, atol=1e-10)
    P.assert_tree_allclose(g, g_ref, rtol=1e-10, atol=1e-10)


def test_custom_fixed_point_jvp_in_lam_matches_closed_form():
    # jaxopt root_jvp: tangent (1, 0, 0) on (lam, X, y)
    solve = _ridge_by_fixed_point()
    lam, x, y = P.ridge_theta(F32)
    z0 = jnp.zeros(3, F32)
    _, tangent = jax.jvp(lambda t: solve(z0, t), ((lam, x, y),),
                         ((jnp.ones_like(lam), jnp.zeros_like(x), jnp.zeros_like(y)),))
    np.testing.assert_allclose(tangent, P.ridge_expected_dlam(), rtol=1e-4, atol=1e-4)


def test_custom_fixed_point_vjp_rows_match_closed_form():
    # jaxopt root_vjp: vmap of the vjp over the identity cotangents
    solve = _ridge_by_fixed_point()
    lam, x, y = P.ridge_theta(F32)
    z0 = jnp.zeros(3, F32)
    _, vjp = jax.vjp(lambda lm: solve(z0, (lm, x, y)), lam)
    rows = jax.vmap(lambda c: vjp(c)[0])(jnp.eye(3, dtype=F32))
    np.testing.assert_allclose(rows, P.ridge_expected_dlam(), rtol=1e-4, atol=1e-4)


def test_custom_fixed_point_takes_dict_theta():
    def step(w, theta):
        return P.ridge_gradient_step(w, (theta["lam"], theta["X"], theta["y"]))

    @il.custom_fixed_point(step)
    def solve(z0, theta):
        return P.ridge_closed_form((theta["lam"], theta["X"], theta["y"]))

    lam, x, y = P.ridge_theta(F32)
    _, g = P.vjp_with_value(lambda lm: solve(jnp.zeros(3, F32), {"lam": lm, "X": x, "y": y}),
                            lam, jnp.asarray(_W3, F32))
    np.testing.assert_allclose(g, _W3 @ P.ridge_expected_dlam(), rtol=1e-4, atol=1e-4)


def test_custom_root_jitted_gradient_of_first_weight_matches_closed_form():
    # jaxopt test_custom_root_with_kwargs_grad: grad of w[0] w.r.t. lam, under jit
    solve = _ridge_by_root()
    lam, x, y = P.ridge_theta(F32)
    grad = jax.jit(jax.grad(lambda lm: solve(jnp.zeros(3, F32), (lm, x, y))[0]))(lam)
    np.testing.assert_allclose(grad, P.ridge_expected_dlam()[0], rtol=1e-4, atol=1e-4)


def test_custom_fixed_point_under_jit_matches_the_closed_form():
    solve = _ridge_by_fixed_point()
    lam, x, y = P.ridge_theta(F32)
    z0 = jnp.zeros(3, F32)
    np.testing.assert_allclose(jax.jit(solve)(z0, (lam, x, y)), P.ridge_expected(),
                               rtol=1e-4, atol=1e-4)
    rows = jax.jit(jax.jacrev(lambda lm: solve(z0, (lm, x, y))))(lam)
    np.testing.assert_allclose(rows, P.ridge_expected_dlam(), rtol=1e-4, atol=1e-4)


def test_custom_fixed_point_with_unit_negative_jacobian(precision):
    # The simple-grads map z = cos z + theta at theta = [0, pi/2] (df/dz = -1 at the
    # second entry), solved by an external Newton loop and differentiated as a
    # fixed point of f.
    @il.custom_fixed_point(P.cos_shift)
    def solve(z0, theta):
        def newton(_, z):
            return z - (jnp.cos(z) + theta - z) / (-jnp.sin(z) - 1)

        return jax.lax.fori_loop(0, 60, newton, z0)

    d = precision.dtype
    z0 = P.cos_shift_z0(d, "grads")
    _, g = P.vjp_with_value(lambda t: solve(z0, t), P.cos_shift_theta(d), jnp.asarray(_W2, d))
    np.testing.assert_allclose(g, _W2 @ P.cos_shift_jacobian(), rtol=precision.value_tol,
                               atol=precision.value_tol)


@pytest.mark.parametrize("how", ["root_newton", "fixed_point_anderson"])
def test_ridge_solved_in_innerloop_dlam_matches_closed_form(how):
    # The same ridge problem solved by innerloop itself: as the root of the gradient
    # (Newton), and as the fixed point of the non-contractive gradient step
    # (Anderson with memory >= 3 solves a 3-dimensional linear map exactly).
    lam, x, y = P.ridge_theta(F32)
    z0 = jnp.zeros(3, F32)

    def w(lam_):
        if how == "root_newton":
            return il.root(P.ridge_optimality, z0, (lam_, x, y), solver=_newton(),
                           **absolute(1e-6)).value
        return il.fixed_point(P.ridge_gradient_step, z0, (lam_, x, y),
                              solver=il.solvers.Anderson(memory=5, ridge=1e-8),
                              **absolute(1e-6), max_steps=100).value

    value, g = P.vjp_with_value(w, lam, jnp.asarray(_W3, F32))
    np.testing.assert_allclose(value, P.ridge_expected(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g, _W3 @ P.ridge_expected_dlam(), rtol=1e-4, atol=1e-4)


# ====================================================================== vmap

_VMAP_THETAS = np.array([[0.0, 0.3], [0.6, 1.0], [0.2, 0.9]])


@jax.jit
def _vmap_solve(theta):
    # innerloop's default tolerances (an absolute 1e-6 is below float32 rounding for
    # the slow entries, whose contraction factor is sin(1.28) = 0.96)
    return il.fixed_point(P.cos_shift, jnp.zeros(2, F32), theta, solver=_iteration(),
                          max_steps=2000)


def test_vmap_values_equal_unbatched_solves():
    batched = jax.vmap(_vmap_solve)(jnp.asarray(_VMAP_THETAS, F32))
    for i, t in enumerate(_VMAP_THETAS):
        single = _vmap_solve(jnp.asarray(t, F32))
        np.testing.assert_allclose(batched.value[i], single.value, rtol=1e-6, atol=1e-6)
        expected = [_cos_shift_scalar_np(float(ti)) for ti in t]
        np.testing.assert_allclose(batched.value[i], expected, rtol=1e-4, atol=1e-4)


def test_vmap_each_example_stops_at_its_own_step_count():
    batched = jax.vmap(_vmap_solve)(jnp.asarray(_VMAP_THETAS, F32))
    singles = [int(_vmap_solve(jnp.asarray(t, F32)).steps) for t in _VMAP_THETAS]
    assert len(set(singles)) > 1, singles  # the examples do differ
    assert [int(s) for s in batched.steps] == singles
    assert bool(np.all(np.asarray(batched.converged)))
