r"""`unroll`: a fixed-length inner loop, differentiated as a gradient mode says.

The loop is

    s_0 = state0,    s_{t+1} = step(s_t, theta, t),    t = 0, ..., T - 1,

and `unroll` returns s_T (and, with `outputs=True`, the per-step outputs y_t stacked
along a new leading axis of length T). Its derivative with respect to theta is
backpropagation through time (Werbos 1990):

    dL/dtheta = sum_t (dL/ds_{t+1}) (d step / d theta)(s_t, theta, t),
    dL/ds_t   = (dL/ds_{t+1}) (d step / d s)(s_t, theta, t) + dL/dy_t (dy_t/ds_t).

The modes are the same objects that `fixed_point` takes:

| mode | gradient | memory (reverse mode) | compute |
|---|---|---|---|
| `Unroll()` | exact BPTT (`lax.scan`) | O(T) states | 1 forward + 1 backward |
| `Checkpointed(c)` | exact BPTT, bit for bit | O(c) states | ~2 forwards + 1 backward |
| `Truncated(k)` | BPTT through the last k steps only | O(k) states | 1 forward + k backward steps |

`Checkpointed` uses equinox's online binomial checkpointing (treeverse; Griewank
1992, Griewank and Walther 2000, and for the online case Stumm and Walther 2010). With
c checkpoints, T <= (c + 1)(c + 2) / 2 steps are reversed recomputing every step at
most once; `Checkpointed()` picks the smallest such c, about sqrt(2 T) (44 for
T = 1000), so memory is O(sqrt(T)) and compute at most about twice the forward pass.
A smaller c (e.g. about log2(T)) uses less memory and recomputes more.

`Truncated(k)` is truncated BPTT (Williams and Peng 1990): s_{T-k} is treated as a
constant, i.e. the gradient is that of s_T = step^k(stop_gradient(s_{T-k}), theta).
The outputs y_t of the first T - k steps carry no gradient. It is biased: see
`innerloop.implicit.PES` for an unbiased estimator of long unrolls.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jax import lax

from innerloop.implicit._checks import check_like
from innerloop.implicit._modes import AbstractGradient, Checkpointed, Truncated, Unroll


def unroll(
    step: Callable[[Any, Any, jax.Array], Any],
    state0: Any,
    theta: Any,
    steps: int,
    *,
    grad: AbstractGradient | None = None,
    outputs: bool = False,
) -> Any:
    r"""Run `state = step(state, theta, t)` for `steps` steps; differentiable as `grad` says.

    - `step(state, theta, t)`: returns the next state (same pytree structure, shapes
      and dtypes as `state0`), or, with `outputs=True`, a pair `(state, output)`.
      `t` is the step index, an int32 scalar array (0, 1, ..., steps - 1). Arrays
      that `step` closes over are differentiated like `theta`.
    - `state0`: any pytree of arrays (integer leaves such as counters or PRNG keys
      are carried, not differentiated).
    - `theta`: any pytree.
    - `steps`: the number of steps T, a Python int >= 1 (static).
    - `grad`: `Unroll()` (the default, full BPTT), `Truncated(k)` (the last k steps
      only) or `Checkpointed(checkpoints=None)` (exact, memory sub-linear in T,
      reverse mode only). The forward result does not depend on the mode.
    - `outputs`: if True, also return the outputs stacked along a new leading axis
      of length T.

    Returns the final state, or `(state, outputs)` with `outputs=True`.

    Pure: composes with `jax.jit`, `jax.vmap` and `jax.grad` (and `jax.jvp` for
    `Unroll` and `Truncated`).
    """
    grad = Unroll() if grad is None else grad
    steps = _check_steps(steps)
    _check_mode(grad)
    state0 = jax.tree.map(jnp.asarray, state0)
    state0 = _check_step_output(step, state0, theta, outputs)

    def body(state, t):
        out = step(state, theta, t)
        return out if outputs else (out, None)

    ts = jnp.arange(steps, dtype=jnp.int32)
    if isinstance(grad, Unroll):
        state, ys = lax.scan(body, state0, ts)
    elif isinstance(grad, Checkpointed):
        state, ys = eqxi.scan(body, state0, ts, kind="checkpointed",
                              checkpoints=grad.checkpoints)
    else:  # Truncated
        k = min(grad.k, steps)
        if k == steps:
            state, ys = lax.scan(body, state0, ts)
        else:
            state, ys = _truncated(step, state0, theta, ts, k, outputs)
    return (state, ys) if outputs else state


def _truncated(step, state0, theta, ts, k, outputs):
    """The first T - k steps with no derivative at all, then k differentiated steps."""
    frozen_theta = lax.stop_gradient(theta)

    def frozen_body(state, t):
        out = step(state, frozen_theta, t)
        return out if outputs else (out, None)

    def body(state, t):
        out = step(state, theta, t)
        return out if outputs else (out, None)

    n = ts.shape[0] - k
    mid, ys1 = lax.scan(frozen_body, lax.stop_gradient(state0), ts[:n])
    # Also cuts any derivative that reached the first part through closed-over arrays.
    mid, ys1 = lax.stop_gradient((mid, ys1))
    state, ys2 = lax.scan(body, mid, ts[n:])
    if outputs:
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys1, ys2)
    else:
        ys = None
    return state, ys


# ----------------------------------------------------------------- validation


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or isinstance(steps, jax.Array):
        raise TypeError(f"unroll: steps must be a Python int >= 1 (static), got "
                        f"{steps!r}")
    try:
        n = operator.index(steps)
    except TypeError:
        raise TypeError(f"unroll: steps must be a Python int >= 1 (static), got "
                        f"{steps!r}") from None
    if n < 1:
        raise ValueError(f"unroll: steps must be >= 1, got {steps!r}")
    return n


def _check_mode(grad) -> None:
    if isinstance(grad, (Unroll, Truncated, Checkpointed)):
        return
    if isinstance(grad, AbstractGradient):
        raise TypeError(
            f"unroll: the gradient mode {type(grad).__name__} applies to fixed points "
            "(it differentiates at a converged solution), not to a fixed number of "
            "steps. Use Unroll(), Truncated(k) or Checkpointed(); for a loop that runs "
            "to convergence use innerloop.fixed_point or innerloop.argmin.")
    raise TypeError(f"unroll: grad must be Unroll(), Truncated(k) or Checkpointed(), "
                    f"got {grad!r}")


def _check_step_output(step, state0, theta, outputs):
    """Check what `step` returns against `state0`; returns `state0`, whose weakly
    typed leaves (Python scalars) take the dtype `step` returns for them."""
    t = jax.ShapeDtypeStruct((), jnp.int32)
    out = eqx.filter_eval_shape(step, state0, theta, t)
    if outputs:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("unroll: with outputs=True, step(state, theta, t) must "
                            f"return a pair (state, output); got {type(out).__name__}")
        out = out[0]
    if jax.tree.structure(state0) == jax.tree.structure(out):
        state0 = jax.tree.map(_adopt_weak_dtype, state0, out)
    hint = "" if outputs else " (if step returns (state, output), pass outputs=True)"
    check_like(state0, out, ref_name="state0", call="step(state, theta, t)",
               prefix="unroll: ", hint=hint)
    return state0


def _adopt_weak_dtype(a, b):
    # As lax.scan does: a Python scalar's dtype (float64 under x64) is only a default.
    if (getattr(a, "weak_type", False) and a.shape == b.shape and a.dtype != b.dtype
            and _kind(a.dtype) == _kind(b.dtype)):
        return a.astype(b.dtype)
    return a


def _kind(dtype):
    for kind in (jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating):
        if jnp.issubdtype(dtype, kind):
            return kind
    return None
