"""Benchmark: differentiating long inner loops with innerloop, and ES/PES throughput
against evosax, side by side in one process.

    python benchmarks/unroll.py            # full run
    python benchmarks/unroll.py --quick    # tiny smoke configuration (tests, < 60 s)
    python benchmarks/unroll.py --out benchmarks/results/unroll.md

Inner problem (both parts): train a 2-layer tanh MLP (input 8, hidden 32, output 1;
321 parameters) by full-batch SGD on a fixed synthetic regression batch (64
examples, targets from a random teacher MLP plus noise), float32. The meta-parameter
theta is the log learning rate (a scalar); the meta-loss is the training loss after
the last inner step.

Part 1, gradient modes of `innerloop.unroll`: the jitted `jax.value_and_grad` of the
meta-loss after T = 100, 1000, 10000 SGD steps with `Unroll()` (full BPTT),
`Checkpointed()` (binomial checkpointing, exact) and `Truncated(10)` (biased). XLA
temp memory from `.lower(...).compile().memory_analysis()`, compile time, median
time, and the gradient's relative difference to `Unroll()`'s.

Part 2, ES / PES throughput: `innerloop.ES(task, sigma=sigma, pairs=n, K=K)` and
`innerloop.PES(task, sigma=sigma, pairs=n, K=K)` against evosax's `Open_ES` and `PersistentES`
(ask -> fitness of the population by the same vmapped K-step inner unroll -> tell),
same task, population 2 n (antithetic), same K, same sigma, no fitness shaping
(innerloop's default; evosax's `identity_fitness_shaping_fn`), each one jitted
function per gradient estimate. Throughput = particle-steps per second = 2 n K /
(median time of one estimate).

evosax may be missing or fail and is reported. An innerloop row that raises, returns
a non-finite value or gradient, whose Checkpointed() gradient differs from Unroll()'s
by more than CHECKPOINT_RTOL, or whose ES/PES estimates differ from evosax's on the
same keys by more than SAME_KEY_RTOL fails the run: the script writes its tables,
marked RUN FAILED, and exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import _report  # benchmarks/_report.py (the script's folder is on sys.path)
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import innerloop as il

try:  # evosax is an optional peer
    import optax
    from evosax.algorithms import Open_ES, PersistentES
    from evosax.core.fitness_shaping import identity_fitness_shaping_fn
    EVOSAX_ERROR = None
except Exception as e:  # pragma: no cover - depends on the environment
    Open_ES = PersistentES = None
    EVOSAX_ERROR = f"{type(e).__name__}: {e}"

IN, HIDDEN, BATCH = 8, 32, 64
THETA0 = float(np.log(0.05))  # log learning rate
# Checkpointed() recomputes Unroll()'s steps: equal up to float32 round-off.
CHECKPOINT_RTOL = 1e-5
# Same keys, same perturbations: the estimates differ by float32 round-off, amplified
# by the loss differences over sigma (up to 4.4e-5 measured).
SAME_KEY_RTOL = 1e-3


# ------------------------------------------------------------------ the problem


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(BATCH, IN)).astype(np.float32)
    W1 = rng.normal(size=(IN, 16)) / np.sqrt(IN)
    w2 = rng.normal(size=(16, 1)) / 4.0
    Y = (np.tanh(X @ W1) @ w2 + 0.1 * rng.normal(size=(BATCH, 1))).astype(np.float32)
    return jnp.asarray(X), jnp.asarray(Y)


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {"W1": jax.random.normal(k1, (IN, HIDDEN)) / np.sqrt(IN),
            "b1": jnp.zeros(HIDDEN),
            "W2": jax.random.normal(k2, (HIDDEN, 1)) / np.sqrt(HIDDEN),
            "b2": jnp.zeros(1)}


def mse(params, X, Y):
    h = jnp.tanh(X @ params["W1"] + params["b1"])
    return jnp.mean((h @ params["W2"] + params["b2"] - Y) ** 2)


def sgd_step(params, log_lr, X, Y):
    g = jax.grad(mse)(params, X, Y)
    lr = jnp.exp(jnp.squeeze(log_lr))
    return jax.tree.map(lambda p, d: p - lr * d, params, g)


class MLPTask(eqx.Module):
    """The truncated inner problem the estimators need: init / unroll / T."""

    X: jax.Array
    Y: jax.Array
    T: int

    def init(self, key, theta):
        del theta
        return init_params(key)

    def unroll(self, state, theta, K):
        def body(p, _):
            return sgd_step(p, theta, self.X, self.Y), None

        state, _ = jax.lax.scan(body, state, None, length=K)
        return state, mse(state, self.X, self.Y)


# ------------------------------------------------------------ part 1: unroll


def versions() -> dict[str, str]:
    return _report.versions(
        "jax", "jaxlib", "equinox", "innerloop", "evosax", "optax", "flax", "numpy")


def fmt(x, spec):
    return "-" if x is None or x != x else format(x, spec)


MODES = {"Unroll()": lambda: il.Unroll(), "Checkpointed()": lambda: il.Checkpointed(),
         "Truncated(10)": lambda: il.Truncated(10)}


def unroll_vg(mode, T, X, Y, params0):
    def meta_loss(theta):
        def step(p, th, t):
            return sgd_step(p, th, X, Y)

        final = il.unroll(step, params0, theta, T, grad=mode)
        return mse(final, X, Y)

    return jax.value_and_grad(meta_loss)


def part_unroll(cfg, X, Y):
    Ts = (100,) if cfg.quick else (100, 1000, 10000)
    params0 = init_params(jax.random.PRNGKey(1))
    theta = jnp.asarray(THETA0, jnp.float32)
    rows, failures = [], []
    print("\n## Part 1: gradient modes of innerloop.unroll", flush=True)
    for T in Ts:
        runs = cfg.runs if T < 10000 else max(3, cfg.runs // 4)
        compiled = {}
        for name, mk in MODES.items():
            row = {"T": T, "mode": name, "temp": None, "compile": None, "ms": None,
                   "value": None, "grad": None, "diff": None, "note": "",
                   "problems": []}
            try:
                t0 = time.perf_counter()
                c = jax.jit(unroll_vg(mk(), T, X, Y, params0)).lower(theta).compile()
                row["compile"] = time.perf_counter() - t0
                mem = c.memory_analysis()
                row["temp"] = None if mem is None else mem.temp_size_in_bytes / 2**20
                t0 = time.perf_counter()
                v, g = jax.block_until_ready(c(theta))  # warm-up
                first = time.perf_counter() - t0
                row["value"], row["grad"] = float(v), float(g)
                if first > cfg.max_call_s:
                    row["note"] = (f"not timed: the warm-up call took {first:.1f} s "
                                   f"(> --max-call-s {cfg.max_call_s:g}); ms = that call")
                    row["ms"] = 1e3 * first
                else:
                    compiled[name] = (c, row)
            except Exception as e:  # an innerloop row: fails the run, after the report
                row["problems"].append(f"raised {type(e).__name__}: "
                                       f"{str(e).strip().splitlines()[0][:120]}")
            rows.append(row)
            print(f"  T={T:<6d} {name:<15s} temp {fmt(row['temp'], '10.2f')} MiB  "
                  f"compile {fmt(row['compile'], '5.2f')} s  value "
                  f"{fmt(row['value'], '.6g')}  grad {fmt(row['grad'], '.6g')} "
                  f"{row['note']}", flush=True)
        times = {k: [] for k in compiled}
        for _ in range(runs):  # interleaved rounds
            for name, (c, _) in compiled.items():
                t0 = time.perf_counter()
                jax.block_until_ready(c(theta))
                times[name].append(time.perf_counter() - t0)
        for name, (_, row) in compiled.items():
            row["ms"] = 1e3 * statistics.median(times[name])
            row["note"] = row["note"] or f"median of {runs}"
        ref = next(r for r in rows if r["T"] == T and r["mode"] == "Unroll()")
        for r in rows:
            if r["T"] == T and r["grad"] is not None and ref["grad"] is not None:
                r["diff"] = abs(r["grad"] - ref["grad"]) / max(abs(ref["grad"]), 1e-30)
        for r in (r for r in rows if r["T"] == T):
            problems = r["problems"]
            if r["grad"] is not None and not np.isfinite([r["value"], r["grad"]]).all():
                problems.append("non-finite meta-loss or gradient")
            if (r["mode"] == "Checkpointed()" and r["diff"] is not None
                    and not r["diff"] <= CHECKPOINT_RTOL):
                problems.append(f"gradient differs from Unroll()'s by {r['diff']:.1e} "
                                f"(bound {CHECKPOINT_RTOL:g})")
            failures += [f"T={T} {r['mode']}: {x}" for x in problems]
            for x in problems:
                print(f"  T={T:<6d} {r['mode']:<15s} INNERLOOP ROW FAILED: {x}", flush=True)
            if problems:
                r["note"] = "; ".join([r["note"], "INNERLOOP ROW FAILED: "
                                       + "; ".join(problems)]).strip("; ")
    lines = ["| T | mode | temp MiB | compile s | v&g ms | meta-loss | d/d log lr | "
             "rel. diff to Unroll() | notes |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['T']} | {r['mode']} | {fmt(r['temp'], '.2f')} | "
                     f"{fmt(r['compile'], '.2f')} | {fmt(r['ms'], '.2f')} | "
                     f"{fmt(r['value'], '.6g')} | {fmt(r['grad'], '.6g')} | "
                     f"{fmt(r['diff'], '.1e')} | {r['note']} |")
    return "\n".join(lines), failures


# -------------------------------------------------------- part 2: ES / PES


def innerloop_fn(est, theta):
    """One jitted gradient estimate: grad(key, theta, state) -> (g, state)."""

    @jax.jit
    def fn(key, state):
        g, state, _ = est.grad(key, theta, state)
        return g, state

    return fn, est.init(jax.random.PRNGKey(2), theta)


def evosax_es_fn(task, theta, sigma, n, K):
    """Open_ES on one truncation from a shared inner state, which (as in
    innerloop's ES) is advanced by the unperturbed theta after each estimate."""
    es = Open_ES(2 * n, theta, use_antithetic_sampling=True,
                 optimizer=optax.sgd(1.0), std_schedule=optax.constant_schedule(sigma),
                 fitness_shaping_fn=identity_fitness_shaping_fn)
    params = es.default_params

    @jax.jit
    def fn(key, carry):
        es_state, inner, t = carry
        k_init, k_ask = jax.random.split(key)  # innerloop's ES splits key alike
        reset = t >= task.T
        inner = jax.tree.map(lambda a, b: jnp.where(reset, a, b),
                             task.init(k_init, theta), inner)
        t = jnp.where(reset, 0, t)
        pop, es_state = es.ask(k_ask, es_state, params)
        fit = jax.vmap(lambda th: task.unroll(inner, th, K)[1])(pop)
        new_state, _ = es.tell(k_ask, pop, fit, es_state, params)
        g = es_state.mean - new_state.mean  # sgd(1.0): the step is the gradient
        new_state = new_state.replace(mean=es_state.mean)  # theta stays put
        inner, _ = task.unroll(inner, theta, K)
        return g, (new_state, inner, t + K)

    es_state = es.init(jax.random.PRNGKey(3), theta, params)
    return fn, (es_state, task.init(jax.random.PRNGKey(2), theta),
                jnp.asarray(0, jnp.int32))


def evosax_pes_fn(task, theta, sigma, n, K):
    """PersistentES: 2 n inner states persist across truncations (pairs start from
    the same fresh state, as in innerloop's PES) and restart when the episode of
    T steps ends (evosax resets its perturbation accumulator then)."""
    es = PersistentES(2 * n, theta, optimizer=optax.sgd(1.0),
                      std_schedule=optax.constant_schedule(sigma),
                      fitness_shaping_fn=identity_fitness_shaping_fn)
    params = es.default_params.replace(T=task.T, K=K)

    def fresh(key):
        half = jax.vmap(lambda k: task.init(k, theta))(jax.random.split(key, n))
        return jax.tree.map(lambda a: jnp.concatenate([a, a]), half)

    @jax.jit
    def fn(key, carry):
        es_state, inner = carry
        k_init, k_ask = jax.random.split(key)  # innerloop's PES splits key alike
        # evosax zeroes its step counter when an episode ends: restart the states
        # then (not at the very first call, which uses the states made above).
        reset = (es_state.inner_step_counter == 0) & (es_state.generation_counter > 0)
        inner = jax.tree.map(lambda a, b: jnp.where(reset, a, b), fresh(k_init), inner)
        pop, es_state = es.ask(k_ask, es_state, params)
        inner, fit = jax.vmap(lambda s, th: task.unroll(s, th, K))(inner, pop)
        new_state, _ = es.tell(k_ask, pop, fit, es_state, params)
        g = es_state.mean - new_state.mean
        new_state = new_state.replace(mean=es_state.mean)
        return g, (new_state, inner)

    es_state = es.init(jax.random.PRNGKey(3), theta, params)
    return fn, (es_state, fresh(jax.random.PRNGKey(2)))


def part_es(cfg, X, Y):
    configs = [(16, 10)] if cfg.quick else [(16, 10), (128, 10), (128, 100)]
    T = 100 if cfg.quick else 1000
    sigma = 0.1
    task = MLPTask(X, Y, T)
    theta = jnp.asarray(THETA0, jnp.float32)
    print(f"\n## Part 2: ES / PES throughput (episode T = {T}, sigma = {sigma})",
          flush=True)
    if EVOSAX_ERROR:
        print(f"  evosax unavailable ({EVOSAX_ERROR}): innerloop rows only", flush=True)
    rows = []
    for n, K in configs:
        contenders = [("innerloop ES", lambda: innerloop_fn(il.ES(task, sigma=sigma, pairs=n, K=K),
                                                            theta))]
        if not EVOSAX_ERROR:
            contenders.append(("evosax Open_ES",
                               lambda: evosax_es_fn(task, theta, sigma, n, K)))
        contenders.append(("innerloop PES", lambda: innerloop_fn(
            il.PES(task, sigma=sigma, pairs=n, K=K), theta)))
        if not EVOSAX_ERROR:
            contenders.append(("evosax PersistentES",
                               lambda: evosax_pes_fn(task, theta, sigma, n, K)))
        live = []
        for name, mk in contenders:
            row = {"name": name, "n": n, "K": K, "ms": None, "ps": None,
                   "g": [], "compile": None, "note": "", "problems": []}
            try:
                fn, state = mk()
                key = jax.random.PRNGKey(4)
                t0 = time.perf_counter()
                g, state = jax.block_until_ready(fn(key, state))  # compile + warm-up
                row["compile"] = time.perf_counter() - t0
                live.append((row, fn, [state]))
            except Exception as e:  # evosax is reported; innerloop fails the run
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120]}"
                if name.startswith("innerloop"):
                    row["problems"].append(f"raised {msg}")
                else:
                    row["note"] = f"failed: {msg}"
            rows.append(row)
        times = {id(r): [] for r, _, _ in live}
        key = jax.random.PRNGKey(5)
        for i in range(cfg.es_runs):  # interleaved rounds, states carried on
            key, sub = jax.random.split(key)
            for row, fn, box in live:
                t0 = time.perf_counter()
                g, box[0] = jax.block_until_ready(fn(sub, box[0]))
                times[id(row)].append(time.perf_counter() - t0)
                row["g"].append(float(jnp.ravel(g)[0]))
        for row, _, _ in live:
            if row["name"].startswith("innerloop") and not np.isfinite(row["g"]).all():
                row["problems"].append("non-finite gradient estimate")
        for row, _, _ in live:
            row["ms"] = 1e3 * statistics.median(times[id(row)])
            row["ps"] = 2 * n * K / (row["ms"] / 1e3)
        for row in rows[-len(contenders):]:
            gs = np.asarray(row["g"])
            row["gmean"] = gs.mean() if gs.size else None
            row["gse"] = gs.std(ddof=1) / np.sqrt(gs.size) if gs.size > 1 else None
            print(f"  n={n:<4d} K={K:<4d} {row['name']:<20s} "
                  f"{fmt(row['ms'], '8.3f')} ms  {fmt(row['ps'], '12.4g')} "
                  f"particle-steps/s  {row['note']}", flush=True)
    lines = ["| estimator | n pairs | population | K | ms / estimate | "
             "particle-steps / s | vs evosax | mean estimate +- s.e. | same-key diff "
             "| compile+1st s | notes |", "|" + "---|" * 11]
    failures = []
    for r in rows:
        peer = None
        if r["name"].startswith("innerloop"):
            pname = "evosax Open_ES" if r["name"].endswith(" ES") else \
                "evosax PersistentES"
            peer = next((p for p in rows if p["name"] == pname and p["n"] == r["n"]
                         and p["K"] == r["K"] and p["ps"]), None)
        ratio = (r["ps"] / peer["ps"]) if peer and r["ps"] else None
        same = None
        if peer and len(peer["g"]) == len(r["g"]) and r["g"]:
            a, b = np.asarray(r["g"]), np.asarray(peer["g"])
            same = float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
            if not same <= SAME_KEY_RTOL:
                r["problems"].append(f"same-key diff to {peer['name']} {same:.1e} "
                                     f"(bound {SAME_KEY_RTOL:g})")
        failures += [f"{r['name']} n={r['n']} K={r['K']}: {x}" for x in r["problems"]]
        for x in r["problems"]:
            print(f"  n={r['n']:<4d} K={r['K']:<4d} {r['name']:<20s} INNERLOOP ROW "
                  f"FAILED: {x}", flush=True)
        if r["problems"]:
            r["note"] = "; ".join([r["note"], "INNERLOOP ROW FAILED: "
                                   + "; ".join(r["problems"])]).strip("; ")
        est = (f"{r['gmean']:.4g} +- {r['gse']:.2g}" if r.get("gse") is not None
               else "-")
        lines.append(f"| {r['name']} | {r['n']} | {2 * r['n']} | {r['K']} | "
                     f"{fmt(r['ms'], '.3f')} | {fmt(r['ps'], '.4g')} | "
                     f"{fmt(ratio, '.2f')} | {est} | {fmt(same, '.1e')} | "
                     f"{fmt(r['compile'], '.2f')} | "
                     f"{r['note']} |")
    notes = [
        f"Episode T = {T} inner steps; every estimate advances the inner states by K "
        "steps; at the episode's end both libraries restart the inner states (and PES "
        "its accumulated perturbations). Timing rounds are interleaved with "
        f"{cfg.es_runs} estimates per contender, states carried from call to call; "
        "'mean estimate' is the mean of the timed estimates of d(loss)/d(log lr) "
        "(the s.e. treats them as independent, which PES's persistent particles are "
        "not). Both libraries get the same keys, split alike, and the same initial "
        "inner states, so they draw the same perturbations: 'same-key diff' = max "
        "over the timed calls of |g_innerloop - g_evosax| / max |g_innerloop| "
        "(float32 rounding only if both compute the same estimator).",
        "ES: innerloop's ES runs 2 n perturbed unrolls plus one unperturbed unroll "
        "(its `loss` metric and the next shared state); the evosax ES row does the "
        "same unperturbed unroll to advance its shared inner state, so both run "
        "2 n + 1 unrolls of K steps. PES: both run exactly 2 n unrolls.",
        "evosax: optimizer optax.sgd(1.0) so the gradient is read off the mean's "
        "step, then the mean is put back (theta is fixed for every contender, as "
        "innerloop's grad does not update theta); the ask, the vmapped fitness "
        "evaluation and tell (incl. evosax's metrics and best-solution bookkeeping) "
        "are inside one jitted function.",
    ]
    if EVOSAX_ERROR:
        notes.append(f"evosax unavailable: {EVOSAX_ERROR}")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in notes), failures


# ---------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="innerloop unroll / ES benchmark")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke configuration (< 60 s)")
    ap.add_argument("--runs", type=int, default=None,
                    help="timed runs per unroll measurement (default 10; 3 quick; "
                         "T=10000 uses a quarter, at least 3)")
    ap.add_argument("--es-runs", type=int, default=None,
                    help="timed estimates per ES/PES contender (default 50; 5 quick)")
    ap.add_argument("--max-call-s", type=float, default=30.0,
                    help="do not time a value_and_grad whose warm-up call took longer")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "unroll.md"),
                    help="Markdown results (default benchmarks/results/unroll.md)")
    cfg = ap.parse_args(argv)
    cfg.runs = cfg.runs or (3 if cfg.quick else 10)
    cfg.es_runs = cfg.es_runs or (5 if cfg.quick else 50)
    if cfg.runs < 1 or cfg.es_runs < 2:
        ap.error("--runs must be >= 1 and --es-runs >= 2")

    t_start = time.perf_counter()
    command = _report.command("benchmarks/unroll.py", argv)
    load = os.getloadavg()
    machine = _report.machine()
    header = [
        "# Unroll benchmark: meta-learning an MLP's SGD learning rate",
        "",
        f"- command: `{command}`",
        f"- machine: {machine}; load average at start {load[0]:.2f}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- inner problem: 2-layer tanh MLP {IN}-{HIDDEN}-1, full-batch SGD on a fixed "
        f"synthetic regression batch of {BATCH}, float32; theta = log learning rate "
        f"= log(0.05); meta-loss = training MSE after the last step",
        "- part 1: temp MiB = XLA temp memory of the compiled jitted value_and_grad; "
        "compile s = lower + compile; v&g ms = median after one warm-up call, "
        "interleaved rounds; rel. diff = |g - g_Unroll| / |g_Unroll|",
        "",
    ]
    if EVOSAX_ERROR:
        print(f"evosax unavailable: {EVOSAX_ERROR}", flush=True)
    print("\n".join(header), flush=True)
    X, Y = make_data()
    t1, failures = part_unroll(cfg, X, Y)
    t2, es_failures = part_es(cfg, X, Y)
    failures += es_failures
    body = ("## RUN FAILED\n\nThese innerloop rows failed; the script exits with "
            "status 1:\n\n" + "\n".join(f"- {x}" for x in failures) + "\n\n"
            if failures else "")
    body += ("### Gradient modes of innerloop.unroll\n\n" + t1 +
            "\n\n### ES / PES throughput against evosax\n\n" + t2 + "\n\n" +
            f"Total runtime {time.perf_counter() - t_start:.0f} s; load average at "
            f"end {os.getloadavg()[0]:.2f}.\n")
    print("\n" + body, flush=True)
    _report.write(cfg.out, header, body)
    if failures:
        sys.exit("unroll.py: RUN FAILED, innerloop rows failed (see " + cfg.out
                 + "):\n" + "\n".join(f"  {x}" for x in failures))


if __name__ == "__main__":
    main()
