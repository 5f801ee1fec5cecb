"""Benchmark: batched Nash equilibria of zero-sum matrix games, jit(vmap(nash)) against
OpenSpiel's LP solver (cvxpy) and nashpy, in one process.

    python benchmarks/nash.py [--quick] [--seed 0] [--out benchmarks/results/nash.md]

Games: `games` random n x n zero-sum games with standard normal payoffs (float64).
innerloop: `jax.jit(jax.vmap(nash))` with tol 1e-6 (its default solver, the tableau
simplex method with PDHG as fallback), compiled once, then timed over `repeats` calls on
the whole batch.
Peers, one game at a time in a Python loop, on the first `peer_games` games (the
same games), timed over `repeats` passes and extrapolated as games per second:
- OpenSpiel: `open_spiel.python.algorithms.lp_solver.solve_zero_sum_matrix_game`
  (two LPs in cvxpy). Its default cvxpy solver ECOS is no longer shipped with cvxpy;
  when it is missing the run says so and uses CLARABEL, cvxpy's default LP solver, with
  cvxpy's default tolerances.
- nashpy: `nashpy.Game(A).linear_program()` (the minimax LP of each player, scipy
  linprog / HiGHS).
Every solver's exploitability max_i (A y)_i - min_j (x^T A)_j is computed here, in
NumPy float64, from the strategies it returns (clipped at 0 and renormalised).

Claims (every run): every innerloop game reaches exploitability <= 1e-6; values equal
`scipy.optimize.linprog`'s to 1e-6 on `lp_games` random 50 x 50 games (quick:
16 x 16). Full run only (timing at quick scale is noise): innerloop's games/s >= 50x
OpenSpiel's and >= 10x nashpy's.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings

import _experiment as E  # benchmarks/_experiment.py (the script's folder is on sys.path)
import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from innerloop.population import nash  # noqa: E402

TOL = 1e-6
RATIO_OPENSPIEL = 50.0
RATIO_NASHPY = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    games: int = 1024
    n: int = 64
    peer_games: int = 64      # games each peer solves per pass (the first of the batch)
    repeats: int = 5
    lp_games: int = 1000
    lp_n: int = 50


QUICK = dict(games=64, n=16, peer_games=4, repeats=2, lp_games=64, lp_n=16)


def gap(a, x, y):
    """Exploitability of (x, y) in float64, after clipping and renormalising."""
    x = np.clip(np.asarray(x, np.float64), 0, None)
    y = np.clip(np.asarray(y, np.float64), 0, None)
    x, y = x / x.sum(), y / y.sum()
    return float(np.max(a @ y) - np.min(x @ a))


def linprog_value(a):
    """max_x min_j (x^T A)_j as an LP in (x, v), scipy's HiGHS."""
    from scipy.optimize import linprog

    m, n = a.shape
    c = np.zeros(m + 1)
    c[-1] = -1.0
    res = linprog(c, A_ub=np.hstack([-a.T, np.ones((n, 1))]), b_ub=np.zeros(n),
                  A_eq=np.hstack([np.ones((1, m)), np.zeros((1, 1))]), b_eq=[1.0],
                  bounds=[(0, None)] * m + [(None, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return -res.fun


def _median(ts):
    ts = np.asarray(ts)
    return f"{np.median(ts):.4g} [{ts.min():.4g}, {ts.max():.4g}]"


def openspiel_solver():
    """OpenSpiel's solve_zero_sum_matrix_game, and a note on the cvxpy solver used."""
    import cvxpy as cp
    import pyspiel
    from open_spiel.python.algorithms import lp_solver

    note = "cvxpy ECOS (OpenSpiel's default)"
    if "ECOS" not in cp.installed_solvers():
        # Bound at definition time, so the defaults of the method itself are replaced.
        lp_solver.LinearProgram.solve.__defaults__ = (cp.CLARABEL, {})
        note = "cvxpy CLARABEL (OpenSpiel's default ECOS is not installed)"

    def solve(a):
        x, y, _, _ = lp_solver.solve_zero_sum_matrix_game(pyspiel.create_matrix_game(a, -a))
        return np.asarray(x).ravel(), np.asarray(y).ravel()

    return solve, note


def nashpy_solver():
    import nashpy

    def solve(a):
        x, y = nashpy.Game(a).linear_program()
        return np.asarray(x), np.asarray(y)

    return solve, f"nashpy {nashpy.__version__} Game(A).linear_program()"


def time_peer(solve, games, repeats):
    """Seconds per game over `repeats` passes, and the exploitabilities."""
    per_game, gaps = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = [solve(a) for a in games]
        per_game.append((time.perf_counter() - t0) / len(games))
        if r == 0:
            gaps = [gap(a, x, y) for a, (x, y) in zip(games, out)]
    return per_game, gaps


def main(argv=None):
    p = E.parser(__doc__, "nash.md")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, "
                   "quick 2)")
    args = p.parse_args(argv)
    run = E.Run("nash.py", argv, "nashpy", "cvxpy", "open_spiel", "scipy")
    cfg = Config(**QUICK) if args.quick else Config()
    if args.repeats is not None:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    header = run.header(f"config: {cfg}", "load average at start: "
                        + " ".join(f"{v:.1f}" for v in __import__("os").getloadavg()))
    rng = np.random.default_rng(args.seed)
    games = rng.standard_normal((cfg.games, cfg.n, cfg.n))

    # innerloop: compile once, then time the whole batch.
    solve = jax.jit(jax.vmap(lambda a: nash(a, tol=TOL)))
    batch = jnp.asarray(games)
    t0 = time.perf_counter()
    eq = jax.block_until_ready(solve(batch))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(cfg.repeats):
        t0 = time.perf_counter()
        eq = jax.block_until_ready(solve(batch))
        times.append(time.perf_counter() - t0)
    il_gaps = [gap(a, x, y) for a, x, y in zip(games, np.asarray(eq.row), np.asarray(eq.col))]
    il_rate = [cfg.games / t for t in times]
    steps = np.asarray(eq.steps)
    print(f"innerloop: {np.median(il_rate):.1f} games/s, worst gap {max(il_gaps):.2e}, "
          f"steps median {np.median(steps):.0f} max {steps.max()}", flush=True)
    rows = [("innerloop jit(vmap(nash)), simplex", cfg.games, il_rate, max(il_gaps),
             f"first call (compile + solve) {compile_s:.1f} s; steps (pivots, plus PDHG "
             f"steps where it fell back) median {np.median(steps):.0f}, max {steps.max()}")]

    peers = {}
    for name, make in (("OpenSpiel lp_solver", openspiel_solver), ("nashpy", nashpy_solver)):
        try:
            fn, note = make()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                per_game, gaps = time_peer(fn, games[:cfg.peer_games], cfg.repeats)
            rate = [1 / t for t in per_game]
            peers[name] = float(np.median(rate))
            rows.append((name, cfg.peer_games, rate, max(gaps), note))
            print(f"{name}: {np.median(rate):.1f} games/s, worst gap {max(gaps):.2e}",
                  flush=True)
        except Exception as e:  # a peer may fail; it is reported
            rows.append((name, 0, [float("nan")], float("nan"),
                         f"FAILED: {type(e).__name__}: {str(e)[:200]}"))
            print(f"{name} failed: {e!r}", flush=True)

    # Values against linprog.
    lp_games = np.random.default_rng(args.seed + 1).standard_normal(
        (cfg.lp_games, cfg.lp_n, cfg.lp_n))
    lp_eq = jax.block_until_ready(jax.jit(jax.vmap(lambda a: nash(a, tol=TOL)))(
        jnp.asarray(lp_games)))
    lp_vals = np.array([linprog_value(a) for a in lp_games])
    lp_err = float(np.max(np.abs(np.asarray(lp_eq.value) - lp_vals)))
    print(f"max |value - linprog| over {cfg.lp_games} games: {lp_err:.2e}", flush=True)

    il = float(np.median(il_rate))
    claims = [
        E.claim(max(il_gaps) <= TOL and bool(np.all(np.asarray(eq.converged))),
                f"innerloop: every one of {cfg.games} games at exploitability <= {TOL:g} "
                f"(worst {max(il_gaps):.2e})"),
        E.claim(lp_err <= TOL, f"values equal linprog's to {TOL:g} on {cfg.lp_games} "
                f"random {cfg.lp_n}x{cfg.lp_n} games (max difference {lp_err:.2e})"),
    ]
    speed = []
    for name, need in (("OpenSpiel lp_solver", RATIO_OPENSPIEL), ("nashpy", RATIO_NASHPY)):
        if name in peers:
            ratio = il / peers[name]
            speed.append(E.claim(ratio >= need, f"innerloop games/s {ratio:.1f}x {name}'s "
                                 f"(needs >= {need:g}x)"))
        else:
            speed.append((False, f"{name} failed, so the ratio is not measured"))
    if not args.quick:
        claims += speed

    lines = ["| solver | games timed | games/s, median [min, max] over repeats | "
             "worst exploitability | notes |", "|---|---|---|---|---|"]
    for name, count, rate, worst, note in rows:
        lines.append(f"| {name} | {count} | {_median(rate)} | {worst:.2e} | {note} |")
    lines += ["", f"{cfg.games} random {cfg.n}x{cfg.n} standard normal games, float64; "
              f"innerloop timed on the whole batch ({cfg.repeats} repeats after "
              f"compiling), each peer on the first {cfg.peer_games} games in a loop "
              f"({cfg.repeats} passes), games/s extrapolated per game. Exploitability of "
              "every solver computed here from its strategies.", "",
              "Speed ratios" + (" (quick: reported, not enforced):" if args.quick else ":"),
              "", *(f"- {c[1]}" for c in speed), "", "Claims:", "",
              *(f"- {c[1]}" for c in claims)]
    run.write(args.out, "Batched Nash equilibria against OpenSpiel and nashpy", header,
              "\n".join(lines))
    E.enforce(*claims)
    return 0


if __name__ == "__main__":
    sys.exit(main())
