r"""Quality-diversity archives: MAP-Elites with grid and CVT archives, mutation and
evolution-strategy emitters, as pure JAX that jits end to end.

MAP-Elites (Mouret and Clune 2015, "Illuminating search spaces by mapping elites")
splits a descriptor space into cells and keeps, in each cell c, the best genotype
found whose descriptor falls in it:

    elite(c) = argmax { f(x) : x evaluated so far, cell(d(x)) = c },

with f the fitness and d the descriptor. Each iteration an emitter proposes a batch
of genotypes from the archive, they are evaluated and inserted; a candidate replaces
the elite of its cell when the cell is empty or its fitness is strictly higher.
Several candidates landing in one cell in the same batch compete with each other and
with the incumbent: the best of them all is kept (the first in the batch on a tie).

- `Grid(shape, low, high)`: equal cells over the box [low, high] of descriptor space;
  a descriptor outside the box goes to the nearest boundary cell (as pyribs does).
- `CVT(centroids)`, `CVT.kmeans(key, n_cells, low, high)`: a centroidal Voronoi
  tessellation (Vassiliades, Chatzilygeroudis and Mouret 2018, "Using centroidal
  Voronoi tessellations to scale up the multidimensional archive of phenotypic
  elites"): centroids by Lloyd's k-means on uniform samples of the box, each
  descriptor in the cell of its nearest centroid.
- `Archive`: the elites as arrays (genotypes (C, D), fitnesses (C,), descriptors
  (C, m), occupied (C,)), with `insert`, `coverage`, `qd_score` and `best_fitness`.
- `MutationEmitter`: Gaussian mutation x' = x_i + sigma N(0, I) of uniformly drawn
  elites, or with `line_sigma > 0` the iso+line-DD operator (Vassiliades and Mouret
  2018, "Discovering the elite hypervolume by leveraging interspecies correlation"),
  x' = x_i + sigma_iso N(0, I) + sigma_line (x_j - x_i) N(0, 1).
- `ESEmitter`: ME-ES (Colas, Madhavan, Huizinga and Clune 2020, "Scaling MAP-Elites
  to deep neuroevolution"): each lineage takes a parent from the archive and follows
  `innerloop.ES`'s gradient estimate of its fitness (exploit) or of its novelty
  (explore) for a few steps; every step's offspring is inserted.
- `MAPElites(evaluate, cells, emitter)`: `init`, `step` and `run` (one `lax.scan`).
- `planar_arm`: the planar robot-arm task of the pyribs and QDax tutorials.

Genotypes are flat vectors (ravel a pytree with `jax.flatten_util.ravel_pytree`);
`evaluate(genotype) -> (fitness, descriptor)` is a function of one genotype, vmapped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from innerloop._shared import check_positive_float, check_positive_int
from innerloop.implicit import ES

# ------------------------------------------------------------------ the cells


def _box(owner: str, low, high, dims: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(low, high) as tuples of `dims` floats with low < high on every axis."""
    lo = np.broadcast_to(np.asarray(low, np.float64), (dims,))
    hi = np.broadcast_to(np.asarray(high, np.float64), (dims,))
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError(f"{owner}: the descriptor bounds must be finite; got low={low!r}, "
                         f"high={high!r}")
    if np.any(lo >= hi):
        raise ValueError(f"{owner}: the descriptor bounds need low < high on every axis; "
                         f"got low={lo.tolist()}, high={hi.tolist()}")
    return tuple(lo.tolist()), tuple(hi.tolist())


class Grid(eqx.Module):
    """Equal cells over the box [low, high] of an m-dimensional descriptor space:
    `shape[j]` cells along axis j, cell index the row-major (C-order) flat index of

        i_j = clip(floor(shape_j (d_j - low_j) / (high_j - low_j)), 0, shape_j - 1).

    `low`, `high`: one float for every axis or one per axis (low < high)."""

    shape: tuple[int, ...] = eqx.field(static=True)
    low: tuple[float, ...] = eqx.field(static=True)
    high: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, shape, low=-1.0, high=1.0):
        shape = tuple(int(s) for s in np.atleast_1d(shape))
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"Grid: the archive would have 0 cells (shape {shape}); give "
                             f"at least one cell along every descriptor axis")
        self.shape = shape
        self.low, self.high = _box("Grid", low, high, len(shape))

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.shape))

    @property
    def descriptor_dim(self) -> int:
        return len(self.shape)

    def index(self, descriptors: jax.Array) -> jax.Array:
        """Cell index (int32) of each descriptor, shape `descriptors.shape[:-1]`."""
        d = jnp.asarray(descriptors)
        lo, hi = jnp.asarray(self.low, d.dtype), jnp.asarray(self.high, d.dtype)
        n = jnp.asarray(self.shape, d.dtype)
        # Clipped as floats: an infinite descriptor has no int32 conversion.
        ij = jnp.clip(jnp.floor((d - lo) / (hi - lo) * n), 0, n - 1).astype(jnp.int32)
        strides = np.cumprod((self.shape[1:] + (1,))[::-1])[::-1].astype(np.int32)
        return jnp.sum(ij * jnp.asarray(strides), axis=-1, dtype=jnp.int32)


def _nearest(points: jax.Array, centroids: jax.Array, chunk: int = 4096) -> jax.Array:
    """Index of the nearest centroid (Euclidean) of each point; memory O(chunk C)."""
    c2 = jnp.sum(centroids * centroids, axis=-1)

    def block(p):
        return jnp.argmin(c2 - 2.0 * (p @ centroids.T), axis=-1).astype(jnp.int32)

    n = points.shape[0]
    if n <= chunk:
        return block(points)
    pad = (-n) % chunk
    padded = jnp.concatenate([points, jnp.zeros((pad,) + points.shape[1:], points.dtype)])
    return lax.map(block, padded.reshape(-1, chunk, points.shape[-1])).reshape(-1)[:n]


class CVT(eqx.Module):
    """A centroidal Voronoi tessellation of descriptor space (Vassiliades,
    Chatzilygeroudis and Mouret 2018): C centroids (C, m), a descriptor's cell the
    nearest centroid, argmin_c ||d - mu_c||^2. Build it with `CVT.kmeans`."""

    centroids: jax.Array

    def __check_init__(self):
        shape = jnp.shape(self.centroids)
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"CVT: centroids must be an array (n_cells, descriptor_dim) "
                             f"with n_cells >= 1; got shape {shape} (an archive of 0 "
                             f"cells)")

    @classmethod
    def kmeans(cls, key: jax.Array, n_cells: int, low, high, *, dims: int | None = None,
               samples: int | None = None, iterations: int = 30,
               dtype=jnp.float32) -> CVT:
        """Centroids by Lloyd's k-means on `samples` (default 25 n_cells) uniform points of
        the box [low, high] (`dims` axes; default the length of low/high), started from
        the first n_cells of them, `iterations` steps of mu_c <- mean of the points
        nearest mu_c (a centroid with no point stays)."""
        if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 1:
            raise ValueError(f"CVT.kmeans: n_cells must be an integer >= 1 (an archive of "
                             f"0 cells is empty); got {n_cells!r}")
        dims = dims if dims is not None else max(np.size(low), np.size(high))
        lo, hi = _box("CVT.kmeans", low, high, dims)
        samples = 25 * n_cells if samples is None else samples
        if samples < n_cells:
            raise ValueError(f"CVT.kmeans: samples ({samples}) must be >= n_cells "
                             f"({n_cells})")
        check_positive_int("CVT.kmeans: iterations", iterations)
        lo_a, hi_a = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
        x = jax.random.uniform(key, (samples, dims), dtype, lo_a, hi_a)

        def lloyd(_, mu):
            assign = _nearest(x, mu)
            sums = jax.ops.segment_sum(x, assign, num_segments=n_cells)
            counts = jax.ops.segment_sum(jnp.ones((samples,), dtype), assign,
                                         num_segments=n_cells)
            return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], mu)

        return cls(lax.fori_loop(0, iterations, lloyd, x[:n_cells]))

    @property
    def n_cells(self) -> int:
        return self.centroids.shape[0]

    @property
    def descriptor_dim(self) -> int:
        return self.centroids.shape[1]

    def index(self, descriptors: jax.Array) -> jax.Array:
        """Cell index (int32) of each descriptor: its nearest centroid."""
        d = jnp.asarray(descriptors)
        flat = d.reshape(-1, d.shape[-1])
        return _nearest(flat, self.centroids.astype(d.dtype)).reshape(d.shape[:-1])


# ----------------------------------------------------------------- the archive


class Archive(eqx.Module):
    """The elites of a MAP-Elites run as arrays over the C cells of `cells`:
    `genotypes` (C, D), `fitnesses` (C,), `descriptors` (C, m) and `occupied` (C,)
    (an unoccupied cell's entries are meaningless), and `filled` (C,), the occupied
    cells in the order they were first filled (its first `count` entries), so that
    drawing elites costs O(draws), not O(C). Immutable: `insert` returns a new archive."""

    cells: Grid | CVT
    genotypes: jax.Array
    fitnesses: jax.Array
    descriptors: jax.Array
    occupied: jax.Array
    filled: jax.Array
    count: jax.Array

    @classmethod
    def empty(cls, cells: Grid | CVT, genotype_dim: int, dtype=jnp.float32) -> Archive:
        """An archive with no elite, genotypes of `genotype_dim` entries of `dtype`."""
        check_positive_int("Archive.empty: genotype_dim", genotype_dim)
        c = cells.n_cells
        return cls(cells, jnp.zeros((c, genotype_dim), dtype), jnp.full((c,), -jnp.inf, dtype),
                   jnp.zeros((c, cells.descriptor_dim), dtype), jnp.zeros((c,), bool),
                   jnp.zeros((c,), jnp.int32), jnp.asarray(0, jnp.int32))

    @property
    def n_cells(self) -> int:
        return self.occupied.shape[0]

    def insert(self, genotypes: jax.Array, fitness: jax.Array,
               descriptors: jax.Array) -> tuple[Archive, jax.Array]:
        """Insert a batch (B, D), (B,), (B, m); returns the new archive and which
        candidates became elites (B,). Cell c keeps the best of its incumbent and the
        candidates landing in it: a candidate wins if its fitness is the batch's maximum
        in c (the first such on a tie) and c is empty or that maximum is strictly above
        the incumbent's fitness. NaN in a candidate raises (also under jit). Costs
        O(C + B D): two scatters into the C cells, then the winners' rows alone."""
        g = jnp.asarray(genotypes)
        dtype = self.fitnesses.dtype
        if g.ndim != 2 or g.shape[1] != self.genotypes.shape[1]:
            raise ValueError(f"Archive.insert: genotypes must have shape (batch, "
                             f"{self.genotypes.shape[1]}); got {g.shape}")
        b = g.shape[0]
        if b == 0:
            raise ValueError("Archive.insert: the batch is empty (0 candidates); insert "
                             "at least one")
        f = jnp.asarray(fitness)
        d = jnp.asarray(descriptors)
        if f.shape != (b,) or d.shape != (b, self.descriptors.shape[1]):
            raise ValueError(f"Archive.insert: fitness must have shape ({b},) and "
                             f"descriptors ({b}, {self.descriptors.shape[1]}); got "
                             f"{f.shape} and {d.shape}")
        g, f, d = g.astype(self.genotypes.dtype), f.astype(dtype), d.astype(dtype)
        new, added, bad, _ = self._insert(g, f, d)
        new = eqx.error_if(new, jnp.any(bad), "Archive.insert: NaN in the candidates' "
                           "genotypes, fitness or descriptors; make evaluate return finite "
                           "values (or map a failed evaluation to -inf fitness)")
        return new, added

    def _insert(self, g, f, d):
        """`insert` without the check: candidates with a NaN are left out and flagged
        (the third output, (B,)), so that a loop can raise once at its end. The fourth
        output (B,) is the incumbent fitness in each candidate's cell (-inf if empty)."""
        b = g.shape[0]
        bad = (jnp.any(jnp.isnan(g), axis=1) | jnp.isnan(f) | jnp.any(jnp.isnan(d), axis=1))
        c = self.n_cells
        idx = jnp.where(bad, 0, self.cells.index(d))
        order = jnp.arange(b, dtype=jnp.int32)
        # Per cell: the batch's best fitness, then the first candidate that has it (a
        # flagged candidate takes part in neither). Scatters into C slots cost O(C + B),
        # less than a sort of the batch on XLA:CPU.
        fk = jnp.where(bad, -jnp.inf, f)
        best = jax.ops.segment_max(fk, idx, num_segments=c)
        first = jax.ops.segment_min(jnp.where((fk == best[idx]) & ~bad, order, b), idx,
                                    num_segments=c)
        winner = first[idx] == order
        was = self.occupied[idx]
        added = winner & ~bad & (~was | (f > self.fitnesses[idx]))
        # Each winner owns its cell alone, so a scatter of the winners is collision-free.
        at = jnp.where(added, idx, c)
        new_cell = added & ~was
        slot = jnp.where(new_cell, self.count + jnp.cumsum(new_cell, dtype=jnp.int32) - 1, c)
        new = eqx.tree_at(
            lambda a: (a.genotypes, a.fitnesses, a.descriptors, a.occupied, a.filled,
                       a.count), self,
            (self.genotypes.at[at].set(g, mode="drop"),
             self.fitnesses.at[at].set(f, mode="drop"),
             self.descriptors.at[at].set(d, mode="drop"),
             self.occupied.at[at].set(True, mode="drop"),
             self.filled.at[slot].set(idx, mode="drop"),
             self.count + jnp.sum(new_cell, dtype=jnp.int32)))
        return new, added, bad, jnp.where(was, self.fitnesses[idx], -jnp.inf)

    def coverage(self) -> jax.Array:
        """Fraction of the cells that hold an elite."""
        return (self.count / self.n_cells).astype(self.fitnesses.dtype)

    def qd_score(self, offset: float = 0.0) -> jax.Array:
        """QD-score sum_{occupied c} (f_c - offset); `offset` a lower bound of the
        fitness, so that every elite counts positively (Pugh et al. 2016)."""
        return jnp.sum(jnp.where(self.occupied, self.fitnesses - offset, 0.0))

    def best_fitness(self) -> jax.Array:
        """The highest elite fitness (-inf for an empty archive)."""
        return jnp.max(jnp.where(self.occupied, self.fitnesses, -jnp.inf))

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """`n` cell indices drawn uniformly with replacement from the occupied cells (as
        pyribs' `sample_elites`; 32 random bits modulo the count, a bias below
        count / 2^32); on an empty archive, index 0."""
        bits = jax.random.bits(key, (n,), jnp.uint32)
        pos = bits % jnp.maximum(self.count, 1).astype(jnp.uint32)
        return self.filled[pos.astype(jnp.int32)]


# ------------------------------------------------------------------- emitters


def _clip(x: jax.Array, low, high) -> jax.Array:
    if low is None and high is None:
        return x
    return jnp.clip(x, None if low is None else jnp.asarray(low, x.dtype),
                    None if high is None else jnp.asarray(high, x.dtype))


def _check_bounds(owner: str, low, high) -> None:
    if low is not None and high is not None and not float(low) < float(high):
        raise ValueError(f"{owner}: the genotype bounds need low < high; got low={low!r}, "
                         f"high={high!r}")


class MutationEmitter(eqx.Module):
    r"""Random variation of uniformly drawn elites x_i, x_j (with replacement):

        x' = clip(x_i + sigma N(0, I) + line_sigma (x_j - x_i) N(0, 1), low, high),

    Gaussian mutation with `line_sigma = 0` (Mouret and Clune 2015; pyribs'
    `GaussianEmitter`), iso+line-DD with `line_sigma > 0` (Vassiliades and Mouret
    2018; pyribs' `IsoLineEmitter`), one N(0, 1) per candidate for the line term.
    `batch_size` candidates per step; `low`, `high`: genotype bounds (None: none)."""

    batch_size: int = eqx.field(static=True)
    sigma: float = eqx.field(static=True)
    line_sigma: float = eqx.field(default=0.0, static=True)
    low: float | None = eqx.field(default=None, static=True)
    high: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise ValueError(f"MutationEmitter: batch_size must be an integer >= 1 (a "
                             f"batch of 0 evaluates nothing); got {self.batch_size!r}")
        check_positive_float("MutationEmitter: sigma", self.sigma, allow_zero=True)
        check_positive_float("MutationEmitter: line_sigma", self.line_sigma,
                             allow_zero=True)
        _check_bounds("MutationEmitter", self.low, self.high)

    @property
    def evaluations(self) -> int:
        """Evaluations per step: the batch."""
        return self.batch_size

    def init(self, key: jax.Array, archive: Archive) -> None:
        return None

    def emit(self, key: jax.Array, archive: Archive, state: None,
             evaluate: Callable | None = None) -> tuple[jax.Array, None]:
        """(candidates (batch_size, D), state)."""
        k_sel, k_noise = jax.random.split(key)
        g = archive.genotypes
        n, dim = self.batch_size, g.shape[1]
        line = self.line_sigma > 0
        cells = archive.sample(k_sel, 2 * n if line else n)
        # One flat draw for the isotropic and the line noise: on XLA:CPU a 1-D draw is
        # about 3x faster than the same numbers drawn 2-D.
        noise = jax.random.normal(k_noise, (n * (dim + line),), g.dtype).reshape(n, dim + line)
        x = g[cells[:n]] + self.sigma * noise[:, :dim]
        if line:
            x = x + self.line_sigma * noise[:, dim:] * (g[cells[n:]] - g[cells[:n]])
        return _clip(x, self.low, self.high), state

    def update(self, state: None, archive: Archive, candidates: jax.Array,
               fitness: jax.Array, descriptors: jax.Array, added: jax.Array) -> None:
        return state


def novelty(descriptors: jax.Array, reference: jax.Array, mask: jax.Array,
            k: int) -> jax.Array:
    """Novelty (Lehman and Stanley 2011): the mean Euclidean distance from each
    descriptor (..., m) to its k nearest points among `reference[mask]` (fewer if
    fewer are there; 0 if none)."""
    dist = jnp.linalg.norm(descriptors[..., None, :] - reference, axis=-1)
    dist = jnp.where(mask, dist, jnp.inf)
    kk = min(k, reference.shape[0])
    near = -lax.top_k(-dist, kk)[0]
    finite = jnp.isfinite(near)
    total = jnp.sum(jnp.where(finite, near, 0.0), axis=-1)
    return total / jnp.maximum(jnp.sum(finite, axis=-1), 1).astype(total.dtype)


class _Objective(eqx.Module):
    """The ES inner problem of one lineage: one 'episode' (T = 1) is one evaluation;
    its loss is minus the fitness or minus the novelty of the descriptor."""

    evaluate: Callable
    explore: jax.Array
    reference: jax.Array
    mask: jax.Array
    k: int = eqx.field(static=True)
    T: int = eqx.field(default=1, static=True)

    def init(self, key, theta):
        return jnp.zeros((), theta.dtype)

    def unroll(self, state, theta, K):
        f, d = self.evaluate(theta)
        nov = novelty(jnp.asarray(d, theta.dtype), self.reference, self.mask, self.k)
        return state, -jnp.where(self.explore, nov, jnp.asarray(f, theta.dtype))


class ESState(eqx.Module):
    """Per lineage: the current ES parameters `theta` (L, D), its Adam state, whether
    it explores; `t`, the steps taken."""

    theta: jax.Array
    opt: Any
    explore: jax.Array
    t: jax.Array


class ESEmitter(eqx.Module):
    r"""ME-ES (Colas et al. 2020): `lineages` evolution strategies run side by side. Every
    `steps_per_parent` steps each lineage restarts from a parent drawn uniformly from
    the `pool` best cells for its current objective, then follows Adam on the ES
    estimate (`innerloop.ES`, antithetic, `pairs` pairs, scale `sigma`, centred ranks)
    of the gradient of

    - fitness, f(theta) (`objective="fitness"`, ME-ES exploit; parents: the fittest
      elites),
    - novelty, N(theta) = mean distance from d(theta) to its `novelty_k` nearest elite
      descriptors (`objective="novelty"`, ME-ES explore; parents: the most novel
      elites), or
    - both in turn (`objective="alternate"`, ME-ES explore-exploit: lineage i explores
      in parent periods p with p + i odd).

    Each step a lineage emits its updated theta (one candidate); the ES itself costs
    2 pairs + 1 evaluations. Colas et al. measure novelty against an archive of every
    offspring's behaviour; here the reference set is the archive's elites, one per
    visited cell, which spans the same visited region at the archive's resolution.
    """

    sigma: float = eqx.field(static=True)
    pairs: int = eqx.field(static=True)
    learning_rate: float = eqx.field(static=True)
    objective: Literal["fitness", "novelty", "alternate"] = eqx.field(
        default="alternate", static=True)
    lineages: int = eqx.field(default=1, static=True)
    steps_per_parent: int = eqx.field(default=10, static=True)
    novelty_k: int = eqx.field(default=10, static=True)
    pool: int = eqx.field(default=10, static=True)
    low: float | None = eqx.field(default=None, static=True)
    high: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        check_positive_float("ESEmitter: sigma", self.sigma)
        check_positive_float("ESEmitter: learning_rate", self.learning_rate)
        for name in ("pairs", "lineages", "steps_per_parent", "novelty_k", "pool"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ESEmitter: {name} must be an integer >= 1; got {value!r}")
        if self.objective not in ("fitness", "novelty", "alternate"):
            raise ValueError(f"ESEmitter: objective must be 'fitness', 'novelty' or "
                             f"'alternate'; got {self.objective!r}")
        _check_bounds("ESEmitter", self.low, self.high)

    @property
    def evaluations(self) -> int:
        """Evaluations per step: per lineage 2 pairs perturbations, the ES baseline and
        the offspring."""
        return self.lineages * (2 * self.pairs + 2)

    def _adam(self):
        return optax.adam(self.learning_rate)

    def _explore(self, t):
        period = t // self.steps_per_parent
        lineage = jnp.arange(self.lineages, dtype=jnp.int32)
        if self.objective == "fitness":
            return jnp.zeros((self.lineages,), bool)
        if self.objective == "novelty":
            return jnp.ones((self.lineages,), bool)
        return (period + lineage) % 2 == 1

    def init(self, key: jax.Array, archive: Archive) -> ESState:
        theta = archive.genotypes[archive.sample(key, self.lineages)]
        opt = jax.vmap(self._adam().init)(theta)
        # t = 0: the first emit draws the parents.
        return ESState(theta, opt, self._explore(jnp.asarray(0, jnp.int32)),
                       jnp.asarray(0, jnp.int32))

    def _parents(self, key, archive, explore):
        """One parent per lineage: uniform among the `pool` fittest or most novel
        elites."""
        occ = archive.occupied
        pool = min(self.pool, archive.n_cells)
        fit_top = lax.top_k(jnp.where(occ, archive.fitnesses, -jnp.inf), pool)[1]

        def cell_novelty(d):
            return novelty(d, archive.descriptors, occ, self.novelty_k)

        nov = lax.map(cell_novelty, archive.descriptors, batch_size=256)
        nov_top = lax.top_k(jnp.where(occ, nov, -jnp.inf), pool)[1]
        count = jnp.minimum(jnp.sum(occ, dtype=jnp.int32), pool)
        pick = jax.random.randint(key, (self.lineages,), 0, jnp.maximum(count, 1), jnp.int32)
        cells = jnp.where(explore, nov_top[pick], fit_top[pick])
        return archive.genotypes[cells]

    def emit(self, key: jax.Array, archive: Archive, state: ESState,
             evaluate: Callable) -> tuple[jax.Array, ESState]:
        """(candidates (lineages, D), state): each lineage's theta after one Adam step
        on its ES gradient estimate."""
        k_parent, k_es = jax.random.split(key)
        reset = state.t % self.steps_per_parent == 0
        explore = self._explore(state.t)
        adam = self._adam()
        theta = lax.cond(reset, lambda: self._parents(k_parent, archive, explore),
                         lambda: state.theta)
        opt = jax.tree.map(lambda a, b: jnp.where(reset, a, b),
                           jax.vmap(adam.init)(theta), state.opt)

        def lineage(k, th, exp):
            task = _Objective(evaluate, exp, archive.descriptors, archive.occupied,
                              self.novelty_k)
            es = ES(task, sigma=self.sigma, pairs=self.pairs, centred_ranks=True)
            return es.grad(k, th, es.init(k, th))[0]

        grads = jax.vmap(lineage)(jax.random.split(k_es, self.lineages), theta, explore)
        # optax's Adam raises its decay to its int32 step count: standard promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt = jax.vmap(adam.update)(grads, opt)
        candidates = _clip(theta + updates, self.low, self.high)
        return candidates, ESState(theta, opt, explore, state.t)

    def update(self, state: ESState, archive: Archive, candidates: jax.Array,
               fitness: jax.Array, descriptors: jax.Array, added: jax.Array) -> ESState:
        """Each lineage goes on from its offspring, inserted or not."""
        return ESState(candidates, state.opt, state.explore, state.t + 1)


# ----------------------------------------------------------------- MAP-Elites


class MAPElitesState(eqx.Module):
    """The archive, the emitter's state, the evaluations spent so far, and the
    archive's QD-score and best fitness (kept up to date by each insertion, so that a
    step's metrics cost O(batch), not O(cells))."""

    archive: Archive
    emitter: Any
    evaluations: jax.Array
    qd_score: jax.Array
    best_fitness: jax.Array


class MAPElites(eqx.Module):
    r"""MAP-Elites (Mouret and Clune 2015): each step the emitter proposes candidates
    from the archive, `evaluate` (one genotype -> (fitness, descriptor)) is vmapped over
    them and they are inserted (`Archive.insert`).

        state = me.init(key, genotypes)           # evaluate and insert a first batch
        state, metrics = me.step(state, key)      # one iteration
        state, history = me.run(state, key, n)    # n iterations, one lax.scan

    `metrics`: `coverage`, `qd_score` (with offset `qd_offset`, a lower bound of the
    fitness), `best_fitness`, `evaluations` (cumulative, the emitter's own included)
    and `added` (candidates that became elites). All of it jits
    (`jax.jit(me.run, static_argnums=2)`)."""

    evaluate: Callable
    cells: Grid | CVT
    emitter: MutationEmitter | ESEmitter
    qd_offset: float = eqx.field(default=0.0, static=True)

    def _evaluate(self, genotypes):
        f, d = jax.vmap(self.evaluate)(genotypes)
        return f, d

    @eqx.filter_jit
    def init(self, key: jax.Array, genotypes: jax.Array) -> MAPElitesState:
        """Evaluate the first `genotypes` (B, D) and insert them into an empty archive
        (jitted: a first batch is one compilation, not one per operation)."""
        g = jnp.asarray(genotypes)
        if g.ndim != 2 or g.shape[0] == 0 or g.shape[1] == 0:
            raise ValueError(f"MAPElites.init: genotypes must be a non-empty batch "
                             f"(batch >= 1, genotype_dim >= 1); got shape {g.shape}")
        if not jnp.issubdtype(g.dtype, jnp.floating):
            raise ValueError(f"MAPElites.init: genotypes must be floating point; got "
                             f"{g.dtype}")
        archive = Archive.empty(self.cells, g.shape[1], g.dtype)
        f, d = self._evaluate(g)
        archive, _ = archive.insert(g, f, d)
        return MAPElitesState(archive, self.emitter.init(key, archive),
                              jnp.asarray(g.shape[0], jnp.int32),
                              archive.qd_score(self.qd_offset), archive.best_fitness())

    def _step(self, state, key):
        candidates, em = self.emitter.emit(key, state.archive, state.emitter, self.evaluate)
        f, d = self._evaluate(candidates)
        dt = state.archive.fitnesses.dtype
        f, d = f.astype(dt), d.astype(dt)
        archive, added, bad, prev = state.archive._insert(
            candidates.astype(state.archive.genotypes.dtype), f, d)
        em = self.emitter.update(em, archive, candidates, f, d, added)
        evaluations = state.evaluations + self.emitter.evaluations
        # An elite adds f - offset to the QD-score in a new cell, f - (incumbent) in a
        # filled one.
        gain = jnp.where(added, f - jnp.where(jnp.isneginf(prev), self.qd_offset, prev), 0)
        qd = state.qd_score + jnp.sum(gain)
        best = jnp.maximum(state.best_fitness, jnp.max(jnp.where(added, f, -jnp.inf)))
        metrics = {"coverage": archive.coverage(), "qd_score": qd, "best_fitness": best,
                   "evaluations": evaluations, "added": jnp.sum(added, dtype=jnp.int32)}
        return MAPElitesState(archive, em, evaluations, qd, best), metrics, jnp.any(bad)

    def step(self, state: MAPElitesState, key: jax.Array) -> tuple[MAPElitesState, dict]:
        """One iteration: emit, evaluate, insert, update the emitter."""
        state, metrics, bad = self._step(state, key)
        return eqx.error_if(state, bad, _NAN.format("MAPElites.step")), metrics

    def run(self, state: MAPElitesState, key: jax.Array,
            iterations: int) -> tuple[MAPElitesState, dict]:
        """`iterations` steps in one `lax.scan` (keys split from `key`); returns the final
        state and every step's metrics stacked. Candidates with a NaN are left out and
        the run raises at its end (one check, not one per step)."""
        check_positive_int("MAPElites.run: iterations", iterations)

        def body(carry, k):
            state, bad = carry
            state, metrics, b = self._step(state, k)
            return (state, bad | b), metrics

        # Two steps per loop iteration: the same steps, 15-20% less time on XLA:CPU.
        (state, bad), metrics = lax.scan(body, (state, jnp.zeros((), bool)),
                                         jax.random.split(key, iterations), unroll=2)
        return eqx.error_if(state, bad, _NAN.format("MAPElites.run")), metrics


_NAN = ("{}: NaN in a candidate's genotype, fitness or descriptor (left out of the "
        "archive); make evaluate return finite values (or map a failed evaluation to "
        "-inf fitness)")


# ------------------------------------------------------------------ the task


def planar_arm(angles: jax.Array, link_lengths: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    r"""The planar robot arm of the pyribs and QDax tutorials (Cully et al. 2015;
    Vassiliades et al. 2018): n joint angles theta (radians) of a chain of links of
    lengths l (default 1/n each: unit total reach), with

        fitness    = -Var(theta) = -(1/n) sum_i (theta_i - mean theta)^2,
        descriptor = (sum_j l_j cos(phi_j), sum_j l_j sin(phi_j)),  phi_j = sum_{i<=j} theta_i,

    the end effector's position: the arm is rewarded for reaching a point with joint
    angles as similar as possible."""
    theta = jnp.asarray(angles)
    n = theta.shape[-1]
    lengths = (jnp.full((n,), 1.0 / n, theta.dtype) if link_lengths is None
               else jnp.asarray(link_lengths, theta.dtype))
    phi = jnp.cumsum(theta, axis=-1)
    xy = jnp.stack([jnp.sum(lengths * jnp.cos(phi), axis=-1),
                    jnp.sum(lengths * jnp.sin(phi), axis=-1)], axis=-1)
    return -jnp.var(theta, axis=-1), xy
