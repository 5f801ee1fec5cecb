"""Newton's method and the chord method for roots, globalised by a backtracking
line search on the merit ||g||^2 (Dennis and Schnabel 1996, ch. 6).

Both see a fixed-point map f through g(z) = z - f(z) (what `innerloop.root` passes
is f(z) = z - g(z), so g is the user's own function). The line search is spread over
the driver loop's iterations: each iteration evaluates f at one trial point, which
is accepted or halved by the next step. So every solver here costs one f-evaluation
per iteration plus its Jacobian, and all loop kinds (and so all gradient modes) work.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import lax

from ._base import RESULTS, AbstractSolver, FlatFn, check_positive_int

#: Armijo's sufficient-decrease constant.
ARMIJO = 1e-4


def merit(g: jax.Array) -> jax.Array:
    """||g||^2, real also for complex g."""
    return jnp.real(jnp.vdot(g, g))


def jacobian(fn: FlatFn, z: jax.Array, args: Any) -> jax.Array:
    """dg/dz = I - df/dz at z, dense, by forward mode."""
    jf = jax.jacfwd(fn, holomorphic=jnp.iscomplexobj(z))(z, args)
    return jnp.eye(z.shape[0], dtype=z.dtype) - jf


class LineSearchState(eqx.Module):
    z_acc: jax.Array  # the last accepted point
    g_acc: jax.Array  # g(z_acc)
    merit_acc: jax.Array  # ||g(z_acc)||^2
    direction: jax.Array  # the search direction from z_acc
    t: jax.Array  # the step length of the pending trial z_acc + t direction
    halvings: jax.Array  # halvings since the last accepted point
    started: jax.Array  # False until the first point (z0) has been accepted
    failure: RESULTS  # successful until the solver fails; then it stays
    extra: Any  # the method's own state (an LU factor, a Broyden matrix)


class _LineSearchSolver(AbstractSolver):
    """z_{k+1} = z_acc + t d with d from `direction`, t halved until
    ||g(z_acc + t d)||^2 <= (1 - 2 c t) ||g(z_acc)||^2 (Armijo, c = 1e-4). The first
    point, z0, is accepted as it is."""

    max_halvings: int = 30

    def __check_init__(self):
        check_positive_int("max_halvings", self.max_halvings)

    def init_extra(self, fn, z, g, args) -> Any:
        """The method's own state at z0."""
        return None

    def direction(self, fn, z, g, state: LineSearchState, args) -> tuple[jax.Array, Any]:
        """The search direction at a newly accepted point z (the previous accepted
        point is in `state`, unless `state.started` is False) and the new own state."""
        raise NotImplementedError

    def restart(self, fn, state: LineSearchState, args) -> tuple[jax.Array, Any, jax.Array]:
        """After max_halvings without decrease: a new direction from `state.z_acc`,
        the own state, and whether restarting can help. By default it cannot."""
        return state.direction, state.extra, jnp.asarray(False)

    def init(self, fn: FlatFn, z, fz, args) -> LineSearchState:
        g = z - fz
        real = jnp.real(z).dtype
        return LineSearchState(z, g, merit(g), jnp.zeros_like(z), jnp.ones((), real),
                               jnp.zeros((), jnp.int32), jnp.asarray(False),
                               RESULTS.successful, self.init_extra(fn, z, g, args))

    def step(self, fn, z, fz, state: LineSearchState, args):
        g = z - fz
        m = merit(g)
        t = state.t
        decrease = m <= (1 - 2 * ARMIJO * t) * state.merit_acc
        accept = (~state.started | decrease) & jnp.isfinite(m)
        d, extra = lax.cond(accept, lambda: self.direction(fn, z, g, state, args),
                            lambda: (state.direction, state.extra))
        halvings = jnp.where(accept, 0, state.halvings + 1)
        t_new = jnp.where(accept, jnp.ones_like(t), t / 2)
        z_acc = jnp.where(accept, z, state.z_acc)
        g_acc = jnp.where(accept, g, state.g_acc)
        merit_acc = jnp.where(accept, m, state.merit_acc)
        started = state.started | accept
        # Out of halvings: the method may restart (Broyden resets its matrix), else
        # the solve has stagnated.
        out = halvings > self.max_halvings
        mid = LineSearchState(z_acc, g_acc, merit_acc, d, t_new, halvings, started,
                              state.failure, extra)
        d, extra, can_retry = lax.cond(out, lambda: self.restart(fn, mid, args),
                                       lambda: (d, extra, jnp.asarray(True)))
        t_new = jnp.where(out, jnp.ones_like(t), t_new)
        halvings = jnp.where(out, 0, halvings)
        ok = state.failure == RESULTS.successful
        bad = ~jnp.all(jnp.isfinite(d))
        failure = RESULTS.where(ok & bad, RESULTS.linear_solve_failed, state.failure)
        failure = RESULTS.where(ok & out & ~can_retry, RESULTS.stagnated, failure)
        d = jnp.where(bad, 0, d)
        new = LineSearchState(z_acc, g_acc, merit_acc, d, t_new, halvings, started,
                              failure, extra)
        return z_acc + t_new.astype(z.dtype) * d, new

    def failure(self, state: LineSearchState) -> RESULTS:
        return state.failure


class Newton(_LineSearchSolver):
    r"""Newton's method with a backtracking line search, for roots g(z) = 0:

        d = -(dg/dz)^{-1} g(z),    z <- z + t d,    t in {1, 1/2, 1/4, ...}

    with the first t that decreases ||g||^2 sufficiently (Armijo). The Jacobian is
    computed exactly by `jax.jacfwd` (n forward-mode passes) and LU-factored at every
    accepted point: quadratic convergence near a regular root, for small and medium
    states. A singular Jacobian ends the solve with `RESULTS.linear_solve_failed`;
    no decrease after `max_halvings` halvings with `RESULTS.stagnated`.

    Default solver of `innerloop.root`. Dennis and Schnabel 1996, "Numerical methods
    for unconstrained optimization and nonlinear equations", Algorithm 6.3.1.
    """

    def direction(self, fn, z, g, state, args):
        return -jnp.linalg.solve(jacobian(fn, z, args), g), state.extra


class Chord(_LineSearchSolver):
    r"""The chord method: Newton with the Jacobian of the initial point, factored
    once, d = -J(z_0)^{-1} g(z), with the same backtracking line search.

    Linear convergence, but each iteration costs one f and a triangular solve
    instead of a Jacobian: good when g is cheap to evaluate and expensive to
    differentiate, and the start is close to the root (Kelley 1995, "Iterative
    methods for linear and nonlinear equations", 5.4).
    """

    def init_extra(self, fn, z, g, args):
        return jsl.lu_factor(jacobian(fn, z, args))

    def direction(self, fn, z, g, state, args):
        return -jsl.lu_solve(state.extra, g), state.extra
