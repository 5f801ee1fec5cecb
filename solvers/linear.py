"""Solvers for the linear systems of implicit differentiation.

The adjoint (reverse mode) and tangent (forward mode) systems of a fixed point
z* = f(z*, theta) are (I - A) x = b with A = (df/dz)^T or df/dz at z*. An adjoint
solver is one of:

- any forward solver (`Iteration()`, `Anderson(...)`, `Broyden(...)`), run on the
  linear fixed point x = A x + b. `Iteration()` is plain adjoint iteration, the
  default: it costs one vector-Jacobian product per step and was the fastest and
  most accurate choice in our measurements;
- `"forward"`: the forward solver of the same call, reused;
- a lineax Krylov solver, e.g. `lineax.GMRES(rtol, atol)` or `lineax.BiCGStab(...)`;
- `Dense()`: materialise the n x n matrix and LU-solve it (small problems only).
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from ._base import AbstractSolver, relative_residual


class Dense(eqx.Module):
    """Materialise I - A with `jax.jacfwd` and solve it by LU. O(n^2) memory and
    O(n^3) time per example: for small problems and as a reference."""


def solve_linear(
    adjoint: Any,
    matvec: Callable[[jax.Array], jax.Array],
    b: jax.Array,
    *,
    tol: float,
    max_steps: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Solve (I - A) x = b where `matvec(x) = x - A x`. Returns (x, residual, converged),
    with residual = ||x - (A x + b)|| / max(||x||, 1e-8) as for the forward solve."""
    if isinstance(adjoint, AbstractSolver):
        sol = adjoint.solve(lambda x, rhs: x - matvec(x) + rhs, b, b, tol=tol,
                            max_steps=max_steps)
        return sol.value, sol.residual, sol.converged
    if isinstance(adjoint, Dense):
        mat = jax.jacfwd(matvec)(b)
        x = jnp.linalg.solve(mat, b)
    elif isinstance(adjoint, lx.AbstractLinearSolver):
        operator = lx.FunctionLinearOperator(matvec, jax.eval_shape(lambda: b))
        x = lx.linear_solve(operator, b, adjoint, throw=False).value
    else:
        raise TypeError(f"unknown adjoint solver {adjoint!r}")
    r = relative_residual(x, x - matvec(x) + b)
    return x, r, r <= tol
