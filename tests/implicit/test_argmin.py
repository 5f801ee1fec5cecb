"""`argmin`: hypergradients through an inner minimisation, implicit and unrolled."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import innerloop as il
from innerloop.implicit import argmin
from innerloop.solvers import Iteration

M, D = 40, 10


def _ridge_data():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    a = jax.random.normal(k1, (M, D), jnp.float64)
    y = a @ jax.random.normal(k2, (D,), jnp.float64) + 0.5 * jax.random.normal(k3, (M,))
    a_val = jax.random.normal(k4, (M, D), jnp.float64)
    y_val = a_val @ jnp.ones(D)
    return a, y, a_val, y_val


def _ridge_closed_form(lam):
    """x*(lam) = (A^T A / M + lam I)^{-1} A^T y / M and
    dV/dlam = -grad V(x*)^T (A^T A / M + lam I)^{-1} x*, in numpy float64."""
    a, y, a_val, y_val = (np.asarray(v, np.float64) for v in _ridge_data())
    h = a.T @ a / M + lam * np.eye(D)
    x = np.linalg.solve(h, a.T @ y / M)
    grad_val = a_val.T @ (a_val @ x - y_val)
    return x, -grad_val @ np.linalg.solve(h, x)


def _hypergradient(lam, **kwargs):
    a, y, a_val, y_val = _ridge_data()

    def inner(x, lam):
        return 0.5 * jnp.sum((a @ x - y) ** 2) / M + 0.5 * lam * jnp.sum(x ** 2)

    def outer(lam):
        sol = argmin(inner, jnp.zeros(D), lam, tol=1e-12, max_steps=200, **kwargs)
        return 0.5 * jnp.sum((a_val @ sol.value - y_val) ** 2), sol

    (_, sol), g = jax.jit(jax.value_and_grad(outer, has_aux=True))(lam)
    return sol, g


CASES = {
    "implicit": {},
    "unroll": dict(grad=il.Unroll()),
    "sgd-implicit": dict(solver=optax.sgd(0.5)),
    "sgd-unroll": dict(solver=optax.sgd(0.5), grad=il.Unroll()),
    "sgd-checkpointed": dict(solver=optax.sgd(0.5), grad=il.Checkpointed()),
    "iteration-unroll": dict(solver=Iteration(), grad=il.Unroll()),
    "iteration-checkpointed": dict(solver=Iteration(), grad=il.Checkpointed()),
}
_RESULTS = {}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_ridge_hypergradient_matches_closed_form(case):
    with jax.enable_x64(True):
        lam = 0.3
        x_ref, g_ref = _ridge_closed_form(lam)
        sol, g = _hypergradient(jnp.asarray(lam), **CASES[case])
        _RESULTS[case] = sol
        assert bool(sol.converged)
        np.testing.assert_allclose(sol.value, x_ref, rtol=1e-9, atol=1e-10)
        assert abs(float(g) - g_ref) <= 1e-6 * max(1.0, abs(g_ref)), (float(g), g_ref)


def test_forward_result_is_the_same_under_implicit_and_unroll():
    # Same iterations; the unrolled loop is compiled differently, so equal up to
    # round-off (1 ulp was seen), with the same step count.
    with jax.enable_x64(True):
        for a, b in [("implicit", "unroll"), ("sgd-implicit", "sgd-unroll"),
                     ("sgd-unroll", "sgd-checkpointed")]:
            for case in (a, b):
                if case not in _RESULTS:
                    _RESULTS[case] = _hypergradient(jnp.asarray(0.3), **CASES[case])[0]
            np.testing.assert_allclose(_RESULTS[a].value, _RESULTS[b].value,
                                       rtol=1e-14, atol=1e-15)
            assert int(_RESULTS[a].steps) == int(_RESULTS[b].steps)


def test_vmap_hypergradients():
    with jax.enable_x64(True):
        a, y, a_val, y_val = _ridge_data()

        def inner(x, lam):
            return 0.5 * jnp.sum((a @ x - y) ** 2) / M + 0.5 * lam * jnp.sum(x ** 2)

        def outer(lam):
            x = argmin(inner, jnp.zeros(D), lam, tol=1e-12).value
            return 0.5 * jnp.sum((a_val @ x - y_val) ** 2)

        lams = [0.1, 0.3, 1.0]
        g = jax.jit(jax.vmap(jax.grad(outer)))(jnp.asarray(lams))
        for i, lam in enumerate(lams):
            g_ref = _ridge_closed_form(lam)[1]
            assert abs(float(g[i]) - g_ref) <= 1e-6 * max(1.0, abs(g_ref))


def test_converges_out_of_the_box_on_regularised_logistic_regression():
    """Default solver and tolerance; pytree variable; data closed over and differentiated."""
    with jax.enable_x64(True):
        k1, k2 = jax.random.split(jax.random.key(3))
        feats = 3.0 * jax.random.normal(k1, (60, 5))
        labels = jnp.sign(jax.random.normal(k2, (60,)))

        def loss(p, lam, data):
            z = data @ p["w"] + p["b"]
            return (jnp.mean(jax.nn.softplus(-labels * z))
                    + 0.5 * lam * (jnp.sum(p["w"] ** 2) + p["b"] ** 2))

        p0 = {"w": 5.0 * jnp.ones(5), "b": jnp.asarray(-5.0)}

        def w_of(data):
            sol = argmin(lambda p, th: loss(p, th, data), p0, 0.1)
            return jnp.sum(sol.value["w"]), sol

        # The closed-over data gets the implicit derivative: compare with the
        # implicit function theorem written out densely.
        gd, sol = jax.jit(jax.grad(w_of, has_aux=True))(feats)
        assert bool(sol.converged) and int(sol.steps) < 100
        g = jax.grad(loss)(sol.value, 0.1, feats)
        assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(g)) < 1e-5
        flat, unravel = jax.flatten_util.ravel_pytree(sol.value)
        gx = lambda x, data: jax.flatten_util.ravel_pytree(
            jax.grad(loss)(unravel(x), 0.1, data))[0]
        hess = jax.jacfwd(gx)(flat, feats)
        u = jnp.linalg.solve(hess.T, jnp.concatenate([jnp.zeros(1), jnp.ones(5)]))
        ref = -jax.grad(lambda d: u @ gx(flat, d))(feats)
        np.testing.assert_allclose(gd, ref, rtol=2e-4, atol=1e-7)


def test_optax_lbfgs_solver():
    # optax's L-BFGS mixes int32 and int64 counters: not clean under strict promotion.
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        sol, g = _hypergradient(jnp.asarray(0.3), solver=optax.lbfgs())
        assert bool(sol.converged)
        g_ref = _ridge_closed_form(0.3)[1]
        assert abs(float(g) - g_ref) <= 1e-6 * abs(g_ref)


# ------------------------------------------------------- non-convergence, bad input


def _quad(x, th):
    return jnp.sum((x - th) ** 2 * jnp.linspace(1.0, 100.0, x.shape[0], dtype=x.dtype))


@pytest.mark.parametrize("solver", [Iteration(), optax.sgd(1e-4)], ids=["innerloop", "optax"])
def test_non_convergence_is_reported_and_throw_raises(solver):
    sol = argmin(_quad, jnp.zeros(6), 1.0, solver=solver, max_steps=2)
    assert not bool(sol.converged) and int(sol.steps) == 2
    assert float(sol.residual) > 1e-6
    with pytest.raises(Exception, match="did not converge"):
        jax.jit(lambda t: argmin(_quad, jnp.zeros(6), t, solver=solver, max_steps=2,
                                 throw=True).value)(1.0).block_until_ready()


def test_diverging_optax_solver_is_reported_not_raised():
    def f(t):
        sol = argmin(_quad, jnp.zeros(6), t, solver=optax.sgd(1.0))
        return jnp.sum(sol.value), sol

    _, sol = jax.jit(jax.grad(f, has_aux=True))(jnp.asarray(1.0))
    assert not bool(sol.converged) and not bool(jnp.isfinite(sol.residual))


def test_trace_records_residuals():
    sol = argmin(_quad, jnp.zeros(6), 1.0, max_steps=50, trace=True)
    assert sol.trace.shape == (51,) and bool(sol.converged)
    sol = argmin(_quad, jnp.zeros(6), 1.0, solver=optax.sgd(0.009), max_steps=500,
                 tol=1e-4, trace=True)
    assert sol.trace.shape == (501,) and bool(sol.converged)
    np.testing.assert_allclose(sol.trace[int(sol.steps)], sol.residual)


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(loss=lambda x, t: x * t), TypeError, "scalar"),
    (dict(x0=jnp.zeros(3, jnp.int32)), TypeError, "floating point"),
    (dict(solver="adam"), TypeError, "solver must be"),
    (dict(grad="implicit"), TypeError, "grad must be"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(max_steps=0), ValueError, "max_steps"),
], ids=["vector-loss", "int-x0", "bad-solver", "bad-grad", "tol", "max_steps"])
def test_bad_input(kwargs, exc, message):
    args = dict(loss=_quad, x0=jnp.zeros(3))
    args.update(kwargs)
    loss, x0 = args.pop("loss"), args.pop("x0")
    with pytest.raises(exc, match=message):
        argmin(loss, x0, 1.0, **args)


def test_float32_stays_float32():
    def f(t):
        sol = argmin(_quad, jnp.zeros(4, jnp.float32), t)
        return jnp.sum(sol.value), sol

    g, sol = jax.jit(jax.grad(f, has_aux=True))(jnp.float32(1.0))
    assert sol.value.dtype == jnp.float32 and bool(sol.converged)
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, 4.0, rtol=1e-4)

