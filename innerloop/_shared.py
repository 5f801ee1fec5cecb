"""What several rooms share: the result codes, the stopping test and the argument
validators. Private: each room re-exports what its users need (`solvers.RESULTS`)."""

from __future__ import annotations

from typing import Any, Literal

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jax import lax

LoopKind = Literal["lax", "bounded", "checkpointed"]

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


def final_result(ok: jax.Array, r: jax.Array, failure: RESULTS | None) -> RESULTS:
    """The `RESULTS` item of a solve that stopped: successful, the solver's own
    failure, non-finite, or out of steps."""
    result = RESULTS.where(jnp.isfinite(r), RESULTS.max_steps_reached, RESULTS.nonfinite)
    if failure is not None:
        result = RESULTS.where(failure == RESULTS.successful, result, failure)
    return RESULTS.where(ok, RESULTS.successful, result)


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
