"""Bisection for scalar roots with a bracket."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from innerloop.solvers._base import RESULTS, AbstractIterativeSolver, FlatFn


class BisectionState(eqx.Module):
    lower: jax.Array
    upper: jax.Array
    sign_lower: jax.Array  # sign of g at `lower`
    failure: RESULTS


class Bisection(AbstractIterativeSolver):
    r"""Bisection on a bracket [lower, upper] of a scalar root of g(z) = z - f(z):

        m = (lower + upper) / 2;  keep the half whose ends g has opposite signs.

    The state must be one scalar (shape () or (1,); vmap for many). g(lower) and
    g(upper) must have opposite signs, else the solve ends as `RESULTS.no_bracket`
    (an error with `throw=True`). The
    bracket halves every iteration, so it converges for any continuous g, in about
    log2((upper - lower) / tol) iterations; z0, when inside the bracket, is the first
    point tried. Once the bracket cannot be halved in floating point without
    meeting the tolerance (g discontinuous at the root, or a tolerance below the
    dtype's resolution), the solve ends as `RESULTS.stagnated`.
    """

    lower: float
    upper: float

    def __check_init__(self):
        lo, hi = float(self.lower), float(self.upper)
        if not (lo < hi):
            raise ValueError(f"Bisection: need lower < upper, got lower={self.lower!r}, "
                             f"upper={self.upper!r}")

    def init(self, fn: FlatFn, z: jax.Array, fz: jax.Array, args: Any) -> BisectionState:
        if z.shape != (1,) or jnp.iscomplexobj(z):
            raise ValueError("Bisection: the state must be one real scalar, got "
                             f"{z.size} entries of dtype {z.dtype}")
        lo = jnp.full_like(z, self.lower)
        hi = jnp.full_like(z, self.upper)
        s_lo = jnp.sign(lo - fn(lo, args))
        s_hi = jnp.sign(hi - fn(hi, args))
        # No sign change: the solve ends at once, as `RESULTS.no_bracket`.
        failure = RESULTS.where(jnp.all(s_lo * s_hi > 0), RESULTS.no_bracket,
                                RESULTS.successful)
        # A start outside the bracket is replaced by the midpoint at the first step.
        return BisectionState(lo, hi, s_lo, failure)

    def step(self, fn: FlatFn, z: jax.Array, fz: jax.Array, state: BisectionState,
             args: Any) -> tuple[jax.Array, BisectionState]:
        g = z - fz
        inside = (z > state.lower) & (z < state.upper)
        same = jnp.sign(g) == state.sign_lower
        lower = jnp.where(inside & same, z, state.lower)
        upper = jnp.where(inside & ~same, z, state.upper)
        mid = lower + (upper - lower) / 2
        stuck = jnp.all((mid <= lower) | (mid >= upper))
        failure = RESULTS.where(stuck, RESULTS.stagnated, state.failure)
        return mid, BisectionState(lower, upper, state.sign_lower, failure)

    def failure(self, state: BisectionState) -> RESULTS:
        return state.failure


