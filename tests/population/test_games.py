"""The games: matrix games' known entries and values, functional-form games'
antisymmetry and domains, and the meta-game `evaluate` builds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given
from hypothesis import strategies as st

from innerloop.population._games import (
    blotto_allocations,
    blotto_game,
    blotto_payoff,
    blotto_phi,
    disc_game,
    disc_phi,
    evaluate,
    lotto_game,
    random_zero_sum,
    rock_paper_scissors,
    transitive_cyclic_game,
    transitive_game,
)

DISC, LOTTO, BLOTTO = disc_game(), lotto_game(customers=5, servers=2), blotto_game(3)
GAMES = {"disc": DISC, "lotto": LOTTO, "blotto": BLOTTO}


def _linprog_value(a):
    """The value of max_x min_y x^T A y by scipy's LP (an independent solver)."""
    a = np.asarray(a, np.float64)
    m, n = a.shape
    # Variables (x, v): maximise v s.t. v <= (A^T x)_j, sum x = 1, x >= 0.
    res = scipy.optimize.linprog(
        np.r_[np.zeros(m), -1.0], A_ub=np.c_[-a.T, np.ones(n)], b_ub=np.zeros(n),
        A_eq=np.r_[np.ones(m), 0.0][None], b_eq=[1.0],
        bounds=[(0, None)] * m + [(None, None)], method="highs")
    assert res.success
    return -res.fun, res.x[:m]


def test_rock_paper_scissors_entries_and_value():
    a = np.asarray(rock_paper_scissors())
    # Paper (row 1) beats rock (column 0), rock beats scissors, scissors beats paper.
    assert a[1, 0] == 1 and a[0, 2] == 1 and a[2, 1] == 1
    np.testing.assert_array_equal(a, -a.T)
    value, x = _linprog_value(a)
    assert abs(value) < 1e-9
    np.testing.assert_allclose(x, np.full(3, 1 / 3), atol=1e-9)


def test_transitive_game_is_strength_differences():
    np.testing.assert_array_equal(np.asarray(transitive_game(3)),
                                  [[0, -1, -2], [1, 0, -1], [2, 1, 0]])
    value, x = _linprog_value(transitive_game(4))
    assert abs(value) < 1e-9 and x[3] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="transitive_game: strengths"):
        transitive_game(3, strengths=[1.0, 2.0])


def test_transitive_cyclic_game_components():
    key = jax.random.key(3)
    trans = np.asarray(transitive_cyclic_game(key, 5, cyclic=0.0))
    cyc = np.asarray(transitive_cyclic_game(key, 5, transitive=0.0, rank=1))
    both = np.asarray(transitive_cyclic_game(key, 5, rank=1))
    np.testing.assert_allclose(both, trans + cyc, atol=1e-6)
    for a in (trans, cyc, both):
        np.testing.assert_allclose(a, -a.T, atol=1e-6)
    # Transitive: A[i, j] = f_i - f_j has rank 2 with A[i, j] + A[j, k] = A[i, k];
    # the rank-1 cyclic part is u w^T - w u^T (rank 2) and not additive like that.
    np.testing.assert_allclose(trans[0, 1] + trans[1, 2], trans[0, 2], atol=1e-5)
    assert np.linalg.matrix_rank(cyc, tol=1e-5) == 2
    assert abs(cyc[0, 1] + cyc[1, 2] - cyc[0, 2]) > 1e-3


def test_random_zero_sum_shape_range_and_dtype():
    a = random_zero_sum(jax.random.key(0), 4, 7)
    assert a.shape == (4, 7) and a.dtype == jnp.result_type(float)
    assert float(jnp.max(jnp.abs(a))) <= 1.0
    # Uniform on [-1, 1]: both signs near the ends, mean near 0, keys give new games.
    big = np.asarray(random_zero_sum(jax.random.key(1), 64, 64), np.float64)
    assert big.min() < -0.95 and big.max() > 0.95 and abs(big.mean()) < 0.05
    assert abs(big.std() - 1 / np.sqrt(3)) < 0.02
    assert not np.allclose(big, np.asarray(random_zero_sum(jax.random.key(2), 64, 64)))
    with pytest.raises(ValueError, match="random_zero_sum"):
        random_zero_sum(jax.random.key(0), 0, 3)


def test_blotto_allocations_count_and_sums():
    alloc = blotto_allocations(5, 3)
    assert alloc.shape == (21, 3)  # C(7, 2)
    assert (alloc.sum(1) == 5).all() and len({tuple(r) for r in alloc}) == 21
    np.testing.assert_array_equal(alloc[0], [5, 0, 0])


def test_blotto_payoff_known_entries_and_values():
    alloc = [tuple(r) for r in blotto_allocations(4, 3)]
    a = np.asarray(blotto_payoff(4, 3))
    np.testing.assert_array_equal(a, -a.T)
    # (2, 1, 1) vs (4, 0, 0): loses field 1, wins 2 and 3 -> (2 - 1) / 3.
    assert a[alloc.index((2, 1, 1)), alloc.index((4, 0, 0))] == pytest.approx(1 / 3)
    # (2, 2, 0) vs (1, 1, 2): wins two fields, loses one.
    assert a[alloc.index((2, 2, 0)), alloc.index((1, 1, 2))] == pytest.approx(1 / 3)
    value, x = _linprog_value(a)
    assert abs(value) < 1e-9
    # Every pure allocation is exploitable (the game is nontransitive), so the
    # equilibrium mixes.
    assert (a.min(axis=1) < 0).all() and (x > 1e-6).sum() >= 2
    # Asymmetric forces, by hand: 2 soldiers vs 1 on 2 fields. (1, 1) wins one field
    # and ties the other against either reply; nothing does better: value 1/2.
    b = np.asarray(blotto_payoff(2, 2, opponent_soldiers=1))
    np.testing.assert_allclose(b, [[0.5, 0.0], [0.5, 0.5], [0.0, 0.5]])
    assert _linprog_value(b)[0] == pytest.approx(0.5)


def test_disc_phi_by_hand():
    v, w = jnp.asarray([1.0, 0.0]), jnp.asarray([0.0, 1.0])
    # v^T [[0, -1], [1, 0]] w = v^T (-w_2, w_1) = -1: w is a quarter turn ahead of v.
    assert float(disc_phi(v, w)) == -1.0 and float(disc_phi(w, v)) == 1.0


@jax.jit(static_argnums=0)
def _draw(game, key):
    """Agents sampled, projected, moved at random and projected, and their meta-game."""
    k1, k2 = jax.random.split(key)
    agents = game.sample(k1, 6)
    moved = jax.vmap(game.project)(agents + jax.random.normal(k2, agents.shape,
                                                              agents.dtype))
    return (agents, jax.vmap(game.project)(agents), moved, jax.vmap(game.project)(moved),
            evaluate(game, moved))


@pytest.mark.parametrize("name", GAMES)
@given(seed=st.integers(0, 2**31 - 1))
def test_functional_games_are_antisymmetric_with_agents_in_the_domain(name, seed):
    game = GAMES[name]
    agents, projected, moved, reprojected, a = map(np.asarray,
                                                   _draw(game, jax.random.key(seed)))
    assert agents.shape == (6, game.dim) and agents.dtype == jnp.result_type(float)
    np.testing.assert_allclose(a, -a.T, atol=1e-5)
    np.testing.assert_allclose(np.diag(a), 0, atol=1e-6)
    # Sampled agents lie in the domain; the projection lands there and is idempotent.
    np.testing.assert_allclose(projected, agents, atol=1e-5)
    np.testing.assert_allclose(reprojected, moved, atol=1e-5)
    if name == "disc":
        assert np.linalg.norm(moved, axis=1).max() <= 1 + 1e-6
    else:
        k = game.dim if name == "blotto" else 2
        np.testing.assert_allclose(moved[:, :k].sum(1), 1, atol=1e-5)
        assert moved[:, :k].min() >= 0
        if name == "lotto":
            assert np.abs(moved[:, k:]).max() <= 1


def test_evaluate_is_the_pairwise_payoff():
    rng = np.random.default_rng(0)
    P, Q = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
    a = np.asarray(evaluate(disc_phi, jnp.asarray(P), jnp.asarray(Q)))
    # phi(v, w) = v_2 w_1 - v_1 w_2 for every pair.
    np.testing.assert_allclose(a, np.outer(P[:, 1], Q[:, 0]) - np.outer(P[:, 0], Q[:, 1]),
                               rtol=1e-5, atol=1e-6)
    sym = np.asarray(evaluate(DISC, jnp.asarray(P)))
    assert sym.shape == (3, 3)
    np.testing.assert_allclose(sym, np.outer(P[:, 1], P[:, 0]) - np.outer(P[:, 0], P[:, 1]),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="evaluate: populations must be 2-D"):
        evaluate(DISC, jnp.zeros(2))


def test_lotto_by_hand():
    """One customer at the origin, one server each: the nearer agent's server takes
    the larger softmax share; phi = (a - b) with (a, b) = softmax(-d_v^2, -d_w^2)."""
    from innerloop.population._games import lotto_phi

    phi = lotto_phi(jnp.zeros((1, 2)), 1)
    v = jnp.asarray([1.0, 0.5, 0.0])   # mass 1 at distance 0.5
    w = jnp.asarray([1.0, 0.0, 1.0])   # mass 1 at distance 1
    a, b = np.exp(-0.25), np.exp(-1.0)
    assert float(phi(v, w)) == pytest.approx((a - b) / (a + b), rel=1e-5)


def test_blotto_phi_by_hand():
    """phi(x, y) = mean_k tanh((x_k - y_k) / T): differences (0.1, 0.2, -0.3) at T = 0.05
    give (tanh 2 + tanh 4 - tanh 6) / 3."""
    dt = jnp.result_type(float)
    x = jnp.asarray([0.5, 0.4, 0.1], dt)
    y = jnp.asarray([0.4, 0.2, 0.4], dt)
    expected = (np.tanh(2.0) + np.tanh(4.0) - np.tanh(6.0)) / 3
    assert float(blotto_phi(0.05)(x, y)) == pytest.approx(expected, abs=1e-5)
