"""Surjections: each likelihood contribution against a hand computation on a small case,
one-sided inverses (x -> z -> x for generative surjections, z -> x -> z for inference
surjections), and clear errors for shapes they cannot split and for NaN input."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _flows_testing import perturb
from hypothesis import given
from hypothesis import strategies as st

from innerloop import flows

LOG_2PI = math.log(2 * math.pi)


def _normal(x, mean=0.0, std=1.0):
    x = np.asarray(x, np.float64)
    return float(np.sum(-0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * LOG_2PI))


def test_slice_contribution_is_the_dropped_parts_density():
    x = jnp.array([0.5, -1.0, 2.0])
    z, c = flows.Slice(1).forward(x)
    np.testing.assert_array_equal(z, x[:1])
    np.testing.assert_allclose(c, -0.5 * (1.0 + 4.0) - LOG_2PI, rtol=1e-12)


def test_conditional_slice_contribution_uses_the_decoders_gaussian():
    s = perturb(flows.Slice(2, axis=0, shape=(3, 2), key=jax.random.key(0), hidden=4),
                jax.random.key(1), 0.3)
    x = jnp.array([[0.1, 0.2], [0.3, -0.4], [1.5, -2.0]])
    z, c = s.forward(x)
    out = np.asarray(s.decoder.net(np.asarray(x[:2]).reshape(-1)))
    mean, std = out[:2].reshape(1, 2), np.exp(out[2:].reshape(1, 2))
    np.testing.assert_allclose(c, _normal(x[2:], mean, std), rtol=1e-12)


def test_abs_contribution_is_the_log_probability_of_the_signs():
    a = flows.Abs(3)
    logits = jnp.array([0.3, -0.2, 1.0])
    a = jax.tree.map(lambda _: logits, a)
    z, c = a.forward(jnp.array([-1.0, 2.0, 0.5]))
    np.testing.assert_array_equal(z, [1.0, 2.0, 0.5])
    sig = lambda v: 1 / (1 + math.exp(-v))
    hand = math.log(1 - sig(0.3)) + math.log(sig(-0.2)) + math.log(sig(1.0))
    np.testing.assert_allclose(c, hand, rtol=1e-12)


def test_sort_contribution_is_minus_log_n_factorial():
    x = jnp.array([[2.0, 0.0], [-1.0, 5.0], [0.5, 1.0], [3.0, -3.0]])
    z, c = flows.Sort(by=0).forward(x)
    np.testing.assert_array_equal(z[:, 0], [-1.0, 0.5, 2.0, 3.0])
    np.testing.assert_allclose(c, -math.log(24), rtol=1e-12)


def _half_normal(e, scale):
    return math.log(2) - 0.5 * LOG_2PI - math.log(scale) - 0.5 * (e / scale) ** 2


def test_maxpool1d_contribution_by_hand():
    m = jax.tree.map(lambda _: jnp.asarray(math.log(1.5)), flows.MaxPool1D(2))
    z, c = m.forward(jnp.array([1.0, 3.0, 2.0, 0.5]))
    np.testing.assert_array_equal(z, [3.0, 2.0])
    # Each window: the argmax among 2 (-log 2), the other entry z - e with e = 2, 1.5.
    hand = -2 * math.log(2) + _half_normal(2.0, 1.5) + _half_normal(1.5, 1.5)
    np.testing.assert_allclose(c, hand, rtol=1e-12)


def test_maxpool2d_contribution_by_hand():
    x = jnp.array([[[1.0, 4.0], [2.0, 3.0]]])  # one channel, one 2x2 window
    z, c = flows.MaxPool2D(2).forward(x)
    np.testing.assert_array_equal(z, [[[4.0]]])
    hand = -math.log(4) + sum(_half_normal(e, 1.0) for e in (3.0, 2.0, 1.0))
    np.testing.assert_allclose(c, hand, rtol=1e-12)


def test_augment_contribution_is_minus_the_log_density_of_the_noise():
    z, c = flows.Augment(2).forward(jnp.array([1.0, -1.0]), jax.random.key(3))
    np.testing.assert_allclose(c, -_normal(z[2:]), rtol=1e-12)


def test_uniform_dequantization_adds_noise_below_one():
    x = jnp.array([0, 3, 7, 1])
    z, c = flows.UniformDequantization().forward(x, jax.random.key(0))
    z_, x_ = np.asarray(z), np.asarray(x, np.float64)
    assert np.all((z_ >= x_) & (z_ < x_ + 1)) and float(c) == 0.0
    np.testing.assert_array_equal(flows.UniformDequantization().inverse(z), x)


def test_variational_dequantization_contribution_is_minus_the_logit_normal_density():
    d = perturb(flows.VariationalDequantization(3, jax.random.key(0), hidden=4),
                jax.random.key(1), 0.3)
    x = jnp.array([1.0, 0.0, 5.0])
    z, c = d.forward(x, jax.random.key(2))
    u = np.asarray(z - x)
    out = np.asarray(d.encoder.net(np.asarray(x)))
    mean, std = out[:3], np.exp(out[3:])
    # u = sigmoid(v), v ~ N(mean, std): q(u) = N(logit u) / (u (1 - u)).
    v = np.log(u) - np.log1p(-u)
    log_q = _normal(v, mean, std) - np.sum(np.log(u) + np.log1p(-u))
    np.testing.assert_allclose(c, -log_q, rtol=1e-10)
    np.testing.assert_array_equal(d.inverse(z), x)


# One-sided inverses: name -> (builder, example shape, direction).
SURJECTIONS = {
    "Slice": (lambda k: flows.Slice(2, shape=(5,), key=k, hidden=4), (5,), "inference"),
    "Abs": (lambda k: flows.Abs(4), (4,), "inference"),
    "Sort": (lambda k: flows.Sort(by=1), (4, 2), "inference"),
    "MaxPool1D": (lambda k: flows.MaxPool1D(3), (2, 6), "inference"),
    "MaxPool2D": (lambda k: flows.MaxPool2D(2), (2, 4, 2), "inference"),
    "Augment": (lambda k: flows.Augment(2, shape=(3,), key=k, hidden=4), (3,), "generative"),
    "VariationalDequantization": (lambda k: flows.VariationalDequantization(3, k, hidden=4),
                                  (3,), "generative"),
}


@pytest.mark.parametrize("name", sorted(SURJECTIONS))
@given(seed=st.integers(0, 2**31 - 1))
def test_surjection_is_a_one_sided_inverse(name, seed):
    build, shape, direction = SURJECTIONS[name]
    kb, kp, kx, kt = jax.random.split(jax.random.key(seed), 4)
    t = perturb(build(kb), kp, 0.3)
    if direction == "generative":  # x -> z -> x exactly
        x = jnp.round(3 * jax.random.normal(kx, shape, jnp.float64))
        z, _ = t.forward(x, kt)
        np.testing.assert_allclose(t.inverse(z), x, atol=1e-12)
    else:  # z -> x (sampled) -> z exactly
        z = t.forward(jax.random.normal(kx, shape, jnp.float64))[0]
        np.testing.assert_allclose(t.forward(t.inverse(z, kt))[0], z, atol=1e-12)


def test_kinds():
    K = flows.Kind
    assert flows.Slice.kind == flows.Abs.kind == flows.Sort.kind == K.inference_surjection
    assert flows.MaxPool1D.kind == flows.MaxPool2D.kind == K.inference_surjection
    assert flows.Augment.kind == flows.UniformDequantization.kind == K.generative_surjection
    assert flows.VariationalDequantization.kind == K.generative_surjection
    assert flows.VAE.kind == K.stochastic


@pytest.mark.parametrize("call, message", [
    (lambda: flows.Slice(3).forward(jnp.zeros(3)), "^Slice: cannot keep 3 of 3"),
    (lambda: flows.Slice(0, axis=0, shape=(2, 2)), "^Slice: cannot keep 0 of 2"),
    (lambda: flows.MaxPool1D(2).forward(jnp.zeros(5)), "^MaxPool1D: .*not divisible"),
    (lambda: flows.MaxPool2D(2).forward(jnp.zeros((1, 3, 4))), "^MaxPool2D: .*divisible"),
    (lambda: flows.Squeeze().forward(jnp.zeros((1, 2, 3))), "^Squeeze: .*even"),
    (lambda: flows.Sort().forward(jnp.zeros((2, 2, 2))), "^Sort: expects"),
    (lambda: flows.Augment(2).inverse(jnp.zeros(2)), "^Augment: cannot drop 2"),
    (lambda: flows.AffineCoupling(1, jax.random.key(0)).forward(jnp.zeros(1)),
     "^AffineCoupling: a coupling needs at least 2"),
])
def test_shapes_a_transform_cannot_split_raise_naming_it(call, message):
    with pytest.raises(ValueError, match=message):
        call()


NAN_CASES = {
    "Abs": lambda k: flows.Abs(4), "Slice": lambda k: flows.Slice(2),
    "Sort": lambda k: flows.Sort(), "MaxPool1D": lambda k: flows.MaxPool1D(2),
    "Augment": lambda k: flows.Augment(1),
    "UniformDequantization": lambda k: flows.UniformDequantization(),
    "VariationalDequantization": lambda k: flows.VariationalDequantization(4, k),
    "VAE": lambda k: flows.VAE(4, 2, k), "AffineCoupling": lambda k: flows.AffineCoupling(4, k),
    "RQSCoupling": lambda k: flows.RQSCoupling(4, k), "ActNorm": lambda k: flows.ActNorm(4),
    "LULinear": lambda k: flows.LULinear(4, k), "Reverse": lambda k: flows.Reverse(),
    "Permutation": lambda k: flows.Permutation.random(4, k),
    "LeakyReLU": lambda k: flows.LeakyReLU(), "Sigmoid": lambda k: flows.Sigmoid(),
    "Logit": lambda k: flows.Logit(), "ResidualBlock": lambda k: flows.ResidualBlock(4, k),
    "ImplicitBlock": lambda k: flows.ImplicitBlock(4, k),
}


@functools.cache
def _nan_case_transforms():
    # Built in one compiled program: eager construction runs op by op, 19 times slower.
    return eqx.filter_jit(lambda key: {n: build(key) for n, build in NAN_CASES.items()})(
        jax.random.key(0))


@pytest.mark.parametrize("name", sorted(NAN_CASES))
def test_nan_input_raises_naming_the_transform(name):
    t = _nan_case_transforms()[name]
    x = jnp.array([0.5, jnp.nan, 0.2, 0.1])
    with pytest.raises(ValueError, match=f"^{name}: the input contains NaN"):
        t.forward(x, jax.random.key(1))


def test_nan_input_under_jit_raises_naming_the_transform():
    t = flows.AffineCoupling(4, jax.random.key(0))
    with pytest.raises(Exception, match="AffineCoupling: the input contains NaN"):
        eqx.filter_jit(lambda t, x: t.forward(x))(t, jnp.array([0.5, jnp.nan, 0.2, 0.1]))


def test_every_public_transform_has_a_nan_case():
    import inspect
    classes = [getattr(flows, n) for n in flows.__all__]
    transforms = {c.__name__ for c in classes if isinstance(c, type)
                  and issubclass(c, flows.AbstractTransform) and not inspect.isabstract(c)}
    assert transforms - {"Squeeze", "MaxPool2D"} == set(NAN_CASES)
