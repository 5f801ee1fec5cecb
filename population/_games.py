"""Two-player zero-sum games: matrix games as arrays and functional-form games as pure
payoff functions of two parameter vectors.

Matrix games (`payoff[i, j]` is the row player's payoff, the column player gets minus
it): `rock_paper_scissors`, `transitive_game`, `transitive_cyclic_game`,
`random_zero_sum`, `blotto_payoff` (Colonel Blotto over every allocation).

Functional-form games (Balduzzi et al. 2019, "Open-ended learning in symmetric zero-sum
games", ICML): an agent is a parameter vector v and two agents meet in an
antisymmetric payoff phi(v, w) = -phi(w, v). Each is a `FunctionalGame`: the payoff,
the projection onto the agents' domain (used by gradient best-response oracles) and a
sampler of initial agents. `disc_game`, `lotto_game` (differentiable Lotto),
`blotto_game` (a smoothed continuous Blotto). `evaluate(phi, P, Q)` builds the
meta-game A[i, j] = phi(P_i, Q_j) of two populations.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from innerloop._shared import check_positive_float, check_positive_int
from innerloop.population._equilibria import project_simplex

Payoff = Callable[[jax.Array, jax.Array], jax.Array]


def _dtype(dtype: Any) -> Any:
    return jnp.result_type(float) if dtype is None else jnp.dtype(dtype)


# -------------------------------------------------------------------- matrix games


def rock_paper_scissors(dtype: Any = None) -> jax.Array:
    """Rock, paper, scissors (rows and columns in that order): win 1, loss -1, tie 0.
    Value 0, unique Nash (1/3, 1/3, 1/3) for both players."""
    return jnp.asarray([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], _dtype(dtype))


def transitive_game(n: int, strengths: Any = None, dtype: Any = None) -> jax.Array:
    """The purely transitive symmetric game A[i, j] = s_i - s_j (Balduzzi et al. 2019,
    phi(v, w) = f(v) - f(w)); default strengths s = (0, 1, ..., n - 1), so agent n - 1
    beats everyone and the Nash is pure on it."""
    check_positive_int("transitive_game(n=...)", n)
    dt = _dtype(dtype)
    s = jnp.arange(n, dtype=dt) if strengths is None else jnp.asarray(strengths, dt)
    if s.shape != (n,):
        raise ValueError(f"transitive_game: strengths must have shape ({n},), got {s.shape}")
    return s[:, None] - s[None, :]


def transitive_cyclic_game(key: jax.Array, n: int, *, transitive: float = 1.0,
                           cyclic: float = 1.0, rank: int = 1,
                           dtype: Any = None) -> jax.Array:
    """A random symmetric zero-sum game with a transitive and a cyclic part, the two
    components of Balduzzi et al.'s (2019) decomposition of an antisymmetric matrix:

        A = transitive (f 1^T - 1 f^T) + cyclic sum_{r < rank} (u_r w_r^T - w_r u_r^T),

    f, u_r, w_r ~ N(0, I_n). `cyclic=0` gives a transitive game, `transitive=0` a purely
    cyclic one (rank 1: a random Disc game between n agents)."""
    check_positive_int("transitive_cyclic_game(n=...)", n)
    check_positive_int("transitive_cyclic_game(rank=...)", rank)
    dt = _dtype(dtype)
    kf, ku, kw = jax.random.split(key, 3)
    f = jax.random.normal(kf, (n,), dt)
    u = jax.random.normal(ku, (rank, n), dt)
    w = jax.random.normal(kw, (rank, n), dt)
    cyc = jnp.einsum("ri,rj->ij", u, w)
    return (jnp.asarray(transitive, dt) * (f[:, None] - f[None, :])
            + jnp.asarray(cyclic, dt) * (cyc - cyc.T))


def random_zero_sum(key: jax.Array, m: int, n: int, dtype: Any = None) -> jax.Array:
    """An m x n zero-sum game with payoffs drawn uniformly in [-1, 1]."""
    check_positive_int("random_zero_sum(m=...)", m)
    check_positive_int("random_zero_sum(n=...)", n)
    return jax.random.uniform(key, (m, n), _dtype(dtype), minval=-1, maxval=1)


def blotto_allocations(soldiers: int, fields: int) -> np.ndarray:
    """Every way to put `soldiers` identical soldiers on `fields` battlefields, as an
    int array of shape (C(soldiers + fields - 1, fields - 1), fields), in lexicographic
    order (the first row puts every soldier on the first field)."""
    check_positive_int("blotto_allocations(soldiers=...)", soldiers)
    check_positive_int("blotto_allocations(fields=...)", fields)
    # Stars and bars: the positions of fields - 1 bars among soldiers + fields - 1 slots.
    rows = []
    for bars in itertools.combinations(range(soldiers + fields - 1), fields - 1):
        edges = (-1, *bars, soldiers + fields - 1)
        rows.append([edges[k + 1] - edges[k] - 1 for k in range(fields)])
    return np.asarray(rows, np.int64)[::-1].copy()


def blotto_payoff(soldiers: int, fields: int, opponent_soldiers: int | None = None,
                  dtype: Any = None) -> jax.Array:
    """Colonel Blotto (Borel 1921) as a matrix game over every allocation
    (`blotto_allocations`): a field goes to the side with more soldiers on it (a tie
    to nobody) and the payoff is the fraction of fields won minus the fraction lost,

        A[a, b] = (1 / K) sum_k sign(a_k - b_k),

    the battlefield-share payoff of Roberson (2006, "The Colonel Blotto game"). Rows
    are the allocations of `soldiers`, columns those of `opponent_soldiers` (default:
    the same, a symmetric game, A = -A^T, value 0)."""
    alloc = blotto_allocations(soldiers, fields)
    other = alloc if opponent_soldiers is None else blotto_allocations(opponent_soldiers,
                                                                       fields)
    wins = np.sign(alloc[:, None, :] - other[None, :, :]).sum(-1)
    return jnp.asarray(wins / fields, _dtype(dtype))


# ------------------------------------------------------------ functional-form games


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionalGame:
    """A symmetric zero-sum game in functional form (Balduzzi et al. 2019).

    - `phi(v, w) -> ()`: the payoff of agent v against agent w, antisymmetric.
    - `project(v) -> v`: the Euclidean projection onto the agents' domain (what a
      projected-gradient best-response oracle applies after each step).
    - `sample(key, n) -> (n, dim)`: n initial agents in the domain.
    - `dim`: the length of an agent's parameter vector.

    Hashed by identity, so that a game can be a static argument of `jit`."""

    name: str
    dim: int
    phi: Payoff
    project: Callable[[jax.Array], jax.Array]
    sample: Callable[[jax.Array, int], jax.Array]


def project_disc(v: jax.Array, radius: float = 1.0) -> jax.Array:
    """Projection onto the disc (ball) of `radius`: v / max(1, |v| / radius)."""
    norm = jnp.sqrt(jnp.sum(v * v))
    return v / jnp.maximum(jnp.ones_like(norm), norm / radius)


def disc_phi(v: jax.Array, w: jax.Array) -> jax.Array:
    """The Disc game's payoff v^T [[0, -1], [1, 0]] w = v_2 w_1 - v_1 w_2: v beats w
    when it lies less than half a turn counter-clockwise of w."""
    return v[1] * w[0] - v[0] * w[1]


def disc_game(init_radius: float = 0.1) -> FunctionalGame:
    """The Disc game (Balduzzi et al. 2019, Sec. 3): agents are points of the unit disc
    and phi(v, w) = v^T [[0, -1], [1, 0]] w, a purely cyclic game (every population's
    meta-game is a rank-2 antisymmetric matrix). Initial agents are drawn uniformly in
    the disc of radius `init_radius`."""
    check_positive_float("disc_game(init_radius=...)", init_radius)

    def sample(key, n):
        kr, ka = jax.random.split(key)
        dt = jnp.result_type(float)
        r = init_radius * jnp.sqrt(jax.random.uniform(kr, (n,), dt))
        a = jax.random.uniform(ka, (n,), dt, maxval=2 * np.pi)
        return jnp.stack([r * jnp.cos(a), r * jnp.sin(a)], axis=1)

    return FunctionalGame("disc", 2, disc_phi, project_disc, sample)


def lotto_phi(customers: jax.Array, servers: int, temperature: float = 1.0) -> Payoff:
    """Differentiable Lotto's payoff for c `customers` (c, 2) and k `servers`
    (Balduzzi et al. 2019, Sec. 5). An agent (p, x) puts mass p in the simplex on k
    servers at positions x_1..x_k in the plane, flattened as v = (p, x_1, ..., x_k) of
    length 3k. Customers are softly assigned to the nearest servers of both agents,

        (a_i1..a_ik, b_i1..b_ik) = softmax(-|c_i - x_1|^2, ..., -|c_i - y_k|^2) / T,
        phi((p, x), (q, y)) = sum_i sum_j (p_j a_ij - q_j b_ij),

    the paper's form with a softmax temperature T (T = 1 is the paper's)."""
    customers = jnp.asarray(customers)

    def phi(v, w):
        p, x = v[:servers], v[servers:].reshape(servers, 2)
        q, y = w[:servers], w[servers:].reshape(servers, 2)
        c = customers.astype(v.dtype)
        pos = jnp.concatenate([x, y], axis=0)
        d2 = jnp.sum((c[:, None, :] - pos[None, :, :]) ** 2, axis=-1)
        s = jax.nn.softmax(-d2 / jnp.asarray(temperature, v.dtype), axis=1)
        return jnp.sum(s[:, :servers] @ p) - jnp.sum(s[:, servers:] @ q)

    return phi


def lotto_game(customers: int = 9, servers: int = 3, *, temperature: float = 1.0,
               key: jax.Array | None = None) -> FunctionalGame:
    """Differentiable Lotto (`lotto_phi`) with `customers` customers drawn uniformly in
    the square [-1, 1]^2 by `key` (default `jax.random.key(0)`) and `servers` servers
    per agent. Domain: the mass in the simplex, server positions in [-1, 1]^2 (our
    choice of a bounded domain). Initial agents: uniform mass, positions N(0, 0.1^2)."""
    check_positive_int("lotto_game(customers=...)", customers)
    check_positive_int("lotto_game(servers=...)", servers)
    check_positive_float("lotto_game(temperature=...)", temperature)
    key = jax.random.key(0) if key is None else key
    cust = jax.random.uniform(key, (customers, 2), minval=-1, maxval=1)
    k = servers

    def project(v):
        return jnp.concatenate([project_simplex(v[:k]), jnp.clip(v[k:], -1, 1)])

    def sample(key, n):
        dt = jnp.result_type(float)
        x = 0.1 * jax.random.normal(key, (n, 2 * k), dt)
        return jnp.concatenate([jnp.full((n, k), 1 / k, dt), x], axis=1)

    return FunctionalGame("lotto", 3 * k, lotto_phi(cust, k, temperature), project, sample)


def blotto_phi(temperature: float = 0.05) -> Payoff:
    """A smoothed continuous Colonel Blotto: an agent is an allocation x in the simplex
    (the fraction of its soldiers on each of K fields) and the sign of `blotto_payoff`
    is replaced by tanh at `temperature` T,

        phi(x, y) = (1 / K) sum_k tanh((x_k - y_k) / T),

    the battlefield-share payoff (Roberson 2006) of the continuous game, made
    differentiable for gradient oracles (our relaxation; T -> 0 recovers sign)."""

    def phi(v, w):
        t = jnp.asarray(temperature, v.dtype)
        return jnp.mean(jnp.tanh((v - w) / t))

    return phi


def blotto_game(fields: int = 3, *, temperature: float = 0.05) -> FunctionalGame:
    """`blotto_phi` on `fields` battlefields; agents in the simplex (projected there),
    initial agents near the uniform allocation (Dirichlet(20))."""
    check_positive_int("blotto_game(fields=...)", fields)
    check_positive_float("blotto_game(temperature=...)", temperature)

    def sample(key, n):
        dt = jnp.result_type(float)
        return jax.random.dirichlet(key, jnp.full((fields,), 20.0, dt), (n,)).astype(dt)

    return FunctionalGame("blotto", fields, blotto_phi(temperature), project_simplex, sample)


# -------------------------------------------------------------------- meta-games


def evaluate(phi: Payoff | FunctionalGame, P: jax.Array, Q: jax.Array | None = None
             ) -> jax.Array:
    """The meta-game of two populations, A[i, j] = phi(P_i, Q_j) (vmapped), of shape
    (len(P), len(Q)); `Q=None` is the symmetric meta-game of P against itself.
    `phi` may be a `FunctionalGame`."""
    phi = phi.phi if isinstance(phi, FunctionalGame) else phi
    P = jnp.asarray(P)
    Q = P if Q is None else jnp.asarray(Q)
    if P.ndim != 2 or Q.ndim != 2:
        raise ValueError(f"evaluate: populations must be 2-D (agents, dim), got shapes "
                         f"{P.shape} and {Q.shape}")
    return jax.vmap(lambda v: jax.vmap(lambda w: phi(v, w))(Q))(P)
