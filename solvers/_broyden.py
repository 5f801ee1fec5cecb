"""Limited-memory Broyden with a line search (Broyden 1965; as used by deep
equilibrium models, Bai et al. 2019)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from innerloop.solvers._base import FlatFn, check_positive_int
from innerloop.solvers._newton import LineSearchState, _LineSearchSolver


class BroydenMatrix(eqx.Module):
    sigma: jax.Array  # H_0 = I / sigma
    us: jax.Array  # (memory, n): H = I / sigma + us.T @ vs
    vs: jax.Array  # (memory, n)
    updates: jax.Array  # number of rank-one updates stored so far


def _apply(h: BroydenMatrix, x: jax.Array) -> jax.Array:
    return x / h.sigma + h.us.T @ (h.vs @ x)


def _apply_t(h: BroydenMatrix, x: jax.Array) -> jax.Array:
    """x^T H."""
    return x / h.sigma + (h.us @ x) @ h.vs


class Broyden(_LineSearchSolver):
    r"""Limited-memory "good" Broyden on g(z) = z - f(z), with a backtracking line
    search.

    H approximates (dg/dz)^{-1}. It starts as I / sigma, with sigma the Rayleigh
    quotient g^T (dg/dz) g / g^T g at z0 (one Jacobian-vector product), so the first
    step has the right sign and scale whichever sign convention g has. Each accepted
    step z -> z + t d, d = -H g(z), is followed by the Sherman-Morrison update with
    s = z_new - z, y = g_new - g:

        H <- H + (s - H y) s^T H / (s^T H y),

    stored as rank-one factors H = I / sigma + sum_i u_i v_i^T. A trial step is
    halved until ||g||^2 falls sufficiently below the largest of its last
    `nonmonotone` accepted values (a non-monotone Armijo search: quasi-Newton steps
    on equilibrium layers often raise ||g|| for a step and then converge, and a
    monotone search cut the steps there, taking twice the iterations); when `max_halvings`
    halvings fail, or `memory` factors are stored, H restarts from I / sigma at the
    current point (dropping the oldest factor of a product-form Broyden matrix is not
    a valid update). A restart that fails too ends the solve as
    `RESULTS.stagnated`. An update whose denominator is numerically zero is skipped.

    Bai, Kolter and Koltun 2019, "Deep equilibrium models"; Broyden 1965; Dennis and
    Schnabel 1996, 8.1 and 6.3.
    """

    memory: int = 20
    max_halvings: int = 10
    nonmonotone: int = 5

    def __check_init__(self):
        check_positive_int("Broyden(memory=...)", self.memory)
        check_positive_int(f"{type(self).__name__}(max_halvings=...)", self.max_halvings)
        check_positive_int(f"{type(self).__name__}(nonmonotone=...)", self.nonmonotone)

    def init_extra(self, fn: FlatFn, z: jax.Array, g: jax.Array, args: Any) -> BroydenMatrix:
        m, n = self.memory, z.shape[0]
        _, jg = jax.jvp(lambda v: v - fn(v, args), (z,), (g,))
        sigma = jnp.vdot(g, jg) / jnp.vdot(g, g)
        # A zero or non-finite quotient (g = 0, or g orthogonal to its image): H_0 = I.
        tiny = jnp.finfo(jnp.real(z).dtype).eps
        sigma = jnp.where(jnp.isfinite(sigma) & (jnp.abs(sigma) > tiny), sigma, 1)
        return BroydenMatrix(sigma.astype(z.dtype), jnp.zeros((m, n), z.dtype),
                             jnp.zeros((m, n), z.dtype), jnp.zeros((), jnp.int32))

    def direction(self, fn: FlatFn, z: jax.Array, g: jax.Array, state: LineSearchState,
                  args: Any) -> tuple[jax.Array, BroydenMatrix]:
        h = state.extra
        s = z - state.z_acc
        y = g - state.g_acc
        h_y = _apply(h, y)
        s_h = _apply_t(h, jnp.conj(s))
        denom = jnp.vdot(s, h_y)
        small = jnp.finfo(jnp.real(z).dtype).eps * jnp.linalg.norm(s) * jnp.linalg.norm(h_y)
        ok = state.started & jnp.isfinite(denom) & (jnp.abs(denom) > small)
        full = ok & (h.updates >= self.memory)
        # Restart from H_0 once the memory is full: the new pair is then the first.
        us = jnp.where(full, 0, h.us)
        vs = jnp.where(full, 0, h.vs)
        updates = jnp.where(full, 0, h.updates)
        h = BroydenMatrix(h.sigma, us, vs, updates)
        h_y = _apply(h, y)
        s_h = _apply_t(h, jnp.conj(s))
        denom = jnp.vdot(s, h_y)
        ok = ok & jnp.isfinite(denom) & (jnp.abs(denom) > small)
        safe = jnp.where(ok, denom, 1)
        u = jnp.where(ok, (s - h_y) / safe, 0)
        v = jnp.where(ok, s_h, 0)
        slot = jnp.minimum(updates, self.memory - 1)
        h = BroydenMatrix(h.sigma, us.at[slot].set(u), vs.at[slot].set(v),
                          updates + ok.astype(jnp.int32))
        return -_apply(h, g), h

    def restart(self, fn: FlatFn, state: LineSearchState,
                args: Any) -> tuple[jax.Array, BroydenMatrix, jax.Array]:
        h = state.extra
        fresh = h.updates > 0
        h = BroydenMatrix(h.sigma, jnp.zeros_like(h.us), jnp.zeros_like(h.vs),
                          jnp.zeros((), jnp.int32))
        return -_apply(h, state.g_acc), h, fresh
