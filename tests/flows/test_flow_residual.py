"""Residual and implicit flows: the Russian-roulette log-determinant and its Neumann
gradient are unbiased; the gradients through the fixed-point and root inverses match
finite differences; a non-contractive g is refused."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _flows_testing import perturb

import innerloop as il
from innerloop import flows

N_KEYS = 4000


def _shift(module, direction, t):
    return jax.tree.map(lambda a, d: a + t * d if eqx.is_inexact_array(a) else a,
                        module, direction)


@jax.jit
def _roulette_samples(seed):
    """Per key: the estimate and its derivative along the exact gradient's direction (so
    that the derivative is not near 0 by chance); and the exact value and derivative."""
    kg, kx, ke = jax.random.split(jax.random.key(seed), 3)
    # One layer normalised to the bound (large weights): g(x) = W x + b with ||W|| = 0.9, whose
    # series has large high-order terms, so that a truncated or misweighted one is biased
    # by many standard errors (in a nonlinear g at this Lipschitz bound they are small).
    g = perturb(flows.LipschitzMLP(4, 8, kg, lipschitz=0.9, depth=1), kg, 2.0)
    x = jax.random.normal(kx, (4,), jnp.float64)
    direction = eqx.filter_grad(lambda m: flows.exact_logdet(m, x))(g)

    def along(t, key):
        gt = _shift(g, direction, t)
        return flows.exact_logdet(gt, x) if key is None else flows.roulette_logdet(gt, x, key)

    zero = jnp.zeros((), jnp.float64)
    exact = jax.value_and_grad(along)(zero, None)
    samples = jax.vmap(lambda k: jax.value_and_grad(along)(zero, k))(
        jax.random.split(ke, N_KEYS))
    return exact, samples


@pytest.mark.parametrize("which", ["value", "gradient"])
def test_russian_roulette_estimator_is_unbiased(which):
    for seed in (1, 2):  # problems whose log det is far from 0 at this noise level
        exact, samples = jax.device_get(_roulette_samples(seed))
        i = 0 if which == "value" else 1
        mean = samples[i].mean()
        se = samples[i].std() / np.sqrt(N_KEYS)
        assert abs(mean - exact[i]) < 3 * se, (seed, mean, exact[i], se)
        assert se < 0.05 * abs(exact[i])  # the test has power: 3 s.e. is a tight band


def _block(kind, key, grad):
    if kind == "residual":
        return flows.ResidualBlock(3, key, hidden=6, lipschitz=0.8, n_power=200, grad=grad,
                                   rtol=1e-12, max_steps=300)
    return flows.ImplicitBlock(3, key, hidden=6, lipschitz=0.8, n_power=200, grad=grad,
                               rtol=1e-12)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _directional(kind, direction_name, grad, seed, t):
    """d/dt of <w, block_t(x_t)> (the block's inverse, or the implicit block's forward)."""
    kb, kd, kx, kw, kv = jax.random.split(jax.random.key(seed), 5)
    block = _block(kind, kb, grad)
    direction = perturb(jax.tree.map(jnp.zeros_like, block), kd, 1.0)
    x = jax.random.normal(kx, (3,), jnp.float64)
    dx = jax.random.normal(kv, (3,), jnp.float64)
    w = jax.random.normal(kw, (3,), jnp.float64)

    def loss(s):
        b = _shift(block, direction, s)
        xs = x + s * dx
        out = b.inverse(xs) if direction_name == "inverse" else b.forward(xs)[0]
        return jnp.vdot(w, out)

    return loss(t), jax.grad(loss)(t)


@pytest.mark.parametrize("kind, direction, grad", [
    ("residual", "inverse", il.Implicit()),
    ("implicit", "forward", None),
])
def test_gradient_through_the_solve_matches_finite_differences(kind, direction, grad):
    h = 1e-5
    zero = jnp.zeros((), jnp.float64)
    for seed in (0, 1):
        _, derivative = _directional(kind, direction, grad, seed, zero)
        up, _ = _directional(kind, direction, grad, seed, zero + h)
        down, _ = _directional(kind, direction, grad, seed, zero - h)
        np.testing.assert_allclose(derivative, (up - down) / (2 * h), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("cls", [flows.ResidualBlock, flows.ImplicitBlock])
@pytest.mark.parametrize("lipschitz", [1.0, 1.5])
def test_a_non_contractive_g_is_refused(cls, lipschitz):
    with pytest.raises(ValueError, match=f"^{cls.__name__}: the residual map g must be "
                                         "contractive"):
        cls(3, jax.random.key(0), lipschitz=lipschitz)


def test_roulette_needs_a_key_and_logdet_is_checked():
    block = flows.ResidualBlock(3, jax.random.key(0), logdet="roulette")
    with pytest.raises(ValueError, match="^ResidualBlock: .*pass a PRNG key"):
        block.forward(jnp.zeros(3))
    with pytest.raises(ValueError, match="^ImplicitBlock: logdet must be"):
        flows.ImplicitBlock(3, jax.random.key(0), logdet="dense")


@jax.jit
def _normalised_norms():
    g = perturb(flows.LipschitzMLP(4, 8, jax.random.key(0), lipschitz=0.7, n_power=100),
                jax.random.key(1), 3.0)
    return [jnp.linalg.norm(g.normalised(w, u), 2) for w, u in zip(g.weights, g.vectors)]


def test_spectral_normalisation_bounds_each_layer():
    for norm in _normalised_norms():
        assert 0.69 < norm < 0.7 + 1e-6
