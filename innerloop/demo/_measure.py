"""Measurements of a trained model that the core does not report."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from innerloop.demo._model import forward_only


def _adjoint_settings(deq):
    """(solver, rtol, atol, max_steps, fallback) of the backward linear solve that
    `deq.grad` runs, resolved from the mode's fields as `Implicit` documents them."""
    from innerloop.implicit import Implicit
    from innerloop.solvers import AbstractSolver, Iteration

    grad = deq.grad
    if not isinstance(grad, Implicit):
        raise TypeError(f"adjoint_cost: the model's gradient mode is {grad!r}; the adjoint "
                        "solve exists only for Implicit (train with grad='implicit')")
    solver = deq.solver if grad.linear_solver == "forward" else grad.linear_solver
    if not isinstance(solver, AbstractSolver):
        raise TypeError("adjoint_cost: only an iterative adjoint solver has iterations to "
                        f"count; the model's is {solver!r}")
    rtol, atol = deq.tol, deq.tol if deq.atol is None else deq.atol  # as fixed_point
    rtol_adj = grad.rtol if grad.rtol is not None else grad.tol
    if rtol_adj is None:
        rtol_adj = rtol if rtol > 0 else atol
    atol_adj = 0.0 if grad.atol is None else grad.atol
    max_steps = deq.max_steps if grad.max_steps is None else grad.max_steps
    fallback = grad.fallback
    if isinstance(solver, Iteration) and solver == deq.solver:
        fallback = None
        max_steps = 10 * deq.max_steps if grad.max_steps is None else grad.max_steps
    return solver, rtol_adj, atol_adj, max_steps, fallback


def adjoint_cost(model, x, y) -> dict:
    """What the backward pass of the model's own `Implicit` mode (the one it trained
    with) costs on one batch: the iterations of its adjoint fixed-point solve
    a = (dcell/dz)^T a + dL/dz*, one VJP of the cell each.

    The core does not report them, so the solve is rebuilt here with the mode's
    settings, and checked against the mode: the gradient with respect to the
    injection's parameters from these adjoints and the one `jax.grad` computes
    through the model agree to `grad_rel_err`. Returns dict(vjps: mean over the
    batch, vjps_max, unconverged: fraction of examples whose solve stopped at its
    max_steps (the mode then runs its `fallback` on them, not counted),
    max_steps, fallback, grad_rel_err)."""
    import optax

    deq = model.deq
    solver, rtol, atol, max_steps, fallback = _adjoint_settings(deq)

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x)[0], y).mean()

    @eqx.filter_jit
    def measure(model, x, y):
        deq = model.deq
        z, _ = deq(x, batched=True)
        dz = jax.grad(lambda zs: optax.softmax_cross_entropy_with_integer_labels(
            jax.vmap(model.head)(zs), y).mean())(z)

        def one(z1, x1, g):
            u = deq.injection(x1)
            # As the mode: the transpose of the linearised cell, inside x - M^T x + b.
            _, f_lin = jax.linearize(lambda zz: deq.cell(zz, u), z1)
            mat_t = jax.linear_transpose(lambda v: v - f_lin(v), z1)
            sol = solver.solve(lambda a, b: a - mat_t(a)[0] + b, g, g, rtol=rtol,
                               atol=atol, max_steps=max_steps)
            du = jax.vjp(lambda uu: deq.cell(z1, uu), u)[1](sol.value)[0]
            return sol.steps, sol.converged, du

        steps, converged, du = jax.vmap(one)(z, x, dz)
        mine = (du.sum(0), du.T @ x)  # d loss / d (bias, weight) of the injection
        grads = eqx.filter_grad(loss_fn)(model, x, y).deq.injection
        theirs = (grads.bias, grads.weight)
        err = sum(jnp.sum((a - b) ** 2) for a, b in zip(mine, theirs))
        norm = sum(jnp.sum(b ** 2) for b in theirs)
        return steps, converged, jnp.sqrt(err / norm)

    steps, converged, rel = measure(model, x, y)
    steps = np.asarray(steps)
    return dict(vjps=float(steps.mean()), vjps_max=int(steps.max()),
                unconverged=float(1.0 - np.asarray(converged).mean()),
                max_steps=int(max_steps), fallback=None if fallback is None
                else type(fallback).__name__, grad_rel_err=float(rel))


@eqx.filter_jit
def _trace(model, x):
    return model(x)[1].trace


def residual_trace(model, x) -> list[float]:
    """Median over the batch of the relative residual after each forward iteration
    1, 2, ..., max_steps; an example that has stopped keeps its final residual.

    (Iteration 0 is left out: from the zero initial guess the relative residual
    ||f(0) - 0|| / max(||0||, 1e-8) says nothing.)"""
    t = np.asarray(_trace(forward_only(model, trace=True), x))
    steps = np.isfinite(t).sum(axis=1) - 1  # the trace holds steps + 1 residuals
    last = t[np.arange(len(t)), steps]
    filled = np.where(np.isfinite(t), t, last[:, None])
    n = max(int(steps.max()), 1)
    return [float(v) for v in np.median(filled[:, 1:n + 1], axis=0)]
