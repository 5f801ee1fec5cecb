"""Solvers for the linear systems of implicit differentiation.

The adjoint (reverse mode) and tangent (forward mode) systems of a fixed point
z* = f(z*, theta) are (I - A) x = b with A = (df/dz)^T or df/dz at z*. An adjoint
solver is one of:

- any forward solver (`Iteration()`, `Anderson(...)`, `Broyden(...)`), run on the
  linear fixed point x = A x + b. `Iteration()` is plain adjoint iteration, the
  default: it costs one vector-Jacobian product per step and was the fastest and
  most accurate choice in our measurements;
- `"forward"`: the forward solver of the same call, reused;
- `NormalCG()` (conjugate gradients on the normal equations: converges for any
  nonsingular system), or a lineax Krylov solver, e.g. `lineax.GMRES(rtol, atol)`
  or `lineax.BiCGStab(...)`;
- `Dense()`: materialise the n x n matrix and LU-solve it (small problems only).
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax import lax

from innerloop.solvers._base import AbstractSolver, check_positive_int


class Dense(eqx.Module):
    """Materialise I - A with `jax.jacfwd` and solve it by LU. O(n^2) memory and
    O(n^3) time per example: for small problems and as a reference."""


class NormalCG(eqx.Module):
    r"""Conjugate gradients on the normal equations M^H M x = M^H b, M = I - A (CGLS;
    Hestenes and Stiefel 1952, Bjorck 1996 7.4), one example.

    The residual ||b - M x|| decreases monotonically and, in exact arithmetic, the
    solve ends within n steps for any nonsingular M, where plain adjoint iteration
    needs the spectral radius of A below 1; the rate depends on cond(M)^2. Each step
    costs one product with M and one with M^H (M^H by `jax.linear_transpose`). Short
    recurrences and no inner solves keep its compiled size small, which is why it is
    `Implicit`'s fallback. `max_steps=None` takes max(the solve's max_steps, 2 n).
    """

    max_steps: int | None = None

    def __check_init__(self):
        if self.max_steps is not None:
            check_positive_int("NormalCG(max_steps=...)", self.max_steps)

    def solve(self, matvec: Callable[[jax.Array], jax.Array], b: jax.Array, *, rtol: float,
              atol: float, max_steps: int) -> jax.Array:
        limit = max(max_steps, 2 * b.shape[0]) if self.max_steps is None else self.max_steps
        transpose = jax.linear_transpose(matvec, b)

        def rmatvec(v):  # M^H v
            return jnp.conj(transpose(jnp.conj(v))[0])

        def cond(carry):
            k, x, r, _, _, gamma = carry
            rn = jnp.linalg.norm(r)
            small = rn <= atol + rtol * jnp.linalg.norm(x)
            return (k < limit) & ~small & (gamma > 0) & jnp.isfinite(rn)

        def body(carry):
            k, x, r, s, p, gamma = carry
            q = matvec(p)
            alpha = (gamma / jnp.real(jnp.vdot(q, q))).astype(b.dtype)
            x = x + alpha * p
            r = r - alpha * q
            s = rmatvec(r)
            gamma_new = jnp.real(jnp.vdot(s, s))
            p = s + (gamma_new / gamma).astype(b.dtype) * p
            return k + 1, x, r, s, p, gamma_new

        s = rmatvec(b)
        carry = (jnp.zeros((), jnp.int32), jnp.zeros_like(b), b, s, s,
                 jnp.real(jnp.vdot(s, s)))
        return lax.while_loop(cond, body, carry)[1]


def solve_linear(
    adjoint: Any,
    matvec: Callable[[jax.Array], jax.Array],
    b: jax.Array,
    *,
    rtol: float,
    atol: float,
    max_steps: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Solve (I - A) x = b where `matvec(x) = x - A x`. Returns (x, residual, converged)
    with residual = ||x - (A x + b)||, converged as for a forward solve (`converged`)."""
    if isinstance(adjoint, AbstractSolver):
        sol = adjoint.solve(lambda x, rhs: x - matvec(x) + rhs, b, b, rtol=rtol,
                            atol=atol, max_steps=max_steps)
        return sol.value, sol.residual, sol.converged
    if isinstance(adjoint, NormalCG):
        x = adjoint.solve(matvec, b, rtol=rtol, atol=atol, max_steps=max_steps)
    elif isinstance(adjoint, Dense):
        mat = jax.jacfwd(matvec)(b)
        x = jnp.linalg.solve(mat, b)
    elif isinstance(adjoint, lx.AbstractLinearSolver):
        operator = lx.FunctionLinearOperator(matvec, jax.eval_shape(lambda: b))
        x = lx.linear_solve(operator, b, adjoint, throw=False).value
    else:
        raise TypeError(f"solve_linear: unknown linear solver {adjoint!r}; use an innerloop "
                    "solver, NormalCG(), Dense() or a lineax solver")
    r = jnp.linalg.norm(b - matvec(x))
    # A direct or Krylov solve has no start to make progress from: the tolerance alone.
    ok = r <= atol + rtol * jnp.linalg.norm(x)
    return x, r, ok
