"""The API contract: same forward result under every mode, bad input named clearly,
non-convergence never silent, float32 stays float32, memory flat for Implicit."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import innerloop as il
from innerloop.solvers import Anderson, Broyden, Iteration
from innerloop.testing import dense_implicit_gradient, tanh_problem

MODES = [il.Implicit(), il.Unroll(), il.Checkpointed(), il.Truncated(3), il.Phantom(),
         il.JacobianFree()]


@pytest.fixture(scope="module")
def problem():
    return tanh_problem(lipschitz=0.8, dtype=jnp.float32)


def test_forward_result_is_the_same_under_every_mode(problem):
    sols = [jax.jit(lambda t, m=m: il.fixed_point(problem.f, problem.z0, t, grad=m))(
        problem.theta) for m in MODES]
    for sol in sols[1:]:
        np.testing.assert_array_equal(np.asarray(sol.value), np.asarray(sols[0].value))
        assert int(sol.steps) == int(sols[0].steps)


def test_float32_gradients_are_float32_and_close_to_float64_reference(problem):
    c = jnp.linspace(-1, 1, 8, dtype=jnp.float32)
    g = jax.grad(lambda t: c @ il.fixed_point(problem.f, problem.z0, t, tol=1e-6).value)(
        problem.theta)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g))
    with jax.enable_x64(True):
        t64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), problem.theta)
        z = il.fixed_point(problem.f, jnp.zeros(8, jnp.float64), t64, tol=1e-13,
                           max_steps=1000).value
        ref = dense_implicit_gradient(problem.f, z, t64, jnp.asarray(c, jnp.float64))
        for k in g:
            np.testing.assert_allclose(np.asarray(g[k], np.float64), ref[k],
                                       rtol=1e-3, atol=1e-4 * float(jnp.abs(ref[k]).max()))


# ------------------------------------------------------------------ bad input


def f_ok(z, t):
    return jnp.tanh(0.5 * z + t)


@pytest.mark.parametrize("f, message", [
    (lambda z, t: {"z": z}, "same pytree structure"),
    (lambda z, t: jnp.concatenate([z, z]), "shape"),
    (lambda z, t: (z + t).astype(jnp.float16), "dtype"),
], ids=["structure", "shape", "dtype"])
def test_map_output_mismatch_is_named(f, message):
    with pytest.raises(TypeError, match=message):
        il.fixed_point(f, jnp.zeros(3), jnp.ones(3))


def test_root_output_mismatch_is_named():
    with pytest.raises(TypeError, match=r"g\(z, theta\).*shape"):
        il.root(lambda z, t: z[:2], jnp.zeros(3), None)


@pytest.mark.parametrize("where", ["z0", "theta"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_raises_eagerly(where, bad):
    z0, theta = jnp.zeros(3), {"b": jnp.ones(3)}
    if where == "z0":
        z0 = z0.at[1].set(bad)
    else:
        theta = {"b": theta["b"].at[2].set(bad)}
    with pytest.raises(ValueError, match=rf"{where}.*NaN or inf"):
        il.fixed_point(lambda z, t: f_ok(z, t["b"]), z0, theta)


def test_non_finite_input_raises_under_jit():
    run = jax.jit(lambda b: il.fixed_point(f_ok, jnp.zeros(3), b).value)
    with pytest.raises(Exception, match="theta contains NaN or inf"):
        jax.block_until_ready(run(jnp.asarray([0.0, np.nan, 1.0])))


def test_integer_state_is_rejected():
    with pytest.raises(TypeError, match="floating point"):
        il.fixed_point(lambda z, t: z, jnp.zeros(3, jnp.int32), None)


@pytest.mark.parametrize("kwargs, message", [
    ({"tol": 0.0}, "tol"), ({"tol": -1e-3}, "tol"), ({"tol": float("nan")}, "tol"),
    ({"max_steps": 0}, "max_steps"), ({"max_steps": 2.5}, "max_steps"),
    ({"solver": "anderson"}, "solver"), ({"grad": "implicit"}, "grad"),
])
def test_invalid_options_raise(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        il.fixed_point(f_ok, jnp.zeros(3), jnp.ones(3), **kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: il.Truncated(0), "k"), (lambda: il.Phantom(0), "k"),
    (lambda: il.Phantom(2, 0.0), "damping"), (lambda: il.Phantom(2, 1.5), "damping"),
    (lambda: Anderson(memory=0), "memory"), (lambda: Broyden(memory=0), "memory"),
    (lambda: Anderson(ridge=-1.0), "ridge"), (lambda: Iteration(damping=0.0), "damping"),
    (lambda: il.Implicit(tol=0.0), "tol"), (lambda: il.Implicit(max_steps=0), "max_steps"),
    (lambda: il.Implicit(linear_solver="cg"), "linear_solver"),
    (lambda: il.Implicit(on_failure="ignore"), "on_failure"),
    (lambda: il.Checkpointed(0), "checkpoints"),
])
def test_invalid_settings_raise(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


# --------------------------------------------------------- non-convergence


def _slow(z, t):
    return jnp.tanh(0.999 * z + t)


def test_throw_raises_under_jit_when_forward_does_not_converge():
    run = jax.jit(lambda t: il.fixed_point(_slow, jnp.zeros(2), t, max_steps=3,
                                           throw=True).value)
    with pytest.raises(Exception, match="innerloop.fixed_point did not converge"):
        jax.block_until_ready(run(jnp.ones(2)))


def _grad(mode, throw=False):
    def loss(t):
        return jnp.sum(il.fixed_point(f_ok, jnp.zeros(2), t, grad=mode, tol=1e-6,
                                      max_steps=100, throw=throw).value)
    return jax.jit(jax.grad(loss))


def test_backward_nonconvergence_warns_by_default():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = jax.block_until_ready(_grad(il.Implicit(max_steps=1, fallback=None))(jnp.ones(2)))
    assert any(issubclass(w.category, il.BackwardNotConvergedWarning) for w in caught)
    assert bool(jnp.all(g != 0))  # inaccurate, but never silently zero


def test_backward_nonconvergence_warns_once_per_vmapped_batch():
    def loss(t, mode):
        return jnp.sum(il.fixed_point(f_ok, jnp.zeros(2), t, grad=mode, tol=1e-6,
                                      max_steps=100).value)

    ts = jnp.stack([jnp.ones(2), 0.5 * jnp.ones(2), -jnp.ones(2)])
    warn = jax.jit(jax.vmap(jax.grad(lambda t: loss(t, il.Implicit(max_steps=1, fallback=None)))))
    quiet = jax.jit(jax.vmap(jax.grad(
        lambda t: loss(t, il.Implicit(max_steps=1, on_failure="nan", fallback=None)))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = jax.block_until_ready(warn(ts))
    hits = [w for w in caught if issubclass(w.category, il.BackwardNotConvergedWarning)]
    assert len(hits) == 1, [str(w.message) for w in caught]
    assert "worst residual" in str(hits[0].message)
    assert bool(jnp.all(jnp.isnan(quiet(ts))))  # every example is unconverged
    ok = jax.jit(jax.vmap(jax.grad(lambda t: loss(t, il.Implicit()))))(ts)
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(g != 0))
    assert float(jnp.max(jnp.abs(g - ok))) > 0  # truncated, so not the exact gradient


def test_backward_warning_fires_for_a_nan_residual_in_a_batch():
    # One example's adjoint residual is NaN (it overflowed): NaN fails `<= tol`, so the
    # batch warns, and x comes back unchanged (the callback's zero is added to it).
    from innerloop.implicit._modes import _report_backward

    def report(x, r):
        return _report_backward(x, r, r <= 1e-5, "warn")

    x = jnp.arange(6.0).reshape(3, 2)
    for r, expected in ([jnp.nan, 0.0, 0.0], 1), ([1e-6, 0.0, 1e-5], 0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = jax.block_until_ready(jax.jit(jax.vmap(report))(x, jnp.asarray(r)))
        hits = [w for w in caught
                if issubclass(w.category, il.BackwardNotConvergedWarning)]
        assert len(hits) == expected
        if expected:
            assert "worst residual nan" in str(hits[0].message)
        np.testing.assert_array_equal(out, x)


def test_backward_nonconvergence_raises_with_throw():
    with pytest.raises(Exception, match="linear solve of the implicit gradient"):
        grad = _grad(il.Implicit(max_steps=1, fallback=None), throw=True)
        jax.block_until_ready(grad(jnp.ones(2)))


def test_backward_nonconvergence_gives_nan_when_asked():
    g = _grad(il.Implicit(max_steps=1, on_failure="nan", fallback=None))(jnp.ones(2))
    assert bool(jnp.all(jnp.isnan(g)))


def test_converged_backward_is_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.block_until_ready(_grad(il.Implicit())(jnp.ones(2)))


# ------------------------------------------------------------------- root


def test_root_solves_and_differentiates():
    with jax.enable_x64(True):
        a = jnp.asarray([[3.0, 1.0], [1.0, 2.0]])

        def g(z, t):  # root of a z + z^3 / 10 - t
            return a @ z + z**3 / 10 - t

        t0 = jnp.asarray([1.0, -2.0])
        sol = il.root(g, jnp.zeros(2), t0, tol=1e-12, max_steps=200)
        assert bool(sol.converged)
        np.testing.assert_allclose(g(sol.value, t0), 0, atol=1e-11)
        jac = jax.jacrev(lambda t: il.root(g, jnp.zeros(2), t, tol=1e-12,
                                           max_steps=200).value)(t0)
        dg_dz = a + jnp.diag(3 * sol.value**2 / 10)
        np.testing.assert_allclose(jac, jnp.linalg.inv(dg_dz), rtol=1e-8)
        jac_gmres = jax.jacrev(lambda t: il.root(
            g, jnp.zeros(2), t, tol=1e-12, max_steps=200,
            grad=il.Implicit(linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12))).value)(t0)
        np.testing.assert_allclose(jac_gmres, jnp.linalg.inv(dg_dz), rtol=1e-8)


# ------------------------------------------------------------------ memory


def _temp_bytes(mode, max_steps):
    problem = tanh_problem(n=64, dtype=jnp.float32)

    def loss(t):
        sol = jax.vmap(lambda x: il.fixed_point(
            problem.f, jnp.zeros(64, jnp.float32), dict(t, x=x), solver=Iteration(),
            grad=mode, tol=1e-30, max_steps=max_steps))(jnp.ones((16, 4), jnp.float32))
        return jnp.sum(sol.value)

    compiled = jax.jit(jax.value_and_grad(loss)).lower(problem.theta).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_implicit_memory_is_flat_in_max_steps_and_unroll_grows():
    assert _temp_bytes(il.Implicit(), 200) <= 1.1 * _temp_bytes(il.Implicit(), 20)
    assert _temp_bytes(il.Unroll(), 200) > 2 * _temp_bytes(il.Unroll(), 20)


def test_solution_is_a_pytree_that_jit_returns():
    sol = eqx.filter_jit(il.fixed_point)(f_ok, jnp.zeros(3), jnp.ones(3))
    assert isinstance(sol, il.Solution) and bool(sol.converged)
    np.testing.assert_allclose(sol.value, f_ok(sol.value, jnp.ones(3)), atol=1e-4)


def test_python_scalar_theta_under_grad():
    # jax.grad(loss)(1.0) makes theta a weakly typed tracer.
    f = lambda z, t: jnp.tanh(0.5 * z + t)  # noqa: E731
    loss = lambda t: il.fixed_point(f, jnp.zeros(3), t).value.sum()  # noqa: E731
    z = float(il.fixed_point(f, jnp.zeros(3), 1.0, rtol=1e-7).value[0])
    s = 1 - z ** 2  # z = tanh(0.5 z + t): dz/dt = s / (1 - 0.5 s) per entry
    np.testing.assert_allclose(jax.grad(loss)(1.0), 3 * s / (1 - 0.5 * s), rtol=1e-4)


def test_checkpointed_uses_its_number_of_checkpoints():
    problem = tanh_problem(n=64, dtype=jnp.float32)
    few = _temp_bytes_single(problem, il.Checkpointed(2))
    default = _temp_bytes_single(problem, il.Checkpointed())
    assert few < default < _temp_bytes_single(problem, il.Unroll())


def _temp_bytes_single(problem, mode):
    def loss(t):
        return jnp.sum(il.fixed_point(problem.f, problem.z0, t, solver=Iteration(),
                                      grad=mode, tol=1e-30, max_steps=200).value)

    compiled = jax.jit(jax.value_and_grad(loss)).lower(problem.theta).compile()
    return compiled.memory_analysis().temp_size_in_bytes
