r"""Slow targets for self-supervised rules, and monitors of representation collapse.

A target (teacher) network is a slow copy of fast (student) weights: after every
optimiser step of the student,

    teacher <- tau teacher + (1 - tau) student                   (`ema_update`)

(Mean Teacher, Tarvainen and Valpola 2017; BYOL, Grill et al. 2020). Only the
inexact arrays of the pytrees move (equinox filtering): integers, static fields
and functions stay the teacher's own.

BYOL raises tau from `tau_base` to 1 over K steps by a cosine,

    tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2            (`byol_tau`),

and Mean Teacher ramps its consistency weight up over T steps,

    w(t) = exp(-5 (1 - t)^2),  t = min(k / T, 1)                  (`consistency_rampup`).

All three are pure functions of arrays, usable inside any optax step under `jit`
and `vmap`.

Collapse monitors (`collapse_stats`), for embeddings z of shape (B, d):

- `std_ratio`: the mean over dimensions of the standard deviation of the
  l2-normalised embeddings, times sqrt(d). Isotropic embeddings give about 1
  (each dimension's std is 1/sqrt(d)); a collapse to one point gives 0.
- `effective_rank`: the participation ratio of the covariance C of z,
  (tr C)^2 / tr(C^2) = (sum_i lambda_i)^2 / sum_i lambda_i^2 (Gao et al. 2017), in
  [1, d]: d for isotropic embeddings, k for k equal directions, 1 when all the
  variance lies along one direction. It needs no eigendecomposition (an eigvalsh per
  training step costs more than the step of a small network on CPU).

`CollapseMonitor` reads these (logged during training, on the host) and warns with
a `CollapseWarning` when either falls below its threshold.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def _check_unit_interval(name: str, what: str, value: Any) -> Any:
    """Raise for a concrete value outside [0, 1]; under `jit`, an `eqx.error_if`."""
    try:
        concrete = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        concrete = None
    if concrete is not None:
        if not 0.0 <= concrete <= 1.0:
            raise ValueError(f"{name}: {what} must be in [0, 1], got {concrete}; "
                             "pass a decay rate such as 0.99")
        return value
    value = jnp.asarray(value)
    return eqx.error_if(value, ~((value >= 0) & (value <= 1)),
                        f"{name}: {what} must be in [0, 1]; pass a decay rate such as 0.99")


def ema_update(target: Any, online: Any, tau: float | ArrayLike) -> Any:
    """teacher <- tau teacher + (1 - tau) student, for the inexact arrays only.

    `target` and `online` are pytrees of the same structure (e.g. two copies of an
    `eqx.Module`); the other leaves (integers, static fields, callables) are the
    target's, unchanged. `tau` in [0, 1]: 1 keeps the target, 0 copies the online
    weights. Each array keeps its dtype."""
    tau = _check_unit_interval("ema_update", "tau", tau)
    t_arrays, t_rest = eqx.partition(target, eqx.is_inexact_array)
    o_arrays, _ = eqx.partition(online, eqx.is_inexact_array)
    try:
        moved = jax.tree.map(
            lambda t, o: (jnp.asarray(tau, t.dtype) * t
                          + (1 - jnp.asarray(tau, t.dtype)) * o.astype(t.dtype)),
            t_arrays, o_arrays)
    except ValueError as err:
        raise ValueError("ema_update: the target and the online pytree must have the same "
                         f"structure (copy the online network to make the target): {err}"
                         ) from None
    return eqx.combine(moved, t_rest)


def byol_tau(step: ArrayLike, total_steps: int, tau_base: float | ArrayLike = 0.996
             ) -> Array:
    """BYOL's schedule: 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2, k clipped to [0, K];
    tau_base at k = 0, rising monotonically to 1 at k = K."""
    if int(total_steps) < 1:
        raise ValueError(f"byol_tau: total_steps must be >= 1, got {total_steps}")
    tau_base = _check_unit_interval("byol_tau", "tau_base", tau_base)
    tau_base = jnp.asarray(tau_base)
    dtype = tau_base.dtype if jnp.issubdtype(tau_base.dtype, jnp.floating) else jnp.float32
    k = jnp.clip(jnp.asarray(step).astype(dtype), 0, total_steps)
    return 1 - (1 - tau_base.astype(dtype)) * (jnp.cos(math.pi * k / total_steps) + 1) / 2


def consistency_rampup(step: ArrayLike, rampup_steps: int, dtype=jnp.float32) -> Array:
    """Mean Teacher's ramp-up exp(-5 (1 - t)^2), t = clip(step / rampup_steps, 0, 1):
    exp(-5) at step 0, rising monotonically to 1 at `rampup_steps` and after
    (`rampup_steps=0`: 1 throughout)."""
    if int(rampup_steps) < 0:
        raise ValueError(f"consistency_rampup: rampup_steps must be >= 0, got {rampup_steps}")
    if int(rampup_steps) == 0:
        return jnp.ones((), dtype)
    t = jnp.clip(jnp.asarray(step).astype(dtype) / rampup_steps, 0, 1)
    return jnp.exp(-5 * (1 - t) ** 2)


# ------------------------------------------------------------------ collapse


class CollapseStats(eqx.Module):
    """`std_ratio` (about 1 isotropic, 0 collapsed) and `effective_rank` (in [1, d])
    of a batch of embeddings; see the module docstring."""

    std_ratio: Float[Array, ""]
    effective_rank: Float[Array, ""]


def collapse_stats(z: Float[ArrayLike, "B d"]) -> CollapseStats:
    """The collapse monitors of embeddings `z` (B, d), B >= 2."""
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"collapse_stats: embeddings must have shape (batch >= 2, d), got "
                         f"{z.shape}; flatten the features first")
    d = z.shape[1]
    tiny = jnp.finfo(z.dtype).tiny
    zn = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), tiny)
    std_ratio = jnp.mean(jnp.std(zn, axis=0)) * math.sqrt(d)
    zc = z - z.mean(0)
    cov = zc.T @ zc / z.shape[0]
    trace, frob2 = jnp.trace(cov), jnp.sum(cov * cov)
    # Embeddings without any variance (all equal) have rank 1, not 0 / 0.
    rank = jnp.where(frob2 > tiny, trace * trace / jnp.maximum(frob2, tiny), 1)
    return CollapseStats(std_ratio=std_ratio, effective_rank=rank)


class CollapseWarning(UserWarning):
    """A training run's embeddings have collapsed (see `CollapseMonitor`)."""


class CollapseMonitor:
    """Host-side watch over `CollapseStats` logged during training.

    `monitor(step, stats)` records the stats and warns (`CollapseWarning`, once) when
    `std_ratio < std_threshold` or `effective_rank < rank_threshold`; it returns
    whether this record is below a threshold. `flagged_at` is the first such step
    (None while it has not happened); `history` the (step, std_ratio,
    effective_rank) records."""

    def __init__(self, std_threshold: float = 0.2, rank_threshold: float = 2.0,
                 name: str = "training run"):
        if not std_threshold > 0 or not rank_threshold >= 1:
            raise ValueError("CollapseMonitor: std_threshold must be > 0 and rank_threshold "
                             f">= 1, got {std_threshold}, {rank_threshold}")
        self.std_threshold = float(std_threshold)
        self.rank_threshold = float(rank_threshold)
        self.name = name
        self.flagged_at: int | None = None
        self.history: list[tuple[int, float, float]] = []

    def __call__(self, step: int, stats: CollapseStats) -> bool:
        std, rank = float(stats.std_ratio), float(stats.effective_rank)
        self.history.append((int(step), std, rank))
        low = not (std >= self.std_threshold and rank >= self.rank_threshold)
        if low and self.flagged_at is None:
            self.flagged_at = int(step)
            warnings.warn(f"{self.name}: embeddings collapsing at step {step}: std ratio "
                          f"{std:.3g} (threshold {self.std_threshold}), effective rank "
                          f"{rank:.3g} (threshold {self.rank_threshold}); check the "
                          "predictor, the target's tau and the normalisation",
                          CollapseWarning, stacklevel=2)
        return low
