r"""`BYOL`: bootstrap your own latent (Grill et al., NeurIPS 2020), one step as a pure function.

An online network (encoder f, projector g, predictor q) and a target network (f', g'),
whose weights are an exponential moving average of the online ones. Two random views
x1, x2 of a batch x give online projections z_i = g(f(x_i)), predictions p_i = q(z_i)
and target projections t_i = g'(f'(x_i)); the online weights descend the symmetric loss

    L = mean_b [2 - 2 cos(p1, sg(t2))] + mean_b [2 - 2 cos(p2, sg(t1))]

(sg: stop-gradient) with an optax optimiser, then the target follows,

    target <- tau_k target + (1 - tau_k) online,
    tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2            (`byol_tau`).

The predictor, chosen by `predictor=`:

- `"mlp"`: the online network's own module q, trained with it (the paper);
- `"implicit"`: the ridge regression from the (l2-normalised) online projections to
  the target projections, solved per batch,

      W*(Z) = argmin_W  1/(2N) ||Z W - T||^2 + ridge/2 ||W||^2,    p = Z W*(Z),

  with `innerloop.argmin` and differentiated by the implicit function theorem (a
  closed-form linear predictor, as DirectPred, Tian, Chen and Ganguli 2021, sets its
  predictor from the batch statistics instead of learning it);
- `"none"`: p = z (the ablation that collapses).

    byol = BYOL(optimizer=optax.adam(1e-3), total_steps=1000, augment=Augment())
    state = byol.init(SSLNetwork(encoder, projector, predictor), x)
    state, metrics = jax.jit(byol.step)(state, key, x)      # vmap over seeds works too
    features = byol.features(state, x)
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, Int

from innerloop.implicit import argmin
from innerloop.rules._ssl_augment import Augment
from innerloop.rules._targets import (
    CollapseStats,
    _check_unit_interval,
    byol_tau,
    collapse_stats,
    ema_update,
)

PREDICTORS = ("mlp", "implicit", "none")


class SSLNetwork(eqx.Module):
    """encoder (B, ...) -> (B, r), projector (B, r) -> (B, d) and, for BYOL's `"mlp"`
    predictor, predictor (B, d) -> (B, d): modules (or functions) of whole batches."""

    encoder: Callable
    projector: Callable
    predictor: Callable | None = None

    def project(self, x: ArrayLike) -> Array:
        return self.projector(self.encoder(x))


def _l2_normalise(z: Array) -> Array:
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), jnp.finfo(z.dtype).eps)


def cosine_loss(p: Float[ArrayLike, "B d"], t: Float[ArrayLike, "B d"]) -> Array:
    """mean_b [2 - 2 cos(p_b, t_b)] (BYOL's normalised squared error)."""
    p, t = jnp.asarray(p), jnp.asarray(t)
    return jnp.mean(2 - 2 * jnp.sum(_l2_normalise(p) * _l2_normalise(t), axis=-1))


def ridge_predictor(z: Float[ArrayLike, "N d"], t: Float[ArrayLike, "N e"], ridge: float,
                    rtol: float = 1e-5, max_steps: int = 200
                    ) -> tuple[Array, Any]:
    """p = Z W*(Z), W* = argmin_W 1/(2N)||Z W - T||^2 + ridge/2 ||W||^2, solved by
    `innerloop.argmin` and differentiated (in Z and T) by the implicit function
    theorem. Returns (p, the argmin `Solution`). Z and T are used as given."""
    z, t = jnp.asarray(z), jnp.asarray(t)

    def loss(w, data):
        zz, tt = data
        r = zz @ w - tt
        return (0.5 * jnp.sum(r * r) / zz.shape[0]
                + 0.5 * jnp.asarray(ridge, w.dtype) * jnp.sum(w * w))

    w0 = jnp.zeros((z.shape[1], t.shape[1]), z.dtype)
    sol = argmin(loss, w0, (z, t), rtol=rtol, max_steps=max_steps)
    return z @ sol.value, sol


class BYOLState(eqx.Module):
    """The online network, the target (its EMA, without predictor), the optimiser's
    state and the step count."""

    online: SSLNetwork
    target: SSLNetwork
    opt_state: Any
    step: Int[Array, ""]


class BYOLMetrics(eqx.Module):
    """Per step: the loss (before the update), tau, the collapse monitors of the online
    projections and of the representations (encoder outputs) of the first view, and
    for the implicit predictor whether its ridge solve converged (True otherwise)."""

    loss: Float[Array, ""]
    tau: Float[Array, ""]
    projection: CollapseStats
    representation: CollapseStats
    predictor_converged: Array


def _apply(optimizer, net, grads, opt_state):
    params = eqx.filter(net, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(net, updates), opt_state


def _views(augment, key, x, name):
    k1, k2 = jax.random.split(key)
    x1, x2 = augment(k1, x), augment(k2, x)
    if x1.shape != x.shape or x2.shape != x.shape:
        raise ValueError(f"{name}: the augmentation maps a batch of shape {x.shape} to "
                         f"{x1.shape}; augmentations must keep the signal's length")
    return x1, x2


class BYOL(eqx.Module):
    """BYOL's training step (see the module docstring).

    - `optimizer`: the optax optimiser of the online network.
    - `total_steps`: K of the tau schedule.
    - `augment`: (key, x) -> a random view of the batch x (default `Augment()`).
    - `predictor`: `"mlp"`, `"implicit"` or `"none"`.
    - `tau_base`: the target's decay at step 0, in [0, 1].
    - `tau_schedule`: `"cosine"` (BYOL's) or `"constant"` (tau = tau_base throughout;
      `tau_base=0` makes the target the online network itself).
    - `ridge`, `implicit_rtol`, `implicit_max_steps`: the implicit predictor's ridge
      penalty and `argmin` tolerance / iteration limit.
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    total_steps: int = eqx.field(static=True)
    augment: Callable[[Array, Array], Array] = eqx.field(static=True, default=Augment())
    predictor: str = eqx.field(static=True, default="mlp")
    tau_base: float = eqx.field(static=True, default=0.99)
    tau_schedule: str = eqx.field(static=True, default="cosine")
    ridge: float = eqx.field(static=True, default=0.1)
    implicit_rtol: float = eqx.field(static=True, default=1e-5)
    implicit_max_steps: int = eqx.field(static=True, default=200)

    def __check_init__(self):
        if self.predictor not in PREDICTORS:
            raise ValueError(f"BYOL: predictor must be one of {PREDICTORS}, got "
                             f"{self.predictor!r}")
        if self.tau_schedule not in ("cosine", "constant"):
            raise ValueError("BYOL: tau_schedule must be 'cosine' or 'constant', got "
                             f"{self.tau_schedule!r}")
        _check_unit_interval("BYOL", "tau_base", self.tau_base)
        if int(self.total_steps) < 1:
            raise ValueError(f"BYOL: total_steps must be >= 1, got {self.total_steps}")
        if not self.ridge > 0:
            raise ValueError(f"BYOL: ridge must be > 0, got {self.ridge}")

    def init(self, online: SSLNetwork, x: ArrayLike) -> BYOLState:
        """The state for an online network and an example batch x (for the shapes):
        the target starts as a copy of the online encoder and projector. The
        predictor module is needed (and kept) only for `predictor="mlp"`."""
        if self.predictor == "mlp":
            if online.predictor is None:
                raise ValueError("BYOL.init: predictor='mlp' needs SSLNetwork(encoder, "
                                 "projector, predictor); pass a predictor module or choose "
                                 "predictor='implicit'")
        else:
            online = SSLNetwork(online.encoder, online.projector, None)
        self._check_shapes(online, x, "BYOL.init")
        params = eqx.filter(online, eqx.is_inexact_array)
        return BYOLState(online=online, target=SSLNetwork(online.encoder, online.projector),
                         opt_state=self.optimizer.init(params),
                         step=jnp.zeros((), jnp.int32))

    def _check_shapes(self, online, x, name):
        z = eqx.filter_eval_shape(online.project, x)
        if online.predictor is not None:
            p = eqx.filter_eval_shape(online.predictor, z)
            if p.shape != z.shape:
                raise ValueError(f"{name}: the predictor maps projections of shape {z.shape} "
                                 f"to {p.shape}; its output must have the target "
                                 "projection's shape")

    def tau(self, step: ArrayLike) -> Array:
        """tau at a step: `byol_tau` (cosine) or the constant tau_base."""
        if self.tau_schedule == "constant":
            return jnp.asarray(self.tau_base, jnp.float32)
        return byol_tau(step, self.total_steps, jnp.asarray(self.tau_base, jnp.float32))

    def loss(self, online: SSLNetwork, x1: ArrayLike, x2: ArrayLike, t1: ArrayLike,
             t2: ArrayLike) -> tuple[Array, tuple[Array, Array, Array]]:
        """The symmetric loss for views x1, x2 and target projections t1, t2 (treated
        as constants); aux: (online projections of x1, representations of x1, whether
        the implicit predictor converged)."""
        t1, t2 = jax.lax.stop_gradient((jnp.asarray(t1), jnp.asarray(t2)))
        r1, r2 = online.encoder(x1), online.encoder(x2)
        z1, z2 = online.projector(r1), online.projector(r2)
        ok = jnp.asarray(True)
        if self.predictor == "mlp":
            p1, p2 = online.predictor(z1), online.predictor(z2)
        elif self.predictor == "none":
            p1, p2 = z1, z2
        else:
            z = _l2_normalise(jnp.concatenate([z1, z2]))
            t = _l2_normalise(jnp.concatenate([t2, t1]))
            p, sol = ridge_predictor(z, t, self.ridge, self.implicit_rtol,
                                     self.implicit_max_steps)
            p1, p2 = p[: z1.shape[0]], p[z1.shape[0]:]
            ok = sol.converged
        if p1.shape != t2.shape:
            raise ValueError(f"BYOL.loss: the predictor's output has shape {p1.shape} but the "
                             f"target projection has {t2.shape}; they must match")
        return cosine_loss(p1, t2) + cosine_loss(p2, t1), (z1, r1, ok)

    def step(self, state: BYOLState, key: Array, x: ArrayLike
             ) -> tuple[BYOLState, BYOLMetrics]:
        """One BYOL step on the batch x: two views, the online network's optax step,
        then the target's EMA. Pure: `jit` it, `vmap` it over seeds."""
        x = jnp.asarray(x)
        x1, x2 = _views(self.augment, key, x, "BYOL.step")
        target = state.target
        t1, t2 = target.project(x1), target.project(x2)
        (loss, (z1, r1, ok)), grads = eqx.filter_value_and_grad(self.loss, has_aux=True)(
            state.online, x1, x2, t1, t2)
        online, opt_state = _apply(self.optimizer, state.online, grads, state.opt_state)
        tau = self.tau(state.step)
        target = ema_update(target, SSLNetwork(online.encoder, online.projector), tau)
        metrics = BYOLMetrics(loss=loss, tau=tau, projection=collapse_stats(z1),
                              representation=collapse_stats(r1), predictor_converged=ok)
        return BYOLState(online, target, opt_state, state.step + 1), metrics

    def features(self, state: BYOLState, x: ArrayLike) -> Array:
        """The online encoder's representation of x (what a linear probe reads)."""
        return state.online.encoder(jnp.asarray(x))
