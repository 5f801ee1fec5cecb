"""Every bijection inverts within 1e-5 and its log-determinant is log|det| of the Jacobian
(jax.jacfwd + slogdet), in float64, for random parameters and inputs."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _flows_testing import perturb
from hypothesis import given
from hypothesis import strategies as st

from innerloop import flows

# name -> (example shape, builder(key), parameter noise, input map): the event shapes
# stay fixed, so that each builder compiles once.
BIJECTIONS = {
    "AffineCoupling": ((5,), lambda k: flows.AffineCoupling(5, k, hidden=8), 0.5, None),
    "RQSCoupling": ((5,), lambda k: flows.RQSCoupling(5, k, bins=4, bound=2.0, hidden=8),
                    0.5, None),
    "ActNorm": ((2, 1, 3), lambda k: flows.ActNorm((2, 1, 1)), 0.5, None),
    "LULinear": ((6,), lambda k: flows.LULinear(6, k, scale=0.3), 0.0, None),
    "Permutation": ((5,), lambda k: flows.Permutation.random(5, k), 0.0, None),
    "Reverse": ((2, 3), lambda k: flows.Reverse(), 0.0, None),
    "LeakyReLU": ((4,), lambda k: flows.LeakyReLU(0.3), 0.0, None),
    "Sigmoid": ((4,), lambda k: flows.Sigmoid(), 0.0, None),
    "Logit": ((4,), lambda k: flows.Logit(), 0.0, jax.nn.sigmoid),
    "Squeeze": ((1, 2, 4), lambda k: flows.Squeeze(), 0.0, None),
    "ResidualBlock": ((4,), lambda k: flows.ResidualBlock(4, k, hidden=8, lipschitz=0.8,
                                                          rtol=1e-12, max_steps=200), 0.3, None),
    "ImplicitBlock": ((3,), lambda k: flows.ImplicitBlock(3, k, hidden=8, lipschitz=0.8,
                                                          rtol=1e-12), 0.3, None),
}


CENTRAL_DIFFERENCES = {"ImplicitBlock"}


@functools.partial(jax.jit, static_argnums=0)
def _check(name, seed, scale):
    """(max |inverse(forward(x)) - x|, the transform's log|det|, slogdet of jacfwd)."""
    shape, build, noise, to_domain = BIJECTIONS[name]
    kb, kp, kx = jax.random.split(jax.random.key(seed), 3)
    t = perturb(build(kb), kp, noise)
    x = scale * jax.random.normal(kx, shape, jnp.float64)
    if to_domain is not None:
        x = to_domain(x)
    z, logdet = t.forward(x)
    error = jnp.max(jnp.abs(t.inverse(z) - x))
    flat = x.reshape(-1)
    fn = lambda v: t.forward(v.reshape(shape))[0].reshape(-1)
    if name in CENTRAL_DIFFERENCES:
        # Differentiating through the root solves compiles slowly: central differences
        # (float64, error ~ eps^2) give the reference Jacobian instead.
        eps = 1e-5
        steps = eps * jnp.eye(flat.shape[0], dtype=flat.dtype)
        jac = ((jax.vmap(fn)(flat + steps) - jax.vmap(fn)(flat - steps)) / (2 * eps)).T
    else:
        jac = jax.jacfwd(fn)(flat)
    return error, logdet, jnp.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("name", sorted(BIJECTIONS))
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 3.0))
def test_bijection_round_trip_and_logdet_match_the_jacobian(name, seed, scale):
    error, logdet, reference = jax.device_get(_check(name, seed, scale))
    assert error < 1e-5
    tol = 1e-6 if name in CENTRAL_DIFFERENCES else 1e-7
    np.testing.assert_allclose(logdet, reference, rtol=tol, atol=tol)


def test_every_public_bijection_is_checked():
    checked = {n.split("-")[0] for n in BIJECTIONS}
    classes = [getattr(flows, n) for n in flows.__all__]
    bijective = {c.__name__ for c in classes if isinstance(c, type)
                 and issubclass(c, flows.AbstractTransform) and not inspect.isabstract(c)
                 and c.kind == flows.Kind.bijective}
    assert bijective == checked


def test_actnorm_initialise_standardises_a_batch():
    xs = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (64, 2, 1, 3), jnp.float64)
    layer = flows.ActNorm((2, 1, 1)).initialise(xs)
    zs = jax.vmap(lambda x: layer.forward(x)[0])(xs)
    np.testing.assert_allclose(jnp.mean(zs, axis=(0, 2, 3)), 0.0, atol=1e-6)
    np.testing.assert_allclose(jnp.std(zs, axis=(0, 2, 3)), 1.0, atol=1e-4)
