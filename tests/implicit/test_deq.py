"""The DEQ layer: injection once, batches, Jacobian regularisation, fixed-point
correction, warm start, training with filter_grad + optax, jit == eager."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import innerloop as il
from innerloop.implicit import DEQ, DEQStats, jacobian_frobenius

H, D_IN, B = 8, 5, 6


class Cell(eqx.Module):
    weight: jax.Array

    def __call__(self, z, u):
        return jnp.tanh(self.weight @ z + u)


def make_deq(key=0, scale=0.6, **kw):
    k1, k2 = jax.random.split(jax.random.key(key))
    cell = Cell(scale * jax.random.normal(k1, (H, H)) / np.sqrt(H))
    injection = eqx.nn.Linear(D_IN, H, key=k2)
    kw.setdefault("solver", il.solvers.Iteration())  # compiles faster than Anderson
    kw.setdefault("tol", 1e-5)
    kw.setdefault("max_steps", 60)
    return DEQ(cell, injection, **kw)


def inputs(key=1, n=B):
    return jax.random.normal(jax.random.key(key), (n, D_IN))


def test_solves_the_fixed_point_equation():
    deq = make_deq(solver=il.solvers.Anderson())  # the default solver
    x = inputs()[0]
    z, stats = eqx.filter_jit(deq)(x)
    assert isinstance(stats, DEQStats)
    assert bool(stats.converged) and int(stats.steps) > 0
    np.testing.assert_allclose(deq.cell(z, deq.injection(x)), z, atol=1e-5)
    assert stats.jac_loss.shape == () and float(stats.jac_loss) == 0.0
    assert stats.iterates is None and stats.trace is None


def test_injection_runs_once_per_call():
    calls = {"injection": 0, "cell": 0}

    def count(name):
        def bump(_):
            calls[name] += 1
        return bump

    base = make_deq()

    def injection(x):
        jax.debug.callback(count("injection"), x)
        return base.injection(x)

    def cell(z, u):
        jax.debug.callback(count("cell"), z)
        return base.cell(z, u)

    deq = DEQ(cell, injection, solver=il.solvers.Iteration(), tol=1e-5, max_steps=60)
    _, stats = eqx.filter_jit(deq)(inputs()[0])
    jax.effects_barrier()
    assert calls["injection"] == 1
    assert calls["cell"] >= int(stats.steps) >= 2  # the cell runs every iteration


def test_batch_each_example_stops_on_its_own():
    deq = make_deq()
    x = inputs().at[0].set(0.0)  # u = bias only; others need more iterations
    x = x.at[1].multiply(4.0)
    z, stats = eqx.filter_jit(deq)(x, batched=True)
    assert z.shape == (B, H) and stats.steps.shape == (B,)
    assert bool(jnp.all(stats.converged))
    assert len(set(np.asarray(stats.steps).tolist())) > 1
    one = eqx.filter_jit(deq)
    for i in range(B):
        zi, si = one(x[i])
        assert int(si.steps) == int(stats.steps[i])
        np.testing.assert_allclose(zi, z[i], atol=1e-6)


def test_batched_needs_a_common_leading_axis():
    deq = make_deq()
    with pytest.raises(ValueError, match="leading batch axis"):
        deq(jnp.ones(()), batched=True)


def test_jacobian_regularisation_estimates_the_frobenius_norm_at_the_fixed_point():
    """stats.jac_loss is ||dcell/dz (z*, u)||_F^2 / H at each example's own fixed point,
    and its gradient is that of the exact norm with z* held fixed (as in the paper)."""
    deq = make_deq(jac_reg=True, jac_samples=4000)
    x = inputs()
    with pytest.raises(ValueError, match="PRNG key"):
        deq(x[0])

    def loss(model):
        _, stats = model(x, key=jax.random.key(3), batched=True)
        return stats.jac_loss.mean(), stats.jac_loss

    def exact(model, z):
        def one(zi, xi):
            jac = jax.jacfwd(lambda zz: model.cell(zz, model.injection(xi)))(zi)
            return jnp.sum(jac ** 2) / H
        return jax.vmap(one)(jax.lax.stop_gradient(z), x).mean()

    (value, per_example), grads = eqx.filter_jit(
        eqx.filter_value_and_grad(loss, has_aux=True))(deq)
    z, _ = deq(x, key=jax.random.key(3), batched=True)
    per_exact = jnp.stack([jnp.sum(jax.jacfwd(lambda zz, i=i: deq.cell(
        zz, deq.injection(x[i])))(z[i]) ** 2) / H for i in range(B)])
    np.testing.assert_allclose(per_example, per_exact, rtol=0.1)
    g_exact = eqx.filter_grad(lambda m: exact(m, z))(deq)
    for g, ge in ((grads.cell.weight, g_exact.cell.weight),
                  (grads.injection.weight, g_exact.injection.weight)):
        assert float(jnp.linalg.norm(g - ge)) <= 0.15 * float(jnp.linalg.norm(ge))


def test_hutchinson_estimate_matches_the_frobenius_norm():
    deq = make_deq()
    x = inputs()[0]
    z, _ = deq(x)
    u = deq.injection(x)
    jac = jax.jacfwd(lambda zz: deq.cell(zz, u))(z)
    exact = float(jnp.sum(jac ** 2)) / H
    estimate = float(jacobian_frobenius(deq.cell, z, u, jax.random.key(0),
                                        samples=4000))
    assert estimate == pytest.approx(exact, rel=0.05)


def test_jacobian_regularisation_on_a_pytree_state():
    def cell(z, u):
        a, b = z
        return (jnp.tanh(0.3 * b + u), 0.5 * jnp.sin(a))

    deq = DEQ(cell, z_init=lambda u: (jnp.zeros_like(u), jnp.zeros_like(u)),
              solver=il.solvers.Iteration(), jac_reg=True, jac_samples=4000, tol=1e-6)
    u = jnp.linspace(-1, 1, 4)
    z, stats = eqx.filter_jit(deq)(u, key=jax.random.key(0))
    assert bool(stats.converged)
    assert jax.tree.structure(z) == jax.tree.structure((0, 0))
    a, b = z
    # The Jacobian's two off-diagonal blocks, d(a')/db and d(b')/da; d = 8 entries.
    exact = (jnp.sum((0.3 * (1 - jnp.tanh(0.3 * b + u) ** 2)) ** 2)
             + jnp.sum((0.5 * jnp.cos(a)) ** 2)) / 8
    assert float(stats.jac_loss) == pytest.approx(float(exact), rel=0.1)


def test_fixed_point_correction_returns_the_solver_trajectory():
    deq = make_deq(correction=(1, 3, 6), solver=il.solvers.Anderson(memory=3))
    x = inputs()
    z, stats = eqx.filter_jit(deq)(x, batched=True)
    assert stats.iterates.shape == (B, 3, H)
    assert stats.correction_steps.shape == (B, 3)
    np.testing.assert_array_equal(stats.correction_steps,
                                  np.minimum([1, 3, 6], np.asarray(stats.steps)[:, None]))
    # Each sampled iterate is the main solve's iterate after m steps.
    plain = DEQ(deq.cell, deq.injection, solver=deq.solver, tol=deq.tol, max_steps=3)
    np.testing.assert_allclose(stats.iterates[:, 1],
                               eqx.filter_jit(plain)(x, batched=True)[0], atol=1e-6)
    # and the iterates approach the fixed point.
    err = jnp.linalg.norm(stats.iterates - z[:, None], axis=-1).mean(0)
    assert float(err[0]) > float(err[1]) > float(err[2])

    def loss(model):
        _, s = model(x, batched=True)
        return jnp.sum(s.iterates[:, 0] ** 2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(deq)
    assert float(jnp.linalg.norm(grads.cell.weight)) > 0


def test_correction_is_validated():
    with pytest.raises(ValueError, match="increasing"):
        make_deq(correction=(5, 3))
    with pytest.raises(ValueError, match="below max_steps"):
        make_deq(correction=(60,))


def test_warm_start_reduces_steps():
    deq = make_deq(tol=1e-4)
    solve = eqx.filter_jit(lambda m, x, z0: m(x, z0, batched=True))
    x = inputs()
    z, cold = solve(deq, x, None)
    # A nearby input (the next frame, or the next epoch after a small update) starts
    # from the previous fixed point.
    x2 = x + 0.01
    _, cold2 = solve(deq, x2, None)
    _, warm = solve(deq, x2, z)
    assert bool(jnp.all(warm.converged))
    assert float(warm.steps.mean()) < float(cold2.steps.mean())
    # The same input is solved in zero steps from its own fixed point.
    _, again = solve(deq, x, z)
    assert int(again.steps.max()) == 0


@pytest.mark.filterwarnings("ignore::innerloop.BackwardNotConvergedWarning")
@pytest.mark.parametrize("grad", [il.Implicit(), il.Unroll(), il.JacobianFree()],
                         ids=["implicit", "unroll", "jacobianfree"])
def test_training_with_filter_grad_and_optax(grad):
    deq = make_deq(grad=grad, tol=1e-4, max_steps=30)
    head = eqx.nn.Linear(H, 1, key=jax.random.key(7))
    model = (deq, head)
    x = inputs(n=16)
    y = jnp.sin(x.sum(-1))
    optimizer = optax.adam(3e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model):
        deq, head = model
        z, _ = deq(x, batched=True)
        return jnp.mean((jax.vmap(head)(z)[:, 0] - y) ** 2)

    @eqx.filter_jit
    def step(model, opt_state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = optimizer.update(grads, opt_state,
                                              eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    losses = []
    # optax's Adam raises its decay to an int32 count: not clean under strict promotion.
    with jax.numpy_dtype_promotion("standard"):
        for _ in range(15):
            model, opt_state, loss = step(model, opt_state)
            losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]
    assert model[0].grad == grad  # the configuration is untouched by training


def test_implicit_gradient_matches_unrolled():
    deq = make_deq(tol=1e-6, max_steps=100)
    x = inputs()

    def loss(model):
        z, _ = model(x, batched=True)
        return jnp.sum(jnp.sin(z))

    grad = eqx.filter_jit(eqx.filter_grad(loss))
    g_imp = grad(deq)
    g_unr = grad(DEQ(deq.cell, deq.injection, solver=deq.solver, grad=il.Unroll(),
                     tol=1e-6, max_steps=100))
    for a, b in ((g_imp.cell.weight, g_unr.cell.weight),
                 (g_imp.injection.weight, g_unr.injection.weight)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * float(jnp.abs(b).max()))


def test_every_option_at_once_against_hand_iteration():
    """Jac-reg, correction and trace together, jitted: each output against a plain
    Python loop of the cell (the Iteration solver's definition)."""
    deq = make_deq(jac_reg=True, correction=(2,), trace=True)
    x = inputs()
    z, stats = eqx.filter_jit(deq)(x, key=jax.random.key(5), batched=True)
    u = jax.vmap(deq.injection)(x)
    zk = [jnp.zeros((B, H))]
    for _ in range(deq.max_steps):
        zk.append(jax.vmap(deq.cell)(zk[-1], u))
    residual = [jnp.linalg.norm(jax.vmap(deq.cell)(a, u) - a, axis=-1) for a in zk]
    np.testing.assert_allclose(stats.iterates[:, 0], zk[2], atol=1e-6)
    np.testing.assert_allclose(stats.trace[:, 0], residual[0], rtol=1e-5)
    for i in range(B):
        n = int(stats.steps[i])
        np.testing.assert_allclose(z[i], zk[n][i], atol=1e-5)
        np.testing.assert_allclose(stats.trace[i, :n + 1], [r[i] for r in residual[:n + 1]],
                                   rtol=1e-4, atol=1e-6)
        assert bool(jnp.all(jnp.isnan(stats.trace[i, n + 1:])))
    assert stats.trace.shape == (B, deq.max_steps + 1)


def test_vmap_of_the_layer_equals_batched_call():
    deq = make_deq()
    x = inputs()
    z_vmap, s_vmap = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(deq, x)
    z_b, s_b = eqx.filter_jit(deq)(x, batched=True)
    np.testing.assert_allclose(z_vmap, z_b, atol=1e-6)
    np.testing.assert_array_equal(s_vmap.steps, s_b.steps)
