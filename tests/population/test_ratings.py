"""Ratings: Nash averaging (OpenSpiel's golden cases and its output as an oracle), Elo and
mElo_2k (the update rules, transitive recovery, cycles), Bradley-Terry (scipy's fit,
finite-difference gradients) and alpha-Rank (OpenSpiel's output, selection strength)."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import assume, given
from hypothesis import strategies as st

from innerloop.population._ratings import (
    alpharank,
    bradley_terry,
    elo,
    melo,
    nash_averaging,
    omega,
)

# Shared jitted functions: one compile per shape for the whole module.
NA = jax.jit(nash_averaging)
NA_VMAP = jax.jit(jax.vmap(nash_averaging))
NA_AVT = jax.jit(lambda s: nash_averaging(s, agent_vs_task=True))
ELO = jax.jit(elo, static_argnames=("num_agents", "k_factor"))
MELO = jax.jit(melo, static_argnames=("num_agents", "k"))
ALPHARANK = jax.jit(alpharank, static_argnames=("m",))

TRANSITIVE = np.array([[0.0, -1.0, -1.0], [1.0, 0.0, -1.0], [1.0, 1.0, 0.0]])
RPS = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
# OpenSpiel's nash_averaging_test: one dominant agent (AvA) ...
GAME0 = np.array([[0.0, 234.0, 34.0, -270.0], [-234.0, 0.0, -38.0, -464.0],
                  [-34.0, 38.0, 0.0, -270.0], [270.0, 464.0, 270.0, 0.0]])
# ... and agents vs tasks with two copies of the dominant agent.
GAME2 = np.array([[0.0, 0.0, 0.0], [1.0, 10.0, 100.0], [2.0, 20.0, 200.0],
                  [3.0, 30.0, 300.0], [3.0, 30.0, 300.0]])


def _f(x):
    """The session's default float dtype (float64 under --strict-dtypes)."""
    return jnp.asarray(x, jnp.result_type(float))


def _antisymmetric(seed, n):
    b = np.random.default_rng(seed).normal(size=(n, n))
    return b - b.T


# ------------------------------------------------------------------ Nash averaging


def test_nash_averaging_golden_transitive_and_rps_under_vmap():
    out = NA_VMAP(_f(np.stack([TRANSITIVE, RPS])))
    tol = 1e-4 if out.agents.dtype == jnp.float32 else 1e-8
    np.testing.assert_allclose(out.agents[0], [0, 0, 1], atol=tol)
    np.testing.assert_allclose(out.skill[0], [-1, -1, 0], atol=tol)
    np.testing.assert_allclose(out.agents[1], [1 / 3] * 3, atol=tol)
    np.testing.assert_allclose(out.skill[1], [0, 0, 0], atol=tol)
    assert bool(jnp.all(out.converged)) and bool(jnp.all(out.exploitability <= 10 * tol))


def test_nash_averaging_dominated_agents_get_zero_mass():
    out = NA(_f(GAME0))
    tol = 1e-4 if out.agents.dtype == jnp.float32 else 1e-8
    np.testing.assert_allclose(out.agents, [0, 0, 0, 1], atol=tol)
    assert bool(out.converged)


def test_nash_averaging_cloned_dominant_agent_splits_its_mass():
    # The transitive game with agent 2 cloned: the copies share the mass equally.
    idx = [0, 1, 2, 2]
    out = NA(_f(TRANSITIVE[np.ix_(idx, idx)]))
    tol = 1e-4 if out.agents.dtype == jnp.float32 else 1e-8
    np.testing.assert_allclose(out.agents, [0, 0, 0.5, 0.5], atol=tol)
    np.testing.assert_allclose(out.skill, [-1, -1, 0, 0], atol=tol)


@given(seed=st.integers(0, 2**31 - 1), copies=st.lists(st.integers(0, 3), min_size=2,
                                                     max_size=2))
def test_nash_averaging_invariant_to_redundant_copies(seed, copies, x64):
    """Adding copies of agents leaves every Nash-averaged skill unchanged and splits each
    agent's mass among its copies (Balduzzi et al. 2018, section 4)."""
    a = _antisymmetric(seed, 4)
    idx = [0, 1, 2, 3, *copies]
    base, big = NA(_f(a)), NA(_f(a[np.ix_(idx, idx)]))
    tol = 1e-7
    assert bool(base.converged) and bool(big.converged)
    np.testing.assert_allclose(big.skill, np.asarray(base.skill)[idx], atol=tol)
    mass = np.zeros(4)
    np.add.at(mass, idx, np.asarray(big.agents))
    np.testing.assert_allclose(mass, base.agents, atol=tol)
    for i in range(4):  # the copies of one agent share its mass equally
        shares = np.asarray(big.agents)[[k for k, j in enumerate(idx) if j == i]]
        np.testing.assert_allclose(shares, shares[0], atol=tol)


@given(seed=st.integers(0, 2**31 - 1))
def test_nash_averaging_matches_openspiel(seed, x64):
    """OpenSpiel's `nash_averaging` (cvxpy) as the oracle on random 6x6 antisymmetric
    games, to cvxpy's accuracy."""
    try:
        import pyspiel
        from open_spiel.python.algorithms.nash_averaging import nash_averaging as os_na
    except ImportError:
        pytest.skip("open_spiel does not import")
    import cvxpy

    a = _antisymmetric(seed, 6)
    try:
        p, values = os_na(pyspiel.create_matrix_game(a, -a))
    except cvxpy.error.SolverError:
        assume(False)  # cvxpy's own solver failed on this game
    out = NA(_f(a))
    tol = 1e-5
    np.testing.assert_allclose(out.agents, p.ravel(), atol=tol)
    np.testing.assert_allclose(out.skill, values.ravel(), atol=tol)


def test_nash_averaging_agent_vs_task_golden():
    # OpenSpiel's game2: agents 0-2 dominated (zero mass), the two copies of the
    # dominant agent share the mass and have equal skill.
    out = NA_AVT(_f(GAME2))
    # float32: the dominated agents' payoff gaps are 1/300 of the scale.
    tol = 2e-3 if out.agents.dtype == jnp.float32 else 1e-7
    np.testing.assert_allclose(out.agents, [0, 0, 0, 0.5, 0.5], atol=tol)
    assert abs(float(out.skill[3] - out.skill[4])) <= tol
    # float32 stalls above the 1e-6 stopping test on this badly scaled game.
    assert bool(out.converged) or out.agents.dtype == jnp.float32
    assert float(out.exploitability) <= 1e3 * tol


@given(seed=st.integers(0, 2**31 - 1))
def test_nash_averaging_agent_vs_task_matches_openspiel(seed, x64):
    """OpenSpiel's agent-vs-task Nash averaging on 5 agents x 3 tasks, scores already
    in [0, 1] per task (OpenSpiel's normalisation is then the identity)."""
    try:
        from open_spiel.python.algorithms.nash_averaging import nash_averaging_avt_matrix
    except ImportError:
        pytest.skip("open_spiel does not import")
    import cvxpy

    s = np.random.default_rng(seed).uniform(size=(5, 3))
    s = (s - s.min(0)) / (s.max(0) - s.min(0))
    try:
        (pa, pe), (skill, difficulty) = nash_averaging_avt_matrix(s)
    except cvxpy.error.SolverError:
        assume(False)
    out = NA_AVT(_f(s))
    # OpenSpiel's cvxpy solve is accurate to a few 1e-5 (seed 15683828: its task mix is
    # 4.4e-5 from the exact uniform one, whose entropy is log 3).
    tol = 1e-4
    np.testing.assert_allclose(out.agents, pa.ravel(), atol=tol)
    np.testing.assert_allclose(out.tasks, pe.ravel(), atol=tol)
    np.testing.assert_allclose(out.skill, skill.ravel(), atol=tol)
    np.testing.assert_allclose(out.difficulty, difficulty.ravel(), atol=tol)


def test_nash_averaging_float32_stays_float32():
    out = NA(jnp.asarray(TRANSITIVE, jnp.float32))
    assert out.agents.dtype == jnp.float32 and out.skill.dtype == jnp.float32
    np.testing.assert_allclose(out.agents, [0, 0, 1], atol=1e-4)


# -------------------------------------------------------------------- Elo / mElo


def _play(p, games, seed):
    """Random pairings i != j and outcomes ~ Bernoulli(p[i, j])."""
    rng = np.random.default_rng(seed)
    n = p.shape[0]
    i = rng.integers(0, n, games)
    j = (i + rng.integers(1, n, games)) % n
    return np.stack([i, j], 1).astype(np.int32), (rng.uniform(size=games) < p[i, j]) * 1.0


def _elo_numpy(matches, outcomes, n, k):
    r = np.zeros(n)
    preds = []
    for (i, j), s in zip(matches, outcomes):
        p = 1 / (1 + 10 ** (-(r[i] - r[j]) / 400))
        preds.append(p)
        r[i] += k * (s - p)
        r[j] -= k * (s - p)
    return r, np.array(preds)


def _melo_numpy(matches, outcomes, c0, lr_r, lr_c):
    n, d = c0.shape
    om = np.zeros((d, d))
    for b in range(d // 2):
        om[2 * b, 2 * b + 1], om[2 * b + 1, 2 * b] = 1, -1
    r, c, preds = np.zeros(n), np.array(c0, np.float64), []
    for (i, j), s in zip(matches, outcomes):
        p = 1 / (1 + 10 ** (-(r[i] - r[j] + c[i] @ om @ c[j]) / 400))
        preds.append(p)
        ci, cj = c[i].copy(), c[j].copy()
        r[i] += lr_r * (s - p)
        r[j] -= lr_r * (s - p)
        c[i] += lr_c * (s - p) * om @ cj
        c[j] -= lr_c * (s - p) * om @ ci
    return r, c, np.array(preds)


def test_elo_and_melo_updates_equal_a_numpy_statement_of_the_rules():
    matches, outcomes = _play(np.full((4, 4), 0.5), 64, seed=1)
    out = ELO(matches, _f(outcomes), num_agents=4, k_factor=24.0)
    r, preds = _elo_numpy(matches, outcomes, 4, 24.0)
    tol = 1e-3 if out.ratings.dtype == jnp.float32 else 1e-9
    np.testing.assert_allclose(out.ratings, r, atol=tol)
    np.testing.assert_allclose(out.predictions, preds, atol=tol)
    key = jax.random.key(3)
    m = MELO(matches, _f(outcomes), num_agents=4, k=2, key=key)
    c0 = 4.0 * jax.random.normal(key, (4, 4), m.vectors.dtype)
    r, c, preds = _melo_numpy(matches, outcomes, np.asarray(c0, np.float64), 16.0, 1.0)
    np.testing.assert_allclose(m.ratings, r, atol=tol * 10)
    np.testing.assert_allclose(m.vectors, c, atol=tol * 10)
    np.testing.assert_allclose(m.predictions, preds, atol=tol)
    np.testing.assert_allclose(omega(2), [[0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1],
                                          [0, 0, -1, 0]])


def test_elo_recovers_transitive_strengths():
    strength = np.array([0.0, 200.0, 400.0, 800.0])
    p = 1 / (1 + 10 ** (-(strength[:, None] - strength[None, :]) / 400))
    matches, outcomes = _play(p, 20000, seed=0)
    out = ELO(jnp.asarray(matches), _f(outcomes), num_agents=4, k_factor=8.0)
    r = np.asarray(out.ratings)
    assert list(np.argsort(r)) == [0, 1, 2, 3]
    # Online Elo's noise at K = 8 is ~ K sqrt(K ln10/1600) ~ 30 points per agent.
    np.testing.assert_allclose(r - r.mean(), strength - strength.mean(), atol=100)


def test_melo_predicts_cycles_that_elo_cannot():
    """On rock-paper-scissors play (each beats the next with probability 0.9),
    mElo_2's online log-loss is below Elo's, and Elo's is no better than chance."""
    p = np.array([[0.5, 0.1, 0.9], [0.9, 0.5, 0.1], [0.1, 0.9, 0.5]])
    matches, outcomes = _play(p, 4000, seed=0)
    e = ELO(matches, _f(outcomes), num_agents=3, k_factor=16.0)
    m = MELO(matches, _f(outcomes), num_agents=3, k=1, key=jax.random.key(0))

    def logloss(pred):
        q = np.clip(np.asarray(pred, np.float64)[2000:], 1e-9, 1 - 1e-9)
        o = outcomes[2000:]
        return -np.mean(o * np.log(q) + (1 - o) * np.log(1 - q))

    assert logloss(m.predictions) < logloss(e.predictions) - 0.1
    assert logloss(e.predictions) > np.log(2) - 0.02
    probs = np.asarray(m.probabilities())
    assert probs[0, 2] > 0.8 and probs[1, 0] > 0.8 and probs[2, 1] > 0.8


# --------------------------------------------------------------- Bradley-Terry


BT_TOL = 1e-12
BT = jax.jit(lambda w: bradley_terry(w, tol=BT_TOL).value)


def _wins(seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 20, size=(5, 5)).astype(np.float64)
    np.fill_diagonal(w, 0)
    return w


@given(seed=st.integers(0, 2**31 - 1))
def test_bradley_terry_equals_scipys_fit(seed, x64):
    w = _wins(seed)

    def loss(s):  # the same objective in NumPy
        d = s[:, None] - s[None, :]
        return np.sum(w * np.logaddexp(0, -d)) + 0.5 * 1e-2 * s @ s

    def grad(s):
        q = w * (1 / (1 + np.exp(s[:, None] - s[None, :])))
        return -q.sum(1) + q.sum(0) + 1e-2 * s

    ref = scipy.optimize.minimize(loss, np.zeros(5), jac=grad, method="BFGS",
                                  options=dict(gtol=1e-11))
    np.testing.assert_allclose(BT(jnp.asarray(w)), ref.x, atol=1e-7)


BT_GRAD = jax.jit(jax.grad(lambda w, v: BT(w) @ v))


@given(seed=st.integers(0, 2**31 - 1))
def test_bradley_terry_gradient_matches_finite_differences(seed, x64):
    """d(v . s*)/dW by the implicit function theorem against central differences in
    float64 along a random direction of the win counts."""
    rng = np.random.default_rng(seed)
    w, v, e = jnp.asarray(_wins(seed)), jnp.asarray(rng.normal(size=5)), rng.normal(size=(5, 5))
    g = BT_GRAD(w, v)
    h = 1e-5
    fd = (BT(w + h * e) @ v - BT(w - h * e) @ v) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(g * e)), float(fd), rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------- alpha-Rank


@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([0.1, 0.5, 1.0]))
def test_alpharank_matches_openspiel(seed, alpha):
    """One population (a general 4x4 symmetric game, not constant-sum: the paper's
    product formula) and two populations (3x4 bimatrix), against OpenSpiel's
    `compute(..., use_local_selection_model=False)` with the same alpha and m."""
    try:
        from open_spiel.python.egt import alpharank as os_alpharank
    except ImportError:
        pytest.skip("open_spiel does not import")
    rng = np.random.default_rng(seed)
    m_single, a, b = rng.normal(size=(4, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    # alpha <= 1: OpenSpiel's eigenvectors of C are accurate; at larger alpha its
    # diagonal 1 - sum(rates) rounds the small rates away (next test).
    tol = 1e-4 if jnp.result_type(float) == jnp.float32 else 1e-9
    try:
        rho, _, pi, _, _ = os_alpharank.compute([m_single], m=20, alpha=alpha,
                                                use_local_selection_model=False)
    except ValueError:
        assume(False)  # OpenSpiel's eigensolver found no unique stationary vector
    out = ALPHARANK(_f(m_single), alpha=alpha, m=20)
    np.testing.assert_allclose(out.stationary, pi, atol=tol)
    np.testing.assert_allclose(out.fixation, rho, atol=tol)
    np.testing.assert_allclose(out.transition.sum(1), 1, atol=tol)
    try:
        rho, _, pi, _, _ = os_alpharank.compute([a, b], m=20, alpha=alpha)
    except ValueError:
        assume(False)
    out = ALPHARANK((_f(a), _f(b)), alpha=alpha, m=20)
    np.testing.assert_allclose(np.asarray(out.stationary).ravel(), pi, atol=tol)
    np.testing.assert_allclose(out.fixation, rho, atol=tol)


def _alpharank_decimal(payoff, alpha, m, digits=80):
    """The single-population stationary distribution in 80-digit decimal arithmetic:
    the paper's fixation probabilities, C, and (I - C^T + 1 1^T) pi = 1 by elimination."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = digits
        n, al = len(payoff), Decimal(alpha)
        a = [[Decimal(float(v)) for v in row] for row in payoff]

        def rho(r, s):
            total, t = Decimal(0), Decimal(1)
            for p in range(1, m):
                fr = ((p - 1) * a[r][r] + (m - p) * a[r][s]) / (m - 1)
                fs = ((m - p - 1) * a[s][s] + p * a[s][r]) / (m - 1)
                t *= (-al * (fr - fs)).exp()
                total += t
            return 1 / (1 + total)

        c = [[rho(r, s) / (n - 1) if r != s else Decimal(0) for r in range(n)]
             for s in range(n)]
        for s in range(n):
            c[s][s] = 1 - sum(c[s])
        aug = [[int(i == j) - c[j][i] + 1 for j in range(n)] + [Decimal(1)] for i in range(n)]
        for k in range(n):
            piv = max(range(k, n), key=lambda i: abs(aug[i][k]))
            aug[k], aug[piv] = aug[piv], aug[k]
            for i in range(n):
                if i != k:
                    f = aug[i][k] / aug[k][k]
                    aug[i] = [x - f * y for x, y in zip(aug[i], aug[k])]
        return np.array([float(aug[i][n] / aug[i][i]) for i in range(n)])


def test_alpharank_is_exact_where_openspiel_rounds(x64):
    """At alpha = 5 the rates span 50 orders of magnitude: alpha-Rank's state reduction
    keeps every mass to 1e-6 relative (against 80-digit arithmetic), where OpenSpiel's
    eigenvector gives 1.5e-7 for a mass of 7.2e-19 (this game, seed 134)."""
    payoff = np.random.default_rng(134).normal(size=(4, 4))
    ref = _alpharank_decimal(payoff, 5.0, 20)
    out = np.asarray(ALPHARANK(_f(payoff), alpha=5.0, m=20).stationary)
    assert ref.min() < 1e-50  # the regime this test is about
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=0)


def test_alpharank_mass_goes_to_the_dominant_strategy_as_alpha_grows():
    mass = [float(ALPHARANK(_f(TRANSITIVE), alpha=a, m=50).stationary[2])
            for a in (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)]
    assert all(x < y for x, y in zip(mass[:3], mass[1:4])), mass
    # At alpha = 100 the fixation probabilities underflow (e^-1000): still exact.
    assert mass[0] < 0.5 and mass[-2] > 1 - 1e-6 and mass[-1] == 1.0, mass


# ---------------------------------------------------------------------- errors


def test_errors_name_the_callee_and_what_to_do():
    with pytest.raises(ValueError, match=r"^nash_averaging: a symmetric game needs a square"):
        nash_averaging(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^nash_averaging: payoff is not antisymmetric .*1e-06"):
        nash_averaging(np.array([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"^nash_averaging: payoff contains NaN"):
        nash_averaging(np.array([[0.0, np.nan], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"^nash_averaging: .*empty population"):
        nash_averaging(np.zeros((0, 0)))
    with pytest.raises(ValueError, match=r"^alpharank: a symmetric game needs a square"):
        alpharank(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"^alpharank: payoff contains NaN"):
        alpharank(np.array([[0.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"^alpharank: .*empty population"):
        alpharank((np.zeros((0, 2)), np.zeros((0, 2))))
    with pytest.raises(ValueError, match=r"^bradley_terry: a symmetric game needs a square"):
        bradley_terry(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^elo: num_agents must be .*empty population"):
        elo(np.zeros((1, 2), np.int32), np.ones(1), 0)
    with pytest.raises(ValueError, match=r"^melo: outcomes contains NaN"):
        melo(np.zeros((1, 2), np.int32), np.array([np.nan]), 2)
    with pytest.raises(ValueError, match=r"^elo: matches hold agent indices outside"):
        elo(np.array([[0, 5]], np.int32), np.ones(1), 2)


def test_nan_payoff_raises_under_jit():
    with pytest.raises(Exception, match="nash_averaging: payoff contains NaN"):
        NA(_f(np.array([[0.0, np.nan], [-1.0, 0.0]]))).agents.block_until_ready()


# ------------------------------------------------------------- the experiment

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.subprocess
def test_payoff_recovery_quick(tmp_path):
    """benchmarks/payoff_recovery.py --quick: the relative parameter error recovered
    through `qre` falls from N = 100 to N = 10000 observed games (its claims, enforced
    by the run's exit status)."""
    out = tmp_path / "payoff_recovery.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "payoff_recovery.py"),
                           "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.count(": holds") == 2 and "does NOT hold" not in text
    rows = [line for line in text.splitlines() if line.startswith("| 100 |")
            or line.startswith("| 10000 |")]
    errors = [float(r.split("|")[2].split("+-")[0]) for r in rows]
    assert len(errors) == 2 and errors[1] < errors[0] / 2, errors
    assert (tmp_path / "payoff_recovery.png").stat().st_size > 0
