"""Gradient modes: how a loop's result is differentiated.

A mode is an immutable object passed as `grad=` to `fixed_point`, `root` (and, for
the unrolling modes, `unroll`). Swapping it never changes the forward result.

| mode | gradient | memory | autodiff |
|---|---|---|---|
| `Implicit(linear_solver)` | exact at the fixed point (IFT) | O(1) in iterations | all orders |
| `Unroll()` | exact derivative of the iterations that ran | O(max_steps) | grad, jvp |
| `Checkpointed(n)` | same as `Unroll` | O(n), recomputation | grad |
| `Truncated(k)` | last k steps of f from the fixed point | O(k) | grad, jvp |
| `Phantom(k, damping)` | k damped steps from the fixed point | O(k) | grad, jvp |
| `JacobianFree()` | df/dtheta at the fixed point, no inverse | O(1) | grad, jvp |
"""

from __future__ import annotations

import abc
import sys
from functools import partial
from typing import Any, Callable, Literal

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax

from innerloop._shared import check_positive_float, check_positive_int
from innerloop.implicit._tolerance import NotConvergedError, warn_at_user_line
from innerloop.solvers import AbstractSolver, Dense, Iteration, NormalCG, Solution, solve_linear

_OnFailure = Literal["warn", "raise", "nan"]
# solvers' FlatFn (z, params) -> f(z, params), which is not a public name of the room.
_FlatFn = Callable[[jax.Array, Any], jax.Array]


class AbstractGradient(eqx.Module):
    """A way of differentiating `z*(theta)` where z* = f(z*, theta).

    `solve` receives a flat map `fn(z, params)` and must return a `Solution` whose
    value is differentiable with respect to `params` as the mode says.
    """

    #: True when the mode's gradient equals the exact derivative of z*(theta) (up to
    #: solver tolerance); False for deliberately approximate modes.
    exact = False

    @abc.abstractmethod
    def solve(self, fn: _FlatFn, z0: jax.Array, params: Any, solver: AbstractSolver, *,
              rtol: float, atol: float, max_steps: int, throw: bool,
              trace: bool) -> Solution:
        ...


class _AttachedGradient(AbstractGradient):
    """A mode that differentiates the stopped solution by a rule of its own
    (`attach`), so it also gives gradients to a solution found elsewhere
    (`custom_fixed_point`)."""

    @abc.abstractmethod
    def attach(self, fn: _FlatFn, z_star: jax.Array, params: Any, *, rtol: float,
               atol: float, max_steps: int, throw: bool,
               solver: AbstractSolver | None = None) -> jax.Array:
        """z_star, with the mode's derivative with respect to params."""

    def solve(self, fn: _FlatFn, z0: jax.Array, params: Any, solver: AbstractSolver, *,
              rtol: float, atol: float, max_steps: int, throw: bool,
              trace: bool) -> Solution:
        sol = _forward(fn, z0, params, solver, rtol, atol, max_steps, trace)
        value = self.attach(fn, sol.value, params, rtol=rtol, atol=atol,
                            max_steps=max_steps, throw=throw, solver=solver)
        return eqx.tree_at(lambda s: s.value, sol, value)


def _forward(fn, z0, params, solver, rtol, atol, max_steps, trace) -> Solution:
    """The forward solve with no derivative information."""
    z0, params = lax.stop_gradient((z0, params))
    return solver.solve(fn, z0, params, rtol=rtol, atol=atol, max_steps=max_steps,
                        kind="lax", trace=trace)


# --------------------------------------------------------------------- Implicit


class Implicit(_AttachedGradient):
    r"""Implicit-function-theorem gradient (Bai, Kolter and Koltun 2019).

    With z* = f(z*, theta), dz*/dtheta = (I - df/dz)^{-1} df/dtheta. Reverse mode
    solves the adjoint fixed point u = (df/dz)^T u + dL/dz, then returns
    u^T df/dtheta; forward mode solves the tangent fixed point
    t = (df/dz) t + (df/dtheta) dtheta. Memory does not depend on how many forward
    iterations ran.

    - `linear_solver`: how the linear system is solved; see `innerloop.solvers.solve_linear`.
      Default `Iteration()` (plain adjoint iteration); `"forward"` reuses the
      forward solver; a lineax solver (`lineax.GMRES(...)`) or `Dense()` also work.
    - `fallback`: when an iterative adjoint (a solver, or `"forward"`) fails, as
      plain iteration does where df/dz has eigenvalues outside the unit disc, the
      failed examples are solved again by this solver, inside the same
      compiled function. Default `NormalCG()` (conjugate gradients on the normal
      equations, which converge for any nonsingular I - df/dz); `Dense()` or a
      lineax solver also work; `None` turns it off. It runs only when a solve
      failed, so a contractive problem pays nothing for it at run time. It is left
      out when the forward solver is the adjoint's own `Iteration`: that forward
      solve converging means df/dz has spectral radius below 1 at the solution,
      and so has its transpose, so the adjoint iteration converges too (it then
      gets 10 x the forward max_steps, since it may start further from its
      tolerance).
    - `rtol`, `atol`: of the linear solve, ||x - A x - b|| <= atol + rtol ||x||.
      Default: the forward solve's rtol (its atol where its rtol is 0), and atol 0:
      a linear system's solution is 0 only where b is, so the relative test alone is
      well defined and invariant to the scale of the loss. `tol` is another name for
      rtol.
    - `max_steps`: of the linear solve; defaults to the forward solve's (10 x that
      without a fallback, see above).
    - `on_failure`: what a linear solve that fails (after the fallback) does:
      `"warn"` (a `BackwardNotConvergedWarning` at the user's line, the default
      unless the call has `throw=True`), `"raise"` (an error, also under `jit`; the
      default with `throw=True`) or `"nan"` (the gradient becomes NaN). It is never
      silently zero.

    Implemented as a `jax.custom_jvp` whose tangent is a `lax.custom_linear_solve`,
    so JAX derives reverse mode by transposition and higher derivatives by
    differentiating the rule again.
    """

    linear_solver: Any = Iteration()
    fallback: Any = NormalCG()
    rtol: float | None = None
    atol: float | None = None
    tol: float | None = None
    max_steps: int | None = None
    on_failure: _OnFailure | None = None
    exact = True

    def __check_init__(self):
        if self.tol is not None and self.rtol is not None:
            raise ValueError("Implicit: give rtol or tol (another name for rtol), not both")
        for name in ("rtol", "atol", "tol"):
            if getattr(self, name) is not None:
                check_positive_float(f"Implicit({name}=...)", getattr(self, name),
                                     allow_zero=name == "atol")
        if self.max_steps is not None:
            check_positive_int("Implicit(max_steps=...)", self.max_steps)
        if self.on_failure not in (None, "warn", "raise", "nan"):
            raise ValueError(
                f"Implicit: on_failure must be 'warn', 'raise' or 'nan', got {self.on_failure!r}")
        ok = (isinstance(self.linear_solver, (AbstractSolver, NormalCG, Dense,
                                        lx.AbstractLinearSolver))
              or self.linear_solver == "forward")
        if not ok:
            raise TypeError(
                "Implicit(linear_solver=...) takes a solver (Iteration(), Anderson(...)), "
                f"'forward', NormalCG(), Dense() or a lineax solver; got {self.linear_solver!r}")
        if not (self.fallback is None
                or isinstance(self.fallback, (NormalCG, Dense, lx.AbstractLinearSolver))):
            raise TypeError("Implicit(fallback=...) takes NormalCG(), Dense(), a lineax "
                            f"solver or None; got {self.fallback!r}")

    def attach(self, fn: _FlatFn, z_star: jax.Array, params: Any, *, rtol: float,
               atol: float, max_steps: int, throw: bool,
               solver: AbstractSolver | None = None) -> jax.Array:
        if self.linear_solver == "forward":
            if solver is None:
                raise ValueError("Implicit(linear_solver='forward') needs a forward solver; "
                                 "give one (e.g. Iteration()) or pass solver=")
            adjoint = solver
        else:
            adjoint = self.linear_solver
        rtol_adj = self.rtol if self.rtol is not None else self.tol
        fallback = self.fallback if isinstance(adjoint, AbstractSolver) else None
        steps = max_steps if self.max_steps is None else self.max_steps
        if isinstance(adjoint, Iteration) and adjoint == solver:
            # A and A^T share their spectrum (see `fallback` above); the adjoint may
            # still need more steps than the forward solve took, at the same rate.
            fallback = None
            steps = 10 * max_steps if self.max_steps is None else self.max_steps
        if rtol_adj is None:
            rtol_adj = rtol if rtol > 0 else atol
        config = _LinearConfig(
            linear_solver=adjoint,
            fallback=fallback,
            rtol=rtol_adj,
            atol=0.0 if self.atol is None else self.atol,
            max_steps=steps,
            on_failure=self.on_failure or ("raise" if throw else "warn"),
        )
        return _implicit(fn, config, z_star, params)


class _LinearConfig(eqx.Module):
    linear_solver: Any
    fallback: Any
    rtol: float
    atol: float
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
    x, residual, converged = solve_linear(config.linear_solver, matvec, b, rtol=config.rtol,
                                          atol=config.atol, max_steps=config.max_steps)
    if config.fallback is not None:
        # One unbatched predicate: under vmap the branch stays a branch, taken only
        # when some example failed; the examples that converged keep their solution.
        def fallback(args):
            x, residual, converged = args
            x2, r2, ok2 = solve_linear(config.fallback, matvec, b, rtol=config.rtol,
                                       atol=config.atol, max_steps=config.max_steps)
            use = ~converged
            return (jnp.where(use, x2, x), jnp.where(use, r2, residual),
                    jnp.where(use, ok2, converged))

        x, residual, converged = lax.cond(eqxi.unvmap_any(~converged), fallback,
                                          lambda args: args, (x, residual, converged))
    return _report_backward(x, residual, converged, config.on_failure)


def _report_backward(x, residual, converged, on_failure):
    if on_failure == "nan":
        return jnp.where(converged, x, jnp.nan)
    # One host callback, made only when something failed: the predicate is reduced
    # over any vmapped batch, so the branch stays a branch. The callback returns a
    # zero scalar that is added to x, which keeps it in the data flow; only scalars go
    # through it (passing x would gather a sharded batch onto one device). It is a
    # `pure_callback`, not a `jax.debug.callback`: a jitted function with side
    # effects is dispatched by JAX's slower Python path.
    # A failed example's residual is positive or NaN, a converged one's counts as 0:
    # one reduction decides for the whole batch.
    worst = eqxi.unvmap_max(jnp.where(converged, 0, residual))
    callback = _raise_backward if on_failure == "raise" else _warn_backward

    def report(worst):
        return jax.pure_callback(partial(callback, dtype=x.dtype),
                                 jax.ShapeDtypeStruct((), x.dtype), worst)

    zero = lax.cond(worst <= 0, lambda worst: jnp.zeros((), x.dtype), report, worst)
    return x + zero


class BackwardNotConvergedWarning(RuntimeWarning):
    """The linear solve of an implicit gradient stopped above its tolerance."""


_BACKWARD = ("the linear solve of the implicit gradient (the adjoint or tangent "
             "system) did not converge (worst residual "
             "{worst:.3g}). The gradient is inaccurate. Raise Implicit(max_steps=...), "
             "loosen Implicit(rtol=...), or check that I - df/dz is invertible at the "
             "solution.")


def _warn_backward(worst, dtype):
    warn_at_user_line("innerloop: " + _BACKWARD.format(worst=float(worst)),
                      BackwardNotConvergedWarning)
    return np.zeros((), dtype)


def _raise_backward(worst, dtype):
    msg = "innerloop: " + _BACKWARD.format(worst=float(worst))
    print(f"\nNotConvergedError: {msg}\n", file=sys.stderr, flush=True)
    raise NotConvergedError(msg)


# ------------------------------------------------------------- unrolled modes


class Unroll(AbstractGradient):
    """Backpropagate through every iteration of the solver (including the solver's
    own arithmetic, e.g. Anderson's mixing). Exact for the iterations that ran;
    memory grows linearly with `max_steps`. Supports reverse and forward mode."""

    exact = True

    def solve(self, fn: _FlatFn, z0: jax.Array, params: Any, solver: AbstractSolver, *,
              rtol: float, atol: float, max_steps: int, throw: bool,
              trace: bool) -> Solution:
        return solver.solve(fn, z0, params, rtol=rtol, atol=atol, max_steps=max_steps,
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
            check_positive_int("Checkpointed(checkpoints=...)", self.checkpoints)

    def solve(self, fn: _FlatFn, z0: jax.Array, params: Any, solver: AbstractSolver, *,
              rtol: float, atol: float, max_steps: int, throw: bool,
              trace: bool) -> Solution:
        return solver.solve(fn, z0, params, rtol=rtol, atol=atol, max_steps=max_steps,
                            kind="checkpointed", trace=trace,
                            checkpoints=self.checkpoints)


def _with_surrogate_derivative(z_star, surrogate, params) -> jax.Array:
    """z_star, whose derivative with respect to params is that of
    `surrogate(z_star, params)` (a few steps of f from the stopped fixed point). The
    surrogate runs only when the value is differentiated: the forward result and its
    cost are those of the plain solve."""
    return _surrogate(surrogate, lax.stop_gradient(z_star), params)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _surrogate(surrogate, z_star, params):
    return z_star


@_surrogate.defjvp
def _surrogate_jvp(surrogate, primals, tangents):
    z_star, params = primals
    _, dparams = tangents
    _, dz = jax.jvp(lambda p: surrogate(z_star, p), (params,), (dparams,))
    return z_star, dz


class Truncated(_AttachedGradient):
    """Differentiate only the last k applications of f from the fixed point:
    z_0 = stop_gradient(z*), z_{i+1} = f(z_i, theta), gradient of z_k. For an
    L-contractive f this is the Neumann series of (I - df/dz)^{-1} truncated after k
    terms, with error O(L^k)."""

    k: int = 5

    def __check_init__(self):
        check_positive_int("Truncated(k=...)", self.k)

    def attach(self, fn: _FlatFn, z_star: jax.Array, params: Any, *, rtol: float,
               atol: float, max_steps: int, throw: bool,
               solver: AbstractSolver | None = None) -> jax.Array:
        k = self.k

        def surrogate(z, p):
            return lax.fori_loop(0, k, lambda _, z: fn(z, p), z)

        return _with_surrogate_derivative(z_star, surrogate, params)


class Phantom(_AttachedGradient):
    """Phantom gradient (Geng et al. 2021, "On training implicit models"): k damped
    steps z_{i+1} = damping f(z_i) + (1 - damping) z_i from the stopped fixed point,
    differentiated by backpropagation. It approximates the implicit gradient with
    error O((1 - damping + damping L)^k) for an L-contractive f; `Phantom(1, 1.0)` is
    the Jacobian-free gradient."""

    k: int = 5
    damping: float = 0.5

    def __check_init__(self):
        check_positive_int("Phantom(k=...)", self.k)
        check_positive_float("Phantom(damping=...)", self.damping)
        if self.damping > 1:
            raise ValueError(f"Phantom: damping must be in (0, 1], got {self.damping!r}")

    def attach(self, fn: _FlatFn, z_star: jax.Array, params: Any, *, rtol: float,
               atol: float, max_steps: int, throw: bool,
               solver: AbstractSolver | None = None) -> jax.Array:
        k, lam = self.k, self.damping

        def surrogate(z, p):
            return lax.fori_loop(0, k, lambda _, z: lam * fn(z, p) + (1 - lam) * z, z)

        return _with_surrogate_derivative(z_star, surrogate, params)


class JacobianFree(_AttachedGradient):
    """Jacobian-free backpropagation (Fung et al. 2022): replace (I - df/dz)^{-1} by
    the identity, i.e. differentiate one application of f at the stopped fixed
    point. A descent direction for contractive f (their Theorem 3.1); no linear
    solve at all."""

    def attach(self, fn: _FlatFn, z_star: jax.Array, params: Any, *, rtol: float,
               atol: float, max_steps: int, throw: bool,
               solver: AbstractSolver | None = None) -> jax.Array:
        return _with_surrogate_derivative(z_star, fn, params)
