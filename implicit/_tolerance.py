"""Tolerances and failure reports shared by `fixed_point`, `root`, `argmin` and `DEQ`."""

from __future__ import annotations

import os
import sys
import warnings
from functools import partial
from typing import Any

import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from innerloop.solvers import RESULTS

#: Relative tolerance when none is given.
RTOL = 1e-5


def tolerances(call: str, rtol: Any, atol: Any, tol: Any) -> tuple[float, float]:
    """(rtol, atol) from a call's arguments: `tol` is another name for rtol, and atol
    defaults to rtol, so that a norm below 1 is treated as 1 (a fixed point at 0 is
    judged by its absolute residual, one of norm 1000 relatively)."""
    if tol is not None and rtol is not None:
        raise ValueError(f"{call}: give rtol or tol (another name for rtol), not both")
    rtol = RTOL if rtol is None and tol is None else (tol if rtol is None else rtol)
    atol = rtol if atol is None else atol
    for name, v in (("rtol", rtol), ("atol", atol)):
        try:
            ok = float(v) >= 0 and np.isfinite(float(v))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{call}: {name} must be a finite float >= 0, got {v!r}")
    if float(rtol) == 0 and float(atol) == 0:
        raise ValueError(f"{call}: rtol and atol are both 0; no solve can meet that. "
                         "Give a positive rtol or atol.")
    return float(rtol), float(atol)


class NotConvergedError(RuntimeError):
    """A solve with `throw=True` did not converge."""


def _internal_dirs() -> tuple[str, ...]:
    import equinox
    import lineax

    import innerloop
    import innerloop.implicit
    import innerloop.solvers
    mods = (jax, equinox, lineax, innerloop, innerloop.implicit, innerloop.solvers)
    return tuple(os.path.dirname(m.__file__) + os.sep for m in mods) + (
        os.path.dirname(os.__file__) + os.sep,)


def warn_at_user_line(message: str, category: type[Warning]) -> None:
    """Warn with the location of the first stack frame outside JAX, equinox, lineax
    and innerloop: the user's line that ran the computation."""
    internal = _internal_dirs()
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(internal):
        frame = frame.f_back
    if frame is None:
        warnings.warn(message, category, stacklevel=2)
        return
    registry = frame.f_globals.setdefault("__warningregistry__", {})
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=frame.f_globals.get("__name__"), registry=registry)


def _raise(code, call, dtype):
    code = int(np.max(code))
    msg = f"{call} did not converge: {RESULTS._index_to_message[code]}"
    # Printed first, so that the reason leads whatever JAX prints around the error.
    print(f"\n{NotConvergedError.__name__}: {msg}\n", file=sys.stderr, flush=True)
    raise NotConvergedError(msg)


def raise_if_failed(value: Any, result: RESULTS, call: str) -> Any:
    """Raise `NotConvergedError` naming the failure when `result` is not successful:
    at once for concrete values, and at run time under `jit`."""
    code = result._value  # the item's index, as optimistix reads it
    if not isinstance(code, jax.core.Tracer):
        worst = int(np.max(np.asarray(code)))
        if worst != 0:
            raise NotConvergedError(
                f"{call} did not converge: {RESULTS._index_to_message[worst]}")
        return value
    leaves = [x for x in jax.tree.leaves(value) if isinstance(x, jax.Array)]
    dtype = leaves[0].dtype
    worst = eqxi.unvmap_max(code)

    def fail(worst):
        return jax.pure_callback(partial(_raise, call=call, dtype=dtype),
                                 jax.ShapeDtypeStruct((), dtype), worst)

    zero = lax.cond(worst == 0, lambda w: jnp.zeros((), dtype), fail, worst)
    return jax.tree.map(lambda x: x + zero.astype(x.dtype) if isinstance(x, jax.Array)
                        else x, value)
