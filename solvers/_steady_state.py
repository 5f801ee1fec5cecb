"""The fixed point as the steady state of an ODE, integrated with diffrax."""

from __future__ import annotations

from typing import Any

import diffrax
import jax
import jax.numpy as jnp

from innerloop.solvers._base import (
    AbstractSolver,
    FlatFn,
    LoopKind,
    Solution,
    check_positive_float,
    converged,
    final_result,
    progress_bound,
)


class SteadyState(AbstractSolver):
    r"""Integrate dz/dt = f(z, theta) - z until a steady state.

    At a steady state dz/dt = 0, i.e. z = f(z, theta). The solve stops at diffrax's
    steady-state event ||f(z) - z|| <= atol + rtol ||z||, the test of the iterative
    solvers. Stable whenever the eigenvalues of df/dz have real part below
    1, a weaker condition than contractivity (a continuous-time DEQ; Chen et al. 2018,
    "Neural ODEs"). `steps` counts accepted and rejected ODE steps; the trace has
    one entry per accepted step.

    This solver is driven by diffrax's own loop rather than the shared iteration
    loop, so it is an `AbstractSolver` with its own `solve` and no `init`/`step`.

    The default ODE solver is the implicit (L-stable) `diffrax.Kvaerno5`: near the
    steady state its steps can grow without bound, so it converges like a damped
    Newton method (pseudo-transient continuation). An explicit solver such as
    `diffrax.Tsit5()` is cheaper per step on large states but stalls at its
    stability limit, at about the step-size controller's tolerance.
    """

    ode_solver: Any = diffrax.Kvaerno5()
    rtol: float = 1e-4
    atol: float = 1e-6
    dt0: float = 0.5

    def __check_init__(self):
        check_positive_float("SteadyState(rtol=...)", self.rtol)
        check_positive_float("SteadyState(atol=...)", self.atol)
        check_positive_float("SteadyState(dt0=...)", self.dt0)

    def solve(
        self,
        fn: FlatFn,
        z0: jax.Array,
        args: Any,
        *,
        rtol: float,
        atol: float,
        max_steps: int,
        kind: LoopKind = "lax",
        trace: bool = False,
        checkpoints: int | None = None,
    ) -> Solution:
        term = diffrax.ODETerm(lambda t, z, a: fn(z, a) - z)
        # Times in the state's dtype: diffrax promotes the state to the times' dtype
        # (float64 Python floats under x64 would turn a float32 state into float64).
        real = jnp.real(z0).dtype
        t0, t1, dt0 = (jnp.asarray(v, real) for v in (0.0, jnp.inf, self.dt0))
        event = diffrax.Event(diffrax.steady_state_event(
            rtol=rtol, atol=atol, norm=jnp.linalg.norm))
        if kind == "lax":
            adjoint = diffrax.ForwardMode()
        elif kind == "checkpointed":
            adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints)
        else:
            adjoint = diffrax.DirectAdjoint()
        # With a trace, save every accepted step (the last one is the solution);
        # otherwise only the end point.
        saveat = diffrax.SaveAt(steps=True) if trace else diffrax.SaveAt(t1=True)
        sol = diffrax.diffeqsolve(
            term, self.ode_solver, t0=t0, t1=t1, dt0=dt0, y0=z0, args=args,
            stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            event=event, max_steps=max_steps, adjoint=adjoint, saveat=saveat,
            throw=False,
        )

        def residual(y):
            return jnp.linalg.norm(fn(y, args) - y)

        r0 = residual(z0)
        history = None
        if trace:
            accepted = sol.stats["num_accepted_steps"]
            saved = jnp.arange(max_steps) < accepted
            ys = jnp.where(saved[:, None], sol.ys, z0)
            z = jnp.where(accepted > 0, ys[jnp.maximum(accepted - 1, 0)], z0)
            rs = jax.vmap(residual)(ys)
            history = jnp.concatenate([r0[None], jnp.where(saved, rs, jnp.nan)])
        else:
            z = sol.ys[-1]
        r = residual(z)
        bound = progress_bound(r0, jnp.linalg.norm(z0), rtol, atol)
        ok = converged(r, jnp.linalg.norm(z), bound, rtol, atol)
        steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
        return Solution(value=z, steps=steps, residual=r, converged=ok,
                        result=final_result(ok, r, None), trace=history)
