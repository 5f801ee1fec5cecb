"""Plain (damped) fixed-point iteration."""

from __future__ import annotations

from typing import Any

import jax

from innerloop.solvers._base import AbstractIterativeSolver, FlatFn, check_positive_float


class Iteration(AbstractIterativeSolver):
    """Damped fixed-point (Picard / Krasnosel'skii-Mann) iteration.

        z_{k+1} = z_k + damping * (f(z_k) - z_k)

    `damping=1` is plain iteration z_{k+1} = f(z_k). For an L-contractive f it
    converges linearly with rate L (Banach). One f-evaluation per iteration.
    """

    damping: float = 1.0

    def __check_init__(self):
        check_positive_float("Iteration(damping=...)", self.damping)

    def init(self, fn: FlatFn, z: jax.Array, fz: jax.Array, args: Any) -> None:
        return None

    def step(self, fn: FlatFn, z: jax.Array, fz: jax.Array, state: None,
             args: Any) -> tuple[jax.Array, None]:
        if self.damping == 1.0:
            return fz, state
        return z + self.damping * (fz - z), state
