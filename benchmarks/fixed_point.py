"""Benchmark: differentiable fixed points with innerloop, against the bare loop,
jaxopt and optimistix, side by side in one process.

    python benchmarks/fixed_point.py            # full run, 20 interleaved rounds
    python benchmarks/fixed_point.py --quick    # tiny smoke configuration (tests)
    python benchmarks/fixed_point.py --runs 50 --out benchmarks/results/fp.md

Problem: the batched equilibrium layer z = tanh(W z + s (U x + b)), hidden 256,
input 64, batch 128, float32, rtol 1e-5 and atol 0: each example stops when
||f(z) - z|| <= 1e-5 ||z|| (the relative test the peers are given too), theta =
(W, U, b), loss = sum(z* * C) for a fixed random cotangent C.

- "orthogonal": W = 0.9 Q (Q random orthogonal, spectral radius 0.9), s = 1.
- "hard": W symmetric with eigenvalues spread uniformly over [0, 0.99], s = 0.05,
  so that tanh stays near its linear range and the contraction factor is ~0.99.

Rows:

- bare limit: a jitted `lax.fori_loop` applying the batched f exactly N times,
  N = max(sol.steps) of the innerloop `Iteration` solve. Its value_and_grad is N
  forward applications, then N adjoint steps u <- J^T u + C with the VJP at the
  final point (one `jax.vjp`, its function looped), then the theta VJP.
- plain JAX unroll: `jax.value_and_grad` through the same N-step `fori_loop`.
- innerloop: solver (Iteration, Anderson(5), Broyden) x gradient mode (Implicit(),
  Implicit(GMRES), Unroll(), Truncated(5), Phantom(), JacobianFree()), one example
  per `fixed_point` call, batched with `jax.vmap` (each example stops on its own).
  A solver whose Implicit() forward solve does not converge on every example gets
  no further rows. Iteration / Unroll() is the full unroll. One more row,
  Implicit(on_failure="nan"), has no warning callback in the backward pass.
  SteadyState() only with --steady-state (orthogonal problem, Implicit()): its
  implicit ODE solver is far slower than the rest on this problem.
- jaxopt `FixedPointIteration` / `AndersonAcceleration` (implicit_diff=True, default
  implicit_diff_solve) and optimistix `fixed_point` (`FixedPointIteration`,
  `ImplicitAdjoint(GMRES)`), each on the whole batch as one state.

Columns: iterations (max over the batch; for peers the count they report), times
(ms) of the forward solve and of value_and_grad and their ratios to the bare limit
and to jaxopt's FixedPointIteration (each ratio taken within a round), as the median
and interquartile range over the rounds, relative errors of z* and of the gradient
against a float64 reference (z* by Newton's method, gradient by dense (I - J)^{-T}
solves, in NumPy float64), XLA temp memory of the compiled value_and_grad and its
lower+compile time.

Every function is compiled once (lower + compile, timed), called once to warm up,
then timed in interleaved rounds: each round calls every row's forward and
value_and_grad once, so a change in the machine's load hits all rows alike.

Peers may fail and are reported. An innerloop row (and the bare limit, every ratio's
denominator) that raises, returns a non-finite value or gradient, leaves an example
unconverged, or whose gradient error exceeds its bound (IMPLICIT_GRAD_BOUND for the
Implicit modes, UNROLL_GRAD_BOUND for Unroll() through Iteration and Anderson; the
approximate modes have none) fails the run: the script writes what it has, marked
RUN FAILED, skips the remaining sections and exits with status 1.

A last section (orthogonal problem) times lower + compile of value_and_grad again,
over `--compile-rounds` interleaved rounds, for innerloop's Implicit()
with both runtime checks (the NaN/inf input check, `equinox.error_if`; the adjoint
warning, a host callback), with the input check only, and with neither, next to
jaxopt: a single compile per row is too noisy for that comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import _report  # benchmarks/_report.py (the script's folder is on sys.path)
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jax import lax

import innerloop as il
from innerloop.solvers import Anderson, Broyden, Iteration, SteadyState

TOL = 1e-5
# GMRES of innerloop's Implicit(GMRES) (per example) and of optimistix's adjoint
# (whole batch, where atol=1e-5 stagnates in float32 on the hard problem).
GMRES_RTOL, GMRES_ATOL, OPTX_GMRES_ATOL = 1e-5, 1e-5, 1e-4
# (kind, max_steps); the problem's seed is its index here.
PROBLEMS = [("orthogonal", 100), ("hard", 300)]
# grad err above which an exact-gradient innerloop row fails the run: float32 solves
# at tol 1e-5 times the conditioning of (I - J) (about 100 on the hard problem); an
# unrolled derivative converges more slowly than the iterates it follows.
IMPLICIT_GRAD_BOUND, UNROLL_GRAD_BOUND = 1e-3, 1e-2


# ------------------------------------------------------------------- problem


@dataclass
class Problem:
    name: str
    theta: tuple  # (W, U, b), float32
    X: jax.Array  # (batch, input)
    C: jax.Array  # (batch, hidden) cotangent of the loss
    scale: float  # injection scale s
    max_steps: int
    # float64 reference (NumPy)
    z_ref: np.ndarray = None
    g_ref: tuple = None

    @property
    def args(self):
        return (self.theta, self.X, self.C)


def make_problem(kind: str, hidden: int, inp: int, batch: int, max_steps: int,
                 seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((hidden, hidden)))
    q = q * np.sign(np.diag(r))  # Haar-distributed orthogonal matrix
    if kind == "orthogonal":
        W, scale = 0.9 * q, 1.0
    elif kind == "hard":
        W, scale = (q * np.linspace(0.0, 0.99, hidden)) @ q.T, 0.05
        W = 0.5 * (W + W.T)
    else:
        raise ValueError(kind)
    U = rng.standard_normal((hidden, inp)) / np.sqrt(inp)
    b = 0.1 * rng.standard_normal(hidden)
    X = rng.standard_normal((batch, inp))
    C = rng.standard_normal((batch, hidden))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    p = Problem(kind, (f32(W), f32(U), f32(b)), f32(X), f32(C), scale, max_steps)
    # The reference sees exactly the float32 inputs, promoted to float64.
    p.z_ref, p.g_ref = reference(*p.theta, p.X, p.C, scale)
    return p


def f_single(z, theta, x, scale):
    """One example: z (hidden,), x (input,). Written with the state as a row vector
    (z @ W.T), like the batched form: under vmap, `W @ z` makes XLA compute W Z^T
    and transpose it back on every iteration (about 10% slower on CPU, measured),
    an artefact of the layout, not of the solver."""
    W, U, b = theta
    return jnp.tanh(z @ W.T + scale * (x @ U.T + b))


def f_batch(Z, theta, X, scale):
    """The whole batch: Z (batch, hidden), X (batch, input)."""
    W, U, b = theta
    return jnp.tanh(Z @ W.T + scale * (X @ U.T + b))


def reference(W, U, b, X, C, scale):
    """float64 z* (Newton's method from plain iteration) and the exact gradient of
    sum(z* * C) w.r.t. (W, U, b) by dense (I - J)^{-T} solves, in NumPy."""
    W, U, b, X, C = (np.asarray(a, np.float64) for a in (W, U, b, X, C))
    n = W.shape[0]
    inj = scale * (X @ U.T + b)
    Z = np.zeros_like(C)
    for _ in range(30):
        Z = np.tanh(Z @ W.T + inj)
    eye = np.eye(n)
    for _ in range(50):
        F = np.tanh(Z @ W.T + inj)
        res = np.linalg.norm(F - Z, axis=1) / np.linalg.norm(Z, axis=1)
        if res.max() < 1e-14:
            break
        S = 1.0 - F ** 2
        J = S[:, :, None] * W[None]  # df/dz per example
        Z = Z - np.linalg.solve(eye - J, (Z - F)[..., None])[..., 0]
    F = np.tanh(Z @ W.T + inj)
    res = np.linalg.norm(F - Z, axis=1) / np.linalg.norm(Z, axis=1)
    assert res.max() < 1e-12, f"float64 reference did not converge ({res.max():.2e})"
    S = 1.0 - Z ** 2
    J = S[:, :, None] * W[None]
    # u = (I - J)^{-T} c per example; then the theta VJP of f at z*.
    u = np.linalg.solve(np.transpose(eye - J, (0, 2, 1)), C[..., None])[..., 0]
    G = S * u  # cotangent of the pre-activation
    return Z, (G.T @ Z, scale * G.T @ X, scale * G.sum(0))


def grad_error(grads, ref) -> float:
    """max over W, U, b of max|g - g_ref| / max|g_ref|."""
    errs = []
    for g, r in zip(grads, ref):
        g = np.asarray(g, np.float64)
        errs.append(np.max(np.abs(g - r)) / np.max(np.abs(r)))
    return float(max(errs))


def value_error(Z, ref) -> float:
    Z = np.asarray(Z, np.float64)
    return float(np.max(np.abs(Z - ref)) / np.max(np.abs(ref)))


# ------------------------------------------------------------ the contenders
#
# Every contender is a pair of functions of (theta, X, C):
#   forward(theta, X, C) -> (Z, iterations, examples converged, examples diverged)
#   value_and_grad(theta, X, C) -> (loss, grads)


def nonfinite_rows(Z):
    return jnp.sum(~jnp.all(jnp.isfinite(Z), axis=1))


def innerloop_fns(p: Problem, solver, grad, max_steps=None):
    scale = p.scale
    max_steps = p.max_steps if max_steps is None else max_steps

    def solve(theta, X):
        def one(x):
            z0 = jnp.zeros(p.C.shape[1], jnp.float32)
            return il.fixed_point(lambda z, th: f_single(z, th, x, scale), z0, theta,
                                  solver=solver, grad=grad, rtol=TOL, atol=0.0,
                                  max_steps=max_steps)
        return jax.vmap(one)(X)

    def forward(theta, X, C):
        sol = solve(theta, X)
        return (sol.value, jnp.max(sol.steps), jnp.sum(sol.converged),
                jnp.sum(~jnp.isfinite(sol.residual)))

    def loss(theta, X, C):
        return jnp.sum(solve(theta, X).value * C)

    return forward, jax.value_and_grad(loss)


def bare_fns(p: Problem, n: int):
    scale = p.scale

    def iterate(theta, X):
        Z0 = jnp.zeros((X.shape[0], p.C.shape[1]), jnp.float32)
        return lax.fori_loop(0, n, lambda _, Z: f_batch(Z, theta, X, scale), Z0)

    def forward(theta, X, C):
        Z = iterate(theta, X)
        return Z, jnp.asarray(n), jnp.asarray(X.shape[0]), nonfinite_rows(Z)

    def value_and_grad(theta, X, C):
        Z = iterate(theta, X)
        _, vjp_z = jax.vjp(lambda z: f_batch(z, theta, X, scale), Z)
        u = lax.fori_loop(0, n, lambda _, u: vjp_z(u)[0] + C, jnp.zeros_like(C))
        _, vjp_theta = jax.vjp(lambda th: f_batch(Z, th, X, scale), theta)
        return jnp.sum(Z * C), vjp_theta(u)[0]

    return forward, value_and_grad


def plain_unroll_fns(p: Problem, n: int):
    forward, _ = bare_fns(p, n)
    scale = p.scale

    def loss(theta, X, C):
        Z0 = jnp.zeros_like(C)
        Z = lax.fori_loop(0, n, lambda _, Z: f_batch(Z, theta, X, scale), Z0)
        return jnp.sum(Z * C)

    return forward, jax.value_and_grad(loss)


def jaxopt_fns(p: Problem, cls_name: str, tol_abs: float):
    import jaxopt

    scale = p.scale

    def fp(Z, theta, X):
        return f_batch(Z, theta, X, scale)

    kwargs = dict(fixed_point_fun=fp, maxiter=p.max_steps, tol=tol_abs,
                  implicit_diff=True)
    if cls_name == "AndersonAcceleration":
        solver = jaxopt.AndersonAcceleration(history_size=5, **kwargs)
    else:
        solver = jaxopt.FixedPointIteration(**kwargs)

    def forward(theta, X, C):
        out = solver.run(jnp.zeros_like(C), theta, X)
        ok = (out.state.error <= tol_abs).astype(jnp.int32) * X.shape[0]
        return out.params, out.state.iter_num, ok, nonfinite_rows(out.params)

    def loss(theta, X, C):
        return jnp.sum(solver.run(jnp.zeros_like(C), theta, X).params * C)

    return forward, jax.value_and_grad(loss)


def optimistix_fns(p: Problem, atol: float):
    import optimistix as optx

    scale = p.scale
    solver = optx.FixedPointIteration(rtol=TOL, atol=atol, norm=optx.rms_norm)
    adjoint = optx.ImplicitAdjoint(
        linear_solver=lx.GMRES(rtol=GMRES_RTOL, atol=OPTX_GMRES_ATOL))

    def solve(theta, X, C):
        return optx.fixed_point(lambda Z, args: f_batch(Z, *args, scale), solver,
                                jnp.zeros_like(C), (theta, X), max_steps=p.max_steps,
                                adjoint=adjoint, throw=False)

    def forward(theta, X, C):
        sol = solve(theta, X, C)
        ok = (sol.result == optx.RESULTS.successful).astype(jnp.int32) * X.shape[0]
        return sol.value, sol.stats["num_steps"], ok, nonfinite_rows(sol.value)

    def loss(theta, X, C):
        return jnp.sum(solve(theta, X, C).value * C)

    return forward, jax.value_and_grad(loss)


# ------------------------------------------------------------------ measuring


@dataclass
class Row:
    name: str
    note: str = ""
    iters: int = 0
    converged: str = ""
    fwd_ms: float = float("nan")
    vg_ms: float = float("nan")
    z_err: float = float("nan")
    g_err: float = float("nan")
    temp_mib: float = float("nan")
    compile_s: float = float("nan")
    warned: bool = False
    failed: str = ""
    all_converged: bool = True
    # required: an innerloop row (or the bare limit): any of `problems` fails the run
    required: bool = False
    bound: float | None = None  # on grad err; None: an approximate gradient
    problems: list = field(default_factory=list)
    # the jitted functions that are timed, and the timings of the interleaved rounds
    fwd_c: Any = None
    vg_c: Any = None
    fwd_times: list = field(default_factory=list)
    vg_times: list = field(default_factory=list)


def compile_fn(fn: Callable, args) -> tuple[Any, float]:
    """lower + compile, once per function (so no cache is hit)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def temp_bytes(compiled) -> float:
    mem = compiled.memory_analysis()
    return float("nan") if mem is None else float(mem.temp_size_in_bytes)


def prepare(name: str, fns, p: Problem, note: str = "", required: bool = False,
            bound: float | None = None) -> Row:
    """Compile value_and_grad ahead of time (compile time, temp memory), then warm up
    the `jax.jit` versions of both functions that `time_rounds` times (their outputs
    give the errors). A required row's failures go to `row.problems`.

    Timing goes through `jax.jit`, the way users call a solve, not through the
    ahead-of-time `Compiled` object: that object dispatches an executable holding a
    host callback (`eqx.error_if`, the adjoint warning) by a slower path, 0.38 ms more
    per call for Iteration / Implicit() on the orthogonal problem, measured, against
    0.04 ms for the bare loop."""
    forward, vg = fns
    args = p.args
    row = Row(name, note=note, required=required, bound=bound)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            vg_aot, row.compile_s = compile_fn(vg, args)
            row.fwd_c, row.vg_c = jax.jit(forward), jax.jit(vg)
            Z, iters, conv, diverged = jax.block_until_ready(row.fwd_c(*args))
            loss, grads = jax.block_until_ready(row.vg_c(*args))
        row.warned = any(issubclass(w.category, il.BackwardNotConvergedWarning)
                         for w in caught)
    except Exception as e:  # a peer that fails is reported; a required row fails the run
        row.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}"
        row.fwd_c = row.vg_c = None
        if required:
            row.problems.append(f"raised {row.failed}")
        print(f"  {name:<52s} FAILED: {row.failed}", flush=True)
        return row
    row.temp_mib = temp_bytes(vg_aot) / 2**20
    row.iters = int(iters)
    batch = p.X.shape[0]
    row.all_converged = int(conv) == batch
    row.converged = f"{int(conv)}/{batch}"
    if int(diverged):
        row.note = (row.note + "; " if row.note else "") + (
            f"diverged (non-finite residual) in {int(diverged)}")
    row.z_err = value_error(Z, p.z_ref)
    row.g_err = grad_error(grads, p.g_ref)
    if required:
        row.problems += check(row, Z, loss, grads)
    print(f"  {name:<52s} iters {row.iters:4d}  conv {row.converged:>7s}  "
          f"grad err {row.g_err:.1e}  temp {row.temp_mib:8.2f} MiB  "
          f"compile {row.compile_s:5.2f} s", flush=True)
    for problem in row.problems:
        print(f"  {'':<52s} INNERLOOP ROW FAILED: {problem}", flush=True)
    return row


def check(row: Row, Z, loss, grads) -> list[str]:
    """What makes a required row fail the run (empty: it passed)."""
    problems = []
    leaves = [Z, loss, *jax.tree.leaves(grads)]
    if not all(np.all(np.isfinite(np.asarray(x))) for x in leaves):
        problems.append("non-finite value, loss or gradient")
    if not row.all_converged:
        problems.append(f"only {row.converged} examples converged")
    if row.bound is not None and not row.g_err <= row.bound:
        problems.append(f"grad err {row.g_err:.1e} above its bound {row.bound:g}")
    return problems


def time_rounds(rows: list[Row], args, runs: int) -> None:
    """Interleaved rounds: each round times every row's forward and value_and_grad
    once, so slow drifts of the machine's load hit all rows alike. Medians."""
    live = [r for r in rows if r.fwd_c is not None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", il.BackwardNotConvergedWarning)
        for _ in range(runs):
            for r in live:
                t0 = time.perf_counter()
                jax.block_until_ready(r.fwd_c(*args))
                t1 = time.perf_counter()
                jax.block_until_ready(r.vg_c(*args))
                t2 = time.perf_counter()
                r.fwd_times.append(t1 - t0)
                r.vg_times.append(t2 - t1)
    for r in live:
        r.fwd_ms = 1e3 * statistics.median(r.fwd_times)
        r.vg_ms = 1e3 * statistics.median(r.vg_times)


# -------------------------------------------------------------------- report


def fmt(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)


def quartiles(xs) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of the rounds; nan if there are none."""
    xs = list(xs)
    if not xs:
        return (float("nan"),) * 3
    if len(xs) == 1:
        return (xs[0],) * 3
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q2, q1, q3


def spread(xs, spec: str = ".2f") -> str:
    """'median [q1, q3]' over the rounds, or '-' when there are none."""
    med, q1, q3 = quartiles(xs)
    if med != med:
        return "-"
    return f"{med:{spec}} [{q1:{spec}}, {q3:{spec}}]"


def per_round(r: Row, ref: Row | None, which: str) -> list[float]:
    """r's time / ref's time within each round ('fwd' or 'vg'); [] if either is missing."""
    a = getattr(r, f"{which}_times")
    b = [] if ref is None else getattr(ref, f"{which}_times")
    if not a or len(a) != len(b):
        return []
    return [x / y for x, y in zip(a, b)]


def table(rows: list[Row], bare: Row, jaxopt: Row | None) -> str:
    head = ("| method | iters | conv | fwd ms | fwd / bare | fwd / jaxopt | v&g ms "
            "| v&g / bare | v&g / jaxopt | z* err | grad err | temp MiB | compile s "
            "| notes |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        notes = [x for x in (r.note,) if x]
        if r.warned:
            notes.append("BackwardNotConvergedWarning")
        if r.failed and not r.required:
            notes.append("failed: " + r.failed.replace("|", "/"))
        notes += ["INNERLOOP ROW FAILED: " + x.replace("|", "/") for x in r.problems]
        ms = lambda ts: [1e3 * t for t in ts]  # noqa: E731
        lines.append(
            f"| {r.name} | {r.iters if not r.failed else '-'} | {r.converged or '-'} | "
            f"{spread(ms(r.fwd_times))} | {spread(per_round(r, bare, 'fwd'))} | "
            f"{spread(per_round(r, jaxopt, 'fwd'))} | "
            f"{spread(ms(r.vg_times))} | {spread(per_round(r, bare, 'vg'))} | "
            f"{spread(per_round(r, jaxopt, 'vg'))} | "
            f"{fmt(r.z_err, '.1e')} | {fmt(r.g_err, '.1e')} | {fmt(r.temp_mib, '.2f')} | "
            f"{fmt(r.compile_s, '.2f')} | {'; '.join(notes)} |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    return _report.versions(
        "jax", "jaxlib", "equinox", "lineax", "optimistix", "jaxopt", "diffrax", "innerloop",
        "numpy")


# ------------------------------------------------------------ compile time


def compile_breakdown(p: Problem, rounds: int, checks_off: bool = False) -> list[str]:
    """Lower+compile time of value_and_grad over `rounds` interleaved rounds
    (a fresh function each time, so no cache is hit) for innerloop's Implicit(),
    next to jaxopt in the same process (median [quartiles]; the ratio to jaxopt taken
within each round): table rows (Markdown).

    In a process started with `EQX_ON_ERROR=off` (`checks_off=True`), equinox's
    runtime errors, and so innerloop's NaN/inf input check, compile to nothing; with
    Implicit(on_failure='nan') as well, no runtime check is left. (The variable is
    read once, at import, so this needs its own process.)"""
    tol_abs = TOL * float(np.linalg.norm(p.z_ref))
    if checks_off:
        modes = [("Implicit(on_failure='nan'), EQX_ON_ERROR=off: no runtime checks",
                  lambda: il.Implicit(on_failure="nan"))]
    else:
        modes = [("Implicit(): NaN/inf input check and adjoint warning (default)",
                  lambda: il.Implicit()),
                 ("Implicit(on_failure='nan'): input check only",
                  lambda: il.Implicit(on_failure="nan"))]
    configs = []  # (row, solver, gradient mode or None for the peer, peer row)
    for sname, peer in (("Iteration", "FixedPointIteration"),
                        ("Anderson(5)", "AndersonAcceleration")):
        peer_row = f"jaxopt {peer}" + (" (second process)" if checks_off else "")
        configs += [(f"innerloop {sname} / {label}", sname, mode, peer_row)
                    for label, mode in modes]
        configs.append((peer_row, peer, None, peer_row))
    times: dict[str, list[float]] = {c[0]: [] for c in configs}
    for r in range(rounds + 1):  # round 0 warms up JAX's and XLA's own start-up
        for name, solver, mode, _peer in configs:
            if mode is None:
                vg = jaxopt_fns(p, solver, tol_abs)[1]
            else:
                vg = innerloop_fns(p, SOLVERS[solver](), mode())[1]
            seconds = compile_fn(vg, p.args)[1]
            if r:
                times[name].append(seconds)
    return [f"| {name} | {spread(times[name], '.3f')} | "
            f"{spread([a / b for a, b in zip(times[name], times[peer_row])])} |"
            for name, *_, peer_row in configs]


def compile_section(p: Problem, cfg) -> list[str]:
    """The compile-time comparison: this process (default checks), then a child
    process with EQX_ON_ERROR=off (no runtime checks)."""
    rounds = cfg.compile_rounds
    print(f"## {p.name} problem: compile time, {rounds} interleaved rounds", flush=True)
    rows = compile_breakdown(p, rounds)
    cmd = [sys.executable, os.path.abspath(__file__), "--compile-only",
           "--compile-rounds", str(rounds),
           "--matmul-precision", cfg.matmul_precision] + (["--quick"] if cfg.quick else [])
    child = subprocess.run(cmd, env={**os.environ, "EQX_ON_ERROR": "off"},
                           capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError("the EQX_ON_ERROR=off compile-time process failed:\n"
                           + child.stderr[-3000:])
    rows += [line for line in child.stdout.splitlines() if line.startswith("| ")]
    lines = ["", f"#### {p.name}: compile time of value_and_grad, {rounds} "
             "interleaved rounds after one warm-up round, median [quartiles]", "",
             "| value_and_grad | lower + compile s | / jaxopt |", "|---|---|---|", *rows,
             "", "- / jaxopt: against the jaxopt solver of the same kind (fixed-point "
             "iteration, Anderson) timed in the same process, taken within each round; "
             "the rows with "
             "EQX_ON_ERROR=off, and their jaxopt rows, come from a second process "
             "started with it"]
    print("\n".join(lines), flush=True)
    return lines


# ---------------------------------------------------------------------- main


SOLVERS = {
    "Iteration": lambda: Iteration(),
    "Anderson(5)": lambda: Anderson(memory=5),
    "Broyden": lambda: Broyden(),
    "SteadyState": lambda: SteadyState(),
}
MODES = {
    "Implicit()": lambda: il.Implicit(),
    "Implicit(GMRES)": lambda: il.Implicit(linear_solver=lx.GMRES(rtol=GMRES_RTOL,
                                                             atol=GMRES_ATOL)),
    "Unroll()": lambda: il.Unroll(),
    "Truncated(5)": lambda: il.Truncated(5),
    "Phantom()": lambda: il.Phantom(),
    "JacobianFree()": lambda: il.JacobianFree(),
}
QUICK_GRID = [("Iteration", "Implicit()"), ("Iteration", "Unroll()"),
              ("Iteration", "JacobianFree()"), ("Anderson(5)", "Implicit()")]


def grad_bound(sname: str, mname: str) -> float | None:
    """The bound on an innerloop row's grad err; None for an approximate gradient
    (Truncated, Phantom, JacobianFree, and Unroll through Broyden's quasi-Newton
    updates, whose derivative is not the fixed point's)."""
    if mname.startswith("Implicit"):
        return IMPLICIT_GRAD_BOUND
    if mname == "Unroll()" and sname in ("Iteration", "Anderson(5)"):
        return UNROLL_GRAD_BOUND
    return None


def run_problem(p: Problem, cfg) -> tuple[str, list[str]]:
    """The problem's section of the report, and the failures of its required rows."""
    batch = p.X.shape[0]
    print(f"\n## {p.name} problem: compiling, warming up, errors", flush=True)
    notes: list[str] = []

    # N = the iterations the innerloop Iteration solve needs (max over the batch).
    fwd, _ = innerloop_fns(p, Iteration(), il.Implicit())
    n = int(jax.jit(fwd)(*p.args)[1])

    bare = prepare(f"bare limit: fori_loop, N={n}", bare_fns(p, n), p, required=True)
    rows = [bare, prepare("plain JAX: value_and_grad through fori_loop(N)",
                          plain_unroll_fns(p, n), p)]

    if cfg.quick:
        grid = QUICK_GRID
    else:
        solvers = ["Iteration", "Anderson(5)", "Broyden"]
        if cfg.steady_state and p.name == "orthogonal":
            solvers.append("SteadyState")
        grid = [(s, m) for s in solvers for m in MODES
                if s != "SteadyState" or m == "Implicit()"]
    by_name: dict[tuple[str, str], Row] = {}
    skipped: dict[str, str] = {}
    for sname, mname in grid:
        if sname in skipped:
            continue
        note = "full unroll" if (sname, mname) == ("Iteration", "Unroll()") else ""
        row = prepare(f"innerloop {sname} / {mname}",
                      innerloop_fns(p, SOLVERS[sname](), MODES[mname]()), p, note,
                      required=True, bound=grad_bound(sname, mname))
        rows.append(by_name.setdefault((sname, mname), row))
        if mname == "Implicit()" and not row.all_converged and not cfg.quick:
            skipped[sname] = row.converged
            row.note = (row.note + "; " if row.note else "") + (
                "other gradient modes not run: the forward solve failed")
    for sname, conv in skipped.items():
        notes.append(f"{sname}: only {conv} examples converged (the others diverged "
                     "or hit max_steps), so only its Implicit() row was run.")
    if not cfg.quick:
        rows.append(prepare("innerloop Iteration / Implicit(on_failure='nan')",
                            innerloop_fns(p, Iteration(),
                                          il.Implicit(on_failure="nan")), p,
                            "no warning callback", required=True,
                            bound=IMPLICIT_GRAD_BOUND))

    # Peers, on the whole batch as one state.
    tol_abs = TOL * float(np.linalg.norm(p.z_ref))
    atol = TOL * float(np.sqrt(np.mean(p.z_ref ** 2)))
    peers = ["FixedPointIteration"] if cfg.quick else ["FixedPointIteration",
                                                       "AndersonAcceleration"]
    for cls in peers:
        rows.append(prepare(f"jaxopt {cls}", jaxopt_fns(p, cls, tol_abs), p,
                            "whole batch"))
    rows.append(prepare("optimistix FixedPointIteration / ImplicitAdjoint(GMRES)",
                        optimistix_fns(p, atol), p, "whole batch"))

    print(f"## {p.name} problem: timing, {cfg.runs} interleaved rounds", flush=True)
    t0 = time.perf_counter()
    time_rounds(rows, p.args, cfg.runs)
    print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)

    notes.append(
        f"jaxopt: tol is absolute on the whole batch, tol = {TOL:g} * ||Z*||_F = "
        f"{tol_abs:.3g} (every example meeting innerloop's ||f(z)-z|| <= {TOL:g} ||z|| "
        "implies it); implicit_diff_solve is jaxopt's default (normal-equation CG).")
    notes.append(
        f"optimistix: FixedPointIteration(rtol={TOL:g}, atol={atol:.3g} = {TOL:g} * "
        f"rms(z*), norm=rms_norm), ImplicitAdjoint(GMRES(rtol={GMRES_RTOL:g}, "
        f"atol={OPTX_GMRES_ATOL:g})). innerloop's Implicit(GMRES) uses "
        f"GMRES(rtol={GMRES_RTOL:g}, atol={GMRES_ATOL:g}) per example; with "
        f"atol={GMRES_ATOL:g} optimistix's whole-batch GMRES stagnates in float32 on "
        "the hard problem and raises.")
    notes.append(
        f"max_steps = {p.max_steps} for every solver and peer; conv = examples "
        "converged (peers: the whole batch, all or none); iters: max of sol.steps "
        "over the batch (a vmapped solve runs until its slowest example is done).")

    derived = []
    it = by_name.get(("Iteration", "Implicit()"))
    an = by_name.get(("Anderson(5)", "Implicit()"))
    peer = {r.name: r for r in rows if r.name.startswith("jaxopt ") and not r.failed}
    jaxopt = peer.get("jaxopt FixedPointIteration")
    same_kind = [(it, "jaxopt FixedPointIteration"), (an, "jaxopt AndersonAcceleration")]
    same_kind = [(r, peer[name]) for r, name in same_kind
                 if r is not None and not r.failed and name in peer]
    if same_kind:
        derived.append(
            "value_and_grad time against the jaxopt solver of the same kind, per round: "
            + "; ".join(f"{r.name} / {q.name} {spread(per_round(r, q, 'vg'))}"
                        for r, q in same_kind))
    if p.name == "orthogonal" and an is not None and not an.failed:
        # A ratio of wall times (Anderson evaluates f once per iteration), per round.
        cost = [(a / max(an.iters, 1)) / (b / n)
                for a, b in zip(an.fwd_times, bare.fwd_times)]
        derived.append(
            f"Anderson(5) cost per iteration, in units of one f: {spread(cost)} "
            f"(per round: Anderson(5) forward time / {an.iters} iterations, over the "
            f"bare limit's forward time / {n} applications of f; a ratio of wall times)")
    if (p.name == "hard" and an is not None and it is not None
            and not (an.failed or it.failed)):
        derived.append(
            f"Anderson(5) / Iteration: f-evaluations {(an.iters + 1) / (it.iters + 1):.3f}"
            f" ({an.iters + 1} vs {it.iters + 1}, counting the initial f(z0)); forward "
            f"wall time {spread(per_round(an, it, 'fwd'), '.3f')}; value_and_grad wall "
            f"time {spread(per_round(an, it, 'vg'), '.3f')} (per round)")
    if p.name == "orthogonal":
        for mname in ("Implicit()", "Unroll()"):
            mem = []
            for ms in (20, 200) if cfg.quick else (20, 200, 2000):
                _, vg = innerloop_fns(p, Iteration(), MODES[mname](), max_steps=ms)
                mem.append(f"max_steps={ms}: "
                           f"{temp_bytes(compile_fn(vg, p.args)[0]) / 2**20:.2f} MiB")
            derived.append(f"temp memory of value_and_grad, Iteration / {mname}: "
                           + ", ".join(mem))

    failures = [f"{p.name} problem, {r.name}: {x}" for r in rows for x in r.problems]
    text = [f"### {p.name} (batch {batch})", "", table(rows, bare, jaxopt), ""]
    text += [f"- {d}" for d in derived] + [f"- {x}" for x in notes]
    if p.name == "orthogonal" and not failures:
        text += compile_section(p, cfg)
    return "\n".join(text) + "\n", failures


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="innerloop fixed-point benchmark")
    ap.add_argument("--runs", type=int, default=None,
                    help="timed runs per measurement (default 20; 3 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke configuration: small sizes, few rows and runs")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results",
                                                  "fixed_point.md"),
                    help="Markdown results (default benchmarks/results/fixed_point.md)")
    ap.add_argument("--compile-rounds", type=int, default=None,
                    help="rounds of the compile-time comparison, after one warm-up "
                         "round (default 9; 1 with --quick)")
    ap.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--steady-state", action="store_true",
                    help="also time SteadyState() / Implicit() on the orthogonal "
                         "problem (slow: tens of seconds per call on a small CPU)")
    ap.add_argument("--matmul-precision", default="highest",
                    choices=["highest", "high", "default"],
                    help="jax_default_matmul_precision for every row and peer (default "
                         "highest: true float32 products; 'default' lets a GPU use "
                         "TF32, whose ~1e-3 rounding keeps the relative residual above "
                         "tol 1e-5)")
    cfg = ap.parse_args(argv)
    jax.config.update("jax_default_matmul_precision",
                      None if cfg.matmul_precision == "default" else cfg.matmul_precision)
    if cfg.runs is None:
        cfg.runs = 3 if cfg.quick else 20
    if cfg.runs < 1:
        ap.error("--runs must be >= 1")
    if cfg.compile_rounds is None:
        cfg.compile_rounds = 1 if cfg.quick else 9
    if cfg.compile_rounds < 1:
        ap.error("--compile-rounds must be >= 1")
    hidden, inp, batch = (32, 8, 8) if cfg.quick else (256, 64, 128)
    if not cfg.compile_only and os.environ.get("EQX_ON_ERROR", "raise") != "raise":
        ap.error("run with EQX_ON_ERROR unset (or 'raise'): the rows measure innerloop's "
                 "default runtime checks, and the compile-time section starts its own "
                 "EQX_ON_ERROR=off process")
    if cfg.compile_only:  # the EQX_ON_ERROR=off half of the compile-time section
        kind, max_steps = PROBLEMS[0]
        p = make_problem(kind, hidden, inp, batch, max_steps, seed=0)
        print("\n".join(compile_breakdown(
            p, cfg.compile_rounds, os.environ.get("EQX_ON_ERROR") == "off")))
        return

    t_start = time.perf_counter()
    command = _report.command("benchmarks/fixed_point.py", argv)
    load = os.getloadavg()
    machine = _report.machine()
    header = [
        "# Fixed-point benchmark: z = tanh(W z + s (U x + b))",
        "",
        f"- command: `{command}`",
        f"- machine: {machine}; load average at start {load[0]:.2f}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- hidden {hidden}, input {inp}, batch {batch}, float32, tol {TOL:g} on the "
        f"relative residual of each example; {cfg.runs} timed rounds after one "
        "warm-up call, interleaved (every row once per round), "
        "time.perf_counter around block_until_ready of the jax.jit-ed function (as "
        "users call it; the ahead-of-time Compiled object dispatches executables with "
        "a host callback more slowly)",
        f"- matmul precision: {cfg.matmul_precision} (jax_default_matmul_precision; "
        "on CPU float32 products are exact float32 either way, on an NVIDIA GPU "
        "'default' means TF32)",
        "- times and ratios: median [first quartile, third quartile] over the rounds; "
        "a ratio is taken within each round, then summarised",
        "- fwd / bare, v&g / bare: ratio to the bare limit (N plain applications of "
        "the batched f; for v&g N forward and N adjoint steps u <- J^T u + g, then "
        "the theta VJP); fwd / jaxopt, v&g / jaxopt: ratio to jaxopt's "
        "FixedPointIteration (implicit_diff) on the same problem",
        "- z* err, grad err: max|x - ref| / max|ref| against a float64 NumPy "
        "reference (grad: worst of W, U, b; ref: Newton for z*, dense "
        "(I - J)^{-T} solves); temp MiB: XLA temp memory of the compiled "
        "value_and_grad; compile s: its lower + compile time (one compile)",
        f"- the run fails (exit status 1) if an innerloop row raises, returns a "
        f"non-finite value or gradient, leaves an example unconverged, or has a grad "
        f"err above {IMPLICIT_GRAD_BOUND:g} (Implicit modes) or {UNROLL_GRAD_BOUND:g} "
        "(Unroll() through Iteration and Anderson); Truncated, Phantom, JacobianFree "
        "and Unroll() through Broyden are approximate gradients, with no bound; peers "
        "may fail and are reported",
        "",
    ]
    print("\n".join(header), flush=True)

    sections, failures = [], []
    for seed, (kind, max_steps) in enumerate(PROBLEMS):
        p = make_problem(kind, hidden, inp, batch, max_steps, seed=seed)
        section, failures = run_problem(p, cfg)
        sections.append(section)
        if failures:  # what follows would time a broken library
            break
    if failures:
        sections.insert(0, "## RUN FAILED\n\nThese innerloop rows failed, so the run "
                        "stopped after this problem and exits with status 1:\n\n"
                        + "\n".join(f"- {x}" for x in failures) + "\n")

    footer = [f"Total runtime {time.perf_counter() - t_start:.0f} s; load average at "
              f"end {os.getloadavg()[0]:.2f}."]
    if not cfg.steady_state:
        footer.append("SteadyState() is not timed by default (diffrax Kvaerno5, an "
                      "implicit ODE solver, with a dense Jacobian per example); "
                      "--steady-state adds it with Implicit().")
    body = "\n".join(sections) + "\n" + "\n".join(footer) + "\n"
    print("\n" + body, flush=True)
    _report.write(cfg.out, header, body)
    if failures:
        sys.exit("fixed_point.py: RUN FAILED, innerloop rows failed (see " + cfg.out
                 + "):\n" + "\n".join(f"  {x}" for x in failures))


if __name__ == "__main__":
    main()
