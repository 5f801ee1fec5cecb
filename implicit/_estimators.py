r"""Meta-gradient estimators for long or chaotic unrolls: TBPTT, ES and PES.

All estimators work on a *truncated inner problem*: an object with

- `init(key, theta) -> state`: the inner state at the start of an episode;
- `unroll(state, theta, K) -> (state, loss)`: advance K inner steps and return the
  loss of this truncation (a scalar; differentiable in theta for `TruncatedBPTT`);
- `T`: the episode length in inner steps (`None`: the episode never ends).

and share one interface:

    est_state = estimator.init(key, theta)
    gradient, est_state, metrics = estimator.grad(key, theta, est_state)

An estimator may be built without its inner problem (`task=None`, e.g.
`PES(pairs=8, K=50, sigma=0.01)`): a configuration that a driver binds to the
problem it builds (`dataclasses.replace(estimator, task=problem)`; what
`innerloop.rules.meta_train` does). An unbound estimator cannot `init` or `grad`.

Each `grad` call advances every particle by one truncation of K steps; an episode
ends once T steps have been taken, and the next call starts a new one (fresh inner
states from `init`, PES's accumulated perturbations reset to zero). Particles are
vectorised with `jax.vmap`. `gradient` has theta's pytree structure; `metrics` holds
the mean truncation `loss`, the episode step `t` at which the truncation started and
whether the particles were `reset` first.

Let L_j(theta_1, ..., theta_j) be the loss of the j-th truncation of an episode when
truncation i runs with parameters theta_i, and L_j(theta) = L_j(theta, ..., theta):

- `TruncatedBPTT(task, K)`: dL_j / dtheta_j only (the state entering the truncation
  is a constant). Biased: it ignores theta's influence on the state (Williams and
  Peng 1990; Tallec and Ollivier 2017).
- `ES(task, sigma=, pairs=n, K=)`: antithetic evolution strategies (Salimans et al.
  2017) on one truncation from the unperturbed state,
  g = 1 / (2 n sigma^2) sum_i [L(theta + e_i) - L(theta - e_i)] e_i, e_i ~ N(0, sigma^2 I),
  an unbiased estimate of the Gaussian-smoothed gradient of that truncation (biased
  like TBPTT with respect to the whole episode), or, with `K=None`, of the whole
  episode's loss. `samples=n` instead of `pairs=n`: plain Monte Carlo,
  g = 1 / (n sigma^2) sum_i [L(theta + e_i) - L(theta)] e_i.
- `PES(task, sigma=, pairs=n, K=)`: persistent evolution strategies (Vicol, Metz and
  Sohl-Dickstein 2021). Each particle keeps its own inner state, unrolled with its
  own perturbations e_{i,1}, e_{i,2}, ..., and the sum xi_i of all perturbations
  since its episode began; with antithetic pairs (+e, -e)
  g = 1 / (2 n sigma^2) sum_i xi_i [L_j(theta + e_i.) - L_j(theta - e_i.)],
  which is unbiased for sum_i dE[L_j]/dtheta_i, the gradient of the smoothed loss
  of truncation j through the whole episode so far (for a quadratic loss, exactly
  dL_j/dtheta).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from innerloop._shared import check_positive_float, check_positive_int


class TruncatedProblem(Protocol):
    """What the estimators need from an inner problem (see the module docstring)."""

    T: int | None

    def init(self, key: jax.Array, theta: Any) -> Any: ...

    def unroll(self, state: Any, theta: Any, K: int) -> tuple[Any, jax.Array]: ...


# ----------------------------------------------------------------- the task


class InfluenceBalancing(eqx.Module):
    r"""The influence-balancing task (Tallec and Ollivier 2017, "Unbiased online
    recurrent optimization"; as used by Vicol et al. 2021).

        s_{t+1} = A s_t + theta * sign,   A = 0.5 (I + N),   s_0 = 1,

    N the shift (ones on the superdiagonal), `sign` = (+1 x positive, -1 x rest).
    The loss of a truncation is 0.5 (s_0 - 1)^2 at its end. At the steady state
    s*_0 = 2 theta (positive - (n - positive)) = -6 theta for n = 23, positive = 10, so
    the long-run loss is 0.5 (6 theta + 1)^2, minimised at theta = -1/6, with gradient
    36 theta + 6 (= 24 at theta = 0.5). One step of truncation sees only the direct
    influence of theta (gradient s_0 - 1 = -4 at theta = 0.5): the wrong sign.
    """

    n: int = 23
    positive: int = 10
    T: int | None = None

    def init(self, key: jax.Array, theta: jax.Array) -> jax.Array:
        del key
        return jnp.ones(self.n, jnp.result_type(theta, float))

    def _sign(self, dtype):
        return jnp.where(jnp.arange(self.n) < self.positive, 1.0, -1.0).astype(dtype)

    def unroll(self, state: jax.Array, theta: jax.Array, K: int) -> tuple[jax.Array, jax.Array]:
        drive = jnp.squeeze(theta) * self._sign(state.dtype)

        def step(s, _):
            shifted = jnp.concatenate([s[1:], jnp.zeros((1,), s.dtype)])
            return 0.5 * (s + shifted) + drive, None

        state, _ = lax.scan(step, state, None, length=K)
        return state, 0.5 * (state[0] - 1.0) ** 2

    def steady_state_loss(self, theta: jax.Array) -> jax.Array:
        """0.5 (s*_0 - 1)^2 at the fixed point of the recurrence."""
        s0 = 2.0 * jnp.squeeze(theta) * (2 * self.positive - self.n)
        return 0.5 * (s0 - 1.0) ** 2


# ------------------------------------------------------------ shared pieces


#: What `grad` reports besides the gradient: the mean truncation `loss`, the episode
#: step `t` the truncation started at, whether the particles were `reset` first.
Metrics = dict[str, jax.Array]


class _Episode(eqx.Module):
    t: jax.Array  # inner steps taken in the current episode (all particles in lockstep)


def _needs_reset(task, t):
    if task.T is None:
        return jnp.zeros((), bool)
    return t >= task.T


def _check_task(owner, task):
    """Check an inner problem; None (an unbound estimator) passes."""
    if task is None:
        return
    for name in ("init", "unroll"):
        if not callable(getattr(task, name, None)):
            raise TypeError(f"{owner}: the inner problem must have a method {name}(...); "
                            f"got {task!r}")
    if not hasattr(task, "T"):
        raise TypeError(f"{owner}: the inner problem must have an episode length T (an "
                        f"int, or None for an episode that never ends)")
    if task.T is not None:
        check_positive_int(f"{owner}: task.T", task.T)


def _bound_task(est):
    if est.task is None:
        name = type(est).__name__
        raise ValueError(f"{name}: no inner problem; give it as the first argument "
                         f"({name}(task, ...)) or bind it with dataclasses.replace("
                         f"estimator, task=problem)")
    return est.task


def _reset_tree(reset, fresh, old):
    return jax.tree.map(lambda a, b: jnp.where(reset, a, b), fresh, old)


def _centred_ranks(x):
    """Ranks of x mapped to [-0.5, 0.5] (Salimans et al. 2017)."""
    ranks = jnp.argsort(jnp.argsort(x.ravel())).reshape(x.shape)
    return (ranks / (x.size - 1) - 0.5).astype(x.dtype)


# ------------------------------------------------------------------- TBPTT


class TruncatedBPTT(eqx.Module):
    """Truncated backpropagation through time: the gradient of each K-step truncation
    with the entering state held constant. Biased (see the module docstring).

    - `task`: the inner problem (None: unbound, see the module docstring); `K`: the
      truncation length.
    - `batch`: None (one inner state), or a number of independent inner states, each
      initialised from its own key and all advanced together (`jax.vmap`); the loss
      is their mean.
    """

    task: Any = None
    K: int | None = None
    batch: int | None = eqx.field(default=None, kw_only=True)

    def __check_init__(self):
        if self.K is None:
            raise ValueError("TruncatedBPTT: give the truncation length K")
        check_positive_int("TruncatedBPTT: K", self.K)
        if self.batch is not None:
            check_positive_int("TruncatedBPTT: batch", self.batch)
        _check_task("TruncatedBPTT", self.task)

    def _init_inner(self, key, theta):
        task = _bound_task(self)
        if self.batch is None:
            return task.init(key, theta)
        return jax.vmap(lambda k: task.init(k, theta))(jax.random.split(key, self.batch))

    def _unroll(self, inner, theta):
        if self.batch is None:
            return self.task.unroll(inner, theta, self.K)
        new, losses = jax.vmap(lambda s: self.task.unroll(s, theta, self.K))(inner)
        return new, jnp.mean(losses)

    def init(self, key: jax.Array, theta: Any) -> tuple[Any, _Episode]:
        return (self._init_inner(key, theta), _Episode(jnp.asarray(0, jnp.int32)))

    def grad(self, key: jax.Array, theta: Any,
             state: tuple[Any, _Episode]) -> tuple[Any, tuple[Any, _Episode], Metrics]:
        inner, ep = state
        reset = _needs_reset(_bound_task(self), ep.t)
        inner = _reset_tree(reset, self._init_inner(key, theta), inner)
        t = jnp.where(reset, 0, ep.t)
        inner = lax.stop_gradient(inner)

        def loss(th):
            new, value = self._unroll(inner, th)
            return value, new

        (value, inner), g = jax.value_and_grad(loss, has_aux=True)(theta)
        metrics = {"loss": value, "t": t, "reset": reset}
        return g, (inner, _Episode(t + self.K)), metrics


# ---------------------------------------------------------------------- ES


def _population(owner, pairs, samples, samples_allowed=True):
    """Check that exactly one of pairs= / samples= is given."""
    what = ("pairs= (antithetic: 2 * pairs unrolls) or samples= (plain Monte Carlo: one "
            "unroll each, plus the unperturbed baseline)")
    if not samples_allowed:
        if pairs is None:
            raise ValueError(f"{owner}: give pairs=, the number of antithetic pairs "
                             f"(2 * pairs particles)")
    elif (pairs is None) == (samples is None):
        raise ValueError(f"{owner}: give exactly one of {what}; got "
                         f"{'neither' if pairs is None else 'both'}")
    if pairs is not None:
        check_positive_int(f"{owner}: pairs", pairs)
    if samples is not None:
        check_positive_int(f"{owner}: samples", samples)


def _check_sigma(owner, sigma):
    if sigma is None:
        raise ValueError(f"{owner}: give sigma=, the perturbation scale")
    check_positive_float(f"{owner}: sigma", sigma)


class ES(eqx.Module):
    r"""Evolution strategies on a truncation: antithetic,
    g = 1/(2 n sigma^2) sum_i (L+_i - L-_i) e_i, or plain Monte Carlo,
    g = 1/(n sigma^2) sum_i (L_i - L(theta)) e_i.

    Every argument but `task` is given by name:

    - `task`: the inner problem (None: unbound, see the module docstring).
    - `sigma`: perturbation scale.
    - exactly one of `pairs`: n antithetic pairs (theta + e_i, theta - e_i; 2 n
      unrolls), and `samples`: n independent perturbations (n unrolls plus the
      unperturbed one, the baseline).
    - `K`: truncation length; `None` estimates over whole episodes (each call runs
      an episode of `task.T` steps from a fresh `init`).
    - `centred_ranks=True`: replace the losses by their centred ranks (robust to the
      loss's scale; no longer an unbiased gradient estimate).
    - `sharding`: a sharding of the population axis across devices, e.g.
      `population_sharding()`; XLA then runs each device's particles there and
      all-reduces the estimate (n must be divisible by the number of devices).
    """

    task: Any = None
    sigma: float | None = eqx.field(default=None, kw_only=True)
    pairs: int | None = eqx.field(default=None, kw_only=True)
    samples: int | None = eqx.field(default=None, kw_only=True)
    K: int | None = eqx.field(default=None, kw_only=True)
    centred_ranks: bool = eqx.field(default=False, kw_only=True)
    sharding: Any = eqx.field(default=None, kw_only=True)

    def __check_init__(self):
        _check_sigma("ES", self.sigma)
        _population("ES", self.pairs, self.samples)
        _check_task("ES", self.task)
        if self.K is None:
            if self.task is not None and self.task.T is None:
                raise ValueError("ES: over whole episodes (K=None) it needs an inner "
                                 "problem with a finite episode length T; give K=")
        else:
            check_positive_int("ES: K", self.K)

    @property
    def _draws(self) -> int:
        """Perturbations e_i drawn per estimate: pairs, or samples."""
        return self.pairs if self.pairs is not None else self.samples

    def init(self, key: jax.Array, theta: Any) -> tuple[Any, _Episode]:
        return (_bound_task(self).init(key, theta), _Episode(jnp.asarray(0, jnp.int32)))

    def grad(self, key: jax.Array, theta: Any,
             state: tuple[Any, _Episode]) -> tuple[Any, tuple[Any, _Episode], Metrics]:
        _bound_task(self)
        inner, ep = state
        k_init, k_eps = jax.random.split(key)
        if self.K is None:
            reset, t, K = jnp.ones((), bool), jnp.asarray(0, jnp.int32), self.task.T
        else:
            reset, K = _needs_reset(self.task, ep.t), self.K
            t = jnp.where(reset, 0, ep.t)
        inner = _reset_tree(reset, self.task.init(k_init, theta), inner)
        flat, unravel = ravel_pytree(theta)
        eps = self.sigma * jax.random.normal(k_eps, (self._draws,) + flat.shape, flat.dtype)
        eps = _shard(eps, self.sharding)

        def run(th_flat):
            return self.task.unroll(inner, unravel(th_flat), K)[1]

        new_inner, base = self.task.unroll(inner, theta, K)
        if self.pairs is not None:
            lp = jax.vmap(run)(flat + eps)
            lm = jax.vmap(run)(flat - eps)
            if self.centred_ranks:
                r = _centred_ranks(jnp.concatenate([lp, lm]))
                lp, lm = r[: self._draws], r[self._draws:]
            g = (lp - lm) @ eps / (2 * self._draws * self.sigma ** 2)
            mean_loss = 0.5 * (jnp.mean(lp) + jnp.mean(lm))
        else:
            lp = jax.vmap(run)(flat + eps)
            mean_loss = jnp.mean(lp)
            if self.centred_ranks:
                lp, base_ = _centred_ranks(lp), 0.0
            else:
                base_ = base
            g = (lp - base_) @ eps / (self._draws * self.sigma ** 2)
        metrics = {"loss": base, "particle_loss": mean_loss, "t": t, "reset": reset}
        next_t = t + K if self.K is not None else jnp.asarray(0, jnp.int32)
        return unravel(g), (new_inner, _Episode(next_t)), metrics


# --------------------------------------------------------------------- PES


def population_sharding(devices: Sequence[jax.Device] | None = None,
                        axis: str = "population") -> jax.sharding.NamedSharding:
    """A sharding that splits a leading population axis (ES/PES particles, tasks)
    across `devices` (default: all of them) and replicates everything else. Works
    for one process and, after `jax.distributed.initialize()`, across hosts."""
    devices = jax.devices() if devices is None else list(devices)
    mesh = jax.sharding.Mesh(np.asarray(devices), (axis,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def _shard(tree, sharding):
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: lax.with_sharding_constraint(x, sharding), tree)


class _PESState(eqx.Module):
    plus: Any  # inner states of the +e particles, leading axis n
    minus: Any  # inner states of the -e particles
    xi: jax.Array  # (n, dim): sum of the perturbations since the episode began
    t: jax.Array


class PES(eqx.Module):
    r"""Persistent evolution strategies (Vicol, Metz and Sohl-Dickstein 2021), with
    antithetic pairs:

        g = 1 / (2 n sigma^2) sum_i xi_i [L_j(theta + e_i) - L_j(theta - e_i)],

    where particle pair i runs its own inner states with +e_i and -e_i, draws a new
    e_i ~ N(0, sigma^2 I) each truncation, and xi_i is the sum of all its e_i since
    its episode began (reset to 0 with the inner states at the episode's end).
    Unbiased for the gradient of the (smoothed) truncation loss through the whole
    episode so far, whatever K.

    Every argument but `task` is given by name:

    - `task`: the inner problem (None: unbound, see the module docstring).
    - `sigma`: perturbation scale; `pairs`: n, the number of antithetic pairs
      (2 n particles); `K`: truncation length.
    - `sharding`: a sharding of the particle axis across devices (see `ES`); the
      particles' inner states and accumulated perturbations stay on their devices
      from one truncation to the next.
    """

    task: Any = None
    sigma: float | None = eqx.field(default=None, kw_only=True)
    pairs: int | None = eqx.field(default=None, kw_only=True)
    K: int | None = eqx.field(default=None, kw_only=True)
    sharding: Any = eqx.field(default=None, kw_only=True)

    def __check_init__(self):
        _check_sigma("PES", self.sigma)
        _population("PES", self.pairs, None, samples_allowed=False)
        if self.K is None:
            raise ValueError("PES: give K=, the truncation length")
        check_positive_int("PES: K", self.K)
        _check_task("PES", self.task)

    @property
    def _draws(self) -> int:
        """Perturbations e_i drawn per truncation: one per pair."""
        return self.pairs

    def _fresh(self, key, theta, dim, dtype):
        task = _bound_task(self)
        keys = jax.random.split(key, self._draws)
        inner = jax.vmap(lambda k: task.init(k, theta))(keys)
        return _shard((inner, jnp.zeros((self._draws, dim), dtype)), self.sharding)

    def init(self, key: jax.Array, theta: Any) -> _PESState:
        flat, _ = ravel_pytree(theta)
        inner, xi = self._fresh(key, theta, flat.shape[0], flat.dtype)
        return _PESState(inner, inner, xi, jnp.asarray(0, jnp.int32))

    def grad(self, key: jax.Array, theta: Any,
             state: _PESState) -> tuple[Any, _PESState, Metrics]:
        k_init, k_eps = jax.random.split(key)
        flat, unravel = ravel_pytree(theta)
        reset = _needs_reset(_bound_task(self), state.t)
        fresh, zeros = self._fresh(k_init, theta, flat.shape[0], flat.dtype)
        plus = _reset_tree(reset, fresh, state.plus)
        minus = _reset_tree(reset, fresh, state.minus)
        xi = jnp.where(reset, zeros, state.xi)
        t = jnp.where(reset, 0, state.t)

        eps = self.sigma * jax.random.normal(k_eps, (self._draws,) + flat.shape, flat.dtype)
        eps = _shard(eps, self.sharding)

        def run(s, th_flat):
            return self.task.unroll(s, unravel(th_flat), self.K)

        plus, lp = jax.vmap(run)(plus, flat + eps)
        minus, lm = jax.vmap(run)(minus, flat - eps)
        xi = xi + eps
        g = jnp.einsum("i,ij->j", lp - lm, xi) / (2 * self._draws * self.sigma ** 2)
        metrics = {"loss": 0.5 * (jnp.mean(lp) + jnp.mean(lm)), "t": t, "reset": reset}
        return unravel(g), _PESState(plus, minus, xi, t + self.K), metrics
