"""Population training and its measures: the masked meta-game gives empty slots no
Nash mass, effective diversity and relative population performance on hand-computed
cases, each PSRO variant's new agents against a hand computation of its algorithm, and
clear errors."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given
from hypothesis import strategies as st

from innerloop.population._games import (
    disc_game,
    disc_phi,
    evaluate,
    rock_paper_scissors,
    transitive_game,
)
from innerloop.population._psro import (
    effective_diversity,
    masked_nash,
    psro,
    relative_performance,
)

ROOT = Path(__file__).resolve().parents[2]
DISC = disc_game()
_masked = jax.jit(masked_nash)
_diversity = jax.jit(effective_diversity)
_rpp = jax.jit(relative_performance, static_argnums=2)


def _linprog_value(a):
    a = np.asarray(a, np.float64)
    m, n = a.shape
    res = scipy.optimize.linprog(
        np.r_[np.zeros(m), -1.0], A_ub=np.c_[-a.T, np.ones(n)], b_ub=np.zeros(n),
        A_eq=np.r_[np.ones(m), 0.0][None], b_eq=[1.0],
        bounds=[(0, None)] * m + [(None, None)], method="highs")
    return -res.fun


def _tol(dtype):
    return 1e-3 if dtype == jnp.float32 else 1e-5


def test_masked_nash_gives_empty_slots_exactly_zero_mass():
    dt = jnp.result_type(float)
    # RPS in the first three slots; the masked slots would dominate if they played.
    a = jnp.zeros((5, 5), dt).at[:3, :3].set(rock_paper_scissors(dt))
    a = a.at[3, :].set(5.0).at[:, 4].set(-5.0)
    mask = jnp.asarray([True, True, True, False, False])
    eq = _masked(a, mask, mask)
    row, col = np.asarray(eq.row), np.asarray(eq.col)
    assert (row[3:] == 0).all() and (col[3:] == 0).all()
    np.testing.assert_allclose(row[:3], 1 / 3, atol=_tol(dt))
    np.testing.assert_allclose(col[:3], 1 / 3, atol=_tol(dt))
    assert abs(float(eq.value)) < _tol(dt) and float(eq.exploitability) < _tol(dt)
    # Transitive game without its strongest agent: the Nash is pure on the next one.
    t = transitive_game(5, dtype=dt)
    keep = jnp.asarray([True, True, True, False, False])
    eq = _masked(t, keep, keep)
    np.testing.assert_allclose(np.asarray(eq.row), [0, 0, 1, 0, 0], atol=_tol(dt))


@given(seed=st.integers(0, 2**31 - 1), keep=st.lists(st.booleans(), min_size=6,
                                                     max_size=6).filter(any))
def test_masked_nash_value_is_the_restricted_games_value(seed, keep):
    dt = jnp.result_type(float)
    a = jax.random.uniform(jax.random.key(seed), (6, 6), dt, minval=-1, maxval=1)
    rows = np.asarray(keep)
    cols = np.roll(rows, 1)
    eq = _masked(a, jnp.asarray(rows), jnp.asarray(cols))
    exact = _linprog_value(np.asarray(a)[rows][:, cols])
    assert float(eq.value) == pytest.approx(exact, abs=_tol(dt))
    assert (np.asarray(eq.row)[~rows] == 0).all() and (np.asarray(eq.col)[~cols] == 0).all()


def test_effective_diversity_by_hand():
    dt = jnp.result_type(float)
    keep3 = jnp.asarray([True, True, True, False, False])
    # RPS: p uniform, relu(A) has three ones: d = 3 / 9. Two empty slots whose payoffs
    # would matter if they were played.
    a = jnp.full((5, 5), 3.0, dt).at[:3, :3].set(rock_paper_scissors(dt))
    assert float(_diversity(a, keep3)) == pytest.approx(1 / 3, abs=_tol(dt))
    # Transitive: the Nash is pure on the best agent, which beats but is not beaten
    # by itself: d = relu(A)[n-1, n-1] = 0.
    t = transitive_game(5, dtype=dt)
    assert float(_diversity(t, jnp.ones(5, bool))) == pytest.approx(0, abs=_tol(dt))
    with pytest.raises(ValueError, match="effective_diversity: needs the square"):
        effective_diversity(jnp.zeros((2, 3), dt))
    with pytest.raises(ValueError, match="effective_diversity: payoff contains NaN"):
        effective_diversity(jnp.full((2, 2), jnp.nan, dt))


@given(seed=st.integers(0, 2**31 - 1))
def test_relative_performance_in_the_disc_game(seed):
    dt = jnp.result_type(float)
    # By hand: phi((1, 0), (0, -1)) = v_2 w_1 - v_1 w_2 = 0 - (1)(-1) = 1.
    P, Q = jnp.asarray([[1.0, 0.0]], dt), jnp.asarray([[0.0, -1.0]], dt)
    assert float(_rpp(P, Q, disc_phi)) == pytest.approx(1.0, abs=_tol(dt))
    # A population whose convex hull holds the origin never loses (it can play the
    # mixture at the origin), and v(P, Q) = -v(Q, P).
    k1, k2 = jax.random.split(jax.random.key(seed))
    R = jax.random.uniform(k1, (3, 2), dt, minval=-1, maxval=1)
    S = jax.random.uniform(k2, (3, 2), dt, minval=-1, maxval=1)
    S = S.at[2].set(-(S[0] + S[1]) / 2)  # the origin is the mean of the three
    assert float(_rpp(R, S, disc_phi)) <= _tol(dt)
    assert float(_rpp(R, S, disc_phi)) == pytest.approx(-float(_rpp(S, R, disc_phi)),
                                                        abs=2 * _tol(dt))
    # Generic populations: the value of the meta-game, against an LP.
    k3, k4 = jax.random.split(k1)
    U = jax.random.uniform(k3, (4, 2), dt, minval=-1, maxval=1)
    V = jax.random.uniform(k4, (3, 2), dt, minval=-1, maxval=1)
    assert float(_rpp(U, V, disc_phi)) == pytest.approx(
        _linprog_value(evaluate(disc_phi, U, V)), abs=10 * _tol(dt))


# One iteration of each variant from the same three agents (shapes shared by the
# tests below): b = (0, 0.1) beats a = (0.2, 0) and z = (0.05, 0); a and z tie.
# Slots: b, z, a (a the newest). Oracle: 2 steps of 0.5, no projection needed.
_B, _Z, _A = [0.0, 0.1], [0.05, 0.0], [0.2, 0.0]


def _run(init, variant, capacity=6):
    return psro(DISC, jnp.asarray(init, jnp.result_type(float)), variant=variant,
                iterations=1, capacity=capacity, steps=2, lr=0.5)


def _ascent(v, g):
    """Two steps of 0.5 along the constant gradient [[0, -1], [1, 0]] g (disc_phi is
    linear in v): v + A g."""
    return np.asarray(v) + np.asarray([-g[1], g[0]])


@pytest.mark.parametrize("variant, expected", [
    ("self_play", _ascent(_A, _A)),   # the newest agent against itself
    ("psro_n", _ascent(_A, _B)),      # the newest agent against the Nash mixture (b)
    ("psro_rn", _ascent(_B, _B)),     # the support (b) against those it beats or ties
])
def test_each_variant_adds_its_algorithms_agent(variant, expected):
    res = _run([_B, _Z, _A], variant)
    tol = _tol(jnp.result_type(float))
    np.testing.assert_allclose(np.asarray(res.agents[:3]), [_B, _Z, _A], atol=1e-7)
    np.testing.assert_allclose(np.asarray(res.agents[3]), expected, atol=tol)
    assert np.asarray(res.sizes).tolist() == [3, 4] and int(res.count) == 4
    assert int(res.dropped) == 0
    nash = np.asarray(res.nash)
    assert (nash[4:] == 0).all() and (np.asarray(res.agents[4:]) == 0).all()
    assert nash.sum() == pytest.approx(1.0, abs=1e-6)


def _triangle():
    angles = np.deg2rad([90.0, 210.0, 330.0])
    return 0.1 * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_psro_rn_trains_every_support_agent_and_psro_n_stalls_at_the_origin():
    """Three agents a third of a turn apart: the Nash is uniform, its mixture is the
    origin. PSRO-rN adds one agent per support agent, each trained against itself and
    the agent it beats (the one behind it), weight 1/3 each; PSRO-N's gradient
    A (sum_j p_j v_j) = 0, so it adds a copy of the newest agent."""
    tri = _triangle()
    tol = _tol(jnp.result_type(float))
    rn = _run(tri, "psro_rn")
    assert np.asarray(rn.sizes).tolist() == [3, 6]
    expected = [_ascent(tri[i], (tri[i] + tri[i - 1]) / 3) for i in range(3)]
    new = np.asarray(rn.agents[3:])  # in the order of their Nash mass: sort to compare
    np.testing.assert_allclose(new[np.argsort(new[:, 0])],
                               np.asarray(expected)[np.argsort(np.asarray(expected)[:, 0])],
                               atol=tol)
    # Effective diversity: p = 1/3 and each agent beats one other by
    # phi = 0.01 sin(120 deg): d = 3 * (1/9) * 0.01 sin(120 deg).
    assert float(rn.diversity[0]) == pytest.approx(0.01 * np.sin(np.deg2rad(120)) / 3,
                                                   abs=tol * 0.01)
    n = _run(tri, "psro_n")
    np.testing.assert_allclose(np.asarray(n.agents[3]), tri[2], atol=tol)


def test_new_agents_beyond_capacity_are_dropped_and_counted():
    res = _run(_triangle(), "psro_rn", capacity=4)
    assert int(res.count) == 4 and int(res.dropped) == 2
    assert np.asarray(res.sizes).tolist() == [3, 4]


def test_psro_errors_are_clear():
    init = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="psro: unknown variant 'psro'"):
        psro(DISC, init, variant="psro")
    with pytest.raises(ValueError, match="psro: capacity must be an integer >= 1"):
        psro(DISC, init, capacity=0)
    with pytest.raises(ValueError, match="psro: init must hold at least one agent"):
        psro(DISC, jnp.zeros((0, 2)))
    with pytest.raises(ValueError, match="psro: init contains NaN"):
        psro(DISC, jnp.asarray([[0.1, jnp.nan]]))
    with pytest.raises(ValueError, match="psro: capacity 1 is smaller"):
        psro(DISC, jnp.zeros((2, 2)), capacity=1)
    with pytest.raises(ValueError, match="the disc game's agents have length 2"):
        psro(DISC, jnp.zeros((1, 3)))


@pytest.mark.slow
def test_open_ended_experiment_quick(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import open_ended

    out = tmp_path / "open_ended.md"
    assert open_ended.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "does NOT hold" not in text.split("Claims:")[1]
    assert (tmp_path / "open_ended.png").exists()
