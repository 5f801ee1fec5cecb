"""Benchmark: MAP-Elites on the planar robot arm, innerloop against pyribs (and QDax
where it imports), same operator, batch and budget, one process.

    python benchmarks/map_elites.py            # full run
    python benchmarks/map_elites.py --quick    # the test's run (small budget)

Task (the pyribs and QDax tutorial arm): 10 joint angles in [-pi, pi], links of length
1/10 each (unit total reach), fitness -Var(angles), descriptor the end effector's
(x, y); a 64 x 64 grid archive over [-1, 1]^2. QD-score offset -pi^2, the lowest
fitness of angles in [-pi, pi], so that every elite counts positively.

Both libraries run the same algorithm: the iso+line-DD operator (Vassiliades and
Mouret 2018) x' = clip(x_i + 0.1 N(0, I) + 0.2 (x_j - x_i) N(0, 1), -pi, pi) on
elites drawn uniformly from the archive, batches of 64 (pyribs' default); the first batch is
0.1 N(0, I) around x0 = 0 (pyribs' `IsoLineEmitter` with an empty archive).
innerloop: `MAPElites(planar_arm, Grid(...), MutationEmitter(64, 0.1, line_sigma=0.2))`,
the whole run one jitted `lax.scan`. pyribs: `GridArchive` + `IsoLineEmitter` +
`Scheduler`, ask / evaluate (the same arm in NumPy, vectorised) / tell in Python.
QDax (not a dependency; measured when it imports): its `MAPElites` with
`isoline_variation` in a `MixingEmitter` on the same JAX arm, one jitted scan.

Measured: coverage and QD-score against evaluations (mean over seeds); evaluations
per second of the whole run (budget / wall time of one run, median and range over
repeats after a warm-up run; innerloop's compile time reported apart).

Claims (every run, --quick included): innerloop's final coverage and QD-score are at
least pyribs' (mean over seeds, less two standard errors of the difference: the two
runs are the same algorithm on different random numbers), and innerloop's evaluations
per second are at least SPEEDUP times pyribs' (quick: faster, at its smaller scale).
An innerloop row that fails fails the run; a peer that fails is reported.
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback

import _experiment as E  # benchmarks/_experiment.py (the script's folder is on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from innerloop.population import Grid, MAPElites, MutationEmitter, planar_arm

DIM, CELLS, BATCH = 10, (64, 64), 64
ISO, LINE = 0.1, 0.2
OFFSET = -float(np.pi) ** 2
FULL = dict(iterations=5000, seeds=5, repeats=5, points=10, speedup=5.0,
            sweep=(32, 256, 1024))
QUICK = dict(iterations=300, seeds=3, repeats=3, points=5, speedup=1.0, sweep=())


# ------------------------------------------------------------------ innerloop


def innerloop_runner(iterations: int, batch: int = BATCH):
    """(run(seed) -> (history dict of numpy arrays, number of elites), compile seconds)."""
    me = MAPElites(planar_arm, Grid(CELLS, -1.0, 1.0),
                   MutationEmitter(batch, ISO, line_sigma=LINE, low=-np.pi, high=np.pi),
                   qd_offset=OFFSET)

    def whole(key):
        k0, k1, k2 = jax.random.split(key, 3)
        g0 = jnp.clip(ISO * jax.random.normal(k0, (batch, DIM), jnp.float32), -np.pi, np.pi)
        state = me.init(k1, g0)
        state, hist = me.run(state, k2, iterations)
        return hist, state.archive.count

    t0 = time.perf_counter()
    compiled = jax.jit(whole).lower(jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0

    def run(seed):
        hist, count = jax.block_until_ready(compiled(jax.random.key(seed)))
        return {k: np.asarray(v) for k, v in hist.items()}, int(count)

    return run, compile_s


# --------------------------------------------------------------------- pyribs


def arm_numpy(sol):
    """The same arm in NumPy, over a batch (the pyribs tutorial's `simulate`)."""
    lengths = np.full(sol.shape[1], 1.0 / sol.shape[1])
    phi = np.cumsum(sol, axis=1)
    xy = np.stack([(lengths * np.cos(phi)).sum(1), (lengths * np.sin(phi)).sum(1)], axis=1)
    return -np.var(sol, axis=1), xy


def pyribs_run(seed: int, iterations: int, record: bool = True, batch: int = BATCH):
    from ribs.archives import GridArchive
    from ribs.emitters import IsoLineEmitter
    from ribs.schedulers import Scheduler

    archive = GridArchive(solution_dim=DIM, dims=CELLS, ranges=[(-1.0, 1.0)] * 2,
                          qd_score_offset=OFFSET, seed=seed)
    emitter = IsoLineEmitter(archive, iso_sigma=ISO, line_sigma=LINE, x0=np.zeros(DIM),
                             bounds=[(-np.pi, np.pi)] * DIM, batch_size=batch, seed=seed)
    scheduler = Scheduler(archive, [emitter])
    cov, qd = [], []
    for i in range(iterations + 1):  # the first ask is the starting batch around x0
        x = scheduler.ask()
        f, d = arm_numpy(x)
        scheduler.tell(f, d)
        if record and i > 0:
            cov.append(archive.stats.coverage)
            qd.append(archive.stats.qd_score)
    if record:
        # pyribs' running stats against the archive's own data
        obj = archive.data("objective")
        assert abs(archive.stats.qd_score - float(np.sum(obj - OFFSET))) < 1e-6 * len(obj) + 1e-6
    return {"coverage": np.asarray(cov), "qd_score": np.asarray(qd)}, len(archive)


# ----------------------------------------------------------------------- QDax


def qdax_runner(iterations: int):
    """QDax's MAP-Elites with the same operator (`isoline_variation` in a `MixingEmitter`,
    variation only), batch and budget, on the same JAX arm; (run, compile seconds) like
    `innerloop_runner`. QDax's grid is its centroids (`compute_euclidean_centroids`), a
    descriptor's cell the nearest one: the same cells as the grid."""
    import functools

    from qdax.core.containers.mapelites_repertoire import compute_euclidean_centroids
    from qdax.core.emitters.mutation_operators import isoline_variation
    from qdax.core.emitters.standard_emitters import MixingEmitter
    from qdax.core.map_elites import MAPElites as QMAPElites
    from qdax.utils.metrics import default_qd_metrics

    def scoring(genotypes, key):
        f, d = jax.vmap(planar_arm)(genotypes)
        return f, d, {}

    variation = functools.partial(isoline_variation, iso_sigma=ISO, line_sigma=LINE,
                                  minval=-np.pi, maxval=np.pi)
    emitter = MixingEmitter(mutation_fn=None, variation_fn=variation,
                            variation_percentage=1.0, batch_size=BATCH)
    # QDax's QD-score adds qd_offset per elite: +pi^2 is the offset -pi^2 of the others.
    me = QMAPElites(scoring_function=scoring, emitter=emitter,
                    metrics_function=functools.partial(default_qd_metrics, qd_offset=-OFFSET))
    centroids = compute_euclidean_centroids(CELLS, -1.0, 1.0)

    def whole(key):
        k0, k1, k2 = jax.random.split(key, 3)
        g0 = jnp.clip(ISO * jax.random.normal(k0, (BATCH, DIM), jnp.float32), -np.pi, np.pi)
        repertoire, em_state, _ = me.init(g0, centroids, k1)

        def body(carry, k):
            rep, es = carry
            rep, es, metrics = me.update(rep, es, k)
            return (rep, es), {"coverage": metrics["coverage"] / 100.0,
                               "qd_score": metrics["qd_score"]}

        (repertoire, _), hist = jax.lax.scan(body, (repertoire, em_state),
                                             jax.random.split(k2, iterations))
        return hist, jnp.sum(repertoire.fitnesses > -jnp.inf)

    t0 = time.perf_counter()
    compiled = jax.jit(whole).lower(jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0

    def run(seed):
        hist, count = jax.block_until_ready(compiled(jax.random.key(seed)))
        return {k: np.asarray(v) for k, v in hist.items()}, int(count)

    return run, compile_s


def qdax_status() -> str | None:
    """None when QDax imports (then it is measured), else why it is not."""
    try:
        import qdax  # noqa: F401
    except Exception as e:
        return (f"not measured: QDax does not import in this environment ({type(e).__name__}: "
                f"{e}); it is not a dependency (see the results file for the run in a "
                f"separate virtual environment)")
    return None


# ---------------------------------------------------------------------- main


def _timed(fn, repeats):
    """(wall seconds, process CPU seconds) of `repeats` calls fn(1000 + r)."""
    wall, cpu = [], []
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(1000 + r)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _fmt(values, scale=1.0, digits=0):
    v = [x * scale for x in values]
    return f"{statistics.median(v):,.{digits}f} [{min(v):,.{digits}f}, {max(v):,.{digits}f}]"


def main(argv=None):
    args = E.parser(__doc__, "map_elites.md").parse_args(argv)
    run_ = E.Run("map_elites.py", argv, "ribs", "qdax")
    cfg = QUICK if args.quick else FULL
    it, seeds, repeats = cfg["iterations"], cfg["seeds"], cfg["repeats"]
    evals = BATCH * (it + 1)
    header = run_.header(
        f"budget: {evals:,} evaluations (a first batch of {BATCH} and {it} iterations of "
        f"{BATCH}); coverage over {seeds} seeds; speed over {repeats} repeats after a "
        f"warm-up run", f"python: {sys.executable}", f"load average at start: {_load()}")

    # innerloop: a failure here fails the run.
    il_run, compile_s = innerloop_runner(it)
    il_hist = [il_run(args.seed + s) for s in range(seeds)]
    il_times, il_cpu = _timed(il_run, repeats)
    for h, count in il_hist:
        assert np.all(np.isfinite(h["qd_score"])) and count == round(h["coverage"][-1] * 4096)
    print(f"innerloop: compile {compile_s:.2f} s, run {_fmt(il_times, 1e3)} ms", flush=True)

    ribs_hist = ribs_times = ribs_cpu = ribs_error = None
    try:
        pyribs_run(0, 5, record=False)  # imports and numba compilation, untimed
        ribs_hist = [pyribs_run(args.seed + s, it) for s in range(seeds)]
        ribs_times, ribs_cpu = _timed(lambda s: pyribs_run(s, it, record=False), repeats)
        print(f"pyribs: run {_fmt(ribs_times, 1e3)} ms", flush=True)
    except Exception as e:  # a peer may fail: reported
        ribs_error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    qdax = qdax_status()
    qdax_hist = qdax_times = qdax_cpu = None
    if qdax is None:
        try:
            q_run, q_compile = qdax_runner(it)
            qdax_hist = [q_run(args.seed + s) for s in range(seeds)]
            qdax_times, qdax_cpu = _timed(q_run, repeats)
            print(f"QDax: compile {q_compile:.2f} s, run {_fmt(qdax_times, 1e3)} ms", flush=True)
        except Exception as e:  # a peer may fail: reported
            qdax = f"failed: {type(e).__name__}: {e}"
            traceback.print_exc()
    print(f"QDax: {qdax or 'measured'}", flush=True)

    # coverage and QD-score against evaluations
    n_points = cfg["points"]
    steps = np.linspace(it / n_points, it, n_points).round().astype(int)  # iterations done
    lines = ["## Coverage and QD-score against evaluations", "",
             f"Mean [min, max] over {seeds} seeds (seeds {args.seed}..{args.seed + seeds - 1}).",
             "", "| evaluations | innerloop coverage | pyribs coverage | innerloop QD-score | "
             "pyribs QD-score |", "|---|---|---|---|---|"]

    def cell(hists, key, i):
        if hists is None:
            return "failed"
        v = [h[key][i - 1] for h, _ in hists]
        d = 4 if key == "coverage" else 0
        return f"{np.mean(v):,.{d}f} [{min(v):,.{d}f}, {max(v):,.{d}f}]"

    for i in steps:
        lines.append(f"| {BATCH * (i + 1):,} | {cell(il_hist, 'coverage', i)} | "
                     f"{cell(ribs_hist, 'coverage', i)} | {cell(il_hist, 'qd_score', i)} | "
                     f"{cell(ribs_hist, 'qd_score', i)} |")

    lines += ["", "## Evaluations per second", "",
              f"One whole run of {evals:,} evaluations, timed {repeats} times after a warm-up "
              "run: median [min, max]. innerloop's compile time is apart (once per "
              "configuration).", "",
              "| library | evaluations per second | run time (ms) | compile (s) | "
              "ratio to pyribs | process CPU time (ms) |", "|---|---|---|---|---|---|"]
    il_rate = [evals / t for t in il_times]
    ribs_rate = None if ribs_times is None else [evals / t for t in ribs_times]
    ratio = None if ribs_rate is None else statistics.median(il_rate) / statistics.median(ribs_rate)
    lines.append(f"| innerloop MAPElites | {_fmt(il_rate)} | {_fmt(il_times, 1e3, 1)} | "
                 f"{compile_s:.2f} | {'n/a' if ratio is None else f'{ratio:.1f}'} | "
                 f"{_fmt(il_cpu, 1e3, 1)} |")
    if ribs_rate is not None:
        lines.append(f"| pyribs | {_fmt(ribs_rate)} | {_fmt(ribs_times, 1e3, 1)} | - | 1.0 | "
                     f"{_fmt(ribs_cpu, 1e3, 1)} |")
    else:
        lines.append(f"| pyribs | failed: {ribs_error} | | | |")
    if qdax_times is not None:
        q_rate = [evals / t for t in qdax_times]
        lines.append(f"| QDax {_version('qdax')} MAPElites | {_fmt(q_rate)} | "
                     f"{_fmt(qdax_times, 1e3, 1)} | {q_compile:.2f} | "
                     f"{statistics.median(q_rate) / statistics.median(ribs_rate):.1f} | "
                     f"{_fmt(qdax_cpu, 1e3, 1)} |"
                     if ribs_rate else f"| QDax | {_fmt(q_rate)} | | | |")
        final = [h["coverage"][-1] for h, _ in qdax_hist]
        final_qd = [h["qd_score"][-1] for h, _ in qdax_hist]
        lines.append("")
        lines.append(f"QDax final coverage {np.mean(final):.4f} [{min(final):.4f}, "
                     f"{max(final):.4f}], QD-score {np.mean(final_qd):,.0f} "
                     f"[{min(final_qd):,.0f}, {max(final_qd):,.0f}] at {evals:,} evaluations.")
    else:
        lines.append(f"| QDax | {qdax} | | | |")
    if ribs_cpu is not None:
        lines += ["", f"By process CPU time per run (less sensitive to the other processes on "
                  f"the machine; not the claim): pyribs / innerloop = "
                  f"{statistics.median(ribs_cpu) / statistics.median(il_cpu):.1f}."]
    if cfg["sweep"] and ribs_rate is not None:
        lines += ["", "### Other batch sizes (context, not claimed)", "",
                  f"The same comparison at other batch sizes, about {evals:,} evaluations "
                  f"each (one seed, {repeats} repeats), for context: on a loaded machine "
                  "these single-seed ratios vary widely from run to run.", "",
                  "| batch | innerloop evaluations per second | pyribs evaluations per "
                  "second | ratio |", "|---|---|---|---|"]
        for b in cfg["sweep"]:
            n_it = max(1, evals // b - 1)
            il_b, _ = innerloop_runner(n_it, b)
            il_b(0)
            t_il = _timed(il_b, repeats)[0]
            t_rb = _timed(lambda s, n_it=n_it, b=b: pyribs_run(s, n_it, False, b), repeats)[0]
            r_il = [b * (n_it + 1) / t for t in t_il]
            r_rb = [b * (n_it + 1) / t for t in t_rb]
            lines.append(f"| {b} | {_fmt(r_il)} | {_fmt(r_rb)} | "
                         f"{statistics.median(r_il) / statistics.median(r_rb):.1f} |")
            print(lines[-1], flush=True)

    # the claims
    claims = []
    if ribs_hist is None:
        claims.append(E.claim(False, f"pyribs ran (needed for the comparison): {ribs_error}"))
    else:
        for key, d in (("coverage", 4), ("qd_score", 1)):
            a = np.array([h[key][-1] for h, _ in il_hist])
            b = np.array([h[key][-1] for h, _ in ribs_hist])
            se = float(np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)))
            claims.append(E.claim(
                a.mean() >= b.mean() - 2 * se,
                f"final {key} at {evals:,} evaluations: innerloop {a.mean():.{d}f} >= pyribs "
                f"{b.mean():.{d}f} - 2 x {se:.{d}f} (two standard errors of the difference)"))
        claims.append(E.claim(
            ratio >= cfg["speedup"],
            f"evaluations per second: innerloop / pyribs = {ratio:.1f} (medians) >= "
            f"{cfg['speedup']}"))
    lines += ["", "Claims:", "", *(f"- {c[1]}" for c in claims), "",
              f"Load average at the end: {_load()}."]
    _plot(args.out, il_hist, ribs_hist, evals)
    run_.write(args.out, "MAP-Elites on the planar arm: innerloop vs pyribs", header,
               "\n".join(lines))
    E.enforce(*claims)
    return 0


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


def _load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def _plot(out, il_hist, ribs_hist, evals):
    """Coverage and QD-score against evaluations (PNG beside the results file)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for hists, name in ((il_hist, "innerloop"), (ribs_hist, "pyribs")):
        if hists is None:
            continue
        for ax, key in zip(axes, ("coverage", "qd_score"), strict=True):
            v = np.stack([h[key] for h, _ in hists])
            x = BATCH * (np.arange(1, v.shape[1] + 1) + 1)
            ax.plot(x, v.mean(0), label=name)
            ax.fill_between(x, v.min(0), v.max(0), alpha=0.2)
    for ax, title in zip(axes, ("coverage", "QD-score (offset -pi^2)"), strict=True):
        ax.set_xlabel("evaluations")
        ax.set_title(title)
        ax.legend()
    fig.suptitle(f"MAP-Elites, planar arm (10 joints, 64x64 grid), {evals:,} evaluations")
    fig.tight_layout()
    fig.savefig(str(out.with_suffix(".png")), dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except E.ClaimFailed as e:
        print(f"claims failed: {e}", file=sys.stderr)
        sys.exit(1)
