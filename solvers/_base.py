"""The shared driver loop, the `Solution` record, `RESULTS` and the solver interface.

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

from innerloop._shared import (  # noqa: F401
    RESULTS,
    _squared_norm,
    check_positive_float,
    check_positive_int,
    converged,
    converged_squared,
    final_result,
    progress_bound,
    while_loop,
)

LoopKind = Literal["lax", "bounded", "checkpointed"]
FlatFn = Callable[[jax.Array, Any], jax.Array]

class Solution(eqx.Module):
    """The result of a solve.

    - `value`: the solution (same pytree structure as the initial guess).
    - `steps`: int array, iterations used (per example under `vmap`).
    - `residual`: float array, ||f(z) - z|| of `value` (||g(z)|| for `root`), in the
      2-norm over all entries.
    - `converged`: bool array, `result == RESULTS.successful`.
    - `result`: a `RESULTS` item naming how the solve ended.
    - `trace`: with `trace=True`, the residual before each iteration, a fixed-length
      array of `max_steps + 1` entries (NaN after the solve stopped); else `None`.
    - `aux`: with `has_aux=True`, the auxiliary output of f at `value`; else `None`.
    """

    value: Any
    steps: jax.Array
    residual: jax.Array
    converged: jax.Array
    result: RESULTS
    trace: jax.Array | None = None
    aux: Any = None


class AbstractSolver(eqx.Module):
    """A forward fixed-point solver for z = f(z, args), z a flat vector: anything with
    `solve`. `fixed_point`, `root` and the gradient modes only call `solve`."""

    @abc.abstractmethod
    def solve(
        self,
        fn: FlatFn,
        z0: jax.Array,
        args: Any,
        *,
        rtol: float,
        atol: float,
        max_steps: int,
        kind: LoopKind = "lax",
        trace: bool = False,
        checkpoints: int | None = None,
    ) -> Solution:
        """Solve z = fn(z, args) from z0 until `converged` holds or `max_steps`.

        `kind` picks the loop primitive: `"lax"` (forward-mode differentiable, no
        reverse mode; what every gradient mode except the unrolled ones uses),
        `"bounded"` (reverse mode through every iteration, memory linear in
        `max_steps`) or `"checkpointed"` (reverse mode with sub-linear memory, no
        forward mode; `checkpoints` is its number of checkpoints).
        """


class AbstractIterativeSolver(AbstractSolver):
    """A solver that is `init` plus `step`, driven by the loop shared by all of them.

    `step` receives the current iterate and f at it and returns the next iterate.
    A solver that can fail on its own (a line search that finds no decrease, a
    singular Jacobian) says so through `failure(state)`, which stops the example.
    """

    @abc.abstractmethod
    def init(self, fn: FlatFn, z: jax.Array, fz: jax.Array, args: Any) -> Any:
        """The solver's state before the first step."""

    @abc.abstractmethod
    def step(
        self, fn: FlatFn, z: jax.Array, fz: jax.Array, state: Any, args: Any
    ) -> tuple[jax.Array, Any]:
        """Given z_k and f(z_k), return z_{k+1} and the new state."""

    def failure(self, state: Any) -> RESULTS | None:
        """`RESULTS.successful` while the solver can go on, else why it cannot
        (`stagnated`, `linear_solve_failed`). None: the solver never fails."""
        return None

    def solve(
        self,
        fn: FlatFn,
        z0: jax.Array,
        args: Any,
        *,
        rtol: float,
        atol: float,
        max_steps: int,
        kind: LoopKind = "lax",
        trace: bool = False,
        checkpoints: int | None = None,
    ) -> Solution:
        """Iterate until `converged` holds, the solver fails, or `max_steps` is hit
        (`kind`: see `AbstractSolver.solve`)."""
        return run_loop(self, fn, z0, args, rtol=rtol, atol=atol, max_steps=max_steps,
                        kind=kind, trace=trace, checkpoints=checkpoints)


def run_loop(
    solver: AbstractIterativeSolver,
    fn: FlatFn,
    z0: jax.Array,
    args: Any,
    *,
    rtol: float,
    atol: float,
    max_steps: int,
    kind: LoopKind = "lax",
    trace: bool = False,
    checkpoints: int | None = None,
) -> Solution:
    fz0 = fn(z0, args)
    r0 = jnp.linalg.norm(fz0 - z0)
    znorm0 = jnp.linalg.norm(z0)
    bound = progress_bound(r0, znorm0, rtol, atol)
    ok0 = converged(r0, znorm0, bound, rtol, atol)
    state0 = solver.init(fn, z0, fz0, args)
    if trace:
        history0 = jnp.full((max_steps + 1,), jnp.nan, r0.dtype).at[0].set(r0)
    else:
        history0 = None
    carry0 = (jnp.asarray(0, jnp.int32), z0, fz0, r0, ok0, state0, history0)

    def active(k, r, ok, state):
        # A NaN residual never passes `converged`, and stops the example here.
        on = (k < max_steps) & ~ok & jnp.isfinite(r)
        fail = solver.failure(state)
        return on if fail is None else on & (fail == RESULTS.successful)

    def cond(carry):
        k, _, _, r, ok, state, _ = carry
        # Under vmap: run while any example is active. The predicate is reduced over
        # the batch here, so JAX does not select every carried array per example
        # (the solver's history would be copied each iteration); the body freezes
        # the finished examples' iterate and step count itself.
        return eqxi.unvmap_any(active(k, r, ok, state))

    def body(carry):
        k, z, fz, r, ok, state, history = carry
        on = active(k, r, ok, state)
        z_new, state = solver.step(fn, z, fz, state, args)
        # A finished example's solver state keeps moving but never reaches the output:
        # its iterate is frozen before f is evaluated, so f(z), the residual and the
        # test are recomputed at the same point and stay as they were, without a
        # select each (and reverse mode never meets a path that wandered off).
        z_new = jnp.where(on, z_new, z)
        fz_new = fn(z_new, args)
        # The loop carries the squared residual: its square root is then one kernel
        # after the loop instead of one per iteration.
        r2 = _squared_norm(fz_new - z_new)
        ok_new = converged_squared(r2, _squared_norm(z_new), bound, rtol, atol)
        if history is not None:
            slot = jnp.where(on, k + 1, max_steps + 1)  # out of range: dropped
            history = history.at[slot].set(jnp.sqrt(r2), mode="drop")
        return k + on.astype(k.dtype), z_new, fz_new, r2, ok_new, state, history

    carry0 = (*carry0[:3], r0 * r0, *carry0[4:])
    final = while_loop(cond, body, carry0, kind=kind, max_steps=max_steps,
                       checkpoints=checkpoints)
    k, z, _, r2, ok, state, history = final
    r = jnp.sqrt(r2)
    result = final_result(ok, r, solver.failure(state))
    return Solution(value=z, steps=k, residual=r, converged=ok, result=result,
                    trace=history)


