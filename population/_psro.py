"""Population training in functional-form games: self-play, PSRO-N and PSRO-rN with
gradient best-response oracles, on a fixed-capacity masked population so that the
whole loop is one `jit` (Balduzzi et al. 2019, "Open-ended learning in symmetric
zero-sum games", ICML, Algorithms 1-3), and the two population measures of the same
paper:

- effective diversity  d(P) = p^T relu(A_P) p,  p the Nash of the meta-game A_P;
- relative population performance  v(P, Q) = p^T A_PQ q,  (p, q) the Nash of the
  zero-sum game A_PQ[i, j] = phi(P_i, Q_j), i.e. its value.

A population of `capacity` slots is an array (capacity, dim) whose first `count`
slots are agents; the meta-game of the others is masked out exactly (`masked_nash`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from innerloop._shared import check_positive_float, check_positive_int
from innerloop.population._equilibria import Equilibrium, check_payoff, nash
from innerloop.population._games import FunctionalGame, Payoff, evaluate

Variant = Literal["self_play", "psro_n", "psro_rn"]
VARIANTS = ("self_play", "psro_n", "psro_rn")


# ------------------------------------------------------------ the masked meta-game


def masked_nash(payoff: jax.Array, row_mask: jax.Array | None = None,
                col_mask: jax.Array | None = None, *, tol: float | None = None,
                max_steps: int = 20_000) -> Equilibrium:
    """The Nash equilibrium of the game restricted to the rows and columns a mask
    keeps, as strategies over all of them with exactly zero mass elsewhere.

    The masked-out rows are replaced by a payoff below every kept entry (strictly
    dominated: no equilibrium plays them) and the masked-out columns by one above
    every kept entry for the column player's opponent (dominated once those rows are
    gone); the padded game, scaled to unit spread so that `tol` is relative to the
    payoffs' spread, goes to `nash`, and the solver's residual mass on padded slots
    is then set to exactly zero. `value` and `exploitability` are those of the kept
    game (in its own units). Shapes are static, so this `jit`s and `vmap`s."""
    a = jnp.asarray(payoff)
    m, n = a.shape
    rows = jnp.ones((m,), bool) if row_mask is None else jnp.asarray(row_mask, bool)
    cols = jnp.ones((n,), bool) if col_mask is None else jnp.asarray(col_mask, bool)
    kept = rows[:, None] & cols[None, :]
    lo = jnp.min(jnp.where(kept, a, jnp.inf))
    hi = jnp.max(jnp.where(kept, a, -jnp.inf))
    span = jnp.where(hi > lo, hi - lo, jnp.ones_like(hi))
    scaled = (a - lo) / span
    one = jnp.ones_like(span)
    padded = jnp.where(rows[:, None], jnp.where(cols[None, :], scaled, 2 * one), -one)
    eq = nash(padded, tol=tol, max_steps=max_steps)
    x = _renormalise(jnp.where(rows, eq.row, 0))
    y = _renormalise(jnp.where(cols, eq.col, 0))
    kept_a = jnp.where(kept, a, 0)
    value = x @ kept_a @ y
    gap = (jnp.max(jnp.where(rows, kept_a @ y, -jnp.inf))
           - jnp.min(jnp.where(cols, x @ kept_a, jnp.inf)))
    return Equilibrium(row=x, col=y, value=value, exploitability=gap, steps=eq.steps,
                       converged=eq.converged)


def _renormalise(p):
    s = jnp.sum(p)
    return p / jnp.where(s > 0, s, jnp.ones_like(s))


def effective_diversity(payoff: jax.Array, mask: jax.Array | None = None, *,
                        tol: float | None = None) -> jax.Array:
    """Effective diversity of a population from its symmetric meta-game A (n x n):
    d = p^T relu(A) p with p the Nash of A (Balduzzi et al. 2019, Eq. 4): how much
    the agents the Nash plays beat one another. 0 for a transitive population (the
    Nash is pure), > 0 when the Nash mixes agents that exploit each other. `mask`
    (n,) keeps a sub-population (masked agents get no Nash mass)."""
    call = "effective_diversity"
    a = check_payoff(call, payoff)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"{call}: needs the square meta-game of a population against "
                         f"itself (n x n), got shape {a.shape}; for two populations use "
                         "relative_performance")
    p = masked_nash(a, mask, mask, tol=tol).row
    return p @ jnp.maximum(a, 0) @ p


def relative_performance(P: jax.Array, Q: jax.Array, phi: Payoff | FunctionalGame, *,
                         mask_p: jax.Array | None = None, mask_q: jax.Array | None = None,
                         tol: float | None = None) -> jax.Array:
    """Relative population performance v(P, Q) (Balduzzi et al. 2019, Definition 3):
    the value p^T A_PQ q of the zero-sum game A_PQ[i, j] = phi(P_i, Q_j) at its Nash
    (p, q). Positive when population P beats Q; v(Q, P) = -v(P, Q) for antisymmetric
    phi. `mask_p`, `mask_q` keep sub-populations (fixed-capacity arrays)."""
    a = check_payoff("relative_performance", evaluate(phi, P, Q))
    return masked_nash(a, mask_p, mask_q, tol=tol).value


# ----------------------------------------------------------------------- PSRO


class PSROResult(eqx.Module):
    """The trained population and its history.

    - `agents` (capacity, dim): slot i < `count` holds the i-th agent ever added
      (agents are never changed once added, so the population after iteration t is
      `agents[:sizes[t]]`).
    - `count` (): agents in the final population.
    - `sizes` (iterations + 1,): the population size before each iteration and at
      the end.
    - `diversity` (iterations + 1,): the effective diversity of those populations.
    - `nash` (capacity,): the Nash of the final meta-game (0 on empty slots).
    - `exploitability` (iterations + 1,): the meta-game solves' exploitability.
    - `dropped` (): new agents that did not fit in `capacity` (they are discarded).
    """

    agents: jax.Array
    count: jax.Array
    sizes: jax.Array
    diversity: jax.Array
    nash: jax.Array
    exploitability: jax.Array
    dropped: jax.Array

    def mask(self, iteration: int = -1) -> jax.Array:
        """The slots holding the population of `sizes[iteration]` agents."""
        capacity = self.agents.shape[-2]
        return jnp.arange(capacity, dtype=self.sizes.dtype) < self.sizes[..., iteration, None]


def _identity(v):
    return v


def _oracle(objective, project, v0, lr, steps):
    """`steps` steps of projected gradient ascent on `objective` from v0."""
    grad = jax.grad(objective)
    return lax.fori_loop(0, steps, lambda _, v: project(v + lr * grad(v)), v0)


def _meta(phi, agents, mask, tol, max_steps):
    # phi(v, v) = 0 for an antisymmetric phi; rounding (a fused multiply-add) can
    # leave a few ulps, which would make an agent lose to itself.
    a = evaluate(phi, agents)
    a = jnp.where(jnp.eye(a.shape[0], dtype=bool), jnp.zeros_like(a), a)
    eq = masked_nash(a, mask, mask, tol=tol, max_steps=max_steps)
    p = eq.row
    return a, p, p @ jnp.maximum(a, 0) @ p, eq.exploitability


def _loop(phi, project, variant, iterations, capacity, steps, max_new, tol, max_steps,
          init, lr, support):
    n0, dim = init.shape
    dt = init.dtype
    agents = jnp.zeros((capacity, dim), dt).at[:n0].set(init)
    slots = jnp.arange(capacity, dtype=jnp.int32)
    lr = jnp.asarray(lr, dt)

    def iteration(carry, _):
        agents, count, dropped = carry
        mask = slots < count
        a, p, div, gap = _meta(phi, agents, mask, tol, max_steps)
        newest = agents[count - 1]
        if variant == "psro_rn":
            # Algorithm 3: every agent with Nash mass above `support` takes a gradient
            # best response to the Nash-weighted agents it beats or ties.
            # Ties (itself, copies) are |A_ij| within rounding of the largest payoff:
            # a fused multiply-add makes phi(v, v) a few ulps off 0.
            order = jnp.argsort(-p)[:max_new]
            chosen = p[order] > support
            tie = 100 * jnp.finfo(dt).eps * jnp.max(jnp.where(mask[:, None] & mask,
                                                              jnp.abs(a), 0))
            weights = p * (a[order] >= -tie).astype(dt)

            def respond(v0, q):
                def objective(v):
                    return q @ jax.vmap(lambda w: phi(v, w))(agents)

                return _oracle(objective, project, v0, lr, steps)

            new = jax.vmap(respond)(agents[order], weights)
            rank = (jnp.cumsum(chosen) - 1).astype(jnp.int32)
        else:
            if variant == "psro_n":
                # Algorithm 2: a best response to the Nash mixture of the population.
                def objective(v):
                    return p @ jax.vmap(lambda w: phi(v, w))(agents)
            else:
                # Algorithm 1 (self-play): the newest agent against itself.
                def objective(v):
                    return phi(v, newest)
            new = _oracle(objective, project, newest, lr, steps)[None]
            chosen = jnp.ones((1,), bool)
            rank = jnp.zeros((1,), jnp.int32)
        target = jnp.where(chosen, count + rank, capacity)
        agents = agents.at[target].set(new, mode="drop")
        added = jnp.sum(chosen & (target < capacity)).astype(count.dtype)
        dropped = dropped + jnp.sum(chosen).astype(count.dtype) - added
        return (agents, count + added, dropped), (count, div, gap)

    zero = jnp.asarray(0, jnp.int32)
    (agents, count, dropped), (sizes, divs, gaps) = lax.scan(
        iteration, (agents, jnp.asarray(n0, jnp.int32), zero), None, length=iterations)
    _, p, div, gap = _meta(phi, agents, slots < count, tol, max_steps)
    agents = eqx.error_if(agents, ~jnp.all(jnp.isfinite(agents)),
                          "psro: the agents became NaN or inf during training; lower lr "
                          "or check that phi and its gradient are finite on the domain")
    return PSROResult(agents=agents, count=count,
                      sizes=jnp.concatenate([sizes, count[None]]),
                      diversity=jnp.concatenate([divs, div[None]]), nash=p,
                      exploitability=jnp.concatenate([gaps, gap[None]]), dropped=dropped)


_run = jax.jit(_loop, static_argnums=tuple(range(9)))


def psro(game: FunctionalGame | Payoff, init: jax.Array, *, variant: Variant = "psro_rn",
         iterations: int = 20, capacity: int | None = None, steps: int = 10,
         lr: float = 0.1, support: float = 1e-3, max_new: int | None = None,
         project: Callable[[jax.Array], jax.Array] | None = None,
         tol: float | None = None, max_steps: int = 20_000) -> PSROResult:
    r"""Grow a population in a symmetric zero-sum functional-form game by self-play,
    PSRO-N or PSRO-rN (Balduzzi et al. 2019, Algorithms 1-3), as one jitted
    `lax.scan` over iterations.

    Each iteration builds the meta-game A_ij = phi(v_i, v_j) of the current population,
    solves its Nash p (`masked_nash`: empty slots get exactly zero mass) and adds:

    - `"self_play"`: v_new = oracle(v_t, phi(., v_t)), the newest agent trained
      against itself;
    - `"psro_n"`: v_new = oracle(v_t, sum_j p_j phi(., v_j)), a best response to the
      Nash mixture, from the newest agent;
    - `"psro_rn"`: for every agent v_i with p_i > `support`, v_new = oracle(v_i,
      sum_j p_j [phi(v_i, v_j) >= 0] phi(., v_j)): the rectified Nash response, each
      agent of the Nash support amplifying its strengths against the Nash-weighted
      agents it beats or ties at the start of the oracle (the paper's
      sum_j p_j relu(phi(., v_j)) with the ties, itself included, counted; several
      new agents per iteration, at most `max_new`, the largest p_i first).

    oracle(v, f) is `steps` steps of projected gradient ascent v <- project(v + lr
    grad f(v)) (`project` from the game: e.g. onto the unit disc). New agents fill
    the next free slots; those beyond `capacity` are dropped and counted.

    - `game`: a `FunctionalGame`, or a payoff `phi(v, w)` (then `project` is the
      identity unless given).
    - `init` (n0, dim): the initial population, n0 >= 1.
    - `capacity`: slots (default n0 + iterations; PSRO-rN adds several agents per
      iteration, so give it room).
    - `tol`, `max_steps`: of each meta-game solve (`tol` relative to the spread of
      the meta-game's payoffs).

    Returns a `PSROResult`; `jit`s, and `vmap`s over `init` (e.g. over seeds).
    """
    call = "psro"
    if variant not in VARIANTS:
        raise ValueError(f"{call}: unknown variant {variant!r}; choose one of "
                         f"{', '.join(map(repr, VARIANTS))}")
    if isinstance(game, FunctionalGame):
        phi, project = game.phi, game.project if project is None else project
    elif callable(game):
        phi, project = game, _identity if project is None else project
    else:
        raise TypeError(f"{call}: game must be a FunctionalGame or a payoff phi(v, w), "
                        f"got {type(game).__name__}")
    init = jnp.asarray(init)
    if init.ndim != 2 or init.shape[0] == 0 or init.shape[1] == 0:
        raise ValueError(f"{call}: init must hold at least one agent, shape (n0 >= 1, dim "
                         f">= 1), got {init.shape}; an empty population cannot be trained")
    if isinstance(game, FunctionalGame) and init.shape[1] != game.dim:
        raise ValueError(f"{call}: init has agents of length {init.shape[1]}, the "
                         f"{game.name} game's agents have length {game.dim}")
    if not jnp.issubdtype(init.dtype, jnp.floating):
        init = init.astype(jnp.result_type(float))
    n0 = init.shape[0]
    check_positive_int(f"{call}(iterations=...)", iterations)
    check_positive_int(f"{call}(steps=...)", steps)
    check_positive_int(f"{call}(max_steps=...)", max_steps)
    check_positive_float(f"{call}(lr=...)", lr)
    check_positive_float(f"{call}(support=...)", support)
    capacity = n0 + iterations if capacity is None else capacity
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"{call}: capacity must be an integer >= 1 (the population's "
                         f"slots), got {capacity!r}; an empty population cannot be trained")
    if capacity < n0:
        raise ValueError(f"{call}: capacity {capacity} is smaller than the initial "
                         f"population ({n0} agents); raise capacity")
    max_new = capacity if max_new is None else max_new
    check_positive_int(f"{call}(max_new=...)", max_new)
    max_new = min(max_new, capacity)
    if isinstance(init, jax.core.Tracer):
        init = eqx.error_if(init, ~jnp.all(jnp.isfinite(init)),
                            f"{call}: init contains NaN or inf; pass finite agents")
    elif not np.all(np.isfinite(np.asarray(init))):
        raise ValueError(f"{call}: init contains NaN or inf; pass finite agents")
    return _run(phi, project, variant, int(iterations), int(capacity), int(steps),
                int(max_new), tol, int(max_steps), init, lr, support)


def population_performance(result_p: PSROResult, result_q: PSROResult,
                           phi: Payoff | FunctionalGame, *, tol: float | None = None,
                           max_steps: int = 20_000) -> jax.Array:
    """v(P_t, Q_t) for every iteration t of two `psro` runs of the same length: the
    relative population performance of the first run's population after t
    iterations against the second's, shape (iterations + 1,)."""
    phi = phi.phi if isinstance(phi, FunctionalGame) else phi
    a = evaluate(phi, result_p.agents, result_q.agents)
    sp, sq = result_p.sizes, result_q.sizes
    if sp.shape != sq.shape:
        raise ValueError(f"population_performance: the runs have different lengths "
                         f"({sp.shape[0] - 1} and {sq.shape[0] - 1} iterations)")
    cp = jnp.arange(result_p.agents.shape[-2], dtype=sp.dtype)
    cq = jnp.arange(result_q.agents.shape[-2], dtype=sq.dtype)

    def at(n_p, n_q):
        return masked_nash(a, cp < n_p, cq < n_q, tol=tol, max_steps=max_steps).value

    return jax.vmap(at)(sp, sq)

