r"""`DEQ`: a deep-equilibrium layer as an `equinox.Module`.

A deep equilibrium model (Bai, Kolter and Koltun 2019, "Deep equilibrium models")
replaces a stack of weight-tied layers by the fixed point of one layer (the *cell*):

    u  = injection(x)                       (computed once per call)
    z* = cell(z*, u)                        (solved by a fixed-point solver)

and differentiates z* with respect to the parameters of `cell` and `injection`
as the gradient mode says (`Implicit()` by default: the implicit function theorem,
dz*/dtheta = (I - dcell/dz)^{-1} dcell/dtheta at z*; see `innerloop.implicit.Implicit`).

Two training aids from the DEQ literature are built in:

- Jacobian regularisation (Bai, Koltun and Kolter 2021, "Stabilizing equilibrium
  models by Jacobian regularization"): a Hutchinson estimate of the squared
  Frobenius norm of the cell's Jacobian at the fixed point,

      ||J||_F^2 / d  ~=  (1 / (d S)) sum_{s=1..S} ||eps_s^T J||^2,
      J = dcell/dz (z*, u),  eps_s ~ N(0, I_d),  d = size of z,

  returned as `stats.jac_loss` (differentiable with respect to the parameters; z*
  itself is held fixed, as in the paper). Adding `gamma * jac_loss` to the loss keeps
  the cell contractive, so the forward (and adjoint) solves take fewer iterations.
- Fixed-point correction (Bai et al. 2022, "Deep equilibrium optical flow
  estimation"; the `n_states` option of TorchDEQ, Geng and Kolter 2023): the solver's
  own trajectory is sampled at a few iteration counts m_1 < m_2 < ..., and each
  sampled iterate z^[m_i] is returned differentiably (by default through one
  Jacobian-free step, z^[m_i] -> cell(z^[m_i], u)), so that a loss on every sampled
  iterate, sum_i w_i L(z^[m_i]) + L(z*), also trains the early iterates to be good,
  i.e. it pulls the trajectory towards the equilibrium.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from innerloop._shared import check_positive_float, check_positive_int
from innerloop.implicit._fixed_point import fixed_point
from innerloop.implicit._modes import AbstractGradient, Implicit, JacobianFree
from innerloop.solvers import AbstractSolver, Anderson


class DEQStats(eqx.Module):
    """What a `DEQ` call reports besides its output, for the loss and for logging.

    Per example; under a batched call every field has a leading batch axis.

    - `steps`: int, forward solver iterations used.
    - `residual`: float, final residual ||cell(z*, u) - z*||.
    - `converged`: bool, ||cell(z*, u) - z*|| <= atol + rtol ||z*|| (and the
      residual halved since z0; see `innerloop.fixed_point`).
    - `result`: how the solve ended, an `innerloop.solvers.RESULTS` item.
    - `jac_loss`: float, the Hutchinson estimate of ||dcell/dz||_F^2 / d at z* when
      the layer has `jac_reg=True` (differentiable with respect to the parameters);
      exactly 0 otherwise, so `loss + gamma * stats.jac_loss` works either way.
    - `iterates`: with `correction=(m_1, ..., m_n)`, the sampled solver iterates
      (the state pytree with a leading axis of size n, differentiable); else `None`.
    - `correction_steps`: int array of size n, iterations each sampled iterate took
      (min(m_i, steps)); else `None`.
    - `trace`: with `trace=True`, the residual before each iteration (`max_steps + 1`
      entries, NaN after the solve stopped); else `None`.
    """

    steps: jax.Array
    residual: jax.Array
    result: Any
    converged: jax.Array
    jac_loss: jax.Array
    iterates: Any = None
    correction_steps: jax.Array | None = None
    trace: jax.Array | None = None


def _identity(x):
    return x


def _zeros_like(u):
    return jax.tree.map(jnp.zeros_like, u)


class DEQ(eqx.Module):
    r"""A deep-equilibrium layer: z* = cell(z*, injection(x)).

        deq = DEQ(cell, injection, solver=Anderson(memory=5), grad=Implicit(),
                  tol=1e-4, max_steps=30)
        z_star, stats = deq(x)                       # one example
        z_star, stats = deq(xs, batched=True)        # a batch: vmap, each example
                                                     # stops on its own
        z_star, stats = deq(x, z0=previous_z_star)   # warm start

    Fields:

    - `cell(z, u) -> z`: the layer, usually an `eqx.Module` holding its parameters.
      It must return the same pytree structure, shapes and dtypes as `z`.
    - `injection(x) -> u`: the input injection, a module or function (`None`: u = x).
      It is evaluated once per call, outside the solver loop, and u is passed to
      every iteration; gradients reach its parameters through u.
    - `solver`, `grad`, `max_steps`: as in `innerloop.fixed_point`; `tol` is its
      rtol (default 1e-4) and `atol` its atol (default: tol).
    - `z_init(u) -> z0`: the initial guess when the call gives no `z0`; default
      zeros shaped like u (so the state has the injection's shape).
    - `jac_reg`: compute `stats.jac_loss`, the Hutchinson estimate of
      ||dcell/dz (z*, u)||_F^2 / d with `jac_samples` probe vectors (Bai, Koltun and
      Kolter 2021). Needs a `key` at call time. Costs one vector-Jacobian product of
      the cell per probe, and its gradient one more (double backward).
    - `correction`: iteration counts (m_1 < ... < m_n, each < max_steps) at which the
      solver trajectory is sampled for fixed-point correction (Bai et al. 2022). The
      iterate after min(m_i, steps) iterations is recomputed by re-running the solver
      with `max_steps=m_i` (the solve is deterministic, so this is exactly the main
      trajectory's iterate), and made differentiable with `correction_grad`
      (default `JacobianFree()`: one step of the cell, as TorchDEQ's 1-step phantom
      gradient). Extra forward cost: sum_i min(m_i, steps) cell evaluations. The
      iterates come back in `stats.iterates`.
    - `trace`: also return the forward residual history in `stats.trace`.

    Returns `(z_star, stats)` where `stats` is a `DEQStats`. The forward value of
    `z_star` does not depend on `grad`, `jac_reg` or `correction`.

    Warm start: a `z0` given at call time (e.g. the previous call's `z_star`, as for
    consecutive frames or training epochs) replaces `z_init(u)`; it is treated as a
    constant (`stop_gradient`), so it changes the iterations needed but not what is
    differentiated under `Implicit`, `Truncated`, `Phantom` or `JacobianFree`.

    Works with `eqx.filter_jit`, `eqx.filter_grad` / `eqx.filter_value_and_grad`,
    `jax.vmap` and optax: the configuration fields are static, only the arrays in
    `cell` and `injection` are parameters.
    """

    cell: Callable[[Any, Any], Any]
    injection: Callable[[Any], Any] | None = None
    solver: AbstractSolver = eqx.field(default_factory=Anderson, static=True)
    grad: AbstractGradient = eqx.field(default_factory=Implicit, static=True)
    tol: float = eqx.field(default=1e-4, static=True)
    atol: float | None = eqx.field(default=None, static=True)
    max_steps: int = eqx.field(default=50, static=True)
    z_init: Callable[[Any], Any] | None = eqx.field(default=None, static=True)
    jac_reg: bool = eqx.field(default=False, static=True)
    jac_samples: int = eqx.field(default=1, static=True)
    correction: tuple[int, ...] = eqx.field(default=(), static=True, converter=tuple)
    correction_grad: AbstractGradient = eqx.field(default_factory=JacobianFree,
                                                  static=True)
    trace: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        if not callable(self.cell):
            raise TypeError(f"DEQ: cell must be callable as cell(z, u), got {self.cell!r}")
        if self.injection is not None and not callable(self.injection):
            raise TypeError(f"DEQ: injection must be callable or None, got {self.injection!r}")
        if not isinstance(self.solver, AbstractSolver):
            raise TypeError("DEQ: solver must be an innerloop solver (e.g. Anderson()), "
                            f"got {self.solver!r}")
        for name in ("grad", "correction_grad"):
            if not isinstance(getattr(self, name), AbstractGradient):
                raise TypeError(f"DEQ: {name} must be a gradient mode (e.g. Implicit()), "
                                f"got {getattr(self, name)!r}")
        check_positive_float("DEQ(tol=...)", self.tol)
        if self.atol is not None:
            check_positive_float("DEQ(atol=...)", self.atol, allow_zero=True)
        check_positive_int("DEQ(max_steps=...)", self.max_steps)
        check_positive_int("DEQ(jac_samples=...)", self.jac_samples)
        previous = 0
        for m in self.correction:
            check_positive_int("DEQ(correction=...) entries", m)
            if m <= previous or m >= self.max_steps:
                raise ValueError(
                    "correction must be increasing iteration counts, each below "
                    f"max_steps={self.max_steps}; got {self.correction!r}")
            previous = m

    # ------------------------------------------------------------------ call

    def __call__(self, x: Any, z0: Any = None, *, key: jax.Array | None = None,
                 batched: bool = False) -> tuple[Any, DEQStats]:
        """Solve for one example, or for a batch with `batched=True`.

        `x`: the input (a pytree; with `batched=True` every leaf has a leading batch
        axis). `z0`: optional warm start, shaped like the state (batched likewise).
        `key`: PRNG key, required when `jac_reg=True` (split over the batch).
        """
        if self.jac_reg and key is None:
            raise ValueError("DEQ(jac_reg=True) needs a PRNG key: deq(x, key=key)")
        if not batched:
            return self._solve_one(x, z0, key)
        sizes = {leaf.shape[0] if jnp.ndim(leaf) else None
                 for leaf in jax.tree.leaves(x)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError("DEQ(batched=True) needs every leaf of x to have the same "
                             f"leading batch axis; got leading sizes {sizes}")
        (n,) = sizes
        keys = None if key is None else jax.random.split(key, n)
        in_axes = (0, None if z0 is None else 0, None if keys is None else 0)
        return jax.vmap(self._solve_one, in_axes=in_axes)(x, z0, keys)

    def _solve_one(self, x, z0, key):
        injection = _identity if self.injection is None else self.injection
        u = injection(x)  # once per call: the solver sees u as a parameter
        if z0 is None:
            z0 = (_zeros_like if self.z_init is None else self.z_init)(u)
        z0 = lax.stop_gradient(z0)

        def f(z, theta):
            cell, u_ = theta
            return cell(z, u_)

        theta = (self.cell, u)
        sol = fixed_point(f, z0, theta, solver=self.solver, grad=self.grad,
                          rtol=self.tol, atol=self.atol, max_steps=self.max_steps,
                          trace=self.trace)

        dtype = jnp.result_type(*jax.tree.leaves(sol.value))
        jac_loss = jnp.zeros((), dtype)
        if self.jac_reg:
            jac_loss = jacobian_frobenius(self.cell, lax.stop_gradient(sol.value), u,
                                          key, samples=self.jac_samples)

        iterates = correction_steps = None
        if self.correction:
            outs = [fixed_point(f, z0, theta, solver=self.solver,
                                grad=self.correction_grad, rtol=self.tol, atol=self.atol,
                                max_steps=m)
                    for m in self.correction]
            iterates = jax.tree.map(lambda *zs: jnp.stack(zs), *[o.value for o in outs])
            correction_steps = jnp.stack([o.steps for o in outs])

        stats = DEQStats(steps=sol.steps, residual=sol.residual, result=sol.result,
                         converged=sol.converged, jac_loss=jac_loss, iterates=iterates,
                         correction_steps=correction_steps, trace=sol.trace)
        return sol.value, stats


def jacobian_frobenius(cell: Callable[[Any, Any], Any], z: Any, u: Any, key: jax.Array, *,
                       samples: int = 1) -> jax.Array:
    r"""Hutchinson estimate of ||dcell/dz (z, u)||_F^2 / d (Bai, Koltun and Kolter
    2021, "Stabilizing equilibrium models by Jacobian regularization"):

        E_eps ||eps^T J||^2 = tr(J^T J) = ||J||_F^2,   eps ~ N(0, I_d),

    averaged over `samples` probes and divided by d, the size of z (so the value is
    about 1 per unit of squared gain whatever the width). One vector-Jacobian product
    per probe; differentiable with respect to the cell's parameters and u (z is the
    point of evaluation; the DEQ passes the stopped fixed point)."""
    leaves = jax.tree.leaves(z)
    d = sum(leaf.size for leaf in leaves)
    _, vjp = jax.vjp(lambda z_: cell(z_, u), z)
    treedef = jax.tree.structure(z)

    def one(k):
        ks = jax.random.split(k, len(leaves))
        eps = jax.tree.unflatten(treedef, [jax.random.normal(kk, leaf.shape, leaf.dtype)
                                           for kk, leaf in zip(ks, leaves)])
        (vj,) = vjp(eps)
        return sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(vj))

    return jnp.mean(jax.vmap(one)(jax.random.split(key, samples))) / d
