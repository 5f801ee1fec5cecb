"""Mean Teacher: the step against an independent statement of the rule (masked
cross-entropy plus the ramped-up consistency to the EMA teacher), under jit and vmap
over seeds, and its errors."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from innerloop.rules import Augment, MeanTeacher

B, L, C = 12, 10, 3
LR, TAU, WEIGHT, RAMP = 0.1, 0.9, 2.0, 4
AUG = Augment(max_shift=1, scale=(0.9, 1.1), noise=0.1, max_mask=0)
MT = MeanTeacher(optimizer=optax.sgd(LR), augment=AUG, tau=TAU, consistency=WEIGHT,
                 rampup_steps=RAMP)


class Model(eqx.Module):
    w1: jax.Array
    w2: jax.Array

    def __call__(self, x):
        return jnp.tanh(x @ self.w1) @ self.w2


def _model(key):
    k1, k2 = jax.random.split(key)
    return Model(jax.random.normal(k1, (L, 8), jnp.float32) / math.sqrt(L),
                 jax.random.normal(k2, (8, C), jnp.float32))


def _np_loss_terms(student, teacher, x1, x2, y, lab):
    """Float64 NumPy: masked mean cross-entropy and mean squared softmax difference."""
    def logits(m, x):
        w1, w2 = (np.asarray(a, np.float64) for a in (m.w1, m.w2))
        return np.tanh(np.asarray(x, np.float64) @ w1) @ w2

    def softmax(a):
        e = np.exp(a - a.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ls = logits(student, x1)
    logp = ls - ls.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    ce = -logp[np.arange(len(y)), y]
    classification = np.sum(ce * lab) / max(lab.sum(), 1)
    consistency = np.mean(np.sum((softmax(ls) - softmax(logits(teacher, x2))) ** 2, 1))
    return classification, consistency


def _ref_step(state, key, x, y, lab):
    """One step by hand (jax.grad of a separately written loss, SGD, EMA)."""
    k1, k2 = jax.random.split(key)
    x1, x2 = AUG(k1, x), AUG(k2, x)
    t = jnp.clip(state.step / RAMP, 0, 1)
    w = WEIGHT * jnp.exp(-5 * (1 - t) ** 2)
    q = jax.nn.softmax(state.teacher(x2))

    def loss(m):
        logits = m(x1)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)[:, 0]
        labf = lab.astype(logits.dtype)
        return (jnp.sum(ce * labf) / jnp.maximum(labf.sum(), 1)
                + w.astype(logits.dtype) * jnp.mean(jnp.sum((jax.nn.softmax(logits) - q) ** 2,
                                                             1)))

    g = jax.grad(loss)(state.student)
    student = jax.tree.map(lambda p, gi: p - LR * gi, state.student, g)
    teacher = jax.tree.map(lambda t, s: TAU * t + (1 - TAU) * s, state.teacher, student)
    return student, teacher, x1, x2, w


_step = jax.jit(jax.vmap(MT.step))
_ref = jax.jit(jax.vmap(_ref_step))
SEEDS = 3


def _batch(key):
    kx, ky, kl = jax.random.split(key, 3)
    return (jax.random.normal(kx, (B, L), jnp.float32), jax.random.randint(ky, (B,), 0, C),
            jax.random.bernoulli(kl, 0.4, (B,)))


def test_step_under_jit_and_vmap_over_seeds_is_the_rule():
    keys = jax.random.split(jax.random.key(5), SEEDS)
    x, y, lab = jax.vmap(_batch)(keys)
    states = jax.tree.map(lambda *a: jnp.stack(a),
                          *[MT.init(_model(k), x[0]) for k in keys])
    # Three steps: the teacher differs from the student after the first.
    for step in range(3):
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
        new, metrics = _step(states, step_keys, x, y, lab)
        student, teacher, x1, x2, w = _ref(states, step_keys, x, y, lab)
        for a, b in zip(jax.tree.leaves((new.student, new.teacher)),
                        jax.tree.leaves((student, teacher))):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(metrics.weight, w, rtol=1e-6)
        for i in range(SEEDS):
            s_i = jax.tree.map(lambda a: a[i], states)
            ce, cons = _np_loss_terms(s_i.student, s_i.teacher, x1[i], x2[i],
                                      np.asarray(y[i]), np.asarray(lab[i], np.float64))
            np.testing.assert_allclose(metrics.classification[i], ce, rtol=1e-4)
            np.testing.assert_allclose(metrics.consistency[i], cons, rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(metrics.loss[i], ce + float(w[i]) * cons, rtol=1e-4)
        states = new


def test_unlabelled_batch_trains_on_consistency_only():
    x, y, _ = _batch(jax.random.key(0))
    state = MT.init(_model(jax.random.key(1)), x)
    _, metrics = jax.jit(MT.step)(state, jax.random.key(2), x, y, jnp.zeros((B,), bool))
    assert float(metrics.classification) == 0.0
    np.testing.assert_allclose(metrics.loss, metrics.weight * metrics.consistency, rtol=1e-6)


def test_errors():
    x, y, lab = _batch(jax.random.key(0))
    with pytest.raises(ValueError, match=r"MeanTeacher: tau must be in \[0, 1\]"):
        MeanTeacher(optimizer=optax.sgd(LR), tau=1.2)
    state = MT.init(_model(jax.random.key(1)), x)
    with pytest.raises(ValueError, match="MeanTeacher.step: y and labelled must have shape"):
        MT.step(state, jax.random.key(2), x, y[:-1], lab)
    crop = MeanTeacher(optimizer=optax.sgd(LR), augment=lambda k, x: x[:, 1:])
    with pytest.raises(ValueError, match="MeanTeacher.step: the augmentation maps a batch"):
        crop.step(state, jax.random.key(2), x, y, lab)
    with pytest.raises(ValueError, match=r"MeanTeacher.init: the model must map a batch to "
                       r"logits \(B, classes\)"):
        MT.init(lambda x: x.sum(1), x)
