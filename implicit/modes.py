"""Gradient modes: how a loop's result is differentiated.

A mode is an immutable object passed as `grad=` to `fixed_point`, `root` (and, for
the unrolling modes, `unroll`). Swapping it never changes the forward result.

| mode | gradient | memory | autodiff |
|---|---|---|---|
| `Implicit(adjoint)` | exact at the fixed point (implicit function theorem) | O(1) in iterations | grad, jvp, vmap, higher order |
| `Unroll()` | exact derivative of the iterations that ran | O(max_steps) | grad, jvp |
| `Checkpointed(n)` | same as `Unroll` | O(n) checkpoints, recomputation | grad |
| `Truncated(k)` | last k steps of f from the fixed point | O(k) | grad, jvp |
| `Phantom(k, damping)` | k damped steps from the fixed point | O(k) | grad, jvp |
| `JacobianFree()` | df/dtheta at the fixed point, no inverse | O(1) | grad, jvp |
"""

from __future__ import annotations

import abc
import warnings
from functools import partial
from typing import Any, Literal

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax

from innerloop.solvers import AbstractSolver, Iteration, Solution, solve_linear
from innerloop.solvers._base import check_positive_float, check_positive_int
from innerloop.solvers.linear import Dense

_OnFailure = Literal["warn", "raise", "nan"]


class AbstractGradient(eqx.Module):
    """A way of differentiating `z*(theta)` where z* = f(z*, theta).

    `solve` receives a flat map `fn(z, params)` and must return a `Solution` whose
    value is differentiable with respect to `params` as the mode says.
    """

    #: True when the mode's gradient equals the exact derivative of z*(theta) (up to
    #: solver tolerance); False for deliberately approximate modes.
    exact = False

    @abc.abstractmethod
    def solve(self, fn, z0, params, solver: AbstractSolver, *, tol: float,
              max_steps: int, throw: bool, trace: bool) -> Solution:
        ...


def _forward(fn, z0, params, solver, tol, max_steps, trace) -> Solution:
    """The forward solve with no derivative information."""
    z0, params = lax.stop_gradient((z0, params))
    return solver.solve(fn, z0, params, tol=tol, max_steps=max_steps, kind="lax",
                        trace=trace)


# --------------------------------------------------------------------- Implicit


class Implicit(AbstractGradient):
    r"""Implicit-function-theorem gradient (Bai, Kolter and Koltun 2019).

    With z* = f(z*, theta), dz*/dtheta = (I - df/dz)^{-1} df/dtheta. Reverse mode
    solves the adjoint fixed point u = (df/dz)^T u + dL/dz, then returns
    u^T df/dtheta; forward mode solves the tangent fixed point
    t = (df/dz) t + (df/dtheta) dtheta. Memory does not depend on how many forward
    iterations ran.

    - `adjoint`: how the linear system is solved; see `innerloop.solvers.linear`.
      Default `Iteration()` (plain adjoint iteration); `"forward"` reuses the
      forward solver; a lineax solver (`lineax.GMRES(...)`) or `Dense()` also work.
    - `tol`, `max_steps`: of the linear solve; default to the forward solve's.
    - `on_failure`: what an unconverged linear solve does: `"warn"` (a runtime
      warning naming the residual, the default unless the call has `throw=True`),
      `"raise"` (an error, also under `jit`; the default with `throw=True`) or
      `"nan"` (the gradient becomes NaN). It is never silently zero.

    Implemented as a `jax.custom_jvp` whose tangent is a `lax.custom_linear_solve`,
    so JAX derives reverse mode by transposition and higher derivatives by
    differentiating the rule again.
    """

    adjoint: Any = Iteration()
    tol: float | None = None
    max_steps: int | None = None
    on_failure: _OnFailure | None = None
    exact = True

    def __check_init__(self):
        if self.tol is not None:
            check_positive_float("Implicit(tol=...)", self.tol)
        if self.max_steps is not None:
            check_positive_int("Implicit(max_steps=...)", self.max_steps)
        if self.on_failure not in (None, "warn", "raise", "nan"):
            raise ValueError(
                f"on_failure must be 'warn', 'raise' or 'nan', got {self.on_failure!r}")
        ok = (isinstance(self.adjoint, (AbstractSolver, Dense, lx.AbstractLinearSolver))
              or self.adjoint == "forward")
        if not ok:
            raise TypeError(
                "Implicit(adjoint=...) takes a solver (Iteration(), Anderson(...)), "
                f"'forward', Dense() or a lineax solver; got {self.adjoint!r}")

    def solve(self, fn, z0, params, solver, *, tol, max_steps, throw, trace):
        sol = _forward(fn, z0, params, solver, tol, max_steps, trace)
        adjoint = solver if self.adjoint == "forward" else self.adjoint
        on_failure = self.on_failure or ("raise" if throw else "warn")
        config = _LinearConfig(
            adjoint=adjoint,
            tol=tol if self.tol is None else self.tol,
            max_steps=max_steps if self.max_steps is None else self.max_steps,
            on_failure=on_failure,
        )
        value = _implicit(fn, config, sol.value, params)
        return eqx.tree_at(lambda s: s.value, sol, value)


class _LinearConfig(eqx.Module):
    adjoint: Any
    tol: float
    max_steps: int
    on_failure: str


@partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _implicit(fn, config, z_star, params):
    return z_star


@_implicit.defjvp
def _implicit_jvp(fn, config, primals, tangents):
    z_star, params = primals
    _, dparams = tangents
    # Re-entering `_implicit` makes z depend on params at the next order of
    # differentiation, which is what second derivatives need.
    z = _implicit(fn, config, z_star, params)
    _, f_lin = jax.linearize(lambda zz: fn(zz, params), z)
    rhs = jax.jvp(lambda p: fn(z, p), (params,), (dparams,))[1]

    def matvec(v):
        return v - f_lin(v)

    solve = partial(_linear_solve, config)
    dz = lax.custom_linear_solve(matvec, rhs, solve=solve, transpose_solve=solve)
    return z, dz


def _linear_solve(config: _LinearConfig, matvec, b):
    x, residual, converged = solve_linear(config.adjoint, matvec, b, tol=config.tol,
                                          max_steps=config.max_steps)
    return _report_backward(x, residual, converged, config.on_failure, config.tol)


def _report_backward(x, residual, converged, on_failure, tol):
    if on_failure == "raise":
        return eqx.error_if(
            x, ~converged,
            "innerloop: the linear solve of the implicit gradient (the adjoint or "
            "tangent system) did not converge. Raise Implicit(max_steps=...), loosen "
            "Implicit(tol=...), or pick another adjoint solver (lineax.GMRES).")
    if on_failure == "nan":
        return jnp.where(converged, x, jnp.nan)
    # "warn": one host callback, made only when something failed. Every example's
    # `converged` is `residual <= tol`, so the largest residual over any vmapped batch
    # decides for the whole batch (a NaN one fails `<= tol`), in one reduction: two
    # kernels fewer than `any(~converged)` plus a masked maximum, 0.02 s less compile
    # time of the benchmark's value_and_grad on CPU (measured).
    # The callback is a `pure_callback` that returns a zero scalar, added to x so that
    # it stays in the data flow and is not removed as dead code. Only the scalar goes
    # through it: passing x itself would make XLA gather a sharded batch onto one
    # device. It is not a `jax.debug.callback`: a debug callback is a side effect, and
    # a jitted function with effects is dispatched by JAX's slower Python path, 0.4 ms
    # more per call of the benchmark's value_and_grad on CPU (measured).
    worst = eqxi.unvmap_max(residual)

    def warn(worst):
        return jax.pure_callback(partial(_warn_backward, dtype=x.dtype),
                                 jax.ShapeDtypeStruct((), x.dtype), worst)

    zero = lax.cond(worst <= tol, lambda worst: jnp.zeros((), x.dtype), warn, worst)
    return x + zero


class BackwardNotConvergedWarning(RuntimeWarning):
    """The linear solve of an implicit gradient stopped above its tolerance."""


def _warn_backward(worst, dtype):
    warnings.warn(
        "innerloop: the linear solve of the implicit gradient did not converge "
        f"(worst relative residual {float(worst):.3g}). The gradient is inaccurate. "
        "Raise Implicit(max_steps=...) or use another adjoint (lineax.GMRES).",
        BackwardNotConvergedWarning, stacklevel=2)
    return np.zeros((), dtype)


# ------------------------------------------------------------- unrolled modes


class Unroll(AbstractGradient):
    """Backpropagate through every iteration of the solver (including the solver's
    own arithmetic, e.g. Anderson's mixing). Exact for the iterations that ran;
    memory grows linearly with `max_steps`. Supports reverse and forward mode."""

    exact = True

    def solve(self, fn, z0, params, solver, *, tol, max_steps, throw, trace):
        return solver.solve(fn, z0, params, tol=tol, max_steps=max_steps,
                            kind="bounded", trace=trace)


class Checkpointed(AbstractGradient):
    """As `Unroll`, but stores only `checkpoints` iterates and recomputes the rest in
    the backward pass (online treeverse checkpointing; Stumm and Walther 2010), so
    memory is sub-linear in `max_steps`. `checkpoints=None` takes equinox's default,
    about sqrt(2 max_steps), with which each step is recomputed at most once.
    Reverse mode only."""

    checkpoints: int | None = None
    exact = True

    def __check_init__(self):
        if self.checkpoints is not None:
            check_positive_int("checkpoints", self.checkpoints)

    def solve(self, fn, z0, params, solver, *, tol, max_steps, throw, trace):
        return solver.solve(fn, z0, params, tol=tol, max_steps=max_steps,
                            kind="checkpointed", trace=trace,
                            checkpoints=self.checkpoints)


def _with_surrogate_derivative(sol: Solution, surrogate, params) -> Solution:
    """Return `sol` whose value's derivative with respect to params is that of
    `surrogate(sol.value, params)` (a few steps of f from the stopped fixed point).
    The surrogate runs only when the value is differentiated: the forward result and
    its cost are those of the plain solve."""
    value = _surrogate(surrogate, lax.stop_gradient(sol.value), params)
    return eqx.tree_at(lambda s: s.value, sol, value)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _surrogate(surrogate, z_star, params):
    return z_star


@_surrogate.defjvp
def _surrogate_jvp(surrogate, primals, tangents):
    z_star, params = primals
    _, dparams = tangents
    _, dz = jax.jvp(lambda p: surrogate(z_star, p), (params,), (dparams,))
    return z_star, dz


class Truncated(AbstractGradient):
    """Differentiate only the last k applications of f from the fixed point:
    z_0 = stop_gradient(z*), z_{i+1} = f(z_i, theta), gradient of z_k. For an
    L-contractive f this is the Neumann series of (I - df/dz)^{-1} truncated after k
    terms, with error O(L^k)."""

    k: int = 5

    def __check_init__(self):
        check_positive_int("k", self.k)

    def solve(self, fn, z0, params, solver, *, tol, max_steps, throw, trace):
        sol = _forward(fn, z0, params, solver, tol, max_steps, trace)
        k = self.k

        def surrogate(z, p):
            return lax.fori_loop(0, k, lambda _, z: fn(z, p), z)

        return _with_surrogate_derivative(sol, surrogate, params)


class Phantom(AbstractGradient):
    """Phantom gradient (Geng et al. 2021, "On training implicit models"): k damped
    steps z_{i+1} = damping f(z_i) + (1 - damping) z_i from the stopped fixed point,
    differentiated by backpropagation. It approximates the implicit gradient with
    error O((1 - damping + damping L)^k) for an L-contractive f; `Phantom(1, 1.0)` is
    the Jacobian-free gradient."""

    k: int = 5
    damping: float = 0.5

    def __check_init__(self):
        check_positive_int("k", self.k)
        check_positive_float("damping", self.damping)
        if self.damping > 1:
            raise ValueError(f"damping must be in (0, 1], got {self.damping!r}")

    def solve(self, fn, z0, params, solver, *, tol, max_steps, throw, trace):
        sol = _forward(fn, z0, params, solver, tol, max_steps, trace)
        k, lam = self.k, self.damping

        def surrogate(z, p):
            return lax.fori_loop(0, k, lambda _, z: lam * fn(z, p) + (1 - lam) * z, z)

        return _with_surrogate_derivative(sol, surrogate, params)


class JacobianFree(AbstractGradient):
    """Jacobian-free backpropagation (Fung et al. 2022): replace (I - df/dz)^{-1} by
    the identity, i.e. differentiate one application of f at the stopped fixed
    point. A descent direction for contractive f (their Theorem 3.1); no linear
    solve at all."""

    def solve(self, fn, z0, params, solver, *, tol, max_steps, throw, trace):
        sol = _forward(fn, z0, params, solver, tol, max_steps, trace)
        return _with_surrogate_derivative(sol, fn, params)
