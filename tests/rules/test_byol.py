"""BYOL (with the MLP, the implicit and no predictor) and the SimCLR baseline: the step
against an independent statement of the rule, the implicit predictor's gradient, jit and
vmap over seeds, and the errors."""

import math
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from innerloop.implicit import Unroll, argmin
from innerloop.rules import (
    BYOL,
    Augment,
    SimCLR,
    SSLNetwork,
    byol_tau,
    nt_xent,
    ridge_predictor,
)

ROOT = Path(__file__).resolve().parents[2]
B, L, R, D = 16, 12, 6, 4  # batch, signal length, representation, projection
LR, K = 0.1, 50


class Dense(eqx.Module):
    w: jax.Array
    b: jax.Array
    relu: bool = eqx.field(static=True, default=False)

    def __call__(self, x):
        h = x @ self.w + self.b
        return jax.nn.relu(h) if self.relu else h


def _dense(key, n_in, n_out, relu=False, dtype=jnp.float32):
    kw, kb = jax.random.split(key)
    return Dense(jax.random.normal(kw, (n_in, n_out), dtype) / math.sqrt(n_in),
                 0.1 * jax.random.normal(kb, (n_out,), dtype), relu)


def _network(key, dtype=jnp.float32, pred_out=D):
    k1, k2, k3 = jax.random.split(key, 3)
    return SSLNetwork(_dense(k1, L, R, True, dtype), _dense(k2, R, D, False, dtype),
                      _dense(k3, D, pred_out, False, dtype))


def _x(key, dtype=jnp.float32):
    return jax.random.normal(key, (B, L), dtype)


AUG = Augment(max_shift=2, scale=(0.8, 1.2), noise=0.1, max_mask=2)


def _byol(predictor="mlp", **kw):
    return BYOL(optimizer=optax.sgd(LR), total_steps=K, augment=AUG, predictor=predictor, **kw)


# ------------------------------------------------------ an independent statement


def _cos_loss(p, t):
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    return np.mean(2 - 2 * np.sum(pn * tn, axis=1))


def _ref_loss(online, x1, x2, t1, t2, predictor, ridge=0.1):
    """BYOL's symmetric loss written out: the implicit predictor by the closed form
    W = (Z^T Z / N + ridge I)^{-1} Z^T T / N."""
    z1, z2 = online.projector(online.encoder(x1)), online.projector(online.encoder(x2))
    if predictor == "mlp":
        p1, p2 = online.predictor(z1), online.predictor(z2)
    elif predictor == "none":
        p1, p2 = z1, z2
    else:
        nz = lambda a: a / jnp.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
        z, t = nz(jnp.concatenate([z1, z2])), nz(jnp.concatenate([t2, t1]))
        n = z.shape[0]
        w = jnp.linalg.solve(z.T @ z / n + ridge * jnp.eye(z.shape[1], dtype=z.dtype),
                             z.T @ t / n)
        p1, p2 = (z @ w)[:B], (z @ w)[B:]
    cos = lambda p, t: jnp.mean(2 - 2 * jnp.sum(  # noqa: E731
        p / jnp.linalg.norm(p, axis=1, keepdims=True)
        * t / jnp.linalg.norm(t, axis=1, keepdims=True), axis=1))
    return cos(p1, t2) + cos(p2, t1)


def _ref_step(byol, state, key, x):
    """One step by hand: views, targets, SGD on the reference loss, EMA with BYOL's tau."""
    k1, k2 = jax.random.split(key)
    x1, x2 = AUG(k1, x), AUG(k2, x)
    tgt = state.target
    t1, t2 = tgt.projector(tgt.encoder(x1)), tgt.projector(tgt.encoder(x2))
    loss, g = eqx.filter_value_and_grad(_ref_loss)(state.online, x1, x2, t1, t2,
                                                   byol.predictor, byol.ridge)
    online = jax.tree.map(lambda p, gi: p - LR * gi, state.online, g)
    tau = 1 - (1 - byol.tau_base) * (jnp.cos(jnp.pi * state.step.astype(jnp.float32) / K) + 1) / 2
    target = jax.tree.map(lambda t, o: tau.astype(t.dtype) * t + (1 - tau.astype(t.dtype)) * o,
                          (tgt.encoder, tgt.projector), (online.encoder, online.projector))
    return online, target, loss


# "none" is the "mlp" path without its predictor: the experiment's test runs it.
PREDICTORS = ("mlp", "implicit")
_steps = {p: jax.jit(jax.vmap(_byol(p).step)) for p in PREDICTORS}
_refs = {p: jax.jit(jax.vmap(lambda s, k, x, p=p: _ref_step(_byol(p), s, k, x)))
         for p in PREDICTORS}


@pytest.mark.parametrize("predictor", PREDICTORS)
def test_step_under_jit_and_vmap_over_seeds_is_the_rule(predictor):
    byol = _byol(predictor)
    seeds = 2
    keys = jax.random.split(jax.random.key(7), seeds)
    nets = [_network(k) for k in keys]
    xs = jnp.stack([_x(jax.random.fold_in(k, 1)) for k in keys])
    states = jax.tree.map(lambda *a: jnp.stack(a), *[byol.init(n, xs[0]) for n in nets])
    # Two steps, so that the second starts from a target different from the online net.
    for step in range(2):
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2 + step))(keys)
        new, metrics = _steps[predictor](states, step_keys, xs)
        # The reference, per seed (vmapped: the seeds are independent in both).
        online, target, loss = _refs[predictor](states, step_keys, xs)
        np.testing.assert_allclose(metrics.loss, loss, rtol=2e-4, atol=1e-5)
        for a, b in zip(jax.tree.leaves(eqx.filter(new.online, eqx.is_array)),
                        jax.tree.leaves(eqx.filter(online, eqx.is_array))):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
        for a, b in zip(jax.tree.leaves((new.target.encoder, new.target.projector)),
                        jax.tree.leaves(target)):
            np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)
        np.testing.assert_array_equal(new.step, step + 1)
        np.testing.assert_allclose(metrics.tau, float(byol_tau(step, K, 0.99)), rtol=1e-6)
        if predictor == "implicit":
            assert bool(jnp.all(metrics.predictor_converged))
        states = new


# ------------------------------------------------------ the implicit predictor


N, DI, DO = 24, 5, 4
_ridge = jax.jit(lambda z, t: ridge_predictor(z, t, 0.3, rtol=1e-12, max_steps=500)[0])
_ridge_unrolled = jax.jit(lambda z, t: z @ argmin(
    lambda w, d: 0.5 * jnp.sum((d[0] @ w - d[1]) ** 2) / N + 0.15 * jnp.sum(w * w),
    jnp.zeros((DI, DO), z.dtype), (z, t), grad=Unroll(), rtol=1e-12, max_steps=100).value)


def _closed_form(z, t):
    w = jnp.linalg.solve(z.T @ z / N + 0.3 * jnp.eye(DI, dtype=z.dtype), z.T @ t / N)
    return z @ w


def _objective(fn):
    """A scalar of the predictions, with a random linear and a quadratic part."""
    return lambda z, t, c: jnp.sum(c * fn(z, t)) + jnp.sum(fn(z, t) ** 2)


_grad = {name: jax.jit(jax.grad(_objective(fn), argnums=(0, 1)))
         for name, fn in (("implicit", _ridge), ("closed form", _closed_form),
                          ("unrolled", _ridge_unrolled))}
_value = jax.jit(_objective(_ridge))


@given(st.integers(0, 2**30))
def test_implicit_predictor_gradient(x64, seed):
    key = jax.random.key(seed)
    kz, kt, kc = jax.random.split(key, 3)
    z = jax.random.normal(kz, (N, DI), jnp.float64)
    t = jax.random.normal(kt, (N, DO), jnp.float64)
    c = jax.random.normal(kc, (N, DO), jnp.float64)
    np.testing.assert_allclose(_ridge(z, t), _closed_form(z, t), rtol=1e-9, atol=1e-10)
    g = _grad["implicit"](z, t, c)
    # Against autodiff through the explicit solve and through the unrolled solver.
    for ref in ("closed form", "unrolled"):
        for a, b in zip(g, _grad[ref](z, t, c)):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-8)
    # Against central finite differences along a random direction, in z and in t.
    eps = 1e-6
    for i, (u, shape) in enumerate(((z, z.shape), (t, t.shape))):
        d = jax.random.normal(jax.random.fold_in(key, 9 + i), shape, jnp.float64)
        args = [(z, t), (z, t)]
        args[0] = (z + eps * d, t) if i == 0 else (z, t + eps * d)
        args[1] = (z - eps * d, t) if i == 0 else (z, t - eps * d)
        fd = (_value(*args[0], c) - _value(*args[1], c)) / (2 * eps)
        np.testing.assert_allclose(jnp.sum(g[i] * d), fd, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------ errors


def test_predictor_shape_mismatch_is_an_error():
    x = _x(jax.random.key(0))
    with pytest.raises(ValueError, match=r"BYOL.init: the predictor maps projections of shape "
                       r"\(16, 4\) to \(16, 3\); its output must have the target projection"):
        _byol().init(_network(jax.random.key(0), pred_out=3), x)
    net = _network(jax.random.key(0))
    with pytest.raises(ValueError, match="BYOL.init: predictor='mlp' needs"):
        _byol().init(SSLNetwork(net.encoder, net.projector), x)


@pytest.mark.parametrize("tau", [-0.5, 1.01])
def test_bad_arguments_are_errors(tau):
    with pytest.raises(ValueError, match=r"BYOL: tau_base must be in \[0, 1\]"):
        _byol(tau_base=tau)
    with pytest.raises(ValueError, match="BYOL: predictor must be one of"):
        _byol("linear")


def test_augmentation_changing_length_is_an_error():
    byol = BYOL(optimizer=optax.sgd(LR), total_steps=K, augment=lambda k, x: x[:, :-1])
    x = _x(jax.random.key(0))
    state = byol.init(_network(jax.random.key(0)), x)
    with pytest.raises(ValueError, match=r"BYOL.step: the augmentation maps a batch of shape "
                       r"\(16, 12\) to \(16, 11\)"):
        byol.step(state, jax.random.key(1), x)


# ------------------------------------------------------ SimCLR


def _np_nt_xent(z1, z2, temp):
    u = np.concatenate([z1, z2]).astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    n = len(u)
    total = 0.0
    for i in range(n):
        j = (i + n // 2) % n
        logits = [u[i] @ u[k] / temp for k in range(n) if k != i]
        total += -(u[i] @ u[j] / temp) + np.log(np.sum(np.exp(logits)))
    return total / n


@given(st.integers(0, 2**30), st.floats(0.1, 1.0))
def test_nt_xent_numpy_reference(seed, temp):
    k1, k2 = jax.random.split(jax.random.key(seed))
    z1, z2 = jax.random.normal(k1, (B, D), jnp.float32), jax.random.normal(k2, (B, D),
                                                                             jnp.float32)
    np.testing.assert_allclose(_nt(z1, z2, temp), _np_nt_xent(np.asarray(z1), np.asarray(z2),
                                                               temp), rtol=1e-4)


_nt = jax.jit(nt_xent)
SIMCLR = SimCLR(optimizer=optax.sgd(LR), augment=AUG, temperature=0.5)
_simclr_step = jax.jit(jax.vmap(SIMCLR.step))


@jax.jit
@jax.vmap
def _simclr_ref(state, key, x):
    """SGD on nt_xent of the two views' projections (the NumPy-checked loss)."""
    k1, k2 = jax.random.split(key)
    x1, x2 = AUG(k1, x), AUG(k2, x)
    loss_fn = lambda n: nt_xent(n.projector(n.encoder(x1)),  # noqa: E731
                                n.projector(n.encoder(x2)), 0.5)
    loss, g = eqx.filter_value_and_grad(loss_fn)(state.network)
    return loss, jax.tree.map(lambda p, gi: p - LR * gi, state.network, g)


def test_simclr_step_under_jit_and_vmap_is_sgd_on_nt_xent():
    keys = jax.random.split(jax.random.key(3), 2)
    xs = jnp.stack([_x(jax.random.fold_in(k, 1)) for k in keys])
    states = jax.tree.map(lambda *a: jnp.stack(a),
                          *[SIMCLR.init(_network(k), xs[0]) for k in keys])
    new, metrics = _simclr_step(states, keys, xs)
    loss, want = _simclr_ref(states, keys, xs)
    np.testing.assert_allclose(metrics.loss, loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new.network), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------ the experiment


@pytest.mark.slow  # 96 s wall at --quick: over the suite's budget while it fails its claim
@pytest.mark.subprocess
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "measured at 15afd73, --quick (200 steps, batch 128, seed 0, pooled encoder): the "
    "no-predictor run is not flagged (projection std ratio 0.37, eff. rank 2.4) and its "
    "probe (82.0%) is above BYOL's (76.6%), so the run's claim fails; tau = 0 flagged at "
    "step 75; the full run's failures are in benchmarks/results/byol.md"))
def test_experiment_quick(tmp_path):
    out = tmp_path / "byol.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "byol.py"), "--quick",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "command" in text and "innerloop" in text
    acc, flags = {}, {}
    for row in ("random encoder", "BYOL (MLP predictor)", "BYOL, no predictor",
                "BYOL, tau = 0"):
        cells = next(line for line in text.splitlines()
                     if line.startswith(f"| {row} |")).split("|")
        acc[row] = float(cells[2])
        flags[row] = cells[-3].strip()
    # The claims the run enforces, read back: BYOL's probe beats the random encoder's,
    # the monitor flags the collapsing ablations and not BYOL.
    assert acc["BYOL (MLP predictor)"] > acc["random encoder"], acc
    assert flags["BYOL (MLP predictor)"] == "-", flags
    assert flags["BYOL, no predictor"] != "-" and flags["BYOL, tau = 0"] != "-", flags
    assert "does NOT hold" not in text
