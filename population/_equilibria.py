"""Equilibria of two-player zero-sum matrix games: `nash` (the simplex method, or
restarted PDHG with a support polish), the iterative solvers that share its interface
(replicator dynamics, regret matching+, fictitious play) and the logit quantal-response
equilibrium `qre`.

Convention: `payoff[i, j]` is the row player's payoff; the row player maximises
`x @ payoff @ y`, the column player minimises it. Any shape (m, n).
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from innerloop._shared import check_positive_int


class Equilibrium(eqx.Module):
    """The result of an equilibrium solve.

    - `row` (m,), `col` (n,): the mixed strategies of the row (maximising) and column
      (minimising) players.
    - `value` (): `row @ payoff @ col`.
    - `exploitability` (): `max_i (payoff @ col)_i - min_j (row @ payoff)_j`, the
      duality gap: >= 0, and 0 exactly at a Nash equilibrium.
    - `steps`: int array, iterations used (per game under `vmap`).
    - `converged`: bool array, whether the solver's stopping test held (for `nash`:
      exploitability <= tol; for `qre`: the fixed-point residual test).
    """

    row: jax.Array
    col: jax.Array
    value: jax.Array
    exploitability: jax.Array
    steps: jax.Array
    converged: jax.Array


def exploitability(payoff: jax.Array, row: jax.Array, col: jax.Array) -> jax.Array:
    """`max_i (payoff @ col)_i - min_j (row @ payoff)_j`: how much the two players
    together gain by best-responding to (row, col); 0 exactly at a Nash equilibrium."""
    return jnp.max(payoff @ col) - jnp.min(row @ payoff)


# ------------------------------------------------------------------ validation


def check_payoff(call: str, payoff: Any) -> jax.Array:
    """A floating 2-D array; NaN/inf raise now when concrete, at run time under jit."""
    a = jnp.asarray(payoff)
    if a.ndim != 2:
        raise ValueError(f"{call}: payoff must be a 2-D array (m row strategies x n column "
                         f"strategies), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{call}: payoff must have at least one row and one column, got "
                         f"shape {a.shape}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    if isinstance(a, jax.core.Tracer):
        a = eqx.error_if(a, ~jnp.isfinite(jnp.sum(a * 0)),
                         f"{call}: payoff contains NaN or inf; pass finite payoffs")
    elif not np.all(np.isfinite(np.asarray(a))):
        raise ValueError(f"{call}: payoff contains NaN or inf; pass finite payoffs")
    return a


def _check_tol(call: str, tol: Any) -> None:
    try:
        t = float(tol)
    except (TypeError, ValueError):
        raise ValueError(f"{call}: tol must be a positive float, got {tol!r}") from None
    if not (t > 0 and t != float("inf")):
        raise ValueError(f"{call}: tol must be finite and > 0, got {tol!r}")


def _default_tol(dtype) -> float:
    # 1e-6 is below float32's resolution of a duality gap of O(1) payoffs.
    return 1e-6 if jnp.finfo(dtype).bits >= 64 else 1e-4


# --------------------------------------------------------------- the simplex


def project_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection onto the probability simplex (Duchi et al. 2008): exact
    zeros outside the support, which is what the support polish reads."""
    n = v.shape[-1]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1
    k = jnp.arange(1, n + 1, dtype=v.dtype)
    rho = jnp.sum(u * k > css)
    theta = css[rho - 1] / rho.astype(v.dtype)
    return jnp.maximum(v - theta, 0)


def _support_solve(a: jax.Array, sx: jax.Array, sy: jax.Array):
    """The equilibrium with supports sx, sy when they are square: the linear system
    (A y)_i = v for i in sx, x_i = 0 elsewhere, (A^T x)_j = w for j in sy, y_j = 0
    elsewhere, sum x = sum y = 1 (unknowns x, y, v, w). NaN or garbage when the
    supports are not those of an equilibrium; the caller checks the gap."""
    m, n = a.shape
    dt = a.dtype
    fx = sx.astype(dt)
    fy = sy.astype(dt)
    top = jnp.concatenate([jnp.diag(1 - fx), fx[:, None] * a,
                           -fx[:, None], jnp.zeros((m, 1), dt)], axis=1)
    mid = jnp.concatenate([fy[:, None] * a.T, jnp.diag(1 - fy),
                           jnp.zeros((n, 1), dt), -fy[:, None]], axis=1)
    sums = jnp.concatenate([
        jnp.concatenate([jnp.ones((1, m), dt), jnp.zeros((1, n + 2), dt)], axis=1),
        jnp.concatenate([jnp.zeros((1, m), dt), jnp.ones((1, n), dt),
                         jnp.zeros((1, 2), dt)], axis=1)], axis=0)
    mat = jnp.concatenate([top, mid, sums], axis=0)
    rhs = jnp.zeros((m + n + 2,), dt).at[m + n:].set(1)
    z = jnp.linalg.solve(mat, rhs)
    return z[:m], z[m:m + n]


def _newton_polish(a, x, y, eta, steps):
    """Semismooth Newton on PDHG's fixed-point equations x = P(x + eta A y),
    y = P(y - eta A^T x): on the supports that the projections select, they are the
    linear system of `_support_solve`, so each step solves it on the supports of the
    projected point; exact in one step once the supports are right."""
    def body(_, c):
        x, y = c
        sx = project_simplex(x + eta * (a @ y)) > 0
        sy = project_simplex(y - eta * (a.T @ x)) > 0
        nx, ny = _support_solve(a, sx, sy)
        ok = jnp.all(jnp.isfinite(nx)) & jnp.all(jnp.isfinite(ny))
        return jnp.where(ok, nx, x), jnp.where(ok, ny, y)

    x, y = lax.fori_loop(0, steps, body, (x, y))
    return _clean(x), _clean(y)


def _clean(p: jax.Array) -> jax.Array:
    """A finite distribution from a solve's output (negative parts clipped)."""
    p = jnp.where(jnp.isfinite(p), jnp.maximum(p, 0), 0)
    s = jnp.sum(p)
    return jnp.where(s > 0, p / jnp.where(s > 0, s, 1), jnp.ones_like(p) / p.shape[0])


# ------------------------------------------------------------------ solvers


class AbstractGameSolver(eqx.Module):
    """A solver for `nash(payoff, solver=...)`: anything with `solve(payoff, tol,
    max_steps) -> Equilibrium` on one (m, n) game (`vmap` for many)."""

    @abc.abstractmethod
    def solve(self, payoff: jax.Array, tol: float, max_steps: int) -> Equilibrium:
        ...


def _finish(a, x, y, steps, converged) -> Equilibrium:
    """The record; the value is differentiated by the envelope theorem
    (d value / d payoff = outer(row, col) at the equilibrium); the strategies are not
    differentiated (stop_gradient: their derivative is `qre`'s business)."""
    x = lax.stop_gradient(x)
    y = lax.stop_gradient(y)
    value = x @ a @ y
    gap = lax.stop_gradient(exploitability(a, x, y))
    return Equilibrium(row=x, col=y, value=value, exploitability=gap,
                       steps=jnp.asarray(steps, jnp.int32), converged=converged)


class PDHG(AbstractGameSolver):
    r"""Restarted primal-dual hybrid gradient on the saddle problem
    max_{x in simplex} min_{y in simplex} x^T A y (Applegate et al. 2021, "Faster
    first-order primal-dual methods for linear programming using restarts and
    sharpness"), with a support polish.

        x+ = P(x + eta A y),    y+ = P(y - eta A^T (2 x+ - x)),

    P the Euclidean projection onto the simplex, eta = 0.95 / ||A||_2 (power
    iteration). Every `epoch` iterations the exploitability of the current iterate
    and of the average since the last restart is measured; the better one becomes
    the restart candidate, and the method restarts from it when its gap fell below
    `beta_sufficient` of the gap at the last restart, or below `beta_necessary` of
    it while no longer falling, or when the epochs since the restart reach a third of
    all epochs (PDLP's adaptive restarts). Restarted PDHG converges linearly on
    polyhedral saddle problems (sharpness), so the gap reaches 1e-6.

    `polish`: each epoch also solves the linear system of an equilibrium with the
    current iterate's supports (the projection gives exact zeros) and keeps its
    answer when its gap is smaller: once the supports are identified this gives the
    equilibrium to rounding error, long before the linear rate would.
    """

    epoch: int = 16
    polish: bool = True
    beta_sufficient: float = 0.2
    beta_necessary: float = 0.8
    power_steps: int = 32
    newton_steps: int = 2

    def solve(self, payoff, tol, max_steps, init=None):
        a = payoff
        m, n = a.shape
        dt = a.dtype
        # ||A||_2 by power iteration on A^T A (a slight over-estimate is harmless).
        v = jnp.full((n,), 1 / float(np.sqrt(n)), dt)

        def power(_, v):
            w = a.T @ (a @ v)
            return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(dt).tiny)

        v = lax.fori_loop(0, self.power_steps, power, v)
        norm = jnp.maximum(jnp.linalg.norm(a @ v) * 1.02, jnp.finfo(dt).tiny)
        eta = (0.95 / norm).astype(dt)
        x0, y0 = _uniform(a) if init is None else init
        gap0 = exploitability(a, x0, y0)
        epochs = max(1, -(-max_steps // self.epoch))

        def pdhg(_, c):
            x, y, sx, sy = c
            xn = project_simplex(x + eta * (a @ y))
            yn = project_simplex(y - eta * (a.T @ (2 * xn - x)))
            return xn, yn, sx + xn, sy + yn

        def body(c):
            (k, e, x, y, sx, sy, cnt, g_restart, g_prev, bx, by, bg) = c
            x, y, sx, sy = lax.fori_loop(0, self.epoch, pdhg, (x, y, sx, sy))
            cnt = cnt + self.epoch
            ax, ay = sx / cnt.astype(dt), sy / cnt.astype(dt)
            g_cur = exploitability(a, x, y)
            g_avg = exploitability(a, ax, ay)
            use_avg = g_avg < g_cur
            cx = jnp.where(use_avg, ax, x)
            cy = jnp.where(use_avg, ay, y)
            gc = jnp.minimum(g_cur, g_avg)
            if self.polish:
                px, py = _newton_polish(a, x, y, eta, self.newton_steps)
                gp = exploitability(a, px, py)
                better = gp < gc
                cx = jnp.where(better, px, cx)
                cy = jnp.where(better, py, cy)
                gc = jnp.where(better, gp, gc)
            e = e + 1
            restart = ((gc <= self.beta_sufficient * g_restart)
                       | ((gc <= self.beta_necessary * g_restart) & (gc > g_prev))
                       | (cnt * 3 >= k + self.epoch))
            x = jnp.where(restart, cx, x)
            y = jnp.where(restart, cy, y)
            sx = jnp.where(restart, jnp.zeros_like(sx), sx)
            sy = jnp.where(restart, jnp.zeros_like(sy), sy)
            cnt = jnp.where(restart, 0, cnt)
            g_restart = jnp.where(restart, gc, g_restart)
            keep = gc < bg
            bx = jnp.where(keep, cx, bx)
            by = jnp.where(keep, cy, by)
            bg = jnp.minimum(gc, bg)
            return (k + self.epoch, e, x, y, sx, sy, cnt, g_restart, gc, bx, by, bg)

        def cond(c):
            return (c[1] < epochs) & ~(c[11] <= tol)

        zeros_x, zeros_y = jnp.zeros_like(x0), jnp.zeros_like(y0)
        c0 = (jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32), x0, y0, zeros_x,
              zeros_y, jnp.asarray(0, jnp.int32), gap0, gap0, x0, y0, gap0)
        c = lax.while_loop(cond, body, c0)
        k, bx, by, bg = c[0], c[9], c[10], c[11]
        return _finish(a, bx, by, k, bg <= tol)


class Simplex(AbstractGameSolver):
    r"""The dense-tableau primal simplex method on the game's linear program (Dantzig
    1951; the LP of a zero-sum game: von Neumann, see Dantzig 1963, ch. 13), with
    PDHG as the fallback.

    With B = (A - min A) / (max A - min A) + 1 (entries in [1, 2], so the value is
    positive), the column player's strategy is y = u / sum(u) where u solves

        max 1^T u   subject to   B u <= 1,  u >= 0,

    and the row player's is x = w / sum(w) for the dual solution w (the reduced costs
    of the slack variables at the optimum). Dantzig's rule (most negative reduced
    cost) from the slack basis; the right-hand side is perturbed by `perturbation`
    (distinct per row) so that degenerate games (RPS, Blotto) cannot cycle, and the
    final basic solution is recomputed from the unperturbed right-hand side
    (u_B = B_basis^{-1} 1, read off the slack columns). The pivots are rank-one
    updates of an (m, n + m) tableau: no data-dependent shapes, so the solve `jit`s
    and `vmap`s; the smaller side becomes the constraints (a game with more rows than
    columns is solved transposed).

    When the returned pair's exploitability is above `tol` (float32 rounding, the
    pivot limit `max_pivots`, default half of `max_steps`), `PDHG` continues from it
    for the steps left (`fallback=False` reports it unconverged instead). `steps` counts
    pivots plus PDHG iterations. Under `vmap` the games are solved `chunk` at a time.
    """

    perturbation: float = 1e-9
    fallback: bool = True
    max_pivots: int | None = None
    chunk: int = 256

    def solve(self, payoff, tol, max_steps):
        a = payoff
        m, n = a.shape
        # Pivots get at most half of the budget when PDHG may need the rest.
        cap = max_steps if not self.fallback else max(1, max_steps // 2)
        pivots = cap if self.max_pivots is None else min(self.max_pivots, max_steps)

        def simplex(a):
            if m > n:
                y, x, k = self._solve(-a.T, pivots)
                return x, y, k
            return self._solve(a, pivots)

        def fall_back(a, x, y, k):
            eq = PDHG().solve(a, tol, max(1, max_steps - pivots), init=(x, y))
            keep = exploitability(a, x, y) <= eq.exploitability
            return jnp.where(keep, x, eq.row), jnp.where(keep, y, eq.col), k + eq.steps

        def one(a):
            x, y, k = simplex(a)
            if not self.fallback:
                return x, y, k
            return lax.cond(exploitability(a, x, y) <= tol, lambda: (x, y, k),
                            lambda: fall_back(a, x, y, k))

        # Under vmap the games pivot in chunks (lax.map), each chunk only as long as its
        # own slowest game; PDHG runs only when some game of the batch needs it (one
        # scalar cond, not a select).
        @custom_vmap
        def run(a):
            return one(a)

        @run.def_vmap
        def _(axis_size, in_batched, a):
            if not in_batched[0]:
                return one(a), (False, False, False)
            x, y, k = lax.map(simplex, a, batch_size=self.chunk)
            if self.fallback:
                done = jnp.all(jax.vmap(exploitability)(a, x, y) <= tol)
                x, y, k = lax.cond(done, lambda: (x, y, k),
                                   lambda: jax.vmap(fall_back)(a, x, y, k))
            return (x, y, k), (True, True, True)

        x, y, k = run(lax.stop_gradient(a))  # _finish differentiates the value
        return _finish(a, x, y, k, exploitability(a, x, y) <= tol)

    def _solve(self, a, max_steps):
        m, n = a.shape
        dt = a.dtype
        fin = jnp.finfo(dt)
        tiny = jnp.asarray(float(fin.eps) ** 0.5 / 16, dt)  # pivot and feasibility tolerance
        opt = jnp.asarray(float(fin.eps) ** 0.75, dt)  # optimality: reduced costs >= -opt
        lo, hi = jnp.min(a), jnp.max(a)
        span = jnp.where(hi > lo, hi - lo, 1)
        b = (a - lo) / span + 1
        tab = jnp.concatenate([b, jnp.eye(m, dtype=dt)], axis=1)
        rhs = 1 + self.perturbation * (jnp.arange(1, m + 1, dtype=dt) / m)
        obj = jnp.concatenate([-jnp.ones((n,), dt), jnp.zeros((m,), dt)])
        basis = jnp.arange(n, n + m, dtype=jnp.int32)

        def cond(c):
            k, _, _, obj, _ = c
            return (k < max_steps) & (jnp.min(obj) < -opt)

        def body(c):
            k, tab, rhs, obj, basis = c
            j = jnp.argmin(obj)
            col = tab[:, j]
            # Harris's two-pass ratio test: the longest step that keeps every basic
            # variable above -tiny, then among the rows that bind within it the largest
            # pivot (small pivots are what ruin a tableau in degenerate games).
            ok = col > tiny
            safe = jnp.where(ok, col, 1)
            step = jnp.min(jnp.where(ok, (jnp.maximum(rhs, 0) + tiny) / safe, jnp.inf))
            binds = ok & (jnp.maximum(rhs, 0) / safe <= step)
            i = jnp.argmax(jnp.where(binds, col, -jnp.inf))
            piv = col[i]
            prow = tab[i] / piv
            prhs = rhs[i] / piv
            # Row i becomes prow and every other row r loses col[r] * prow: one rank-one
            # update (a row write would be a scatter under vmap).
            hit = jnp.arange(m) == i
            d = col - hit.astype(dt)
            tab = tab - d[:, None] * prow[None, :]
            rhs = rhs - d * prhs
            obj = obj - obj[j] * prow
            return k + 1, tab, rhs, obj, jnp.where(hit, j.astype(jnp.int32), basis)

        c0 = (jnp.asarray(0, jnp.int32), tab, rhs, obj, basis)
        k, tab, _, obj, basis = lax.while_loop(cond, body, c0)
        x = _clean(obj[n:])
        u_basic = jnp.sum(tab[:, n:], axis=1)  # B_basis^{-1} 1: the unperturbed solution
        u = jnp.zeros((n + m,), dt).at[basis].set(u_basic)
        return x, _clean(u[:n]), k


# ------------------------------------------------------------------- nash


def nash(payoff: jax.Array, *, tol: float | None = None, max_steps: int = 100_000,
         solver: AbstractGameSolver | None = None) -> Equilibrium:
    r"""The Nash equilibrium of a two-player zero-sum matrix game.

    `payoff[i, j]` is the row player's payoff (m x n, any shape); the row player
    maximises `row @ payoff @ col`, the column player minimises it.

    - `tol`: stop when the exploitability (duality gap) is <= tol. Default 1e-6 in
      float64, 1e-4 in float32 (1e-6 is below float32's resolution of the gap).
    - `max_steps`: iteration limit (`converged` is False when it is reached first).
    - `solver`: `Simplex()` (the default: the tableau simplex method on the game's LP,
      exact to rounding error, with `PDHG` as its fallback), `PDHG()` (restarted
      primal-dual hybrid gradient with a support polish: exact to `tol`, first-order,
      cheaper per step on large games), or the learning dynamics `Replicator()`,
      `RegretMatchingPlus()`, `FictitiousPlay()` (slower, sublinear; they report the
      exploitability of their average strategy).

    `jit`s and `vmap`s (each game stops on its own). Differentiation: the value's
    derivative is given by the envelope theorem, d value / d payoff =
    outer(row, col) at the equilibrium (exact where the equilibrium is unique); the
    strategies are not differentiated (stop_gradient, a documented choice: the
    differentiable route to strategies is `qre`).
    """
    call = "nash"
    a = check_payoff(call, payoff)
    tol = _default_tol(a.dtype) if tol is None else tol
    _check_tol(call, tol)
    check_positive_int(f"{call}(max_steps=...)", max_steps)
    solver = Simplex() if solver is None else solver
    if not isinstance(solver, AbstractGameSolver):
        raise TypeError(f"{call}: solver must be Simplex(), PDHG(), Replicator(), "
                        f"RegretMatchingPlus() or FictitiousPlay(), got {solver!r}")
    return solver.solve(a, tol, int(max_steps))


# ------------------------------------------------------- learning dynamics


def _dynamics(a, tol, max_steps, epoch, init, step, average) -> Equilibrium:
    """The loop of the learning dynamics: `epoch` steps between measurements of the
    average strategy's exploitability; stops at tol or max_steps."""
    dt = a.dtype

    def body(c):
        k, state, _ = c
        state = lax.fori_loop(0, epoch, lambda t, s: step(a, s, k + t), state)
        x, y = average(state)
        return k + epoch, state, exploitability(a, x, y)

    def cond(c):
        return (c[0] < max_steps) & ~(c[2] <= tol)

    state = init(a)
    x, y = average(state)
    c0 = (jnp.asarray(0, jnp.int32), state, exploitability(a, x, y).astype(dt))
    k, state, gap = lax.while_loop(cond, body, c0)
    x, y = average(state)
    return _finish(a, x, y, k, gap <= tol)


def _uniform(a):
    m, n = a.shape
    return jnp.ones((m,), a.dtype) / m, jnp.ones((n,), a.dtype) / n


class Replicator(AbstractGameSolver):
    r"""Discrete-time replicator dynamics of both players (Taylor and Jonker 1978),
    Euler steps of

        dx_i/dt = x_i ((A y)_i - x^T A y),    dy_j/dt = -y_j ((A^T x)_j - x^T A y),

    clipped at `floor` and renormalised (as OpenSpiel's projected replicator
    dynamics). In zero-sum games the trajectory cycles around the equilibrium and its
    time average converges to it (sublinearly); the average is what is reported.
    """

    step_size: float = 0.05
    floor: float = 1e-12
    epoch: int = 64

    def solve(self, payoff, tol, max_steps):
        dt = payoff.dtype
        h = jnp.asarray(self.step_size, dt)

        def norm(p):
            p = jnp.maximum(p, self.floor)
            return p / jnp.sum(p)

        def step(a, s, t):
            x, y, sx, sy = s
            ay, xa = a @ y, x @ a
            v = x @ ay
            x = norm(x + h * x * (ay - v))
            y = norm(y - h * y * (xa - v))
            return x, y, sx + x, sy + y

        def average(s):
            x, y, sx, sy = s
            tot = jnp.sum(sx)
            return (jnp.where(tot > 0, sx / jnp.where(tot > 0, tot, 1), x),
                    jnp.where(tot > 0, sy / jnp.where(tot > 0, tot, 1), y))

        def init(a):
            x, y = _uniform(a)
            return x, y, jnp.zeros_like(x), jnp.zeros_like(y)

        return _dynamics(payoff, tol, max_steps, self.epoch, init, step, average)


def _regret_policy(r):
    s = jnp.sum(r)
    return jnp.where(s > 0, r / jnp.where(s > 0, s, 1), jnp.ones_like(r) / r.shape[0])


class RegretMatchingPlus(AbstractGameSolver):
    r"""Regret matching+ (Tammelin 2014) with alternating updates and linear
    averaging: each player plays x ∝ R+ (its clipped cumulative regrets), the row
    player updates R+ first and the column player then responds to the new x; the
    reported strategies are the averages weighted by iteration t. The average's
    exploitability falls as O(1/sqrt(T)) in theory, much faster in practice."""

    epoch: int = 32

    def solve(self, payoff, tol, max_steps):
        dt = payoff.dtype

        def step(a, s, t):
            rx, ry, sx, sy = s
            x, y = _regret_policy(rx), _regret_policy(ry)
            ay = a @ y
            rx = jnp.maximum(rx + ay - x @ ay, 0)
            x = _regret_policy(rx)
            xa = x @ a
            ry = jnp.maximum(ry - xa + xa @ y, 0)
            y = _regret_policy(ry)
            w = (t + 1).astype(dt)
            return rx, ry, sx + w * x, sy + w * y

        def average(s):
            rx, ry, sx, sy = s
            return _regret_policy(sx), _regret_policy(sy)

        def init(a):
            x, y = _uniform(a)
            return jnp.zeros_like(x), jnp.zeros_like(y), jnp.zeros_like(x), jnp.zeros_like(y)

        return _dynamics(payoff, tol, max_steps, self.epoch, init, step, average)


class FictitiousPlay(AbstractGameSolver):
    r"""Simultaneous fictitious play (Brown 1951; Robinson 1951): each player
    best-responds to the opponent's empirical average strategy, and the averages are
    reported. Converges in zero-sum games, slowly (O(t^{-1/(m+n-2)}) worst case,
    about 1/sqrt(t) in practice)."""

    epoch: int = 32

    def solve(self, payoff, tol, max_steps):
        dt = payoff.dtype

        def step(a, s, t):
            sx, sy = s
            m, n = a.shape
            bx = jax.nn.one_hot(jnp.argmax(a @ sy), m, dtype=dt)
            by = jax.nn.one_hot(jnp.argmin(sx @ a), n, dtype=dt)
            return sx + bx, sy + by

        def average(s):
            return _regret_policy(s[0]), _regret_policy(s[1])

        def init(a):
            return _uniform(a)

        return _dynamics(payoff, tol, max_steps, self.epoch, init, step, average)


# ----------------------------------------------------------------------- QRE


def _qre_map(z, theta):
    r"""One extragradient step of entropy-regularised multiplicative weights on the
    log-strategies z = (log x, log y) (Cen, Wei and Chi 2021):

        x_half ∝ x^(1 - eta tau) exp(eta A y),       y_half ∝ y^(1 - eta tau) exp(-eta A^T x),
        x+     ∝ x^(1 - eta tau) exp(eta A y_half),  y+     ∝ y^(1 - eta tau) exp(-eta A^T x_half).

    Its unique fixed point is the QRE x = softmax(A y / tau), y = softmax(-A^T x / tau),
    and for eta <= 1 / (tau + 2 max|A|) it contracts at rate 1 - eta tau (their
    Theorem 1), so plain iteration and the implicit adjoint iteration converge."""
    u, w = z
    a, tau, eta = theta
    keep = 1 - eta * tau

    def logit(prev, drive):
        s = keep * prev + eta * drive
        return s - jax.nn.logsumexp(s)

    uh = logit(u, a @ jnp.exp(w))
    wh = logit(w, -(jnp.exp(u) @ a))
    return logit(u, a @ jnp.exp(wh)), logit(w, -(jnp.exp(uh) @ a))


def qre(payoff: jax.Array, temperature: Any, *, grad: Any = None, solver: Any = None,
        tol: float | None = None, max_steps: int = 10_000) -> Equilibrium:
    r"""The logit quantal-response equilibrium of a zero-sum matrix game at temperature
    tau: the unique (x, y) with

        x = softmax(A y / tau),    y = softmax(-A^T x / tau),

    the Nash equilibrium of the entropy-regularised game
    max_x min_y x^T A y + tau H(x) - tau H(y). As tau -> 0 it tends to a Nash
    equilibrium (the value within O(tau log(mn))).

    Solved by `innerloop.fixed_point` on the log-strategies with the contracting
    extragradient map `_qre_map` (step eta = 1 / (tau + 2 max|A|), not
    differentiated: every eta has the same fixed point), so the strategies and the
    value are differentiable in `payoff` and `temperature` by every gradient mode:

    - `grad`: `innerloop.Implicit()` (default), `Unroll()`, `Truncated(k)`, ...
    - `solver`: a fixed-point solver, `Anderson(memory=5)` by default (plain
      `Iteration()` also converges, at rate 1 - eta tau).
    - `tol`: the fixed-point rtol; default 1e-10 in float64, 1e-5 in float32.
    - `max_steps`: iteration limit of the solve.

    Returns an `Equilibrium`: `exploitability` is the unregularised duality gap of
    the QRE strategies (O(tau log(mn)), not 0), `converged` the fixed-point test.
    """
    from innerloop.implicit import Implicit, fixed_point
    from innerloop.solvers import Anderson

    call = "qre"
    a = check_payoff(call, payoff)
    dt = a.dtype
    if tol is None:
        tol = 1e-10 if jnp.finfo(dt).bits >= 64 else 1e-5
    _check_tol(call, tol)
    check_positive_int(f"{call}(max_steps=...)", max_steps)
    tau = jnp.asarray(temperature)
    if tau.ndim != 0:
        raise ValueError(f"{call}: temperature must be a scalar, got shape {tau.shape}")
    tau = tau.astype(dt)
    if isinstance(tau, jax.core.Tracer):
        tau = eqx.error_if(tau, ~(tau > 0), f"{call}: temperature must be > 0 (and not "
                           "NaN); use nash for tau = 0")
    elif not float(tau) > 0:
        raise ValueError(f"{call}: temperature must be > 0, got {float(tau)}; use nash "
                         "for tau = 0")
    grad = Implicit() if grad is None else grad
    solver = Anderson(memory=5) if solver is None else solver
    m, n = a.shape
    eta = lax.stop_gradient(1 / (tau + 2 * jnp.max(jnp.abs(a)) + jnp.finfo(dt).tiny))
    z0 = (jnp.full((m,), -np.log(m), dt), jnp.full((n,), -np.log(n), dt))
    sol = fixed_point(_qre_map, z0, (a, tau, eta), solver=solver, grad=grad, tol=tol,
                      max_steps=int(max_steps))
    x, y = jnp.exp(sol.value[0]), jnp.exp(sol.value[1])
    value = x @ a @ y
    gap = lax.stop_gradient(exploitability(a, x, y))
    return Equilibrium(row=x, col=y, value=value, exploitability=gap,
                       steps=sol.steps, converged=sol.converged)
