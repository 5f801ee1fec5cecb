r"""`MeanTeacher`: semi-supervised learning with an EMA teacher (Tarvainen and Valpola 2017).

A student classifier f (logits) and a teacher f' whose weights are the student's
exponential moving average. On a batch x whose labelled part is marked by m (m_b = 1
when y_b is known), with two random views x1 (student) and x2 (teacher):

    L = sum_b m_b CE(f(x1_b), y_b) / max(1, sum_b m_b)
        + w(k) mean_b ||softmax f(x1_b) - softmax sg(f'(x2_b))||^2,

    w(k) = consistency * exp(-5 (1 - min(k / rampup_steps, 1))^2),

the consistency term over every example, labelled or not; the student takes an optax
step on L, then teacher <- tau teacher + (1 - tau) student.

    mt = MeanTeacher(optimizer=optax.adam(1e-3), augment=Augment(), rampup_steps=500)
    state = mt.init(model, x)
    state, metrics = jax.jit(mt.step)(state, key, x, y, labelled)
    logits = mt.predict(state, x)          # the teacher's (`student=True`: the student's)
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from innerloop.rules._byol import _apply, _views
from innerloop.rules._ssl_augment import Augment
from innerloop.rules._targets import _check_unit_interval, consistency_rampup, ema_update


class MeanTeacherState(eqx.Module):
    student: Any
    teacher: Any
    opt_state: Any
    step: Int[Array, ""]


class MeanTeacherMetrics(eqx.Module):
    """Per step (before the update): the total loss, the labelled cross-entropy, the
    consistency term (unweighted) and its weight w(k)."""

    loss: Float[Array, ""]
    classification: Float[Array, ""]
    consistency: Float[Array, ""]
    weight: Float[Array, ""]


class MeanTeacher(eqx.Module):
    """Mean Teacher's training step (see the module docstring).

    - `optimizer`: the student's optax optimiser.
    - `augment`: (key, x) -> a random view of the batch x.
    - `tau`: the teacher's decay, in [0, 1].
    - `consistency`: the consistency weight after the ramp-up.
    - `rampup_steps`: steps of the exp(-5 (1 - t)^2) ramp-up.
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    augment: Callable[[Array, Array], Array] = eqx.field(static=True, default=Augment())
    tau: float = eqx.field(static=True, default=0.99)
    consistency: float = eqx.field(static=True, default=10.0)
    rampup_steps: int = eqx.field(static=True, default=500)

    def __check_init__(self):
        _check_unit_interval("MeanTeacher", "tau", self.tau)
        if self.consistency < 0 or self.rampup_steps < 0:
            raise ValueError("MeanTeacher: consistency and rampup_steps must be >= 0, got "
                             f"{self.consistency}, {self.rampup_steps}")

    def init(self, model: Any, x: ArrayLike) -> MeanTeacherState:
        """Student and teacher both start as `model` (a module of batches: (B, ...) ->
        logits (B, classes)); x: an example batch, for the shapes."""
        out = eqx.filter_eval_shape(model, x)
        if len(out.shape) != 2:
            raise ValueError(f"MeanTeacher.init: the model must map a batch to logits "
                             f"(B, classes), got shape {out.shape}")
        return MeanTeacherState(model, model, self.optimizer.init(
            eqx.filter(model, eqx.is_inexact_array)), jnp.zeros((), jnp.int32))

    def loss(self, student: Any, x1: ArrayLike, teacher_probs: ArrayLike, y: ArrayLike,
             labelled: ArrayLike, weight: ArrayLike) -> tuple[Array, tuple[Array, Array]]:
        logits = student(x1)
        lab = jnp.asarray(labelled).astype(logits.dtype)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y))
        classification = jnp.sum(ce * lab) / jnp.maximum(jnp.sum(lab), 1)
        diff = jax.nn.softmax(logits) - jax.lax.stop_gradient(teacher_probs)
        consistency = jnp.mean(jnp.sum(diff * diff, axis=-1))
        return classification + weight * consistency, (classification, consistency)

    def step(self, state: MeanTeacherState, key: Array, x: ArrayLike, y: Int[ArrayLike, " B"],
             labelled: Bool[ArrayLike, " B"]) -> tuple[MeanTeacherState, MeanTeacherMetrics]:
        """One step on the batch x with labels y, of which those with `labelled` True
        are used. Pure: `jit` it, `vmap` it over seeds."""
        x = jnp.asarray(x)
        if jnp.shape(y) != x.shape[:1] or jnp.shape(labelled) != x.shape[:1]:
            raise ValueError(f"MeanTeacher.step: y and labelled must have shape "
                             f"{x.shape[:1]} (one per example), got {jnp.shape(y)} and "
                             f"{jnp.shape(labelled)}")
        x1, x2 = _views(self.augment, key, x, "MeanTeacher.step")
        teacher_probs = jax.nn.softmax(state.teacher(x2))
        weight = (self.consistency
                  * consistency_rampup(state.step, self.rampup_steps, teacher_probs.dtype))
        (loss, (ce, cons)), grads = eqx.filter_value_and_grad(self.loss, has_aux=True)(
            state.student, x1, teacher_probs, y, labelled, weight)
        student, opt_state = _apply(self.optimizer, state.student, grads, state.opt_state)
        teacher = ema_update(state.teacher, student, self.tau)
        return (MeanTeacherState(student, teacher, opt_state, state.step + 1),
                MeanTeacherMetrics(loss, ce, cons, weight))

    def predict(self, state: MeanTeacherState, x: ArrayLike, student: bool = False) -> Array:
        """Logits of the teacher (the model Mean Teacher evaluates), or of the student."""
        return (state.student if student else state.teacher)(jnp.asarray(x))
