"""`Flow`: exact stacks integrate to 1, the ELBO of stochastic stacks is below the
log-likelihood where both are computable, encode/decode invert, `fit` lowers the loss of a
multiscale flow."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _flows_testing import perturb

from innerloop import flows


@jax.jit
def _mass(seed):
    """The integral of exp(log_prob) over [-14, 14]^2 (Riemann sum) for two exact flows
    with random parameters: couplings then MaxPool1D, and LU then a conditional Slice."""
    k1, k2, k3, k4, kp = jax.random.split(jax.random.key(seed), 5)
    pooled = flows.Flow(flows.StandardNormal(1), [
        flows.AffineCoupling(2, k1, hidden=4), flows.RQSCoupling(2, k2, bins=3, hidden=4),
        flows.MaxPool1D(2)])
    sliced = flows.Flow(flows.StandardNormal(1), [
        flows.LULinear(2, k3, scale=0.3), flows.Slice(1, shape=(2,), key=k4, hidden=4)])
    pooled, sliced = perturb((pooled, sliced), kp, 0.3)
    grid = jnp.linspace(-14.0, 14.0, 401, dtype=jnp.float64)
    xs = jnp.stack(jnp.meshgrid(grid, grid), -1).reshape(-1, 2)
    cell = (grid[1] - grid[0]) ** 2
    return [jnp.sum(jnp.exp(jax.vmap(f.log_prob)(xs))) * cell for f in (pooled, sliced)]


def test_exact_flows_integrate_to_one():
    for seed in (0, 1):
        np.testing.assert_allclose(jax.device_get(_mass(seed)), 1.0, atol=2e-3)


class _LinearGaussian(eqx.Module):
    """x | z ~ N(A z + b, exp(log_std)^2 I): a decoder whose marginal is Gaussian."""

    a: jax.Array
    b: jax.Array
    log_std: jax.Array

    def __call__(self, z):
        return self.a @ z + self.b, jnp.broadcast_to(self.log_std, self.b.shape)


class _LinearEncoder(eqx.Module):
    """z | x ~ N(m (x - b), diag(exp(log_std))^2): the exact posterior of `_LinearGaussian`
    when the columns of A are orthogonal (A^T A diagonal)."""

    m: jax.Array
    b: jax.Array
    log_std: jax.Array

    def __call__(self, x):
        return self.m @ (x - self.b), self.log_std


def _gaussian_log_prob(x, cov):
    return jax.scipy.stats.multivariate_normal.logpdf(x, jnp.zeros_like(x), cov)


N_KEYS = 2000


@jax.jit
def _elbos(seed):
    """(one-sample ELBOs over N_KEYS keys, exact log p(x)) for an augmented linear flow,
    a VAE with a linear decoder, and an Augment and a VAE whose q is the exact
    posterior."""
    ka, kv, kd, kx, ke, kp = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(kx, (3,), jnp.float64)
    lu = perturb(flows.LULinear(5, ka, scale=0.5), kp, 0.0)
    augmented = flows.Flow(flows.StandardNormal(5), [flows.Augment(2), lu])
    # z ~ N(0, I), (x, e) = W^{-1} z: x ~ N(0, [W^{-1} W^{-T}]_{:3,:3}).
    w_inv = jax.vmap(lu.inverse)(jnp.eye(5, dtype=jnp.float64)).T
    exact_aug = _gaussian_log_prob(x, (w_inv @ w_inv.T)[:3, :3])
    ka_, kb_, ks_ = jax.random.split(kd, 3)
    decoder = _LinearGaussian(jax.random.normal(ka_, (3, 2), jnp.float64),
                              jax.random.normal(kb_, (3,), jnp.float64),
                              jnp.asarray(-0.5, jnp.float64))
    layer = flows.VAE(3, 2, kv, hidden=4, decoder=decoder)
    layer = eqx.tree_at(lambda v: v.encoder, layer, perturb(layer.encoder, ks_, 0.2))
    vae = flows.Flow(flows.StandardNormal(2), [layer])
    cov = decoder.a @ decoder.a.T + jnp.exp(2 * decoder.log_std) * jnp.eye(3)
    exact_vae = _gaussian_log_prob(x - decoder.b, cov)
    tight = flows.Flow(flows.StandardNormal(5), [flows.Augment(2)])
    exact_tight = _gaussian_log_prob(x, jnp.eye(3, dtype=jnp.float64))
    # A = Q diag(d) with orthonormal Q: the posterior N(S A^T (x - b) / s^2, S),
    # S = diag(1 / (1 + d^2 / s^2)), is what _LinearEncoder represents.
    q, _ = jnp.linalg.qr(decoder.a)
    d = jnp.array([1.5, 0.7], jnp.float64)
    exact_decoder = _LinearGaussian(q * d, decoder.b, decoder.log_std)
    var = jnp.exp(2 * decoder.log_std)
    post_var = 1 / (1 + d**2 / var)
    encoder = _LinearEncoder(post_var[:, None] * (q * d).T / var, decoder.b,
                             0.5 * jnp.log(post_var))
    posterior_vae = flows.Flow(flows.StandardNormal(2), [
        flows.VAE(3, 2, kv, encoder=encoder, decoder=exact_decoder)])
    exact_posterior = _gaussian_log_prob(x - decoder.b, (q * d) @ (q * d).T + var * jnp.eye(3))
    keys = jax.random.split(ke, N_KEYS)
    return [(jax.vmap(f.log_prob, (None, 0))(x, keys), exact) for f, exact in
            ((augmented, exact_aug), (vae, exact_vae), (tight, exact_tight),
             (posterior_vae, exact_posterior))]


def test_elbo_is_below_the_log_likelihood():
    for seed in (0, 1):
        for elbos, exact in jax.device_get(_elbos(seed))[:2]:
            se = elbos.std() / math.sqrt(N_KEYS)
            assert elbos.mean() + 3 * se < exact  # a strict gap: q is not the posterior


def test_elbo_equals_the_log_likelihood_when_q_is_the_posterior():
    for elbos, exact in jax.device_get(_elbos(0))[2:]:  # an Augment and a VAE layer
        np.testing.assert_allclose(elbos, exact, rtol=1e-10)


@jax.jit
def _encode_decode_sample(x):
    k = jax.random.key(0)
    flow = perturb(flows.Flow(flows.StandardNormal(3), [
        flows.ActNorm(3), flows.AffineCoupling(3, k, hidden=4, swap=True), flows.Reverse(),
        flows.LULinear(3, k)]), k, 0.3)
    samples = flow.sample(jax.random.key(1), 5)
    return flow.decode(flow.encode(x)), samples, jax.vmap(flow.log_prob)(samples)


def test_encode_decode_and_sample():
    x = jnp.array([0.3, -1.0, 2.0])
    decoded, samples, log_probs = _encode_decode_sample(x)
    np.testing.assert_allclose(decoded, x, atol=1e-12)
    assert samples.shape == (5, 3) and np.all(np.isfinite(log_probs))
    assert flows.Flow(flows.StandardNormal(3), [flows.Abs(3), flows.Reverse()]).exact
    assert not flows.Flow(flows.StandardNormal(4), [flows.Augment(1)]).exact


def test_fit_lowers_the_loss_of_a_multiscale_flow():
    transforms, shape = flows.multiscale((1, 4, 4), jax.random.key(0), scales=1, couplings=1,
                                         hidden=8)
    assert shape == (2, 2, 2)
    flow = flows.Flow(flows.StandardNormal(shape), transforms)
    rows = jnp.linspace(-1.0, 1.0, 4, dtype=jnp.float64)
    data = (rows[None, :, None] * jnp.ones((1, 4, 4)) + 0.3 * jax.random.normal(
        jax.random.key(1), (64, 1, 4, 4), jnp.float64))
    fitted, losses = flows.fit(flow, data, jax.random.key(2), steps=60, batch_size=32,
                               learning_rate=3e-2)
    assert losses.shape == (60,) and np.all(np.isfinite(losses))
    assert losses[-10:].mean() < losses[:10].mean() - 1.0
    samples = eqx.filter_jit(lambda f, k: f.sample(k, 2))(fitted, jax.random.key(3))
    assert samples.shape == (2, 1, 4, 4)


def test_flow_and_fit_check_their_arguments():
    with pytest.raises(TypeError, match=r"^Flow: transforms\[1\] is a"):
        flows.Flow(flows.StandardNormal(2), [flows.Reverse(), jnp.tanh])
    with pytest.raises(ValueError, match="^multiscale: H and W"):
        flows.multiscale((1, 6, 6), jax.random.key(0), scales=2)
    flow = flows.Flow(flows.StandardNormal(2), [flows.Reverse()])
    with pytest.raises(ValueError, match="^fit: data must hold examples"):
        flows.fit(flow, jnp.zeros(3), jax.random.key(0))
