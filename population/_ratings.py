r"""Ratings of a population with no absolute fitness: Nash averaging, Elo, mElo_2k,
Bradley-Terry and alpha-Rank, as pure JAX functions (`jit`, `vmap`).

- `nash_averaging`: the maximum-entropy Nash equilibrium of the evaluation meta-game and
  each agent's skill against it (Balduzzi, Tuyls, Perolat and Graepel 2018,
  "Re-evaluating evaluation"), agent-vs-agent and agent-vs-task.
- `elo`, `melo`: online Elo and multidimensional Elo mElo_2k (same paper) over a
  sequence of matches, one `lax.scan`.
- `bradley_terry`: the batch maximum-likelihood Bradley-Terry strengths, an
  `innerloop.argmin` (differentiable in the win counts by the implicit function theorem).
- `alpharank`: the stationary distribution of alpha-Rank's Markov chain over pure
  strategy profiles (Omidshafiei et al. 2019, "alpha-Rank: multi-agent evaluation by
  evolution"), one population (symmetric games) or two (two-player games).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.nn import log_sigmoid, sigmoid
from jax.scipy.special import logsumexp

from innerloop._shared import check_positive_float, check_positive_int
from innerloop.implicit import AbstractGradient, argmin
from innerloop.solvers import Solution

#: Elo's scale: a rating difference d gives a win probability 1 / (1 + 10^(-d / 400)).
ELO_SCALE = math.log(10.0) / 400.0


# ------------------------------------------------------------------ validation


def _float(call: str, name: str, x: Any) -> jax.Array:
    """A floating array; NaN/inf raise now when concrete, at run time under jit."""
    a = jnp.asarray(x)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    if isinstance(a, jax.core.Tracer):
        a = eqx.error_if(a, ~jnp.all(jnp.isfinite(a)),
                         f"{call}: {name} contains NaN or inf; pass finite values")
    elif not np.all(np.isfinite(np.asarray(a))):
        raise ValueError(f"{call}: {name} contains NaN or inf; pass finite values")
    return a


def _matrix(call: str, payoff: Any, *, square: bool, what: str = "payoff") -> jax.Array:
    a = jnp.asarray(payoff)
    if a.ndim != 2:
        raise ValueError(f"{call}: {what} must be a 2-D array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{call}: {what} has shape {a.shape}: an empty population (0 agents) "
                         "has no ratings; pass at least one agent")
    if square and a.shape[0] != a.shape[1]:
        raise ValueError(f"{call}: a symmetric game needs a square {what} (agents x agents), "
                         f"got shape {a.shape}")
    return _float(call, what, a)


def _check_antisymmetric(call: str, a: jax.Array, tol: float) -> jax.Array:
    """|A + A^T| <= tol max(1, |A|) entry-wise, raised now or at run time under jit."""
    bad = jnp.max(jnp.abs(a + a.T)) > tol * jnp.maximum(1.0, jnp.max(jnp.abs(a)))
    msg = (f"{call}: payoff is not antisymmetric (max |A + A^T| > {tol:g} max(1, max |A|)); "
           "pass the zero-sum payoff A - A.T of the symmetric game, or agent_vs_task=True "
           "for an agents x tasks score matrix")
    if isinstance(bad, jax.core.Tracer):
        return eqx.error_if(a, bad, msg)
    if bool(bad):
        raise ValueError(msg)
    return a


def _default_tol(dtype) -> float:
    # The projected-gradient test of the dual solve (payoffs scaled to max |S| = 1).
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-6


# --------------------------------------------------------------- Nash averaging


class NashAverage(eqx.Module):
    """The result of `nash_averaging`.

    - `agents` (m,): the maximum-entropy Nash over the agents (rows).
    - `tasks` (n,): the maximum-entropy Nash over the columns (the tasks; for
      agent-vs-agent the opponents, equal to `agents`).
    - `skill` (m,): each agent's Nash-averaged skill, `payoff @ tasks`.
    - `difficulty` (n,): each column's Nash-averaged difficulty, `-(agents @ payoff)`
      (agent-vs-agent: equal to `skill`).
    - `value` (): `agents @ payoff @ tasks`, the game's value (0 agent-vs-agent).
    - `exploitability` (): `max(skill) - min(agents @ payoff)` >= 0, 0 at a Nash.
    - `steps`, `converged`: the dual Newton solve's iterations and stopping test.
    """

    agents: jax.Array
    tasks: jax.Array
    skill: jax.Array
    difficulty: jax.Array
    value: jax.Array
    exploitability: jax.Array
    steps: jax.Array
    converged: jax.Array


def nash_averaging(payoff: Any, *, agent_vs_task: bool = False, tol: float | None = None,
                   max_steps: int = 200, antisymmetry_tol: float = 1e-6) -> NashAverage:
    r"""Nash averaging (Balduzzi, Tuyls, Perolat and Graepel 2018, "Re-evaluating
    evaluation", NeurIPS).

    Agent-vs-agent (default): `payoff` (n, n) antisymmetric, `payoff[i, j]` the
    (zero-sum) payoff of agent i against agent j, e.g. log-odds of i beating j. The
    evaluation meta-game is the symmetric zero-sum game on it; its Nash equilibria are
    {p in simplex : A p <= 0} (value 0), and the maximum-entropy one

        p* = argmax_p H(p)  subject to  A^T p >= 0,  p in the simplex

    is unique. The Nash-averaged skill of agent i is (A p*)_i <= 0. Adding copies of
    an agent leaves p*'s mass on each original class and every skill unchanged (the
    paper's invariance to redundancy); copies of one agent share its mass equally.

    Agent-vs-task (`agent_vs_task=True`): `payoff` (m, n) scores of m agents on n
    tasks (any real scores, e.g. normalised per task). The meta-game is the zero-sum
    game where the agent player maximises x^T S y and the task player minimises it;
    its Nash set is a product X* x Y*, and the maximum-entropy Nash maximises
    H(x) + H(y) over it, with skill S y* and difficulty -S^T x* (the paper's
    appendix D; OpenSpiel's `nash_averaging(game, a_v_a=False)` solves the same
    problem after scaling each column of S to [0, 1]).

    Solved through the smooth dual (the game value v is pinned by the constraints,
    so a term v^2 / 2 in the primal changes nothing and makes the dual unconstrained
    apart from signs):

        min_{mu >= 0, nu >= 0}  logsumexp(S mu) + logsumexp(-S^T nu)
                                + (sum mu - sum nu)^2 / 2,

        x = softmax(S mu),  y = softmax(-S^T nu),  v = sum nu - sum mu,

    by a projected Newton method (Bertsekas 1982) with a Levenberg-Marquardt term
    (the Hessian vanishes in the directions that send the mass of strategies outside
    the Nash support to zero, where the dual's infimum lies at infinity; Newton's
    step keeps the convergence linear there). Stops when the projected gradient (the
    Nash constraints' violation, payoffs scaled to max |S - mean S| = 1) is below
    `tol` (default 1e-10 in float64, 1e-6 in float32).

    Errors: a non-square or non-antisymmetric `payoff` agent-vs-agent (the tolerance:
    max |A + A^T| <= `antisymmetry_tol` max(1, max |A|)), NaN/inf, 0 agents.
    Not differentiable (the maximum-entropy selection is not smooth in the payoff).
    """
    call = "nash_averaging"
    check_positive_int(f"{call}(max_steps=...)", max_steps)
    check_positive_float(f"{call}(antisymmetry_tol=...)", antisymmetry_tol)
    a = _matrix(call, payoff, square=not agent_vs_task)
    if not agent_vs_task:
        a = _check_antisymmetric(call, a, antisymmetry_tol)
    if tol is None:
        tol = _default_tol(a.dtype)
    check_positive_float(f"{call}(tol=...)", tol)
    x, y, steps, ok = _maxent_nash(a, tol, max_steps)
    if not agent_vs_task:
        # Both players' maximum-entropy Nash sets are {p : A p <= 0}.
        x = y = 0.5 * (x + y)
    skill = a @ y
    against = x @ a
    return NashAverage(agents=x, tasks=y, skill=skill, difficulty=-against,
                       value=x @ skill, exploitability=jnp.max(skill) - jnp.min(against),
                       steps=steps, converged=ok)


def _maxent_nash(s: jax.Array, tol: float, max_steps: int):
    """The maximum-entropy Nash (x, y) of the zero-sum game S (row maximises) by the
    projected Newton method on the dual above."""
    m, n = s.shape
    dt = s.dtype
    centre = jnp.mean(s)
    spread = jnp.max(jnp.abs(s - centre))
    # Positive scaling and shifts of S leave the Nash set unchanged.
    s = (s - centre) / jnp.where(spread > 0, spread, 1)
    w = jnp.concatenate([jnp.ones((n,), dt), -jnp.ones((m,), dt)])

    def split(z):
        return z[:n], z[n:]

    def value(z):
        mu, nu = split(z)
        return logsumexp(s @ mu) + logsumexp(-(nu @ s)) + 0.5 * (jnp.sum(mu) - jnp.sum(nu)) ** 2

    def grad_hess(z):
        mu, nu = split(z)
        x = jax.nn.softmax(s @ mu)
        y = jax.nn.softmax(-(nu @ s))
        c = jnp.sum(mu) - jnp.sum(nu)
        g = jnp.concatenate([x @ s + c, -(s @ y) - c])
        sx = s.T * x                      # S^T diag(x)
        hx = sx @ s - jnp.outer(x @ s, x @ s)
        sy = s * y                        # S diag(y)
        hy = sy @ s.T - jnp.outer(s @ y, s @ y)
        h = jnp.zeros((n + m, n + m), dt).at[:n, :n].set(hx).at[n:, n:].set(hy)
        return g, h + jnp.outer(w, w)

    def projected(z, g):
        return z - jnp.maximum(z - g, 0)

    def residual(z):
        mu, nu = split(z)
        x = jax.nn.softmax(s @ mu)
        y = jax.nn.softmax(-(nu @ s))
        c = jnp.sum(mu) - jnp.sum(nu)
        return jnp.max(jnp.abs(projected(z, jnp.concatenate([x @ s + c, -(s @ y) - c]))))

    alphas = 0.5 ** jnp.arange(30, dtype=dt)

    def body(carry):
        z, k, _ = carry
        g, h = grad_hess(z)
        pg = projected(z, g)
        res = jnp.max(jnp.abs(pg))
        # Bertsekas' epsilon-active set: at (or near) the bound and pushed into it.
        active = (z <= jnp.minimum(res, 1e-3)) & (g > 0)
        free = ~active
        ff = (free[:, None] & free[None, :]).astype(dt)
        # Levenberg-Marquardt term |pg|^2 (Yamashita and Fukushima 2001): small enough
        # that the step along a direction of curvature ~ |g| is Newton's.
        lm = jnp.sum(pg ** 2) + 10 * jnp.finfo(dt).eps
        # Free block: H + lm I; active rows: a gradient step.
        mat = h * ff + jnp.diag(jnp.where(free, lm, 1.0).astype(dt))
        d = -jnp.linalg.solve(mat, g)
        f0 = value(z)

        def trial(alpha):
            zn = jnp.maximum(z + alpha * d, 0)
            decrease = jnp.sum(jnp.where(free, -alpha * g * d, g * (z - zn)))
            return zn, value(zn), decrease, residual(zn)

        zs, fs, decs, rs = jax.vmap(trial)(alphas)
        # Armijo's test; where the predicted decrease is below the rounding of f
        # (float32 near the solution), a step that reduces the projected gradient.
        tiny = decs <= 100 * jnp.finfo(dt).eps * (1 + jnp.abs(f0))
        ok = ((fs <= f0 - 1e-4 * decs) | (tiny & (rs < res))) & jnp.isfinite(fs)
        first = jnp.argmax(ok)
        zn = jnp.where(jnp.any(ok), zs[first], z)
        return zn, k + 1, jnp.any(ok)

    def cond(carry):
        z, k, moved = carry
        g, _ = grad_hess(z)
        return (k < max_steps) & moved & (jnp.max(jnp.abs(projected(z, g))) > tol)

    z0 = jnp.zeros((n + m,), dt)
    z, steps, _ = lax.while_loop(cond, body, (z0, jnp.asarray(0, jnp.int32),
                                              jnp.asarray(True)))
    g, _ = grad_hess(z)
    mu, nu = split(z)
    ok = jnp.max(jnp.abs(projected(z, g))) <= tol
    return jax.nn.softmax(s @ mu), jax.nn.softmax(-(nu @ s)), steps, ok


# ----------------------------------------------------------------- Elo and mElo


class Elo(eqx.Module):
    """The result of `elo` / `melo`.

    - `ratings` (n,): the final ratings (Elo points).
    - `vectors` (n, 2k): mElo_2k's cyclic components (`None` for `elo`).
    - `predictions` (T,): the probability that match t's first player wins, predicted
      before the match's update (the online forecast whose log-loss rates the system).
    """

    ratings: jax.Array
    vectors: jax.Array | None
    predictions: jax.Array

    def probabilities(self) -> jax.Array:
        """(n, n): the predicted probability that i beats j under the final ratings."""
        u = self.ratings[:, None] - self.ratings[None, :]
        if self.vectors is not None:
            u = u + self.vectors @ omega(self.vectors.shape[1] // 2, u.dtype) @ self.vectors.T
        return sigmoid(ELO_SCALE * u)


def omega(k: int, dtype=None) -> jax.Array:
    """(2k, 2k) mElo's block-antisymmetric matrix sum_i e_{2i-1} e_{2i}^T - e_{2i} e_{2i-1}^T."""
    block = jnp.asarray([[0.0, 1.0], [-1.0, 0.0]], dtype)
    return jnp.kron(jnp.eye(k, dtype=dtype), block)


def _matches(call: str, matches: Any, outcomes: Any, num_agents: int):
    if isinstance(num_agents, bool) or not isinstance(num_agents, int) or num_agents < 1:
        raise ValueError(f"{call}: num_agents must be an integer >= 1 (an empty population "
                         f"has no ratings), got {num_agents!r}")
    idx = jnp.asarray(matches)
    if idx.ndim != 2 or idx.shape[1] != 2 or not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(f"{call}: matches must be an integer array (T, 2) of agent indices "
                         f"(i, j) per match, got {idx.dtype} {idx.shape}")
    out = _float(call, "outcomes", outcomes)
    if out.shape != (idx.shape[0],):
        raise ValueError(f"{call}: outcomes must have shape (T,) = ({idx.shape[0]},), the "
                         f"score of matches[t, 0] (1 win, 0.5 draw, 0 loss); got {out.shape}")
    bad = jnp.any((idx < 0) | (idx >= num_agents))
    msg = f"{call}: matches hold agent indices outside [0, num_agents = {num_agents})"
    if isinstance(bad, jax.core.Tracer):
        idx = eqx.error_if(idx, bad, msg)
    elif bool(bad):
        raise ValueError(msg)
    return idx, out


def elo(matches: Any, outcomes: Any, num_agents: int, *, k_factor: float = 16.0,
        init: Any = None) -> Elo:
    r"""Online Elo ratings over a sequence of matches (one `lax.scan`).

    Match t: agents i, j = `matches[t]`, `outcomes[t]` = S the score of i (1 win,
    0.5 draw, 0 loss). With alpha = ln(10) / 400,

        p = sigmoid(alpha (r_i - r_j)) = 1 / (1 + 10^(-(r_i - r_j) / 400)),
        r_i <- r_i + K (S - p),    r_j <- r_j - K (S - p),

    an SGD step of the log-loss (Elo 1978). `init` (n,): initial ratings (zeros).
    Returns an `Elo` record (`vectors` None).
    """
    idx, out = _matches("elo", matches, outcomes, num_agents)
    check_positive_float("elo(k_factor=...)", k_factor)
    dt = out.dtype
    r0 = jnp.zeros((num_agents,), dt) if init is None else _float("elo", "init", init).astype(dt)

    def step(r, match):
        (i, j), s = match
        p = sigmoid(ELO_SCALE * (r[i] - r[j]))
        delta = k_factor * (s - p)
        return r.at[i].add(delta).at[j].add(-delta), p

    r, preds = lax.scan(step, r0, (idx, out))
    return Elo(ratings=r, vectors=None, predictions=preds)


def melo(matches: Any, outcomes: Any, num_agents: int, *, k: int = 1, key: Any = None,
         lr_rating: float = 16.0, lr_vector: float = 1.0, init_scale: float = 4.0) -> Elo:
    r"""Multidimensional Elo, mElo_2k (Balduzzi et al. 2018, "Re-evaluating evaluation").

    Each agent has a rating r_i and a vector c_i in R^{2k}; with the block-antisymmetric
    Omega = sum_{l=1}^k (e_{2l-1} e_{2l}^T - e_{2l} e_{2l-1}^T) and alpha = ln(10)/400,

        p_ij = sigmoid(alpha (r_i - r_j + c_i^T Omega c_j)),

    whose antisymmetric part c_i^T Omega c_j can express cycles (rock-paper-scissors)
    that no scalar rating can. Online updates per match (S the score of i, delta = S - p):

        r_i += eta_r delta,  r_j -= eta_r delta,
        c_i += eta_c delta Omega c_j,  c_j -= eta_c delta Omega c_i

    (SGD on the log-loss, both from the pre-match values). c starts at
    N(0, init_scale^2) from `key` (default `jax.random.key(0)`), since c = 0 is a fixed
    point of the updates. Returns an `Elo` record with `vectors` (n, 2k).
    """
    idx, out = _matches("melo", matches, outcomes, num_agents)
    check_positive_int("melo(k=...)", k)
    check_positive_float("melo(lr_rating=...)", lr_rating)
    check_positive_float("melo(lr_vector=...)", lr_vector)
    check_positive_float("melo(init_scale=...)", init_scale)
    dt = out.dtype
    key = jax.random.key(0) if key is None else key
    om = omega(k, dt)
    c0 = init_scale * jax.random.normal(key, (num_agents, 2 * k), dt)
    r0 = jnp.zeros((num_agents,), dt)

    def step(carry, match):
        r, c = carry
        (i, j), s = match
        p = sigmoid(ELO_SCALE * (r[i] - r[j] + c[i] @ om @ c[j]))
        delta = s - p
        ci, cj = c[i], c[j]
        r = r.at[i].add(lr_rating * delta).at[j].add(-lr_rating * delta)
        c = c.at[i].add(lr_vector * delta * (om @ cj)).at[j].add(-lr_vector * delta * (om @ ci))
        return (r, c), p

    (r, c), preds = lax.scan(step, (r0, c0), (idx, out))
    return Elo(ratings=r, vectors=c, predictions=preds)


# ---------------------------------------------------------------- Bradley-Terry


def bradley_terry_loss(strengths: jax.Array, wins: jax.Array, l2: float = 1e-2) -> jax.Array:
    """-sum_ij W_ij log sigmoid(s_i - s_j) + l2 |s|^2 / 2 (the penalised negative
    log-likelihood `bradley_terry` minimises)."""
    diff = strengths[:, None] - strengths[None, :]
    return -jnp.sum(wins * log_sigmoid(diff)) + 0.5 * l2 * jnp.sum(strengths ** 2)


def bradley_terry(wins: Any, *, l2: float = 1e-2, grad: AbstractGradient | None = None,
                  tol: float | None = None, max_steps: int = 500) -> Solution:
    r"""Batch maximum-likelihood Bradley-Terry strengths (Bradley and Terry 1952; Zermelo
    1929), differentiable in the win counts.

    `wins` (n, n): `wins[i, j]` the number (or weight) of i's wins over j. With
    P(i beats j) = sigmoid(s_i - s_j),

        s* = argmin_s  -sum_ij W_ij log sigmoid(s_i - s_j) + (l2 / 2) |s|^2,

    solved by `innerloop.argmin` (Anderson acceleration on the gradient step), so
    ds*/dW comes from the implicit function theorem (`grad`, default `Implicit()`).
    The L2 term (l2 > 0) fixes the scale's free shift (the optimum has mean 0) and
    keeps the strengths finite for an agent that never lost. Natural-log units;
    multiply by 400 / ln 10 for Elo points.

    Returns innerloop's `Solution`: `.value` the strengths (n,), `.converged`.
    """
    call = "bradley_terry"
    w = _matrix(call, wins, square=True, what="wins")
    check_positive_float(f"{call}(l2=...)", l2)
    if not isinstance(w, jax.core.Tracer) and bool(jnp.any(w < 0)):
        raise ValueError(f"{call}: wins must be >= 0 (counts of i's wins over j)")
    s0 = jnp.zeros((w.shape[0],), w.dtype)
    return argmin(lambda s, ww: bradley_terry_loss(s, ww, l2), s0, w, grad=grad, tol=tol,
                  max_steps=max_steps)


# -------------------------------------------------------------------- alpha-Rank


class AlphaRank(eqx.Module):
    """The result of `alpharank`.

    - `stationary`: the stationary distribution over pure strategy profiles, (n,) for
      one population, (n1, n2) for two (profile (i, j) at [i, j]).
    - `fixation` (N, N): `fixation[s, r]`, the probability that one mutant playing
      profile r fixates in a population at profile s (0 where r is not one deviation
      from s), N the number of profiles.
    - `transition` (N, N): the Markov chain's transition matrix (rows sum to 1).
    """

    stationary: jax.Array
    fixation: jax.Array
    transition: jax.Array


def _log_fixation_constant(u: jax.Array, m: int) -> jax.Array:
    """log of (1 - e^{-u}) / (1 - e^{-m u}) = 1 / sum_{l<m} e^{-l u}, stable for any u."""
    ls = jnp.arange(m, dtype=u.dtype)
    return -logsumexp(-u[..., None] * ls, axis=-1)


def alpharank(payoffs: Any, *, alpha: float = 1.0, m: int = 50) -> AlphaRank:
    r"""alpha-Rank (Omidshafiei, Papadimitriou, Piliouras, Tuyls, Rowland, Lespiau,
    Czarnecki, Lanctot, Perolat and Munos 2019, "alpha-Rank: multi-agent evaluation by
    evolution", Scientific Reports): the stationary distribution of a Markov chain over
    pure strategy profiles, in which a population of m individuals at a monomorphic
    profile s is invaded by one mutant r with the fixation probability of a Moran
    process with Fermi selection of intensity `alpha` (>= 0; larger: stronger selection).

    One population (`payoffs` a square (n, n) array, `payoffs[r, s]` the payoff of r
    against s in a symmetric two-player game): an r-mutant's fitness with p_r copies of
    r is f_r(p_r) = ((p_r - 1) M[r, r] + (m - p_r) M[r, s]) / (m - 1), and

        rho_{r,s} = 1 / (1 + sum_{l=1}^{m-1} prod_{p=1}^{l} e^{-alpha (f_r(p) - f_s(m - p))}).

    Two populations (`payoffs` a pair (A, B) of (n1, n2) arrays, or a (2, n1, n2)
    array: the row and the column player's payoffs at profile (i, j)): a mutant changes
    one population's strategy, u = alpha (f(r) - f(s)) with that population's payoff,

        rho_{r,s} = (1 - e^{-u}) / (1 - e^{-m u}).

    Transitions C[s, r] = eta rho_{r,s} for the profiles r one deviation from s, with
    eta = 1 / sum_k (n_k - 1), and C[s, s] = 1 - sum of the others; the stationary pi
    solves pi^T C = pi^T, sum pi = 1 (Grassmann-Taksar-Heyman state reduction). Matches
    OpenSpiel's
    `open_spiel.python.egt.alpharank.compute(..., use_local_selection_model=False)`.
    """
    call = "alpharank"
    if not isinstance(alpha, jax.core.Tracer):
        check_positive_float(f"{call}(alpha=...)", alpha, allow_zero=True)
    if isinstance(m, bool) or not isinstance(m, int) or m < 2:
        raise ValueError(f"{call}: m (the population size) must be an integer >= 2, got {m!r}")
    if isinstance(payoffs, (list, tuple)):
        if len(payoffs) != 2:
            raise ValueError(f"{call}: a multi-population game takes two payoff tables (row "
                             f"player's, column player's), got {len(payoffs)}")
        tables = jnp.stack([jnp.asarray(p) for p in payoffs])
    else:
        tables = jnp.asarray(payoffs)
    if tables.ndim == 2:
        return _alpharank_single(_matrix(call, tables, square=True), alpha, m)
    if tables.ndim != 3 or tables.shape[0] != 2:
        raise ValueError(f"{call}: payoffs must be a square (n, n) array (one population) or "
                         f"two (n1, n2) tables (two populations), got shape {tables.shape}")
    if 0 in tables.shape:
        raise ValueError(f"{call}: payoffs have shape {tables.shape}: an empty population "
                         "(0 agents) has no ranking; pass at least one strategy each")
    return _alpharank_multi(_float(call, "payoffs", tables), alpha, m)


def _stationary(log_rate: jax.Array) -> jax.Array:
    """pi with pi^T C = pi^T, sum pi = 1, from the log off-diagonal transitions (-inf on
    the diagonal and for no transition). Each state's rates are divided by its total
    (in logs), the resulting jump chain solved by the Grassmann-Taksar-Heyman state
    reduction (1985: no subtractions), and pi_i = pi_jump_i / total_i: accurate when
    the fixation probabilities span hundreds of orders of magnitude (large alpha),
    where solving (I - C^T + 1 1^T) pi = 1 is singular."""
    log_out = logsumexp(log_rate, axis=1)
    log_pi = jnp.log(_gth(jnp.exp(log_rate - log_out[:, None]))) - log_out
    return jax.nn.softmax(log_pi)


def _gth(c: jax.Array) -> jax.Array:
    """The stationary distribution of the chain with off-diagonal transitions c."""
    n = c.shape[0]
    idx = jnp.arange(n)
    p = c * (1 - jnp.eye(n, dtype=c.dtype))

    def reduce(t, p):
        k = n - 1 - t
        lower = idx < k
        total = jnp.maximum(jnp.sum(jnp.where(lower, p[k], 0)), jnp.finfo(c.dtype).tiny)
        col = jnp.where(lower, p[:, k] / total, 0)
        row = jnp.where(lower, p[k], 0)
        p = p + jnp.outer(col, row)
        return p.at[:, k].set(jnp.where(lower, col, p[:, k]))

    p = lax.fori_loop(0, n - 1, reduce, p)

    def back(k, pi):
        return pi.at[k].set(jnp.sum(jnp.where(idx < k, pi * p[:, k], 0)))

    pi = lax.fori_loop(1, n, back, jnp.zeros((n,), c.dtype).at[0].set(1))
    return pi / jnp.sum(pi)


def _chain(rho: jax.Array, eta: float) -> jax.Array:
    n = rho.shape[0]
    off = eta * rho * (1 - jnp.eye(n, dtype=rho.dtype))
    return off + jnp.diag(1 - jnp.sum(off, axis=1))


def _alpharank_single(a: jax.Array, alpha: float, m: int) -> AlphaRank:
    n = a.shape[0]
    dt = a.dtype
    if n == 1:
        one = jnp.ones((1, 1), dt)
        return AlphaRank(stationary=jnp.ones((1,), dt), fixation=one, transition=one)
    p = jnp.arange(1, m, dtype=dt)                        # p_r = 1 .. m-1
    d = jnp.diag(a)
    # fr[s, r, p]: an r-mutant's fitness with p copies of r in a population of s.
    fr = ((p - 1) * d[None, :, None] + (m - p) * a.T[:, :, None]) / (m - 1)
    fs = ((m - p - 1) * d[:, None, None] + p * a[:, :, None]) / (m - 1)
    logt = -alpha * jnp.cumsum(fr - fs, axis=-1)           # log prod_{p<=l}, l = 1..m-1
    log_rho = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf,
                        -jnp.logaddexp(0.0, logsumexp(logt, axis=-1)))
    rho = jnp.exp(log_rho)
    c = _chain(rho, 1.0 / (n - 1))
    return AlphaRank(stationary=_stationary(log_rho), fixation=rho, transition=c)


def _alpharank_multi(tables: jax.Array, alpha: float, m: int) -> AlphaRank:
    _, n1, n2 = tables.shape
    dt = tables.dtype
    a, b = tables[0], tables[1]
    if n1 + n2 == 2:
        one = jnp.ones((1, 1), dt)
        return AlphaRank(stationary=jnp.ones((1, 1), dt), fixation=one, transition=one)
    # Row population deviates (i, j) -> (i2, j); column population (i, j) -> (i, j2).
    row = _log_fixation_constant(alpha * (a[None, :, :] - a[:, None, :]), m)  # [i, i2, j]
    col = _log_fixation_constant(alpha * (b[:, None, :] - b[:, :, None]), m)  # [i, j, j2]
    same1, same2 = jnp.eye(n1, dtype=bool), jnp.eye(n2, dtype=bool)
    # log_rho[i, j, i2, j2]: -inf unless exactly one population changed.
    by_row = jnp.where(~same1[:, None, :, None] & same2[None, :, None, :],
                       jnp.transpose(row, (0, 2, 1))[:, :, :, None], -jnp.inf)
    by_col = jnp.where(same1[:, None, :, None] & ~same2[None, :, None, :],
                       col[:, :, None, :], -jnp.inf)
    log_rho = jnp.maximum(by_row, by_col).reshape(n1 * n2, n1 * n2)
    rho = jnp.exp(log_rho)
    c = _chain(rho, 1.0 / ((n1 - 1) + (n2 - 1)))
    return AlphaRank(stationary=_stationary(log_rho).reshape(n1, n2), fixation=rho,
                     transition=c)


__all__: Sequence[str] = ["AlphaRank", "Elo", "NashAverage", "alpharank", "bradley_terry",
                          "elo", "melo", "nash_averaging"]
