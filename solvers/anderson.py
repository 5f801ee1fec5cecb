"""Anderson acceleration (Walker and Ni 2011)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from ._base import AbstractSolver, FlatFn, check_positive_float, check_positive_int


class AndersonState(eqx.Module):
    ys: jax.Array  # (memory, n) past mixed points x_i + mixing * r_i
    rs: jax.Array  # (memory, n) residuals r_i = f(x_i) - x_i
    gram: jax.Array  # (memory, memory) rs @ rs.T, updated one row per step
    count: jax.Array  # number of iterates seen


class Anderson(AbstractSolver):
    r"""Anderson acceleration with a regularised least-squares mixing step.

    Keeps the last m iterates x_i and residuals r_i = f(x_i) - x_i and chooses

        alpha = argmin ||sum_i alpha_i r_i||^2 + ridge * sum_i alpha_i^2 ||r_i||^2
                subject to sum_i alpha_i = 1,

        x_{k+1} = sum_i alpha_i x_i + mixing * sum_i alpha_i r_i,

    (Walker and Ni 2011, "Anderson acceleration for fixed-point iterations"; the
    formulation of Bai et al.'s DEQ code). The ridge is *relative*: each coefficient
    is penalised by the size of its own residual, which is the Gram matrix's
    diagonal. The system is solved in the diagonally rescaled form
    (C + ridge I) w = D^{-1/2} 1 with C the residuals' correlation matrix, whose
    eigenvalues lie in [ridge, m + ridge] whatever the residuals' scale, so a
    singular history (collinear or repeated residuals) cannot produce NaN, and the
    regularisation does not dominate near convergence as an absolute ridge does.

    The Gram matrix is kept in the state and updated by one row per iteration, and
    the points x_i + mixing r_i are stored instead of x_i, so an iteration costs one
    f-evaluation plus three passes over the (m, n) history.

    Batches: solve one example per call and `jax.vmap` over the batch. Each example
    then gets its own mixing coefficients and its own stopping step. (One set of
    coefficients for a whole flattened batch gives no acceleration in our
    measurements: the examples' residual histories are unrelated.)
    """

    memory: int = 5
    mixing: float = 1.0
    ridge: float = 1e-4

    def __check_init__(self):
        check_positive_int("memory", self.memory)
        check_positive_float("mixing", self.mixing)
        check_positive_float("ridge", self.ridge, allow_zero=True)

    def init(self, fn: FlatFn, z, fz, args: Any) -> AndersonState:
        m, n = self.memory, z.shape[0]
        return AndersonState(
            ys=jnp.zeros((m, n), z.dtype),
            rs=jnp.zeros((m, n), z.dtype),
            gram=jnp.zeros((m, m), z.dtype),
            count=jnp.asarray(0, jnp.int32),
        )

    def step(self, fn, z, fz, state: AndersonState, args):
        m = self.memory
        r = fz - z
        # Every example of a vmapped solve steps in lockstep (a finished example's
        # state keeps moving, see `run_loop`), so the count is the same across the
        # batch: taking it unbatched turns the history writes below into in-place
        # slice updates instead of per-example scatters.
        count = eqxi.unvmap_max(state.count)
        slot = count % m
        ys = state.ys.at[slot].set(z + self.mixing * r)
        rs = state.rs.at[slot].set(r)
        row = rs @ r
        gram = state.gram.at[slot, :].set(row).at[:, slot].set(row)
        valid = jnp.arange(m) < jnp.minimum(count + 1, m)
        alpha = mixing_coefficients(gram, valid, self.ridge, latest=slot)
        z_new = alpha @ ys
        return z_new, AndersonState(ys, rs, gram, state.count + 1)


def mixing_coefficients(gram: jax.Array, valid: jax.Array, ridge: float,
                        latest: jax.Array | int | None = None) -> jax.Array:
    """alpha minimising alpha^T (G + ridge diag(G)) alpha subject to sum(alpha) = 1,
    over the entries marked `valid` (others get alpha = 0).

    If the Gram matrix under- or overflows (residuals near the dtype's limits), the
    result falls back to alpha = e_latest, a plain damped iteration step."""
    dtype = gram.dtype
    m = gram.shape[0]
    eps = jnp.finfo(dtype).eps
    diag = jnp.where(valid, jnp.diagonal(gram), 0)
    # Work relative to the largest residual (the result is scale-invariant), and floor
    # each residual's relative size at eps, so that residuals that are exactly zero,
    # or tiny, cannot overflow the rescaling.
    top = jnp.max(diag)
    top = jnp.where(top > 0, top, 1)
    diag = jnp.where(valid, jnp.maximum(diag / top, eps), 1)
    scale = jnp.sqrt(diag)
    corr = (gram / top) / (scale[:, None] * scale[None, :])
    both = valid[:, None] & valid[None, :]
    eye = jnp.eye(m, dtype=dtype)
    corr = jnp.where(both, corr, eye) + ridge * eye
    rhs = jnp.where(valid, 1 / scale, 0)
    w = spd_solve(corr, rhs)
    y = jnp.where(valid, w / scale, 0)
    alpha = y / jnp.sum(y)
    if latest is None:
        latest = jnp.argmax(jnp.where(valid, jnp.arange(m), -1))
    fallback = (jnp.arange(m) == latest).astype(dtype)
    return jnp.where(jnp.all(jnp.isfinite(alpha)), alpha, fallback)


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """Solve a x = b for a small symmetric positive-definite a.

    For the small systems of Anderson's mixing step this is an unrolled Cholesky:
    a few dozen fused vector operations, which under `vmap` beat a batched LAPACK
    call per example on CPU (measured). Pivots are floored at eps * max(diag(a)) so
    that round-off cannot produce NaN.
    """
    m = a.shape[0]
    if m > 16:
        return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), b)
    zero = jnp.zeros((), a.dtype)
    floor = jnp.finfo(a.dtype).eps * jnp.max(jnp.abs(jnp.diagonal(a)))
    floor = jnp.maximum(floor, jnp.finfo(a.dtype).tiny)
    lower = [[zero] * m for _ in range(m)]
    for j in range(m):
        s = a[j, j] - sum((lower[j][k] ** 2 for k in range(j)), zero)
        d = jnp.sqrt(jnp.maximum(s, floor))
        lower[j][j] = d
        for i in range(j + 1, m):
            t = a[i, j] - sum((lower[i][k] * lower[j][k] for k in range(j)), zero)
            lower[i][j] = t / d
    y = [zero] * m
    for i in range(m):
        y[i] = (b[i] - sum((lower[i][k] * y[k] for k in range(i)), zero)) / lower[i][i]
    x = [zero] * m
    for i in reversed(range(m)):
        x[i] = (y[i] - sum((lower[k][i] * x[k] for k in range(i + 1, m)), zero)) / lower[i][i]
    return jnp.stack(x)
