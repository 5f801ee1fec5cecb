"""Targets (EMA update, BYOL's tau schedule, Mean Teacher's ramp-up), augmentations and
the collapse monitors."""

import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from innerloop.rules import (
    Augment,
    CollapseMonitor,
    CollapseWarning,
    byol_tau,
    collapse_stats,
    consistency_rampup,
    ema_update,
    gaussian_noise,
    random_mask,
    random_roll,
    random_scale,
    random_shear,
    random_shift,
)

K = 100  # the schedules' length in these tests (one compiled shape)


class _Net(eqx.Module):
    w: jax.Array
    b: jax.Array
    count: jax.Array            # an integer array: not a weight, must not move
    act: object = eqx.field(static=True, default="relu")
    fn: object = jax.nn.relu    # a callable leaf


def _net(key, scale=1.0):
    kw, kb = jax.random.split(key)
    return _Net(w=scale * jax.random.normal(kw, (3, 4), jnp.float32),
                b=scale * jax.random.normal(kb, (4,), jnp.float32),
                count=jnp.arange(3, dtype=jnp.int32) + int(10 * scale))


_ema = eqx.filter_jit(ema_update)
_tau = jax.jit(byol_tau, static_argnums=1)
_ramp = jax.jit(consistency_rampup, static_argnums=1)
_stats = jax.jit(collapse_stats)


@given(st.floats(0.0, 1.0), st.integers(0, 2**30))
def test_ema_moves_only_the_inexact_arrays(tau, seed):
    target, online = _net(jax.random.key(seed)), _net(jax.random.key(seed + 1), 2.0)
    new = _ema(target, online, tau)
    for name in ("w", "b"):
        t, o = np.asarray(getattr(target, name), np.float64), np.asarray(getattr(online, name))
        np.testing.assert_allclose(getattr(new, name), tau * t + (1 - tau) * o,
                                   rtol=1e-5, atol=1e-6)
        assert getattr(new, name).dtype == jnp.float32
    # The integer array, the static field and the callable stay the target's.
    np.testing.assert_array_equal(new.count, target.count)
    assert not np.array_equal(np.asarray(online.count), np.asarray(target.count))
    assert new.fn is target.fn and new.act == "relu"


def test_ema_endpoints_keep_or_copy():
    target, online = _net(jax.random.key(0)), _net(jax.random.key(1), 2.0)
    np.testing.assert_array_equal(_ema(target, online, 1.0).w, target.w)
    np.testing.assert_array_equal(_ema(target, online, 0.0).w, online.w)


@pytest.mark.parametrize("tau", [-0.1, 1.5, float("nan")])
def test_tau_outside_unit_interval_is_an_error(tau):
    target = _net(jax.random.key(0))
    with pytest.raises(ValueError, match=r"ema_update: tau must be in \[0, 1\]"):
        ema_update(target, target, tau)
    with pytest.raises(ValueError, match=r"byol_tau: tau_base must be in \[0, 1\]"):
        byol_tau(0, K, tau)
    # Under jit the check is a runtime error.
    with pytest.raises(Exception, match=r"ema_update: tau must be in \[0, 1\]"):
        jax.block_until_ready(_ema(target, target, jnp.float32(tau)))


def test_ema_structure_mismatch_is_an_error():
    with pytest.raises(ValueError, match="ema_update: the target and the online pytree"):
        ema_update({"a": jnp.ones(2)}, {"b": jnp.ones(2)}, 0.5)


@given(st.floats(0.0, 1.0))
def test_byol_tau_endpoints_and_monotone(tau_base):
    ks = jnp.arange(-2, K + 3)
    tau = np.asarray(jax.vmap(lambda k: _tau(k, K, jnp.float32(tau_base)))(ks), np.float64)
    expected = 1 - (1 - tau_base) * (np.cos(np.pi * np.clip(np.arange(-2, K + 3), 0, K) / K)
                                     + 1) / 2
    np.testing.assert_allclose(tau, expected, atol=1e-6)
    np.testing.assert_allclose(tau[2], tau_base, atol=1e-6)      # k = 0
    np.testing.assert_allclose(tau[2 + K:], 1.0, atol=1e-6)      # k >= K
    assert np.all(np.diff(tau) >= -1e-7)


def test_rampup_endpoints_and_monotone():
    ks = jnp.arange(-2, K + 3)
    w = np.asarray(jax.vmap(lambda k: _ramp(k, K))(ks), np.float64)
    t = np.clip(np.arange(-2, K + 3) / K, 0, 1)
    np.testing.assert_allclose(w, np.exp(-5 * (1 - t) ** 2), rtol=1e-6)
    np.testing.assert_allclose(w[2], math.exp(-5), rtol=1e-6)
    np.testing.assert_allclose(w[2 + K:], 1.0, rtol=1e-6)
    assert np.all(np.diff(w) >= 0)
    assert float(consistency_rampup(0, 0)) == 1.0
    with pytest.raises(ValueError, match="consistency_rampup: rampup_steps must be >= 0"):
        consistency_rampup(0, -1)


# ------------------------------------------------------------------ monitors


B, D = 256, 16


@given(st.integers(0, 2**30))
def test_monitors_isotropic_vs_collapsed(seed):
    z = jax.random.normal(jax.random.key(seed), (B, D), jnp.float32)
    iso = _stats(z)
    # Isotropic: each normalised dimension has std ~ 1/sqrt(d); rank near d.
    assert 0.85 < float(iso.std_ratio) < 1.1
    assert float(iso.effective_rank) > 0.8 * D
    # Collapsed to one point (plus tiny noise), or onto one direction.
    point = jnp.ones((B, D), jnp.float32) + 1e-4 * z
    line = z[:, :1] * jnp.linspace(1.0, 2.0, D, dtype=jnp.float32)
    # A point (plus isotropic noise) keeps a full-rank covariance: the std ratio sees it.
    assert float(_stats(point).std_ratio) < 1e-3
    # A line: every embedding along one direction (up to sign): rank 1.
    assert float(_stats(line).effective_rank) < 1.01
    # k independent directions: effective rank k (equal variances), for k = 4.
    four = jnp.concatenate([z[:, :4], jnp.zeros((B, D - 4), jnp.float32)], 1)
    assert 3.5 < float(_stats(four).effective_rank) < 4.05
    # The rank of exactly equal embeddings is 1 (no variance at all).
    np.testing.assert_allclose(_stats(jnp.ones((B, D), jnp.float32)).effective_rank, 1.0)


def test_monitor_numpy_reference():
    z = np.asarray(jax.random.normal(jax.random.key(3), (B, D), jnp.float32), np.float64)
    z = z @ np.diag(np.linspace(0.1, 2, D))
    s = _stats(jnp.asarray(z, jnp.float32))
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(s.std_ratio, zn.std(0).mean() * np.sqrt(D), rtol=1e-4)
    eig = np.linalg.eigvalsh(np.cov(z.T, bias=True))
    np.testing.assert_allclose(s.effective_rank, eig.sum() ** 2 / np.sum(eig ** 2), rtol=1e-4)


def test_collapse_monitor_warns_once_below_threshold():
    mon = CollapseMonitor(std_threshold=0.2, rank_threshold=2.0, name="run")
    z = jax.random.normal(jax.random.key(0), (B, D), jnp.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not mon(0, _stats(z))
    assert mon.flagged_at is None
    collapsed = _stats(jnp.ones((B, D), jnp.float32) + 1e-4 * z)
    with pytest.warns(CollapseWarning, match="run: embeddings collapsing at step 10"):
        assert mon(10, collapsed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the first crossing warns
        assert mon(20, collapsed)
    assert mon.flagged_at == 10 and len(mon.history) == 3
    with pytest.raises(ValueError, match="CollapseMonitor: std_threshold must be > 0"):
        CollapseMonitor(std_threshold=0.0)
    with pytest.raises(ValueError, match="collapse_stats: embeddings must have shape"):
        collapse_stats(jnp.ones((5,), jnp.float32))


# ------------------------------------------------------------------ augmentations


L = 40
_aug = jax.jit(Augment(max_shift=3, scale=(0.5, 2.0), noise=0.0, max_mask=5))
_shift = jax.jit(lambda k, x: random_shift(k, x, 4))
_scale = jax.jit(lambda k, x: random_scale(k, x, 0.5, 2.0))
_noise = jax.jit(lambda k, x: gaussian_noise(k, x, 0.3))
_mask = jax.jit(lambda k, x: random_mask(k, x, 6))
_roll = jax.jit(lambda k, x: random_roll(k, x, 7))
_shear = jax.jit(lambda k, x: random_shear(k, x, 0.75))


@given(st.integers(0, 2**30))
def test_augmentations_match_their_definitions(seed):
    key = jax.random.key(seed)
    x = jax.random.normal(jax.random.fold_in(key, 1), (L,), jnp.float32)
    xs = np.asarray(x, np.float64)
    y = np.asarray(_shift(key, x), np.float64)
    # Some s in [-4, 4] gives y[i] = x[i - s], zeros where i - s is outside.
    def shifted(s):
        out = np.zeros(L)
        for i in range(L):
            if 0 <= i - s < L:
                out[i] = xs[i - s]
        return out
    assert any(np.array_equal(y, shifted(s)) for s in range(-4, 5))
    a = np.asarray(_scale(key, x), np.float64) / xs
    assert np.allclose(a, a[0], rtol=1e-5) and 0.5 <= a[0] <= 2.0
    n = np.asarray(_noise(key, x), np.float64) - xs
    assert 0 < np.abs(n).max() < 0.3 * 6
    m = np.asarray(_mask(key, x), np.float64)
    hidden = np.flatnonzero(m != xs)
    assert np.all(m[hidden] == 0) and len(hidden) <= 6
    if len(hidden):
        assert hidden[-1] - hidden[0] + 1 == len(hidden)  # one contiguous segment
    # A circular shift by some s in [-7, 7], not the identity for every key.
    r = np.asarray(_roll(key, x), np.float64)
    assert any(np.array_equal(r, np.roll(xs, s)) for s in range(-7, 8))
    rolls = {int(np.argmax(np.asarray(_roll(jax.random.fold_in(key, j), x)) == x[0]))
             for j in range(12)}
    assert len(rolls) > 1
    # Shear: x plus a line c * linspace(-1/2, 1/2) with |c| <= 0.75.
    d = np.asarray(_shear(key, x), np.float64) - xs
    c = d[-1] - d[0]
    assert abs(c) <= 0.75 + 1e-6 and abs(c) > 0
    np.testing.assert_allclose(d, c * np.linspace(-0.5, 0.5, L), atol=1e-5)
    # The composition on a batch: one view per signal, same shape and dtype.
    batch = jnp.stack([x, 2 * x])
    out = _aug(key, batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype


def test_augmentation_changing_length_is_an_error():
    crop = lambda k, x: x[:-2]  # noqa: E731
    with pytest.raises(ValueError, match="Augment: the augmentation <lambda> maps a signal of "
                       r"shape \(40,\) to \(38,\); augmentations must keep"):
        jax.jit(Augment(extra=(crop,)))(jax.random.key(0), jnp.ones((4, L), jnp.float32))
    with pytest.raises(ValueError, match="Augment: scale must be"):
        Augment(scale=(2.0, 1.0))
