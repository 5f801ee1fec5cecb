"""Parity with optimistix's test suite: the same problems, the same expected answers.

Sources (github.com/patrick-kidger/optimistix): tests/helpers.py (the problem lists
`fixed_point_fn_init_args` and `bisection_fn_init_options_args`),
tests/test_fixed_point.py and tests/test_root_find.py. The problems live in
`problems.py`, each with a note of its source.

Solver mapping: FixedPointIteration -> Iteration(); Newton / Chord -> Newton() /
Chord() (also the default `il.root` solver, Newton); Bisection(options=lower, upper)
-> Bisection(lower, upper); ImplicitAdjoint -> Implicit() (the default).
optimistix runs its suite with x64 enabled, so these checks run in float64 unless a
test says otherwise; its complex128 tangent test is ported too. Key cases also run
in float32 and in float64 under `jax.numpy_dtype_promotion("strict")` (the
`precision` fixture).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import innerloop as il
from parity import problems as P

F64 = jnp.float64
CASES = P.OPTIMISTIX_FIXED_POINTS
# optimistix: rtol = atol = 1e-6 solves, max_steps 10_000, checks to 1e-4
TOL = 1e-6
CHECK = 1e-4


FP_SOLVERS = {
    "iteration": lambda: il.solvers.Iteration(),
    "anderson": lambda: il.solvers.Anderson(),
}
ROOT_SOLVERS = {
    "default": lambda: None,  # il.root's default: Newton
    "newton": lambda: il.solvers.Newton(),
    "chord": lambda: il.solvers.Chord(),
    "broyden": lambda: il.solvers.Broyden(),
}


# ================================================================ fixed points


@functools.cache
def _fixed_point_solve(name, solver):
    """One float64 solve per (problem, solver), shared by the tests below."""
    case = P.OPTIMISTIX_FIXED_POINTS_BY_NAME[name]
    with jax.enable_x64(True):
        return il.fixed_point(case.f, case.z0(F64), case.theta(F64),
                              solver=FP_SOLVERS[solver](), rtol=TOL, atol=TOL,
                              max_steps=case.max_steps)


@pytest.mark.parametrize("solver", list(FP_SOLVERS))
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_fixed_point_matches_expected_value(case, solver, x64):
    sol = _fixed_point_solve(case.name, solver)
    P.assert_converged(sol)
    P.assert_tree_allclose(sol.value, case.expected(), rtol=CHECK, atol=case.value_atol)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_iteration_result_passes_peer_check_and_is_successful(case, x64):
    # optimistix test_fixed_point: f(z) close to z (1e-4), after FixedPointIteration;
    # seven of these fixed points are 0, which only atol can certify.
    sol = _fixed_point_solve(case.name, "iteration")
    assert P.successful(sol), P.describe(sol)
    P.assert_tree_allclose(case.f(sol.value, case.theta(F64)), P.tree_np(sol.value),
                           rtol=CHECK, atol=CHECK)


def test_cos_fixed_point_in_each_precision(precision):
    case = P.OPTIMISTIX_FIXED_POINTS_BY_NAME["cos"]
    d = precision.dtype
    sol = il.fixed_point(case.f, case.z0(d), case.theta(d), rtol=precision.solve_tol,
                         atol=precision.solve_tol, max_steps=1000)
    P.assert_converged(sol)
    assert all(x.dtype == d for x in jax.tree.leaves(sol.value))
    P.assert_tree_allclose(sol.value, case.expected(), rtol=precision.value_tol,
                           atol=precision.value_tol)


@pytest.mark.parametrize("name", ["cos", "nonlinear_heat"])
def test_fixed_point_with_aux_returns_value_and_aux(name, x64):
    # optimistix runs each problem with has_aux and a constant `smoke_aux`
    case = P.OPTIMISTIX_FIXED_POINTS_BY_NAME[name]
    aux = P.smoke_aux(F64)
    # plus a z-dependent part, which tells aux at the solution from aux anywhere else
    sol = il.fixed_point(lambda z, th: (case.f(z, th), (aux, jax.tree.map(jnp.sin, z))),
                         case.z0(F64), case.theta(F64),
                         has_aux=True, rtol=TOL, atol=TOL, max_steps=1000)
    P.assert_converged(sol)
    P.assert_tree_allclose(sol.value, case.expected(), rtol=CHECK, atol=case.value_atol)
    P.assert_tree_allclose(sol.aux[0], P.tree_np(aux), rtol=0, atol=0)
    P.assert_tree_allclose(sol.aux[1], jax.tree.map(np.sin, P.tree_np(sol.value)),
                           rtol=1e-12, atol=1e-12)


def test_root_with_aux_returns_value_and_aux(x64):
    case = P.OPTIMISTIX_FIXED_POINTS_BY_NAME["nonlinear_heat"]
    aux = P.smoke_aux(F64)
    g = P.as_root(case.f, +1)
    sol = il.root(lambda z, th: (g(z, th), (aux, jax.tree.map(jnp.sin, z))),
                  case.z0(F64), case.theta(F64),
                  has_aux=True, rtol=TOL, atol=TOL, max_steps=100)
    P.assert_converged(sol)
    P.assert_tree_allclose(sol.value, case.expected(), rtol=CHECK, atol=CHECK)
    P.assert_tree_allclose(sol.aux[0], P.tree_np(aux), rtol=0, atol=0)
    P.assert_tree_allclose(sol.aux[1], jax.tree.map(np.sin, P.tree_np(sol.value)),
                           rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ tangents
# optimistix test_fixed_point_jvp / test_root_find_jvp: jax.jvp of the solve, with
# random tangents on both the initial point and the arguments, against finite
# differences (there forward ones, to 1e-3); here central ones, to 1e-5. The
# initial point's tangent must not matter (the solution does not depend on it).
# The peer runs every problem in float64 and complex128, for both fixed points and
# roots; to keep the suite fast this runs a subset (midpoint_f_linear is the same map
# as midpoint_k_linear; sin has no derivative at its fixed point).

FLOAT_JVP = ("cos", "exponential", "mlp", "nonlinear_heat", "midpoint_y_linear",
             "midpoint_k_linear", "midpoint_y_robertson", "midpoint_k_robertson")
COMPLEX_JVP = ("cos", "nonlinear_heat")
ROOT_JVP = ("cos", "nonlinear_heat")
JVP_DTYPES = [(c, "float64") for c in CASES if c.name in FLOAT_JVP] + [
    (c, "complex128") for c in CASES if c.name in COMPLEX_JVP]


def _jvp_against_differences(solve, case, dtype_name):
    dtype = {"float64": jnp.float64, "complex128": jnp.complex128}[dtype_name]
    z0 = P.cast_tree(case.z0(F64), dtype)
    theta = P.cast_tree(case.theta(F64), dtype)
    t_z0, t_theta = P.random_like(z0, seed=1), P.random_like(theta, seed=2)

    def run(z, th):
        return solve(case.f, z, th).value

    out, t_out, fd = P.jvp_and_central_difference(run, (z0, theta), (t_z0, t_theta), 1e-5)
    P.assert_tree_allclose(out, case.expected(), rtol=CHECK, atol=case.value_atol)
    P.assert_tree_allclose(t_out, fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case, dtype", JVP_DTYPES,
                         ids=[f"{c.name}-{d}" for c, d in JVP_DTYPES])
def test_fixed_point_jvp_matches_central_differences(case, dtype, x64):
    def solve(f, z, th):  # optimistix: FixedPointIteration
        return il.fixed_point(f, z, th, solver=il.solvers.Iteration(), rtol=1e-12,
                              atol=1e-12, max_steps=1000)

    _jvp_against_differences(solve, case, dtype)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ROOT_JVP], ids=repr)
def test_root_jvp_matches_central_differences(case, x64):
    def solve(f, z, th):
        return il.root(P.as_root(f, +1), z, th, rtol=1e-12, atol=1e-12, max_steps=100)

    _jvp_against_differences(solve, case, "float64")


# ======================================================================= roots
# optimistix test_root_find: every fixed-point problem as the root of f(z) - z, with
# Newton and Chord (rtol = atol = 1e-6, max_steps 10_000). Newton (the default) is
# also given the opposite sign, z - f(z): a root finder must not care. Chord runs on
# a subset (one problem of each family), to keep the suite fast.

CHORD_ROOTS = ("cos", "sin", "exponential", "mlp", "nonlinear_heat", "midpoint_y_linear",
               "midpoint_k_robertson")
ROOT_CASES = ([(c, "default", +1) for c in CASES] + [(c, "default", -1) for c in CASES]
              + [(c, "chord", +1) for c in CASES if c.name in CHORD_ROOTS])


@pytest.mark.parametrize("case, solver, sign", ROOT_CASES,
                         ids=[f"{c.name}-{s}-{'f-z' if g > 0 else 'z-f'}"
                              for c, s, g in ROOT_CASES])
def test_root_matches_expected_value(case, solver, sign, x64):
    sol = il.root(P.as_root(case.f, sign), case.z0(F64), case.theta(F64),
                  solver=ROOT_SOLVERS[solver](), rtol=TOL, atol=TOL, max_steps=10_000)
    P.assert_converged(sol)
    P.assert_tree_allclose(sol.value, case.expected(), rtol=CHECK, atol=case.value_atol)


@pytest.mark.parametrize("sign", [+1, -1], ids=["f-z", "z-f"])
def test_nonlinear_heat_root_in_each_precision(sign, precision):
    case = P.OPTIMISTIX_FIXED_POINTS_BY_NAME["nonlinear_heat"]
    d = precision.dtype
    sol = il.root(P.as_root(case.f, sign), case.z0(d), case.theta(d),
                  rtol=precision.solve_tol, atol=precision.solve_tol, max_steps=100)
    P.assert_converged(sol)
    assert sol.value.dtype == d
    np.testing.assert_allclose(sol.value, P.heat_expected(), rtol=precision.value_tol,
                               atol=precision.value_tol)


# ------------------------------------------------------------------ bisection


@pytest.mark.parametrize("case", P.OPTIMISTIX_BISECTIONS, ids=repr)
def test_bisection_root_matches_expected_value(case, x64):
    # optimistix test_bisection: rtol = atol = 1e-6 from 1.0, checked |g| <= 1e-4
    theta = None if case.theta is None else jnp.asarray(case.theta, F64)
    solver = il.solvers.Bisection(jnp.asarray(case.lower, F64),
                                  jnp.asarray(case.upper, F64))
    sol = il.root(case.g, jnp.asarray(1.0, F64), theta, solver=solver, rtol=TOL, atol=TOL,
                  max_steps=10_000)
    P.assert_converged(sol)
    assert abs(float(case.g(sol.value, theta))) <= CHECK
    np.testing.assert_allclose(sol.value, case.expected, rtol=0, atol=case.value_atol)


@pytest.mark.parametrize("sign", [+1, -1], ids=["increasing", "decreasing"])
def test_bisection_finds_zero_in_either_orientation(sign, x64):
    # optimistix test_bisection_flip: g = +-z on [-1, 2], rtol = atol = 1e-4
    solver = il.solvers.Bisection(jnp.asarray(-1.0, F64), jnp.asarray(2.0, F64))
    sol = il.root(lambda z, _: sign * z, jnp.asarray(1.0, F64), solver=solver, rtol=1e-4,
                  atol=1e-4)
    np.testing.assert_allclose(sol.value, 0.0, rtol=0, atol=1e-3)


# ---------------------------------------------------------- other root problems

# optimistix test_newton_bounded: Newton checked to 1e-4, Chord to 1e-2. The peer's
# Newton stops on a small step; innerloop stops on a small residual, and c^2 is a
# double root (|c| ~ sqrt(residual)), so Newton is given rtol = atol = 1e-10.
FIVE_CASES = [(start, solver) for start in P.FIVE_UNKNOWNS_STARTS
              for solver in ("newton", "chord")]


@pytest.mark.parametrize("start, solver", FIVE_CASES,
                         ids=[f"{s}-{v}" for s, v in FIVE_CASES])
def test_five_unknowns_root_near_start(start, solver, x64):
    (a0, m0), (a1, m1) = P.FIVE_UNKNOWNS_STARTS[start]
    tol, check = (1e-10, 1e-4) if solver == "newton" else (1e-5, 1e-2)
    z0 = (jnp.asarray(a0, F64), jnp.asarray(m0, F64))
    sol = il.root(P.five_unknowns, z0, solver=ROOT_SOLVERS[solver](), rtol=tol, atol=tol,
                  max_steps=10_000)
    P.assert_converged(sol)
    P.assert_tree_allclose(sol.value, (np.asarray(a1), np.asarray(m1)), rtol=check,
                           atol=check)


def test_tanh_root_matches_expected_value(x64):
    # optimistix test_root_via_min (there by BFGS on ||g||^2), checked with its
    # default closeness rtol 1e-5, atol 1e-8
    sol = il.root(P.tanh_roots, P.tanh_z0(F64), rtol=1e-10, atol=1e-10)
    P.assert_converged(sol)
    P.assert_tree_allclose(sol.value, P.tanh_expected(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("solver", ["default", "chord"])
def test_root_at_initial_point_is_successful(solver):
    # optimistix test_newton_chord_small_diff: g(y) = y from y = 0
    sol = il.root(P.identity_root, jnp.asarray(0.0, jnp.float32),
                  solver=ROOT_SOLVERS[solver](), rtol=1e-5, atol=1e-5)
    assert P.successful(sol), P.describe(sol)
    assert float(sol.value) == 0.0


# ============================================================== failure modes
# A problem without a solution must say so: converged False, a result other than
# `successful`, and an error under throw=True; in float32 and in float64.

DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


def _in_dtype(name):
    if name == "float64":
        return jax.enable_x64(True)
    return jax.enable_x64(False)


NO_ROOT_SOLVERS = [(s, d) for s in ("default", "broyden") for d in DTYPES]


@pytest.mark.parametrize("solver, dtype", NO_ROOT_SOLVERS,
                         ids=[f"{s}-{d}" for s, d in NO_ROOT_SOLVERS])
def test_root_without_solution_is_not_converged(solver, dtype):
    # optimistix test_bad_root_via_min: g = (1, [tanh(b - 0.5), tanh(2c)])
    with _in_dtype(dtype):
        sol = il.root(P.tanh_no_root, P.tanh_z0(DTYPES[dtype]),
                      solver=ROOT_SOLVERS[solver](), max_steps=100)
        assert not bool(sol.converged), P.describe(sol)
        assert not P.successful(sol)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_root_without_solution_raises_with_throw(dtype):
    with _in_dtype(dtype), pytest.raises(RuntimeError):
        sol = il.root(P.tanh_no_root, P.tanh_z0(DTYPES[dtype]), max_steps=100,
                      throw=True)
        jax.block_until_ready(sol.value)


NO_FIXED_POINT_SOLVERS = [(s, d) for s in FP_SOLVERS for d in DTYPES] + [
    ("broyden", d) for d in DTYPES]


@pytest.mark.parametrize("solver, dtype", NO_FIXED_POINT_SOLVERS,
                         ids=[f"{s}-{d}" for s, d in NO_FIXED_POINT_SOLVERS])
def test_fixed_point_of_shift_by_one_is_not_converged(solver, dtype):
    make = {**FP_SOLVERS, "broyden": ROOT_SOLVERS["broyden"]}[solver]
    with _in_dtype(dtype):
        sol = il.fixed_point(P.shift_by_one, jnp.zeros(3, DTYPES[dtype]), solver=make(),
                             max_steps=100)
        assert not bool(sol.converged), P.describe(sol)
        assert not P.successful(sol)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_fixed_point_of_shift_by_one_raises_with_throw(dtype):
    with _in_dtype(dtype), pytest.raises(RuntimeError):
        sol = il.fixed_point(P.shift_by_one, jnp.zeros(3, DTYPES[dtype]),
                             max_steps=100, throw=True)
        jax.block_until_ready(sol.value)
