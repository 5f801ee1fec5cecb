r"""`argmin`: an inner optimisation run to its stationary point, differentiated.

    x*(theta) = argmin_x loss(x, theta),    stationarity:  grad_x loss(x*, theta) = 0.

Implicit differentiation of the stationarity condition (the implicit function
theorem; implicit MAML, Rajeswaran, Finn, Kakade and Levine 2019, "Meta-learning with
implicit gradients"; Pedregosa 2016 for hyperparameters):

    dx*/dtheta = -H^{-1} d^2 loss / dx dtheta,    H = d^2 loss / dx^2 at x*,

so a meta-gradient costs one linear solve with Hessian-vector products, whatever the
number of inner steps. Alternatively the inner iterations are unrolled (`Unroll()`,
`Checkpointed()`), as in MAML (Finn et al. 2017).

The inner problem is solved as the fixed point of a preconditioned gradient step

    T(x, theta) = x - eta grad_x loss(x, theta),    eta = 1 / L,

whose fixed points are exactly the stationary points, and I - dT/dx = eta H, so the
implicit gradient of the fixed point is the one above (eta cancels). L is an estimate
of the largest curvature at x0, from 20 steps of power iteration on Hessian-vector
products (treated as a constant: at a stationary point the fixed point does not
depend on eta). The default solver is Anderson acceleration on T, which on a
quadratic is a restarted Krylov method (GMRES(m); Walker and Ni 2011), so strongly
convex smooth problems converge at the rate of an accelerated method rather than
gradient descent's 1 - 1/kappa.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from innerloop._shared import (
    check_positive_int,
    converged,
    final_result,
    progress_bound,
    while_loop,
)
from innerloop.implicit._checks import as_float_arrays
from innerloop.implicit._fixed_point import _flatten, _strong_dtype, fixed_point
from innerloop.implicit._modes import AbstractGradient, Checkpointed, Implicit, Unroll
from innerloop.implicit._tolerance import raise_if_failed, tolerances
from innerloop.solvers import AbstractSolver, Anderson, Solution

#: argmin's relative tolerance when none is given.
RTOL = 1e-6
#: Power-iteration steps of the curvature estimate.
POWER_STEPS = 20


def argmin(
    loss: Callable[[Any, Any], Any],
    x0: Any,
    theta: Any = None,
    *,
    solver: AbstractSolver | optax.GradientTransformation | None = None,
    grad: AbstractGradient | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    tol: float | None = None,
    max_steps: int = 500,
    throw: bool = False,
    trace: bool = False,
) -> Solution:
    r"""Minimise `loss(x, theta)` over x from `x0`; x*(theta) differentiable as `grad` says.

    - `loss(x, theta) -> scalar`: smooth in x (twice differentiable for the implicit
      gradient). Arrays that `loss` closes over are differentiated like `theta`.
    - `x0`: initial point, any pytree of floating arrays.
    - `theta`: any pytree (hyperparameters, meta-parameters).
    - `solver`: how the inner problem is solved.
      - `None` (default): `Anderson()` (memory 5) on the gradient step
        T(x) = x - grad/L, with L the curvature at x0 from power iteration.
      - an innerloop solver (`Anderson(...)`, `Iteration()`, `Broyden()`) run on T.
      - an optax `GradientTransformation` (`optax.sgd(0.1)`, `optax.adam(1e-2)`, ...):
        its steps are run, carrying its state, until the residual is below `tol`.
        Line-search optimisers get the loss through optax's extra arguments, so
        `optax.lbfgs()` works (a robust choice for badly conditioned problems; its
        line search is a `while_loop`, so it takes the implicit-type modes, not
        `Unroll()`/`Checkpointed()`).
    - `grad`: `Implicit()` by default (through grad_x loss = 0; with the default and
      innerloop solvers the adjoint system reuses the forward solver, with an optax
      solver it is solved by Anderson). `Unroll()` and `Checkpointed()`
      differentiate through the solver's own iterations (with an optax solver: its
      updates); `Truncated(k)`, `Phantom(k, damping)` and `JacobianFree()` use k (or
      one) gradient steps T from the minimiser.
    - `rtol`, `atol`: converged when the curvature-scaled gradient step is small,
      ||grad_x loss(x)|| / L <= atol + rtol ||x|| (invariant to scaling the loss by a
      constant), and has at least halved since x0 (unless below atol), as for
      `fixed_point`. `rtol=1e-6` by default, `atol` defaults to rtol; `tol` is
      another name for rtol.
    - `max_steps`: iteration limit.
    - `throw`: raise (also under `jit`) when the solve (or the implicit gradient's
      linear solve) does not converge; otherwise `Solution.converged` says so.
    - `trace`: also return the residual history, `Solution.trace`.

    Returns a `Solution` (value, steps, residual, converged, result, trace), as
    `fixed_point` does; `residual` is ||grad_x loss(x)|| / L.
    """
    if rtol is None and tol is None:
        rtol = RTOL
    rtol, atol = tolerances("innerloop.argmin", rtol, atol, tol)
    check_positive_int("argmin(max_steps=...)", max_steps)
    if grad is not None and not isinstance(grad, AbstractGradient):
        raise TypeError(f"argmin: grad must be a gradient mode (e.g. Implicit()), got {grad!r}")
    is_optax = isinstance(solver, optax.GradientTransformation)
    if not (solver is None or is_optax or isinstance(solver, AbstractSolver)):
        raise TypeError("argmin: solver must be an innerloop solver (e.g. Anderson()), an optax "
                        f"GradientTransformation (e.g. optax.sgd(0.1)) or None; got "
                        f"{solver!r}")
    x0 = as_float_arrays(x0, "x0", "the variable of argmin")
    _check_loss(loss, x0, theta)

    eta = _step_size(loss, x0, theta)

    def gradient_step(x, th):
        g = jax.grad(loss)(x, th)
        return jax.tree.map(lambda a, b: a - (eta * b).astype(a.dtype), x, g)

    if not is_optax:
        solver = Anderson() if solver is None else solver
        grad = Implicit(linear_solver="forward") if grad is None else grad
        return fixed_point(gradient_step, x0, theta, solver=solver, grad=grad, rtol=rtol,
                           atol=atol, max_steps=max_steps, throw=throw, trace=trace)
    return _argmin_optax(loss, gradient_step, eta, x0, theta, solver, grad, rtol, atol,
                         max_steps, throw, trace)


# ---------------------------------------------------------------- optax solver


def _argmin_optax(loss, gradient_step, eta, x0, theta, opt, grad, rtol, atol, max_steps,
                  throw, trace):
    grad = Implicit(linear_solver="forward") if grad is None else grad
    if isinstance(grad, (Unroll, Checkpointed)):
        kind = "bounded" if isinstance(grad, Unroll) else "checkpointed"
        checkpoints = grad.checkpoints if isinstance(grad, Checkpointed) else None
        x, steps, residual, ok, history = _optax_loop(
            loss, eta, opt, x0, theta, rtol, atol, max_steps, kind, checkpoints, trace)
    else:
        x, steps, residual, ok, history = _optax_loop(
            loss, eta, opt, *lax.stop_gradient((x0, theta)), rtol, atol, max_steps,
            "lax", None, trace)
        if isinstance(grad, Implicit) and grad.linear_solver == "forward":
            # The forward solver (optax) cannot be reused for the adjoint system.
            grad = eqx.tree_at(lambda g: g.linear_solver, grad, Anderson())
        # Attach the mode's derivative at the point optax found. A diverged
        # (non-finite) result is passed through as it is, reported by `result`.
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a))
                                      for a in jax.tree.leaves(x)]))
        safe = jax.tree.map(lambda a: jnp.where(finite, a, 0), x)
        fn, flat, dynamic, unravel = _flatten(gradient_step, safe,
                                              jax.tree.map(_strong_dtype, theta))
        attached = unravel(grad.attach(fn, flat, dynamic, rtol=rtol, atol=atol,
                                       max_steps=max_steps, throw=throw))
        x = jax.tree.map(lambda a, b: jnp.where(finite, a, b), attached, x)
    result = final_result(ok, residual, None)
    if throw:
        x = raise_if_failed(x, result, "innerloop.argmin (a constant-step Adam does not "
                            "converge to a stationary point; tune the optimiser)")
    return Solution(value=x, steps=steps, residual=residual, converged=ok,
                    result=result, trace=history)


def _optax_loop(loss, eta, opt, x0, theta, rtol, atol, max_steps, kind, checkpoints,
                trace):
    value_and_grad = jax.value_and_grad(loss)
    # Line-search optimisers (optax.lbfgs) read the loss through extra arguments;
    # others ignore them.
    opt = optax.with_extra_args_support(opt)

    def norm(tree):
        return jnp.sqrt(sum(jnp.sum(jnp.abs(a) ** 2) for a in jax.tree.leaves(tree)))

    v0, g0 = value_and_grad(x0, theta)
    r0 = eta * norm(g0)
    bound = progress_bound(r0, norm(x0), rtol, atol)
    ok0 = converged(r0, norm(x0), bound, rtol, atol)
    history0 = (jnp.full((max_steps + 1,), jnp.nan, r0.dtype).at[0].set(r0)
                if trace else None)
    carry0 = (jnp.asarray(0, jnp.int32), x0, (v0, g0), opt.init(x0), r0, ok0, history0)

    def cond(carry):
        k, _, _, _, r, ok, _ = carry
        return (k < max_steps) & ~ok & jnp.isfinite(r)

    def body(carry):
        k, x, (v, g), state, _, _, history = carry
        updates, state = opt.update(g, state, x, value=v, grad=g,
                                    value_fn=lambda xx: loss(xx, theta))
        x = optax.apply_updates(x, updates)
        v, g = value_and_grad(x, theta)
        r = eta * norm(g)
        ok = converged(r, norm(x), bound, rtol, atol)
        if history is not None:
            history = history.at[k + 1].set(r)
        return k + 1, x, (v, g), state, r, ok, history

    final = while_loop(cond, body, carry0, kind=kind, max_steps=max_steps,
                       checkpoints=checkpoints)
    k, x, _, _, r, ok, history = final
    return x, k, r, ok, history


# ------------------------------------------------------------------ helpers


def _step_size(loss, x0, theta):
    """1 / (largest curvature of loss at x0), by power iteration on Hessian-vector
    products; a constant for differentiation."""
    x0, theta = lax.stop_gradient((x0, theta))
    flat, unravel = ravel_pytree(x0)

    def hvp(v):
        gfun = lambda x: ravel_pytree(jax.grad(loss)(unravel(x), theta))[0]
        return jax.jvp(gfun, (flat,), (v,))[1]

    v = jax.random.normal(jax.random.key(0), flat.shape, flat.dtype)
    v = v / jnp.linalg.norm(v)

    def power(_, v):
        w = hvp(v)
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(flat.dtype).tiny)

    v = lax.fori_loop(0, POWER_STEPS, power, v)
    curvature = jnp.abs(v @ hvp(v))
    # A flat (or NaN) estimate falls back to unit steps.
    ok = jnp.isfinite(curvature) & (curvature > jnp.finfo(flat.dtype).eps)
    return lax.stop_gradient(jnp.where(ok, 1.0 / jnp.where(ok, curvature, 1.0), 1.0))


def _check_loss(loss, x0, theta) -> None:
    out = eqx.filter_eval_shape(loss, x0, theta)
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError("argmin: loss(x, theta) must return a real floating-point "
                        f"scalar, got {out}")
