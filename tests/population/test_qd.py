"""MAP-Elites: archive insertion, grid and CVT cells, the emitters, the arm task, the
clear errors, and the benchmark's --quick run against pyribs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

from innerloop.population import (
    CVT,
    Archive,
    ESEmitter,
    Grid,
    MAPElites,
    MutationEmitter,
    planar_arm,
)
from innerloop.population._qd import novelty

ROOT = Path(__file__).resolve().parents[2]
F32 = jnp.float32
B, D = 24, 3  # the one batch shape of the insertion tests
GRID = Grid((3, 4), low=(-1.0, 0.0), high=(1.0, 2.0))
CENTROIDS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]], np.float32)


@jax.jit
def _insert(archive, g, f, d):
    return archive.insert(g, f, d)


def _grid_cell_np(d):
    """Grid's cells in float64 NumPy."""
    lo, hi, n = np.array(GRID.low), np.array(GRID.high), np.array(GRID.shape)
    ij = np.clip(np.floor((d - lo) / (hi - lo) * n), 0, n - 1).astype(int)
    return ij[:, 0] * n[1] + ij[:, 1]


def _nearest_np(d, c):
    return np.argmin(((d[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1)


def _reference(cells, batches):
    """Sequential MAP-Elites in NumPy: each batch's candidates one at a time in batch
    order, a candidate replaces the elite when strictly better (so the earliest wins a
    tie), after the previous batches. Returns {cell: (fitness, genotype)}."""
    elite = {}
    for g, f, cell in batches:
        for i in range(len(f)):
            c = int(cell[i])
            if c not in elite or f[i] > elite[c][0]:
                elite[c] = (f[i], g[i])
    return elite


# Fitness from a few integers (ties within and across batches), descriptors from a
# small set of points (collisions), both drawn by hypothesis.
_fitness = st.lists(st.integers(-3, 3), min_size=B, max_size=B)
_points = st.lists(st.tuples(st.integers(-2, 6), st.integers(-2, 6)), min_size=B, max_size=B)


def _batch(seed, fit, pts, scale):
    g = np.random.default_rng(seed).normal(size=(B, D)).astype(np.float32)
    f = np.asarray(fit, np.float32)
    d = np.asarray(pts, np.float32) * np.float32(scale)
    return g, f, d


@pytest.mark.parametrize("kind", ["grid", "cvt"])
@given(f1=_fitness, p1=_points, f2=_fitness, p2=_points, seed=st.integers(0, 2**31 - 1))
def test_insert_keeps_the_best_of_everything_that_landed_in_a_cell(kind, f1, p1, f2, p2, seed):
    if kind == "grid":
        cells, scale, cell_np = GRID, 0.4, _grid_cell_np
    else:
        cells, scale = CVT(jnp.asarray(CENTROIDS)), 0.25
        cell_np = lambda d: _nearest_np(d.astype(np.float64), CENTROIDS)  # noqa: E731
    archive = Archive.empty(cells, D, F32)
    batches = [_batch(seed, f1, p1, scale), _batch(seed + 1, f2, p2, scale)]
    seen = []
    for g, f, d in batches:
        before = {c: v for c, v in _reference(cells, seen).items()}
        archive, added = _insert(archive, jnp.asarray(g), jnp.asarray(f), jnp.asarray(d))
        cell = cell_np(d)
        seen.append((g, f, cell))
        elite = _reference(cells, seen)
        # added: candidate i has the batch's highest fitness in its cell, is the first
        # such, and beats the cell's elite before the batch (or the cell was empty).
        want = np.array([f[i] == f[cell == cell[i]].max()
                         and i == np.flatnonzero((cell == cell[i]) & (f == f[i]))[0]
                         and (int(cell[i]) not in before or f[i] > before[int(cell[i])][0])
                         for i in range(B)])
        np.testing.assert_array_equal(np.asarray(added), want)
    occ = np.asarray(archive.occupied)
    assert set(np.flatnonzero(occ)) == set(elite)
    assert int(archive.count) == len(elite)
    assert sorted(np.asarray(archive.filled)[: len(elite)].tolist()) == sorted(elite)
    for c, (f, g) in elite.items():
        assert float(archive.fitnesses[c]) == f
        np.testing.assert_array_equal(np.asarray(archive.genotypes[c]), g)
    # max over everything that landed in each cell, the elite's descriptor in its cell
    allf = np.concatenate([b[1] for b in seen])
    allc = np.concatenate([b[2] for b in seen])
    for c in elite:
        assert elite[c][0] == allf[allc == c].max()
    np.testing.assert_array_equal(cell_np(np.asarray(archive.descriptors)[occ]),
                                  np.flatnonzero(occ))
    assert float(archive.coverage()) == pytest.approx(len(elite) / cells.n_cells)
    assert float(archive.qd_score(-4.0)) == pytest.approx(sum(v[0] + 4.0 for v in elite.values()))
    assert float(archive.best_fitness()) == max(v[0] for v in elite.values())


@given(seed=st.integers(0, 2**31 - 1), lo=st.floats(-3, 0), width=st.floats(0.5, 3))
def test_grid_index_is_the_clipped_floor_of_the_scaled_descriptor(seed, lo, width):
    grid = Grid((5, 7), low=lo, high=lo + width)
    d = np.random.default_rng(seed).uniform(lo - 1, lo + width + 1, (B, 2))
    want = np.clip(np.floor((d - lo) / width * np.array([5, 7])), 0, [4, 6]).astype(int)
    got = _grid_index(grid, jnp.asarray(d, F32))
    np.testing.assert_array_equal(np.asarray(got), want[:, 0] * 7 + want[:, 1])


@jax.jit
def _grid_index(grid, d):
    return grid.index(d)


@jax.jit
def _kmeans(key):
    return CVT.kmeans(key, 32, -1.0, 1.0, dims=2, samples=800, iterations=10)


@jax.jit
def _cvt_index(cvt, d):
    return cvt.index(d)


def _quantization(x, c):
    return np.mean(np.min(((x[:, None] - c[None]) ** 2).sum(-1), axis=1))


@given(seed=st.integers(0, 2**31 - 1))
def test_cvt_assigns_each_descriptor_its_nearest_centroid(seed):
    cvt = _kmeans(jax.random.key(seed))
    c = np.asarray(cvt.centroids, np.float64)
    assert c.shape == (32, 2) and np.all(np.abs(c) <= 1)
    d = np.random.default_rng(seed).uniform(-1.2, 1.2, (B, 2))
    got = np.asarray(_cvt_index(cvt, jnp.asarray(d, F32)))
    dist = ((d[:, None] - c[None]) ** 2).sum(-1)
    chosen = dist[np.arange(B), got]
    # the brute-force nearest, up to float32 ties
    np.testing.assert_allclose(chosen, dist.min(axis=1), rtol=1e-5, atol=1e-6)
    # Lloyd's iterations lower the quantisation error of the uniform box below that of
    # their start (the first 32 samples).
    x = np.asarray(jax.random.uniform(jax.random.key(seed), (800, 2), F32, -1.0, 1.0))
    assert _quantization(x, c) < 0.8 * _quantization(x, x[:32])


# ------------------------------------------------------------------- the arm


ARM_ME = MAPElites(planar_arm, Grid((64, 64), -1.0, 1.0),
                   MutationEmitter(64, 0.1, line_sigma=0.2, low=-np.pi, high=np.pi),
                   qd_offset=-float(np.pi) ** 2)
_arm_run = jax.jit(ARM_ME.run, static_argnums=2)


def test_planar_arm_reaches_its_end_effector_and_scores_minus_the_variance():
    theta = np.random.default_rng(0).uniform(-np.pi, np.pi, (4, 10))
    f, xy = planar_arm(jnp.asarray(theta, F32))
    phi = np.cumsum(theta, axis=1)
    np.testing.assert_allclose(np.asarray(xy), np.stack([np.cos(phi).sum(1) / 10,
                                                         np.sin(phi).sum(1) / 10], 1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f), -theta.var(axis=1), rtol=1e-5)
    f0, xy0 = planar_arm(jnp.zeros(10, F32))
    assert float(f0) == 0.0 and np.allclose(np.asarray(xy0), [1.0, 0.0])


def test_coverage_grows_on_the_arm():
    key = jax.random.key(0)
    g0 = 0.1 * jax.random.normal(key, (64, 10), F32)
    state = ARM_ME.init(key, g0)
    c0 = float(state.archive.coverage())
    state, h = _arm_run(state, jax.random.key(1), 150)
    cov = np.asarray(h["coverage"])
    qd = np.asarray(h["qd_score"])
    assert np.all(np.diff(cov) >= 0) and np.all(np.diff(qd) >= 0)
    assert np.all(np.diff(np.asarray(h["best_fitness"])) >= 0)
    # The running QD-score and best fitness are the archive's, recomputed from scratch.
    assert qd[-1] == pytest.approx(float(state.archive.qd_score(-float(np.pi) ** 2)),
                                   rel=1e-5)
    assert float(h["best_fitness"][-1]) == float(state.archive.best_fitness())
    assert cov[-1] > max(0.2, 10 * c0), (c0, cov[-1])
    np.testing.assert_array_equal(np.asarray(h["evaluations"]), 64 + 64 * np.arange(1, 151))
    # a cell filled since init is one candidate added at least
    assert int(np.asarray(h["added"]).sum()) >= int(state.archive.count) - round(c0 * 4096)
    # every stored elite is what its genotype evaluates to, in its own cell, in bounds
    f, cell = _reevaluate(state.archive)
    occ = np.asarray(state.archive.occupied)
    np.testing.assert_allclose(np.asarray(f)[occ], np.asarray(state.archive.fitnesses)[occ],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(cell)[occ], np.flatnonzero(occ))
    assert np.all(np.abs(np.asarray(state.archive.genotypes)[occ]) <= np.pi + 1e-6)


@jax.jit
def _reevaluate(archive):
    f, d = jax.vmap(planar_arm)(archive.genotypes)
    return f, archive.cells.index(d)


def _two_elites(a, b):
    """An archive of two cells over [0, 2], holding a and b."""
    return Archive(Grid((2,), 0.0, 2.0), jnp.asarray(np.stack([a, b])), jnp.zeros(2, F32),
                   jnp.asarray([[0.5], [1.5]], F32), jnp.ones(2, bool),
                   jnp.arange(2, dtype=jnp.int32), jnp.asarray(2, jnp.int32))


@jax.jit
def _emit_line(key, archive):
    return MutationEmitter(4000, 0.0, line_sigma=0.5).emit(key, archive, None)[0]


@jax.jit
def _emit_gauss(key, archive):
    return MutationEmitter(4000, 0.3).emit(key, archive, None)[0]


def test_mutation_emitter_draws_iso_line_and_gaussian_variations_of_elites():
    a, b = np.array([1.0, 2.0, 3.0], np.float32), np.array([-1.0, 0.0, 5.0], np.float32)
    archive = _two_elites(a, b)
    x = np.asarray(_emit_line(jax.random.key(3), archive), np.float64)
    # x' = x_i + line_sigma z (x_j - x_i), sigma = 0: each candidate lies on the line
    # through a and b, at t = 0 (x_i = x_j = a), t = 1 (b, b), or t ~ N(0, 0.25) (a, b)
    # or N(1, 0.25) (b, a), elites drawn uniformly
    t = (x - a) @ (b - a) / ((b - a) @ (b - a))
    np.testing.assert_allclose(x, a + t[:, None] * (b - a), atol=1e-4)
    at0, at1 = np.abs(t) < 1e-6, np.abs(t - 1) < 1e-6
    assert 0.22 < at0.mean() < 0.28 and 0.22 < at1.mean() < 0.28
    assert 0.65 < np.std(t[~at0 & ~at1]) < 0.76
    x = np.asarray(_emit_gauss(jax.random.key(4), archive))
    near_a = np.linalg.norm(x - a, axis=1) < np.linalg.norm(x - b, axis=1)
    dev = np.where(near_a[:, None], x - a, x - b)
    assert abs(dev.std() - 0.3) < 0.02 and 0.45 < near_a.mean() < 0.55


# --------------------------------------------------------------------- ME-ES


def _sphere(x):
    """A smooth objective: fitness -|x - 0.5|^2, descriptor the first two coordinates."""
    return -jnp.sum((x - 0.5) ** 2), x[:2]


ES_ARCHIVE_CELLS = Grid((8, 8), -2.0, 2.0)


@jax.jit
def _es_archive(key):
    g = jax.random.normal(key, (32, 5), F32)
    f, d = jax.vmap(_sphere)(g)
    return Archive.empty(ES_ARCHIVE_CELLS, 5, F32).insert(g, f, d)[0]


# objective="alternate": in the first parent period even lineages exploit (fitness),
# odd lineages explore (novelty)
_ME_ES = ESEmitter(sigma=0.05, pairs=16, learning_rate=0.05, lineages=8, novelty_k=3,
                   steps_per_parent=5)


@jax.jit
def _es_step(key):
    """One ME-ES emit from a fresh archive: fitness and novelty (against the archive)
    of each lineage's parent and offspring."""
    archive = _es_archive(key)
    state = _ME_ES.init(key, archive)
    x, state = _ME_ES.emit(key, archive, state, _sphere)

    def scores(g):
        f, d = jax.vmap(_sphere)(g)
        return f, novelty(d, archive.descriptors, archive.occupied, 3)

    top = lax.top_k(jnp.where(archive.occupied, archive.fitnesses, -jnp.inf), 10)[0]
    return scores(x), scores(state.theta), top


@given(seed=st.integers(0, 2**31 - 1))
def test_es_emitter_step_improves_fitness_and_novelty_on_a_smooth_objective(seed):
    (f_new, n_new), (f_old, n_old), top = jax.device_get(_es_step(jax.random.key(seed)))
    exploit = np.arange(8) % 2 == 0
    # every exploiting lineage's Adam step (0.05 per coordinate) on the ES gradient of
    # the fitness goes uphill, from a parent among the 10 fittest elites
    assert np.all(f_new[exploit] > f_old[exploit]), (f_new, f_old)
    gap = np.abs(f_old[exploit][:, None] - top[None, :]).min(axis=1)
    assert np.all(gap <= 1e-5 * np.abs(top).max()), (f_old, top)
    # the exploring lineages' step raises the novelty of the descriptor
    assert np.mean(n_new[~exploit] > n_old[~exploit]) >= 0.75, (n_new, n_old)


def test_me_es_runs_in_one_scan_and_climbs():
    me = MAPElites(_sphere, ES_ARCHIVE_CELLS, _ME_ES, qd_offset=-100.0)
    g0 = jax.random.normal(jax.random.key(0), (16, 5), F32)
    state = me.init(jax.random.key(1), g0)
    best0 = float(state.archive.best_fitness())
    state, h = jax.jit(me.run, static_argnums=2)(state, jax.random.key(2), 12)
    assert float(h["best_fitness"][-1]) > best0 + 0.3 * (0.0 - best0), (best0, h)
    assert int(h["evaluations"][-1]) == 16 + 12 * 8 * (2 * 16 + 2)
    assert np.all(np.diff(np.asarray(h["qd_score"])) >= 0)
    # parent period 2 (steps 10 and 11): lineage i explores when 2 + i is odd
    np.testing.assert_array_equal(np.asarray(state.emitter.explore), np.arange(8) % 2 == 1)


# -------------------------------------------------------------------- errors


def test_clear_errors():
    with pytest.raises(ValueError, match="^Grid: .*0 cells"):
        Grid((64, 0))
    with pytest.raises(ValueError, match="^CVT.kmeans: n_cells .*0 cells"):
        CVT.kmeans(jax.random.key(0), 0, -1.0, 1.0, dims=2)
    with pytest.raises(ValueError, match="^CVT: .*0 cells"):
        CVT(jnp.zeros((0, 2), F32))
    with pytest.raises(ValueError, match="^Grid: .*low < high"):
        Grid((4, 4), low=(-1.0, 1.0), high=(1.0, 1.0))
    with pytest.raises(ValueError, match="^CVT.kmeans: .*low < high"):
        CVT.kmeans(jax.random.key(0), 8, 1.0, -1.0, dims=2)
    with pytest.raises(ValueError, match="^MutationEmitter: batch_size .*batch of 0"):
        MutationEmitter(0, 0.1)
    archive = Archive.empty(GRID, D, F32)
    with pytest.raises(ValueError, match="^Archive.insert: the batch is empty"):
        archive.insert(jnp.zeros((0, D), F32), jnp.zeros(0, F32), jnp.zeros((0, 2), F32))
    with pytest.raises(ValueError, match="^MAPElites.init: .*non-empty batch"):
        ARM_ME.init(jax.random.key(0), jnp.zeros((0, 10), F32))
    g, f, d = _batch(0, [0] * B, [(0, 0)] * B, 0.4)
    for bad in ("g", "f", "d"):
        args = {"g": g.copy(), "f": f.copy(), "d": d.copy()}
        args[bad][3] = np.nan
        with pytest.raises(Exception, match="Archive.insert: NaN"):
            jax.block_until_ready(_insert(archive, *(jnp.asarray(args[k]) for k in "gfd")))
    with pytest.raises(Exception, match="Archive.insert: NaN"):
        ARM_ME.init(jax.random.key(0), jnp.full((64, 10), jnp.nan, F32))


# ---------------------------------------------------------------- the benchmark


@pytest.mark.subprocess
def test_map_elites_benchmark_quick(tmp_path):
    out = tmp_path / "me.md"
    # its speed claim holds for programs compiled as users compile them: without the
    # suite's fast-compile flags (tests/conftest.py)
    flags = re.sub(r"--xla_(backend_optimization_level|llvm_disable_expensive_passes)=\S+",
                   "", os.environ.get("XLA_FLAGS", "")).strip()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update({"XLA_FLAGS": flags} if flags else {})
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "map_elites.py"),
                           "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert "command: python benchmarks/map_elites.py --quick" in proc.stdout
    assert "RUN FAILED" not in text
    for row in ("| innerloop MAPElites |", "| pyribs |", "evaluations per second"):
        assert row in text, row
    assert text.count(": holds") >= 3 and "does NOT hold" not in text
