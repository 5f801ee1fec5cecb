"""Gradient correctness: every solver and adjoint against a dense implicit-function-
theorem reference and finite differences, in float64; the approximate modes against
the bounds their papers state."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import innerloop as il
from innerloop.solvers import Anderson, Broyden, Dense, Iteration, SteadyState
from innerloop.testing import (
    check_gradients,
    contractive_problems,
    dense_implicit_gradient,
    tanh_map,
    tanh_problem,
)

pytestmark = pytest.mark.usefixtures("x64")

SOLVERS = {
    "iteration": Iteration(),
    "anderson": Anderson(memory=5),
    "broyden": Broyden(memory=20),
    "steady_state": SteadyState(),
}
ADJOINTS = {
    "iteration": Iteration(),
    "forward": "forward",
    "gmres": lx.GMRES(rtol=1e-12, atol=1e-14, restart=40, stagnation_iters=40),
    "bicgstab": lx.BiCGStab(rtol=1e-12, atol=1e-14),
    "dense": Dense(),
}


def problems(**kwargs):
    kwargs.setdefault("dtype", jnp.float64)
    return contractive_problems(**kwargs)


@pytest.mark.parametrize("adjoint", ADJOINTS)
@pytest.mark.parametrize("solver", SOLVERS)
@given(problem=problems(lipschitz=(0.1, 0.9)))
def test_implicit_matches_dense_reference(solver, adjoint, problem):
    check_gradients(problem.f, problem.z0, problem.theta, solver=SOLVERS[solver],
                    modes=[il.Implicit(linear_solver=ADJOINTS[adjoint])], rtol=1e-6,
                    max_steps=3000)


@pytest.mark.parametrize("adjoint", ["iteration", "forward", "gmres"])
@given(problem=problems(lipschitz=(0.97, 0.995)))
def test_implicit_near_one_conditioning(adjoint, problem):
    # ||df/dz|| close to 1: I - df/dz is nearly singular and plain iteration slow.
    check_gradients(problem.f, problem.z0, problem.theta, solver=Anderson(memory=5),
                    modes=[il.Implicit(linear_solver=ADJOINTS[adjoint])], rtol=1e-6,
                    max_steps=20000)


@pytest.mark.parametrize("mode", [il.Unroll(), il.Checkpointed()], ids=repr)
@pytest.mark.parametrize("solver", ["iteration", "anderson", "broyden"])
@given(problem=problems(lipschitz=(0.1, 0.8)))
def test_unrolled_gradient_matches_reference_once_converged(solver, mode, problem):
    check_gradients(problem.f, problem.z0, problem.theta, solver=SOLVERS[solver],
                    modes=[mode], rtol=1e-6, max_steps=300)


@pytest.mark.parametrize("structure", ["dict", "tuple", "nested"])
@given(data=st.data())
def test_pytree_states(structure, data):
    problem = data.draw(problems(structures=(structure,)))
    check_gradients(problem.f, problem.z0, problem.theta, solver=Anderson(),
                    modes=[il.Implicit(), il.Unroll()], rtol=1e-6, max_steps=300)


@given(problem=problems(n=4, p=2, lipschitz=(0.1, 0.9)))
def test_finite_differences_agree(problem):
    check_gradients(problem.f, problem.z0, problem.theta, solver=Anderson(),
                    modes=[il.Implicit()], reference="finite_differences", rtol=1e-6,
                    max_steps=500)


# -------------------------------------------------------------- helpers
# Module-level jitted functions take every value that hypothesis varies as an
# argument, so each (solver, mode) compiles once per test session.


@eqx.filter_jit
def _grad(f, z0, theta, c, solver, mode, tol=1e-12, max_steps=3000):
    def loss(t):
        sol = il.fixed_point(f, z0, t, solver=solver, grad=mode, tol=tol,
                             max_steps=max_steps)
        return c @ sol.value
    return jax.grad(loss)(theta)


@eqx.filter_jit
def _solve(f, z0, theta, solver, tol=1e-12, max_steps=3000):
    return il.fixed_point(f, z0, theta, solver=solver, tol=tol, max_steps=max_steps).value


def _reference_and_mode(problem, mode, solver=Anderson(), tol=1e-12):
    theta = problem.theta
    c = jnp.asarray(np.random.default_rng(0).normal(size=8))
    z = _solve(problem.f, problem.z0, theta, solver, tol)
    ref = dense_implicit_gradient(problem.f, z, theta, c)
    return ref, _grad(problem.f, problem.z0, theta, c, solver, mode, tol), c, z


def _flat(tree):
    return jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


@eqx.filter_jit
def _jacobians(problem_f, z, theta):
    jz = jax.jacfwd(problem_f)(z, theta)
    jt = jax.jacfwd(problem_f, argnums=1)(z, theta)
    jt = jnp.concatenate([x.reshape(z.size, -1) for x in jax.tree.leaves(jt)], axis=1)
    return jz, jt


def _theta_jacobian_norm(problem, z):
    return float(jnp.linalg.norm(_jacobians(problem.f, z, problem.theta)[1], 2))


# ------------------------------------------------- approximate modes' properties


@given(problem=problems(lipschitz=(0.3, 0.9)))
def test_truncated_error_obeys_neumann_bound_and_shrinks(problem):
    """Truncated(k) is the Neumann series of (I - J)^{-1} cut after k terms:
    ||g_k - g|| <= ||J_theta|| L^k ||c|| / (1 - L), and the error shrinks with k."""
    errors = []
    for k in (1, 2, 4, 8, 16):
        ref, g, c, z = _reference_and_mode(problem, il.Truncated(k))
        err = float(jnp.linalg.norm(_flat(g) - _flat(ref)))
        bound = (_theta_jacobian_norm(problem, z) * problem.lipschitz**k
                 * float(jnp.linalg.norm(c)) / (1 - problem.lipschitz))
        assert err <= bound * (1 + 1e-9) + 1e-12
        errors.append(err)
    assert errors[-1] < errors[0]
    assert all(b <= a * (1 + 1e-6) + 1e-13 for a, b in zip(errors, errors[1:]))


@given(problem=problems(lipschitz=(0.3, 0.9)),
       damping=st.sampled_from([0.25, 0.5, 1.0]), k=st.sampled_from([1, 3, 10]))
def test_phantom_gradient_converges_to_implicit_with_damped_rate(problem, damping, k):
    """Geng et al. 2021: the phantom gradient is lambda * sum_{i<k} M^i with
    M = (1 - lambda) I + lambda J; its error is at most
    ||J_theta|| rho^k ||c|| / (1 - L) with rho = 1 - lambda + lambda L."""
    ref, g, c, z = _reference_and_mode(problem, il.Phantom(k, damping))
    rho = 1 - damping + damping * problem.lipschitz
    bound = (_theta_jacobian_norm(problem, z) * rho**k * float(jnp.linalg.norm(c))
             / (1 - problem.lipschitz))
    err = float(jnp.linalg.norm(_flat(g) - _flat(ref)))
    assert err <= bound * (1 + 1e-9) + 1e-12


@given(problem=problems(lipschitz=(0.1, 0.9)))
def test_phantom_one_undamped_step_is_jacobian_free(problem):
    _, g_phantom, _, _ = _reference_and_mode(problem, il.Phantom(1, 1.0))
    _, g_jfb, _, _ = _reference_and_mode(problem, il.JacobianFree())
    np.testing.assert_allclose(_flat(g_phantom), _flat(g_jfb), rtol=1e-12, atol=1e-14)


@given(problem=problems(lipschitz=(0.05, 0.99)), seed=st.integers(0, 2**31 - 1))
def test_jacobian_free_is_a_descent_direction(problem, seed):
    """Fung et al. 2022: for z = tanh(W z + b) with ||W|| < 1 the Jacobian-free
    gradient with respect to the injection b has positive inner product with the true
    gradient, for any loss: <D c', D (I - W^T D)^{-1} c'> >= (1 - L) ||D v||^2 > 0."""
    c = jnp.asarray(np.random.default_rng(seed).normal(size=8))
    g_true, g_jfb = (_grad(problem.f, problem.z0, problem.theta, c, Anderson(), mode)["b"]
                     for mode in (il.Implicit(), il.JacobianFree()))
    assert float(g_true @ g_jfb) > 0


# ------------------------------------------------------ other differentiations


@pytest.mark.parametrize("mode", [il.Implicit(), il.Unroll()], ids=repr)
@given(problem=problems(lipschitz=(0.1, 0.9)), seed=st.integers(0, 2**31 - 1))
def test_jvp_and_vjp_match_the_dense_implicit_gradient(mode, problem, seed):
    """u . (dz*/dtheta v) by forward mode, and (u^T dz*/dtheta) . v by reverse mode,
    each against the dense IFT reference J_theta^T (I - J_z)^{-T} u."""
    rng = np.random.default_rng(seed)
    u = jnp.asarray(rng.normal(size=8))
    v = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), problem.theta)
    z_star, jv, vj = _jvp_vjp(problem.f, problem.z0, problem.theta, u, v, mode)
    dense = dense_implicit_gradient(problem.f, z_star, problem.theta, u)
    ref = float(sum(jnp.vdot(dense[k], v[k]) for k in v))
    assert abs(float(jv) - ref) <= 1e-7 * max(1.0, abs(ref))
    assert abs(float(vj) - ref) <= 1e-7 * max(1.0, abs(ref))


@eqx.filter_jit
def _jvp_vjp(f, z0, theta, u, v, mode):
    def value(t):
        return il.fixed_point(f, z0, t, grad=mode, tol=1e-12, max_steps=500).value

    z_star, jv = jax.jvp(value, (theta,), (v,))
    _, vjp = jax.vjp(value, theta)
    (vj,) = vjp(u)
    return z_star, u @ jv, sum(jnp.vdot(vj[k], v[k]) for k in v)


def test_forward_and_reverse_jacobians_match_the_dense_jacobian():
    problem = tanh_problem(lipschitz=0.7)
    f = lambda t: il.fixed_point(problem.f, problem.z0, t, tol=1e-12,  # noqa: E731
                                 max_steps=500).value
    jf = jax.jit(jax.jacfwd(f))(problem.theta)
    jr = jax.jit(jax.jacrev(f))(problem.theta)
    # Dense reference: dz*/dtheta = (I - J_z)^{-1} J_theta at z*.
    z_star = f(problem.theta)
    jz = jax.jacfwd(problem.f)(z_star, problem.theta)
    jt = jax.jacfwd(problem.f, argnums=1)(z_star, problem.theta)
    inv = jnp.linalg.inv(jnp.eye(z_star.shape[0]) - jz)
    for k in jf:
        dense = jnp.tensordot(inv, jt[k], axes=1)
        np.testing.assert_allclose(jf[k], dense, rtol=1e-8, atol=1e-11)
        np.testing.assert_allclose(jr[k], dense, rtol=1e-8, atol=1e-11)


def _second_order_loss(b, theta, z0, mode):
    z = il.fixed_point(tanh_map, z0, dict(theta, b=b), grad=mode, solver=Iteration(),
                       tol=1e-14, max_steps=150).value
    return jnp.sum(jnp.sin(z)) + jnp.sum(z**2)


@eqx.filter_jit
def _hessian_and_fd(theta, z0, mode):
    b = theta["b"]
    hess = jax.hessian(_second_order_loss)(b, theta, z0, mode)
    g = jax.grad(_second_order_loss)
    eps = 1e-5
    fd = jnp.stack([(g(b + eps * e, theta, z0, mode) - g(b - eps * e, theta, z0, mode))
                    / (2 * eps) for e in jnp.eye(b.size)])
    return hess, fd


@given(problem=problems(n=4, p=2, lipschitz=(0.1, 0.6)))
def test_second_derivatives_match_unrolled_and_finite_differences(problem):
    h_implicit, h_fd = _hessian_and_fd(problem.theta, problem.z0, il.Implicit())
    h_unroll, _ = _hessian_and_fd(problem.theta, problem.z0, il.Unroll())
    np.testing.assert_allclose(h_implicit, h_unroll, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(h_implicit, h_fd, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------- closures


def _closure_loss(w, theta, z0, c):
    # W reaches f only through the closure, never through theta.
    def f(z, t):
        return jnp.tanh(w @ z + t["U"] @ t["x"] + t["b"])
    return c @ il.fixed_point(f, z0, theta, tol=1e-12, max_steps=500).value


_closure_grad = jax.jit(jax.grad(_closure_loss))


def _closure_reference(problem, c):
    z = _solve(problem.f, problem.z0, problem.theta, Anderson())
    return dense_implicit_gradient(problem.f, z, problem.theta, c)["W"]


@given(problem=problems(lipschitz=(0.1, 0.9)))
def test_closed_over_arrays_are_differentiated(problem):
    c = jnp.arange(8.0)
    g = _closure_grad(problem.theta["W"], problem.theta, problem.z0, c)
    np.testing.assert_allclose(g, _closure_reference(problem, c), rtol=1e-7, atol=1e-12)


def test_closed_over_arrays_are_differentiated_eagerly():
    problem, c = tanh_problem(lipschitz=0.9, seed=3), jnp.arange(8.0)
    g = jax.grad(_closure_loss)(problem.theta["W"], problem.theta, problem.z0, c)
    np.testing.assert_allclose(g, _closure_reference(problem, c), rtol=1e-7, atol=1e-12)
