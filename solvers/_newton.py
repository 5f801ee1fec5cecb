"""Newton's method (dogleg trust region) and the chord method (backtracking line
search) for roots, globalised on the merit ||g||^2 (Dennis and Schnabel 1996, ch. 6).

Both see a fixed-point map f through g(z) = z - f(z) (what `innerloop.root` passes
is f(z) = z - g(z), so g is the user's own function). The globalisation is spread
over the driver loop's iterations: each iteration evaluates f at one trial point,
which the next step accepts or shortens. So every solver here costs one f-evaluation
per iteration plus its Jacobian, and all loop kinds (and so all gradient modes) work.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import lax

from innerloop.solvers._base import RESULTS, AbstractIterativeSolver, FlatFn, check_positive_int

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
    merits: jax.Array  # the last `nonmonotone` accepted merits (the reference is their max)
    direction: jax.Array  # the search direction from z_acc
    t: jax.Array  # the step length of the pending trial z_acc + t direction
    halvings: jax.Array  # halvings since the last accepted point
    started: jax.Array  # False until the first point (z0) has been accepted
    failure: RESULTS  # successful until the solver fails; then it stays
    extra: Any  # the method's own state (an LU factor, a Broyden matrix)


class _LineSearchSolver(AbstractIterativeSolver):
    """z_{k+1} = z_acc + t d with d from `direction`, t halved until
    ||g(z_acc + t d)||^2 <= (1 - 2 c t) max_j ||g(z_j)||^2 (Armijo, c = 1e-4) over the
    last `nonmonotone` accepted points (Grippo, Lampariello and Lucidi 1986; 1 is the
    monotone search). The first point, z0, is accepted as it is."""

    max_halvings: int = 30
    nonmonotone: int = 1

    def __check_init__(self):
        check_positive_int(f"{type(self).__name__}(max_halvings=...)", self.max_halvings)
        check_positive_int(f"{type(self).__name__}(nonmonotone=...)", self.nonmonotone)

    def init_extra(self, fn: FlatFn, z: jax.Array, g: jax.Array, args: Any) -> Any:
        """The method's own state at z0."""
        return None

    @abc.abstractmethod
    def direction(self, fn: FlatFn, z: jax.Array, g: jax.Array, state: LineSearchState,
                  args: Any) -> tuple[jax.Array, Any]:
        """The search direction at a newly accepted point z (the previous accepted
        point is in `state`, unless `state.started` is False) and the new own state."""

    def restart(self, fn: FlatFn, state: LineSearchState,
                args: Any) -> tuple[jax.Array, Any, jax.Array]:
        """After max_halvings without decrease: a new direction from `state.z_acc`,
        the own state, and whether restarting can help. By default it cannot."""
        return state.direction, state.extra, jnp.asarray(False)

    def init(self, fn: FlatFn, z: jax.Array, fz: jax.Array, args: Any) -> LineSearchState:
        g = z - fz
        real = jnp.real(z).dtype
        m = merit(g)
        return LineSearchState(z, g, m, jnp.full((self.nonmonotone,), m), jnp.zeros_like(z),
                               jnp.ones((), real),
                               jnp.zeros((), jnp.int32), jnp.asarray(False),
                               RESULTS.successful, self.init_extra(fn, z, g, args))

    def step(self, fn: FlatFn, z: jax.Array, fz: jax.Array, state: LineSearchState,
             args: Any) -> tuple[jax.Array, LineSearchState]:
        g = z - fz
        m = merit(g)
        t = state.t
        decrease = m <= (1 - 2 * ARMIJO * t) * jnp.max(state.merits)
        accept = (~state.started | decrease) & jnp.isfinite(m)
        d, extra = lax.cond(accept, lambda: self.direction(fn, z, g, state, args),
                            lambda: (state.direction, state.extra))
        halvings = jnp.where(accept, 0, state.halvings + 1)
        t_new = jnp.where(accept, jnp.ones_like(t), t / 2)
        z_acc = jnp.where(accept, z, state.z_acc)
        g_acc = jnp.where(accept, g, state.g_acc)
        merit_acc = jnp.where(accept, m, state.merit_acc)
        merits = jnp.where(accept, jnp.roll(state.merits, 1).at[0].set(m), state.merits)
        merits = jnp.where(state.started, merits, jnp.full_like(merits, m))
        started = state.started | accept
        # Out of halvings: the method may restart (Broyden resets its matrix), else
        # the solve has stagnated.
        out = halvings > self.max_halvings
        mid = LineSearchState(z_acc, g_acc, merit_acc, merits, d, t_new, halvings, started,
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
        new = LineSearchState(z_acc, g_acc, merit_acc, merits, d, t_new, halvings,
                              started, failure, extra)
        return z_acc + t_new.astype(z.dtype) * d, new

    def failure(self, state: LineSearchState) -> RESULTS:
        return state.failure


class NewtonState(eqx.Module):
    z_acc: jax.Array  # the last accepted point
    g_acc: jax.Array  # g(z_acc)
    merit_acc: jax.Array  # ||g(z_acc)||^2
    jac: jax.Array  # dg/dz at z_acc
    newton: jax.Array  # the Newton step at z_acc (non-finite if dg/dz is singular)
    cauchy: jax.Array  # the minimiser of the linear model along -J^H g
    radius: jax.Array  # the trust radius
    step: jax.Array  # the pending trial is z_acc + step
    started: jax.Array
    failure: RESULTS


class Newton(AbstractIterativeSolver):
    r"""Newton's method with Powell's dogleg trust region, for roots g(z) = 0.

    At an accepted point the Newton step d_N = -(dg/dz)^{-1} g and the Cauchy step
    d_C (the minimiser of the linear model ||g + J d||^2 along -J^H g) are formed;
    the trial step is d_N when it fits the trust radius, else the point where the
    path d_C -> d_N leaves it. A trial is accepted when ||g||^2 falls by at least
    1e-4 of what the linear model predicts; the radius halves after a poor trial
    and doubles after a good one that reached it. Near a regular root the Newton
    step fits and convergence is quadratic; far away the radius keeps a step from
    jumping to where g saturates, which a line search along d_N cannot (tanh).
    Where dg/dz is singular the step is the Cauchy one. The Jacobian is computed
    exactly by `jax.jacfwd` (n forward-mode passes) at every accepted point: for
    small and medium states. Ends as `RESULTS.stagnated` when the radius shrinks to
    round-off (a local minimum of ||g|| that is not a root).

    Default solver of `innerloop.root`. Powell 1970, "A hybrid method for nonlinear
    equations"; Nocedal and Wright 2006, 4.1 and 11.2.
    """

    def init(self, fn: FlatFn, z: jax.Array, fz: jax.Array, args: Any) -> NewtonState:
        g = z - fz
        real = jnp.real(z).dtype
        n = z.shape[0]
        radius = jnp.maximum(jnp.linalg.norm(z), 1).astype(real)
        return NewtonState(z, g, merit(g), jnp.zeros((n, n), z.dtype), jnp.zeros_like(z),
                           jnp.zeros_like(z), radius, jnp.zeros_like(z),
                           jnp.asarray(False), RESULTS.successful)

    def step(self, fn: FlatFn, z: jax.Array, fz: jax.Array, state: NewtonState,
             args: Any) -> tuple[jax.Array, NewtonState]:
        g = z - fz
        m = merit(g)
        predicted = state.merit_acc - merit(state.g_acc + state.jac @ state.step)
        actual = state.merit_acc - m
        ratio = actual / jnp.where(predicted > 0, predicted, 1)
        good = (predicted > 0) & (ratio > ARMIJO) & jnp.isfinite(m)
        accept = ~state.started | good
        length = jnp.linalg.norm(state.step)
        radius = jnp.where(ratio < 0.25, 0.5 * length, state.radius)
        radius = jnp.where((ratio > 0.75) & (length >= 0.99 * state.radius),
                           2 * state.radius, radius)
        radius = jnp.where(state.started, radius, state.radius)

        def at_new_point():
            jac = jacobian(fn, z, args)
            newton = -jnp.linalg.solve(jac, g)
            grad = jnp.conj(jac.T) @ g  # half the gradient of ||g||^2
            jg = jac @ grad
            scale = merit(grad) / merit(jg)
            cauchy = jnp.where(jnp.isfinite(scale), -scale.astype(z.dtype) * grad, 0)
            return jac, newton, cauchy

        jac, newton, cauchy = lax.cond(
            accept, at_new_point, lambda: (state.jac, state.newton, state.cauchy))
        z_acc = jnp.where(accept, z, state.z_acc)
        g_acc = jnp.where(accept, g, state.g_acc)
        merit_acc = jnp.where(accept, m, state.merit_acc)
        step = _dogleg(newton, cauchy, radius)
        # The radius has shrunk to round-off, or there is no descent direction.
        tiny = jnp.finfo(radius.dtype).eps * jnp.maximum(jnp.linalg.norm(z_acc), 1)
        stuck = (radius < tiny) | ~jnp.any(step != 0) | ~jnp.all(jnp.isfinite(step))
        failure = RESULTS.where(stuck & (state.failure == RESULTS.successful),
                                RESULTS.stagnated, state.failure)
        step = jnp.where(jnp.all(jnp.isfinite(step)), step, 0)
        new = NewtonState(z_acc, g_acc, merit_acc, jac, newton, cauchy, radius, step,
                          jnp.asarray(True), failure)
        return z_acc + step, new

    def failure(self, state: NewtonState) -> RESULTS:
        return state.failure


def _dogleg(newton, cauchy, radius):
    """The point where the path 0 -> cauchy -> newton leaves the ball of `radius`
    (newton itself if inside; a non-finite newton step takes the Cauchy direction)."""
    finite = jnp.all(jnp.isfinite(newton))
    newton = jnp.where(finite, newton, 0)
    n_len = jnp.linalg.norm(newton)
    c_len = jnp.linalg.norm(cauchy)
    inside = finite & (n_len <= radius)
    scaled_cauchy = cauchy * (radius / jnp.where(c_len > 0, c_len, 1)).astype(cauchy.dtype)
    # tau in [0, 1] with ||cauchy + tau (newton - cauchy)|| = radius.
    d = newton - cauchy
    a = jnp.real(jnp.vdot(d, d))
    b = 2 * jnp.real(jnp.vdot(cauchy, d))
    c = c_len ** 2 - radius ** 2
    tau = (-b + jnp.sqrt(jnp.maximum(b * b - 4 * a * c, 0))) / jnp.where(a > 0, 2 * a, 1)
    tau = jnp.clip(tau, 0, 1).astype(cauchy.dtype)
    between = cauchy + tau * d
    out = jnp.where(finite & (c_len < radius), between, scaled_cauchy)
    return jnp.where(inside, newton, out)


class Chord(_LineSearchSolver):
    r"""The chord method: Newton with the Jacobian of the initial point, factored
    once, d = -J(z_0)^{-1} g(z), with a backtracking (Armijo) line search.

    Linear convergence, but each iteration costs one f and a triangular solve
    instead of a Jacobian: good when g is cheap to evaluate and expensive to
    differentiate, and the start is close to the root (Kelley 1995, "Iterative
    methods for linear and nonlinear equations", 5.4).
    """

    def init_extra(self, fn: FlatFn, z: jax.Array, g: jax.Array,
                   args: Any) -> tuple[jax.Array, jax.Array]:
        return jsl.lu_factor(jacobian(fn, z, args))

    def direction(self, fn: FlatFn, z: jax.Array, g: jax.Array, state: LineSearchState,
                  args: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        return -jsl.lu_solve(state.extra, g), state.extra
