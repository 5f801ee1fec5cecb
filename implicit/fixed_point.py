"""`fixed_point` and `root`: differentiable solves with a swappable gradient mode."""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from innerloop.solvers import AbstractSolver, Anderson, Broyden, Solution
from innerloop.solvers._base import check_positive_float, check_positive_int

from ._checks import as_float_arrays, check_like
from .modes import AbstractGradient, Implicit


def fixed_point(
    f: Callable[[Any, Any], Any],
    z0: Any,
    theta: Any = None,
    *,
    solver: AbstractSolver | None = None,
    grad: AbstractGradient | None = None,
    tol: float = 1e-5,
    max_steps: int = 100,
    throw: bool = False,
    trace: bool = False,
) -> Solution:
    r"""Solve z = f(z, theta) and make z*(theta) differentiable as `grad` says.

    - `f(z, theta) -> z`: returns the same pytree structure, shapes and dtypes as
      `z0`. Arrays that `f` closes over are differentiated like `theta` (they are
      hoisted out of the closure and passed through the gradient rule).
    - `z0`: initial guess, any pytree of floating arrays. One example: `jax.vmap`
      over a batch so that each example stops at its own convergence.
    - `theta`: any pytree.
    - `solver`: `Anderson(memory=5)` by default; `Iteration()`, `Broyden()`,
      `SteadyState()`.
    - `grad`: `Implicit()` by default; `Unroll()`, `Checkpointed()`, `Truncated(k)`,
      `Phantom(k, damping)`, `JacobianFree()`.
    - `tol`: on the relative residual ||f(z) - z|| / max(||z||, 1e-8). In float32 on
      an NVIDIA GPU, JAX multiplies matrices in TF32 by default, whose rounding
      (about 1e-3 relative) keeps the residual above small tolerances: use
      `jax.default_matmul_precision("highest")` for tol below about 1e-3.
    - `max_steps`: iteration limit.
    - `throw`: raise (also under `jit`) when the forward solve, or the implicit
      gradient's linear solve, does not converge. Otherwise `Solution.converged`
      says so.
    - `trace`: also return the residual history, `Solution.trace`.

    Returns a `Solution` (value, steps, residual, converged, trace).
    """
    solver = Anderson() if solver is None else solver
    grad = Implicit() if grad is None else grad
    _check_options(solver, grad, tol, max_steps)
    z0 = as_float_arrays(z0, "z0", "the state of a fixed point")
    _check_map_output(f, z0, theta, "f")
    z0, theta = _check_finite(z0, theta)
    theta = jax.tree.map(_strong_dtype, theta)

    # Hoist every array that f closes over, so that it becomes an explicit,
    # differentiable input of the gradient rule instead of a silently frozen constant.
    closed = eqx.filter_closure_convert(f, z0, theta)
    dynamic, static = eqx.partition((theta, closed), eqx.is_array)
    z_flat, unravel = ravel_pytree(z0)

    def fn(z, params):
        theta_, closed_ = eqx.combine(params, static)
        out = closed_(unravel(z), theta_)
        return ravel_pytree(out)[0]

    sol = grad.solve(fn, z_flat, dynamic, solver, tol=float(tol),
                     max_steps=int(max_steps), throw=throw, trace=trace)
    value = sol.value
    if throw:
        value = eqx.error_if(
            value, ~sol.converged,
            f"innerloop: the fixed-point solve did not converge: relative residual "
            f"above tol={tol} after max_steps={max_steps} iterations (or it became "
            "NaN). Raise max_steps, loosen tol, or use another solver.")
    return Solution(value=unravel(value), steps=sol.steps, residual=sol.residual,
                    converged=sol.converged, trace=sol.trace)


def root(
    g: Callable[[Any, Any], Any],
    z0: Any,
    theta: Any = None,
    *,
    solver: AbstractSolver | None = None,
    grad: AbstractGradient | None = None,
    tol: float = 1e-5,
    max_steps: int = 100,
    throw: bool = False,
    trace: bool = False,
) -> Solution:
    r"""Solve g(z, theta) = 0, as the fixed point of z -> z - g(z, theta).

    The implicit gradient is dz*/dtheta = -(dg/dz)^{-1} dg/dtheta (the same as the
    fixed point's). Defaults differ from `fixed_point`: the solver is `Broyden()`
    (quasi-Newton, insensitive to the scaling of g) and the adjoint is the forward
    solver reused (`Implicit(adjoint="forward")`), since plain adjoint iteration
    converges only when I - dg/dz is contractive. `residual` is
    ||g(z)|| / max(||z||, 1e-8).
    """
    solver = Broyden() if solver is None else solver
    grad = Implicit(adjoint="forward") if grad is None else grad
    _check_map_output(g, as_float_arrays(z0, "z0", "the state of a fixed point"), theta, "g")

    def f(z, th):
        return jax.tree.map(lambda a, b: a - b, z, g(z, th))

    return fixed_point(f, z0, theta, solver=solver, grad=grad, tol=tol,
                       max_steps=max_steps, throw=throw, trace=trace)


# ----------------------------------------------------------------- validation


def _check_options(solver, grad, tol, max_steps) -> None:
    if not isinstance(solver, AbstractSolver):
        raise TypeError(f"solver must be an innerloop solver (e.g. Anderson()), got "
                        f"{solver!r}")
    if not isinstance(grad, AbstractGradient):
        raise TypeError(f"grad must be a gradient mode (e.g. Implicit()), got {grad!r}")
    check_positive_float("tol", tol)
    check_positive_int("max_steps", max_steps)


def _strong_dtype(x):
    """Weakly typed arrays (from Python scalars, e.g. `jax.grad(loss)(1.0)`) become
    strongly typed, so the closure-converted map sees the dtypes it was traced with."""
    if eqx.is_array(x) and getattr(x, "weak_type", False):
        return jax.lax.convert_element_type(x, x.dtype)
    return x


def _check_map_output(f, z0, theta, name) -> None:
    out = eqx.filter_eval_shape(f, z0, theta)
    check_like(z0, out, ref_name="z0", call=f"{name}(z, theta)")


def _check_finite(z0, theta):
    """Raise now for a concrete NaN/inf; under a trace, raise at run time (one check
    for all traced leaves, so that it adds one branch to the compiled program)."""
    traced = []
    for name, tree in (("z0", z0), ("theta", theta)):
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if not eqx.is_inexact_array(x):
                continue
            where = f"{name}{jax.tree_util.keystr(path)}"
            if isinstance(x, jax.core.Tracer):
                traced.append((where, x))
            elif not np.all(np.isfinite(np.asarray(x))):
                raise ValueError(f"innerloop: {where} contains NaN or inf")
    if not traced:
        return z0, theta
    # sum(x * 0) is 0 for finite x and NaN otherwise: one summing reduction per leaf,
    # which compiles faster than jnp.all(jnp.isfinite(x)) (0.05 s less for the
    # benchmark's value_and_grad on CPU, measured) and runs as fast.
    bad = jnp.stack([~jnp.isfinite(jnp.sum(x * 0)) for _, x in traced])
    names = [w for w, _ in traced]
    # The check guards a scalar that is added to z0, which ties it into the data flow
    # without passing every parameter through the error branch. The message names the
    # first bad input, chosen at run time.
    dtype = jnp.result_type(*jax.tree.leaves(z0))
    zero = eqx.branched_error_if(
        jnp.zeros((), dtype), jnp.any(bad), jnp.argmax(bad),
        [f"innerloop: {w} contains NaN or inf" for w in names])
    return jax.tree.map(lambda x: x + zero.astype(x.dtype), z0), theta
