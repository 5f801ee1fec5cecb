"""Limited-memory Broyden, as used by deep equilibrium models (Bai et al. 2019)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._base import AbstractSolver, FlatFn, check_positive_int


class BroydenState(eqx.Module):
    us: jax.Array  # (memory, n): the inverse Jacobian estimate is B = -I + us.T @ vs
    vs: jax.Array  # (memory, n)
    updates: jax.Array  # number of rank-one updates stored so far
    z_prev: jax.Array
    g_prev: jax.Array
    started: jax.Array  # False before the first step: no secant pair yet


class Broyden(AbstractSolver):
    r"""Limited-memory "good" Broyden on g(z) = f(z) - z.

    B approximates (dg/dz)^{-1}, starting from -I (so the first step is a plain
    fixed-point step). Each step is z_{k+1} = z_k - B g(z_k), followed by the
    Sherman-Morrison update with dz = z_{k+1} - z_k, dg = g_{k+1} - g_k:

        B <- B + (dz - B dg) dz^T B / (dz^T B dg),

    stored as rank-one factors B = -I + sum_i u_i v_i^T. Once `memory` factors are
    stored the method restarts from B = -I (the DEQ reference code overwrites the
    oldest factor instead, which is not a valid Broyden matrix and diverged in our
    tests), and an update whose denominator is numerically zero is skipped. No line
    search: the method is meant for the mildly nonlinear maps of DEQs.

    Bai, Kolter and Koltun 2019, "Deep equilibrium models"; Broyden 1965.
    """

    memory: int = 20

    def __check_init__(self):
        check_positive_int("memory", self.memory)

    def init(self, fn: FlatFn, z, fz, args: Any) -> BroydenState:
        m, n = self.memory, z.shape[0]
        return BroydenState(
            us=jnp.zeros((m, n), z.dtype),
            vs=jnp.zeros((m, n), z.dtype),
            updates=jnp.asarray(0, jnp.int32),
            z_prev=z,
            g_prev=fz - z,
            started=jnp.asarray(False),
        )

    def step(self, fn, z, fz, state: BroydenState, args):
        us, vs = state.us, state.vs
        g = fz - z
        dz = z - state.z_prev
        dg = g - state.g_prev
        b_dg = -dg + us.T @ (vs @ dg)  # B dg
        dz_b = -dz + (us @ dz) @ vs  # dz^T B
        denom = dz @ b_dg
        ok = state.started & jnp.isfinite(denom)
        # Restart from B = -I once the memory is full: dropping the oldest factor of a
        # product-form Broyden matrix is not a valid update (the later factors were
        # built on it), and that variant diverged in our tests.
        full = ok & (state.updates >= self.memory)
        us = jnp.where(full, 0, us)
        vs = jnp.where(full, 0, vs)
        slot = jnp.where(full, 0, state.updates)
        b_dg = jnp.where(full, -dg, b_dg)
        dz_b = jnp.where(full, -dz, dz_b)
        denom = jnp.where(full, dz @ b_dg, denom)
        small = jnp.finfo(z.dtype).eps * jnp.linalg.norm(dz) * jnp.linalg.norm(b_dg)
        ok = ok & (jnp.abs(denom) > small)
        safe = jnp.where(ok, denom, 1)
        u = jnp.where(ok, (dz - b_dg) / safe, 0)
        v = jnp.where(ok, dz_b, 0)
        # A skipped update writes a zero factor without advancing: the next real
        # update overwrites it.
        slot = jnp.minimum(slot, self.memory - 1)
        us = us.at[slot].set(u)
        vs = vs.at[slot].set(v)
        updates = jnp.where(full, 0, state.updates) + ok.astype(jnp.int32)
        z_new = z + g - us.T @ (vs @ g)  # z - B g
        new_state = BroydenState(us, vs, updates, z, g, jnp.asarray(True))
        return z_new, new_state
