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
from jax import lax

LoopKind = Literal["lax", "bounded", "checkpointed"]
FlatFn = Callable[[jax.Array, Any], jax.Array]

#: A solve that has not fallen to this fraction of its initial residual is not
#: certified converged by the relative tolerance alone (see `converged`).
PROGRESS = 0.5


class RESULTS(eqx.Enumeration):
    """How a solve ended. Compare with `sol.result == RESULTS.successful`;
    `RESULTS[sol.result]` is the message of a concrete (unbatched) result."""

    successful = ""
    max_steps_reached = (
        "the solve reached max_steps without meeting the tolerance. Raise max_steps, "
        "loosen rtol/atol, or use a faster solver (Anderson, Newton).")
    nonfinite = (
        "the iterate or its residual became NaN or inf: the solve diverged. Use a "
        "damped or globalised solver (Iteration(damping=...), Newton), or check f.")
    stagnated = (
        "the solver stopped making progress before meeting the tolerance (no step it "
        "can take decreases the residual): there may be no solution near this start.")
    linear_solve_failed = (
        "a linear solve inside the solver failed (a singular or non-finite Jacobian).")
    no_bracket = (
        "g(lower) and g(upper) have the same sign, so the bisection bracket "
        "[lower, upper] holds no sign change. Widen or move the bracket.")


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


def converged(r: jax.Array, znorm: jax.Array, bound: jax.Array, rtol: float,
              atol: float) -> jax.Array:
    r"""The stopping test of every solve:

        ||f(z) - z|| <= atol + rtol ||z||    and    ||f(z) - z|| <= bound,

    with `bound = progress_bound(...)`: max(atol, r_0 / 2), or no bound when z0
    already passed the first test. The first is the tolerance as optimistix and
    diffrax write it. The second asks that the residual has at least halved since the
    start unless it is below atol: an iterate running off to infinity at a constant
    residual passes the relative test once ||z|| is large enough, never this one.
    A NaN residual fails both."""
    return converged_squared(r * r, znorm * znorm, bound, rtol, atol)


def _squared_norm(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.real(x * jnp.conj(x)))


def converged_squared(r2: jax.Array, z2: jax.Array, bound: jax.Array, rtol: float,
                      atol: float) -> jax.Array:
    """`converged` from the squared residual and squared norm of z."""
    scale = atol + rtol * jnp.sqrt(z2)
    return (r2 <= scale * scale) & (r2 <= bound * bound)


def progress_bound(r0: jax.Array, znorm0: jax.Array, rtol: float, atol: float) -> jax.Array:
    """The bound of `converged`'s progress test for a solve that started with
    residual r0 at a point of norm znorm0."""
    at_start = r0 <= atol + rtol * znorm0
    return jnp.where(at_start, jnp.inf, jnp.maximum(atol, PROGRESS * r0)).astype(r0.dtype)


class AbstractSolver(eqx.Module):
    """A forward fixed-point solver for z = f(z, args), z a flat vector.

    A solver is `init` plus `step`; the loop in `solve` is shared by all of them.
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
        """Iterate until `converged` holds, the solver fails, or `max_steps` is hit.

        `kind` picks the loop primitive: `"lax"` (forward-mode differentiable, no
        reverse mode; what every gradient mode except the unrolled ones uses),
        `"bounded"` (reverse mode through every iteration, memory linear in
        `max_steps`) or `"checkpointed"` (reverse mode with sub-linear memory, no
        forward mode; `checkpoints` is its number of checkpoints).
        """
        return run_loop(self, fn, z0, args, rtol=rtol, atol=atol, max_steps=max_steps,
                        kind=kind, trace=trace, checkpoints=checkpoints)


def final_result(ok: jax.Array, r: jax.Array, failure: RESULTS | None) -> RESULTS:
    """The `RESULTS` item of a solve that stopped: successful, the solver's own
    failure, non-finite, or out of steps."""
    result = RESULTS.where(jnp.isfinite(r), RESULTS.max_steps_reached, RESULTS.nonfinite)
    if failure is not None:
        result = RESULTS.where(failure == RESULTS.successful, result, failure)
    return RESULTS.where(ok, RESULTS.successful, result)


def run_loop(
    solver: AbstractSolver,
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
