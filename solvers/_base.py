"""The shared driver loop, the `Solution` record and the solver interface.

Every forward solver works on one flat vector `z` (one example: under `vmap` each
example runs its own copy of the loop and stops on its own). `implicit.fixed_point`
flattens pytree states before they reach here and unflattens the result.

The loop carries `(k, z, f(z), residual(z), solver_state)`: `f` is evaluated exactly
once per iteration, and the residual is measured on the iterate that is returned,
so `Solution.residual` is the residual of `Solution.value`.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Literal

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jax import lax

LoopKind = Literal["lax", "bounded", "checkpointed"]
FlatFn = Callable[[jax.Array, Any], jax.Array]

# Floor of the norm in the relative residual ||f(z) - z|| / max(||z||, NORM_FLOOR).
NORM_FLOOR = 1e-8


class Solution(eqx.Module):
    """The result of a solve.

    - `value`: the solution (same pytree structure as the initial guess).
    - `steps`: int array, iterations used (per example under `vmap`).
    - `residual`: float array, the relative residual ||f(z) - z|| / max(||z||, 1e-8)
      of `value`.
    - `converged`: bool array, `residual <= tol`.
    - `trace`: with `trace=True`, the residual before each iteration, a fixed-length
      array of `max_steps + 1` entries (NaN after the solve stopped); else `None`.
    """

    value: Any
    steps: jax.Array
    residual: jax.Array
    converged: jax.Array
    trace: jax.Array | None = None


def relative_residual(z: jax.Array, fz: jax.Array) -> jax.Array:
    """||f(z) - z|| / max(||z||, 1e-8) for one flat example."""
    num = jnp.linalg.norm(fz - z)
    den = jnp.maximum(jnp.linalg.norm(z), jnp.asarray(NORM_FLOOR, z.dtype))
    return num / den


class AbstractSolver(eqx.Module):
    """A forward fixed-point solver for z = f(z, args), z a flat vector.

    A solver is `init` plus `step`; the loop in `solve` is shared by all of them.
    `step` receives the current iterate and f at it and returns the next iterate.
    """

    @abc.abstractmethod
    def init(self, fn: FlatFn, z: jax.Array, fz: jax.Array, args: Any) -> Any:
        """The solver's state before the first step."""

    @abc.abstractmethod
    def step(
        self, fn: FlatFn, z: jax.Array, fz: jax.Array, state: Any, args: Any
    ) -> tuple[jax.Array, Any]:
        """Given z_k and f(z_k), return z_{k+1} and the new state."""

    def solve(
        self,
        fn: FlatFn,
        z0: jax.Array,
        args: Any,
        *,
        tol: float,
        max_steps: int,
        kind: LoopKind = "lax",
        trace: bool = False,
        checkpoints: int | None = None,
    ) -> Solution:
        """Iterate until the relative residual is at most `tol` or `max_steps` is hit.

        `kind` picks the loop primitive: `"lax"` (forward-mode differentiable, no
        reverse mode; what every gradient mode except the unrolled ones uses),
        `"bounded"` (reverse mode through every iteration, memory linear in
        `max_steps`) or `"checkpointed"` (reverse mode with sub-linear memory, no
        forward mode; `checkpoints` is its number of checkpoints).
        """
        return run_loop(self, fn, z0, args, tol=tol, max_steps=max_steps, kind=kind,
                        trace=trace, checkpoints=checkpoints)


def run_loop(
    solver: AbstractSolver,
    fn: FlatFn,
    z0: jax.Array,
    args: Any,
    *,
    tol: float,
    max_steps: int,
    kind: LoopKind = "lax",
    trace: bool = False,
    checkpoints: int | None = None,
) -> Solution:
    fz0 = fn(z0, args)
    r0 = relative_residual(z0, fz0)
    state0 = solver.init(fn, z0, fz0, args)
    if trace:
        history0 = jnp.full((max_steps + 1,), jnp.nan, r0.dtype).at[0].set(r0)
    else:
        history0 = None
    carry0 = (jnp.asarray(0, jnp.int32), z0, fz0, r0, state0, history0)
    freeze_fz = kind != "lax"  # "lax" loops have no reverse mode

    def active(k, r):
        # A NaN residual fails `r > tol`: a diverged solve stops, unconverged.
        return (k < max_steps) & (r > tol)

    def cond(carry):
        k, _, _, r, _, _ = carry
        # Under vmap: run while any example is active. The predicate is reduced over
        # the batch here, so JAX does not select every carried array per example
        # (the solver's history would be copied each iteration); the body freezes
        # the finished examples' iterate, residual and step count itself.
        return eqxi.unvmap_any(active(k, r))

    def body(carry):
        k, z, fz, r, state, history = carry
        on = active(k, r)
        z_new, state = solver.step(fn, z, fz, state, args)
        fz_new = fn(z_new, args)
        r_new = relative_residual(z_new, fz_new)
        # A finished example's solver state keeps moving, but never reaches the
        # output: its z, residual and count stay frozen. Its f(z) is not read after the
        # loop, so the "lax" loop lets it move too (one select fewer per iteration:
        # 3-4% of a cheap f, measured). The reverse-differentiable loops freeze it:
        # there a zero cotangent would meet the Jacobian of f along a path that
        # wandered off the fixed point, and 0 * inf is NaN. (Forward mode is safe:
        # the selects never mix that path's tangents into the output.)
        z_new = jnp.where(on, z_new, z)
        if freeze_fz:
            fz_new = jnp.where(on, fz_new, fz)
        r_new = jnp.where(on, r_new, r)
        if history is not None:
            slot = jnp.where(on, k + 1, max_steps + 1)  # out of range: dropped
            history = history.at[slot].set(r_new, mode="drop")
        return k + on.astype(k.dtype), z_new, fz_new, r_new, state, history

    final = while_loop(cond, body, carry0, kind=kind, max_steps=max_steps,
                       checkpoints=checkpoints)
    k, z, _, r, _, history = final
    return Solution(value=z, steps=k, residual=r, converged=r <= tol, trace=history)


def while_loop(cond, body, carry, *, kind: LoopKind, max_steps: int,
               checkpoints: int | None = None):
    """The loop primitive behind every solve, by `kind`: `"lax"` (no reverse mode),
    `"bounded"` (one scan of length max_steps: plain backpropagation through time,
    every iterate stored; equinox's default base would nest scans and recompute) or
    `"checkpointed"` (treeverse with `checkpoints`, None: equinox's default)."""
    if kind == "lax":
        return lax.while_loop(cond, body, carry)
    if kind == "bounded":
        return eqxi.while_loop(cond, body, carry, max_steps=max_steps, kind=kind,
                               base=max_steps)
    return eqxi.while_loop(cond, body, carry, max_steps=max_steps, kind=kind,
                           checkpoints=checkpoints)


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive float, got {value!r}") from None
    ok = (v >= 0 if allow_zero else v > 0) and v == v and v != float("inf")
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
