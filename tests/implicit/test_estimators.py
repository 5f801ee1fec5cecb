"""TBPTT, ES and PES on the influence-balancing task and on a quadratic (float64)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from innerloop.implicit import ES, PES, InfluenceBalancing, TruncatedBPTT

THETA = 0.5
J = 100  # truncations before the estimate is read: the state is then at steady state


def _exact(task, theta, steps):
    """d/dtheta of the loss after `steps` inner steps, from a full unroll."""
    return jax.grad(lambda t: task.unroll(task.init(None, t), t, steps)[1])(theta)


def _estimate_after(est, key, theta, calls):
    """The estimate returned by the `calls`-th call of grad in one run."""
    state = est.init(key, theta)

    def body(state, k):
        g, state, _ = est.grad(k, theta, state)
        return state, g

    _, gs = jax.lax.scan(body, state, jax.random.split(key, calls))
    return jax.tree.map(lambda g: g[-1], gs)


def test_influence_balancing_exact_gradient_and_truncation_bias():
    with jax.enable_x64(True):
        task = InfluenceBalancing()
        theta = jnp.asarray(THETA)
        exact = float(_exact(task, theta, J))
        assert abs(exact - 24.0) < 1e-5  # 36 theta + 6 at steady state
        np.testing.assert_allclose(jax.grad(task.steady_state_loss)(theta), 24.0)
        for K, calls, want in [(1, J, -4.0), (10, 20, -40.0), (100, 1, exact)]:
            g = jax.jit(lambda k, K=K, calls=calls: _estimate_after(
                TruncatedBPTT(task, K), k, theta, calls))(jax.random.key(0))
            np.testing.assert_allclose(g, want, rtol=1e-6)  # K=1, 10: wrong sign


def test_pes_k1_is_unbiased_on_influence_balancing():
    """Mean of 200 independent PES(K=1) estimates (1000 particles, sigma 0.1), each read
    after 100 truncations, within 3 standard errors of the full-unroll gradient."""
    with jax.enable_x64(True):
        task = InfluenceBalancing()
        theta = jnp.asarray(THETA)
        exact = float(_exact(task, theta, J))
        pes = PES(task, sigma=0.1, n=500, K=1)
        keys = jax.random.split(jax.random.key(1), 200)
        gs = jax.jit(jax.vmap(lambda k: _estimate_after(pes, k, theta, J)))(keys)
        mean, se = float(jnp.mean(gs)), float(jnp.std(gs) / np.sqrt(gs.shape[0]))
        assert abs(mean - exact) <= 3 * se, (mean, se, exact)
        assert se < 2.0  # informative: the sign is resolved
        # Truncated ES on the same truncations is as biased as TBPTT(1).
        es = ES(task, sigma=0.1, n=500, K=1)
        ge = jax.jit(jax.vmap(lambda k: _estimate_after(es, k, theta, J)))(keys[:20])
        assert float(jnp.mean(ge)) < 0


def test_meta_optimisation_pes_reaches_optimum_tbptt_stalls():
    """As in Vicol et al. (2021): SGD with lr 1e-4 for 3000 steps from theta = 0.5 on
    the never-ending task (one truncation per step; 1000 PES particles)."""
    with jax.enable_x64(True):
        task = InfluenceBalancing()

        def meta(est, key):
            th0 = jnp.asarray(THETA)

            def body(carry, k):
                th, state = carry
                g, state, _ = est.grad(k, th, state)
                return (th - 1e-4 * g, state), None

            (th, _), _ = jax.lax.scan(body, (th0, est.init(key, th0)),
                                      jax.random.split(key, 3000))
            return th

        key = jax.random.key(3)
        th_pes = float(jax.jit(meta, static_argnums=0)(PES(task, 0.1, 500, 1), key))
        th_tb = float(jax.jit(meta, static_argnums=0)(TruncatedBPTT(task, 1), key))
        assert abs(th_pes - (-1 / 6)) < 5e-3
        assert float(task.steady_state_loss(th_pes)) < 1e-3
        assert abs(th_tb - 3.26) < 0.01  # stalls, as Vicol et al. report (3.26, loss ~211)
        assert abs(float(task.steady_state_loss(th_tb)) - 211) < 2


class Quadratic(eqx.Module):
    """A stateless task whose loss 0.5 x^T Q x + b^T x (x the flattened theta) has a
    known gradient Q x + b."""

    q: jax.Array
    b: jax.Array
    T: int | None = None

    def init(self, key, theta):
        return jnp.zeros(())

    def unroll(self, state, theta, K):
        x = jax.flatten_util.ravel_pytree(theta)[0]
        return state + K, 0.5 * x @ self.q @ x + self.b @ x


def _quadratic():
    m = jax.random.normal(jax.random.key(5), (3, 3))
    task = Quadratic(q=m @ m.T + jnp.eye(3), b=jnp.asarray([1.0, -2.0, 0.5]))
    theta = {"w": jnp.asarray([0.3, -0.7]), "c": jnp.asarray(1.2)}
    x = jax.flatten_util.ravel_pytree(theta)[0]
    return task, theta, task.q @ x + task.b


@pytest.mark.parametrize("antithetic", [True, False], ids=["antithetic", "plain"])
def test_es_on_quadratic_is_unbiased_and_variance_falls_as_1_over_n(antithetic):
    with jax.enable_x64(True):
        task, theta, true = _quadratic()
        variances = {}
        for n in (8, 64):
            es = ES(task, sigma=0.3, n=n, K=1, antithetic=antithetic)
            keys = jax.random.split(jax.random.key(n), 400)
            gs = jax.jit(jax.vmap(lambda k: _estimate_after(es, k, theta, 1)))(keys)
            flat = jax.vmap(lambda g: jax.flatten_util.ravel_pytree(g)[0])(gs)
            mean, se = jnp.mean(flat, 0), jnp.std(flat, 0) / np.sqrt(flat.shape[0])
            # The acceptance bound, per coordinate (fixed keys: measured z-scores are
            # at most 2.96 over the 12 checks).
            assert bool(jnp.all(jnp.abs(mean - true) <= 3.0 * se)), (mean, true, se)
            variances[n] = float(jnp.sum(jnp.var(flat, 0)))
        ratio = variances[8] / variances[64]
        assert 5.0 < ratio < 13.0, ratio  # 8 expected


def test_es_centred_ranks_points_along_the_gradient():
    with jax.enable_x64(True):
        task, theta, true = _quadratic()
        es = ES(task, sigma=0.1, n=256, K=1, centred_ranks=True)
        g = jax.flatten_util.ravel_pytree(
            _estimate_after(es, jax.random.key(0), theta, 1))[0]
        assert float(g @ true / (jnp.linalg.norm(g) * jnp.linalg.norm(true))) > 0.9


def test_es_over_whole_episodes():
    with jax.enable_x64(True):
        task = InfluenceBalancing(T=J)
        theta = jnp.asarray(THETA)
        es = ES(task, sigma=0.1, n=500)  # K=None: one whole episode per call
        keys = jax.random.split(jax.random.key(2), 50)
        gs = jax.jit(jax.vmap(lambda k: _estimate_after(es, k, theta, 1)))(keys)
        mean, se = float(jnp.mean(gs)), float(jnp.std(gs) / np.sqrt(gs.shape[0]))
        assert abs(mean - float(_exact(task, theta, J))) <= 3 * se


def test_episodes_reset_states_and_pes_perturbation_sums():
    with jax.enable_x64(True):
        task = InfluenceBalancing(T=5)
        theta = jnp.asarray(THETA)
        pes = PES(task, sigma=0.1, n=4, K=2)
        state = pes.init(jax.random.key(0), theta)
        ts, resets, gs = [], [], []
        for i in range(7):
            g, state, m = pes.grad(jax.random.key(i), theta, state)
            ts.append(int(m["t"]))
            resets.append(bool(m["reset"]))
            gs.append(g)
        assert ts == [0, 2, 4, 0, 2, 4, 0]
        assert resets == [False, False, False, True, False, False, True]
        # After the reset, states and perturbation sums start afresh: the estimate is
        # that of a new estimator's first call with the same key.
        g_new, _, _ = pes.grad(jax.random.key(3), theta, pes.init(jax.random.key(9), theta))
        np.testing.assert_allclose(gs[3], g_new, rtol=1e-12)
        assert not np.allclose(gs[2], g_new)

        tb, ts = TruncatedBPTT(task, 2), []
        state = tb.init(None, theta)
        for _ in range(4):
            _, state, m = tb.grad(None, theta, state)
            ts.append(int(m["t"]))
        assert ts == [0, 2, 4, 0]


@pytest.mark.parametrize("make, exc, message", [
    (lambda t: PES(t, sigma=0.0, n=4, K=1), ValueError, "sigma"),
    (lambda t: PES(t, sigma=0.1, n=0, K=1), ValueError, "n must"),
    (lambda t: TruncatedBPTT(t, 0), ValueError, "K must"),
    (lambda t: ES(t, sigma=0.1, n=4), ValueError, "finite episode length"),
    (lambda t: ES(object(), sigma=0.1, n=4, K=1), TypeError, "init"),
], ids=["sigma", "n", "K", "es-episode-without-T", "not-a-task"])
def test_bad_input(make, exc, message):
    with pytest.raises(exc, match=message):
        make(InfluenceBalancing())
