r"""GoodAI's Badger demonstration task, `GuessTarget`: guess a target from a scalar
error, an inner problem for `innerloop.ES` / `PES`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from innerloop.rules._badger import Badger, BadgerState

#: The inner state of a run: (expert states, target, last error, step count).
Carry = tuple[BadgerState, jax.Array, jax.Array, jax.Array]

__all__ = ["GuessTarget"]


class GuessTarget(eqx.Module):
    r"""GoodAI's demonstration task: guess a D-dimensional target t ~ N(0, I) from a
    scalar error. Each inner step the agent outputs a guess g and next reads only
    e = ||g - t||^2 / D through the slot "error" (chance: e = 1 for g = 0).

    The loss of a run is the mean error over its steps (weighted towards later steps
    by `late_weight`: step s of T has weight 1 + late_weight * s / T).

    Also an inner problem for `innerloop.ES` / `PES` (`init(key, theta)`,
    `unroll(state, theta, K)`, `T`).
    """

    badger: Badger
    dim: int = eqx.field(static=True)
    T: int | None = eqx.field(static=True)
    n_experts: int | None = eqx.field(default=None, static=True)
    late_weight: float = eqx.field(default=1.0, static=True)

    def init(self, key: jax.Array, theta: dict[str, Any]) -> Carry:
        k_s, k_t = jax.random.split(key)
        dtype = jnp.result_type(*jax.tree.leaves(theta))  # float64 meta -> float64 run
        state = self.badger.init_state(k_s, self.n_experts, dtype=dtype)
        target = jax.random.normal(k_t, (self.dim,), state.output.dtype)
        err = jnp.sum(target ** 2) / self.dim
        return (state, target, err, jnp.asarray(0, jnp.int32))

    def step(self, carry: Carry, theta: dict[str, Any]) -> tuple[Carry, jax.Array]:
        state, target, err, t = carry
        state, guess = self.badger.step(theta, state, {"error": err[None]})
        err = jnp.sum((guess - target) ** 2) / self.dim
        return (state, target, err, t + 1), err

    def unroll(self, carry: Carry, theta: dict[str, Any], K: int) -> tuple[Carry, jax.Array]:
        def body(c, _):
            c, err = self.step(c, theta)
            return c, (err, c[3])

        carry, (errs, ts) = jax.lax.scan(body, carry, None, length=K)
        T = self.T if self.T is not None else K
        w = 1.0 + self.late_weight * ts.astype(errs.dtype) / T
        return carry, jnp.sum(w * errs) / jnp.sum(w)

    def errors(self, theta: dict[str, Any], key: jax.Array, steps: int) -> jax.Array:
        """The error after every step of one run from a fresh state, (steps,)."""
        carry = self.init(key, theta)

        def body(c, _):
            return self.step(c, theta)

        return jax.lax.scan(body, carry, None, length=steps)[1]
