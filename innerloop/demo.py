"""A DEQ classifier on digits, trained under every gradient mode and compared.

`python -m innerloop demo` trains a small deep-equilibrium classifier on
scikit-learn's digits (8x8 images, 10 classes; a fixed stratified 80/20 split) once
per gradient mode, from the same initialisation and with the same batch order, and
compares the modes side by side: test accuracy, wall time per training step, forward
iterations, backward cost and the XLA temporary memory of the jitted training step
(also at several `max_steps`: flat for `Implicit`, growing for `Unroll`). A second
comparison trains `Implicit` with Jacobian regularisation. Writes `demo.png` and
`demo.json` to `--out`.

    python -m innerloop demo                       # all five modes, about a minute
    python -m innerloop demo --modes implicit,unroll --steps 200 --out /tmp/deq

The model: u = W_in x + b (the injection, computed once per call),
z* = tanh(W z* + u) (the cell; W is rescaled to Frobenius norm <= 2 so that training
cannot drift far from a contraction), logits = W_out z* + b_out."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

MODES = ("implicit", "unroll", "truncated", "phantom", "jacobianfree")
SOLVERS = ("anderson", "broyden", "iteration")
DEFAULT_STEPS = 400
DEFAULT_OUT = "innerloop-demo"

# The experiment (fixed; not flags).
HIDDEN = 64
BATCH = 128
LEARNING_RATE = 2e-2  # Adam, cosine decay to 0, gradients clipped to norm 1
WEIGHT_CAP = 2.0  # Frobenius bound on the cell's W
TOL = 1e-4
MAX_STEPS = 30
# The adjoint of a cell with ||W|| near 1 converges more slowly than the forward solve:
# with the forward limit (30) some backward solves stopped short (and warned).
ADJOINT_MAX_STEPS = 100
JAC_WEIGHT = 5.0  # gamma in loss + gamma * jac_loss
EVAL_EVERY = 25
TRUNCATED_K = 5
PHANTOM_K, PHANTOM_DAMPING = 5, 0.5
MEMORY_MAX_STEPS = (20, 200, 2000)
SPLIT_SEED = 0

BACKWARD = {
    "implicit": "adjoint fixed-point solve: {adjoint} VJPs of the cell",
    "unroll": "backprop through every forward iteration (and the solver's own arithmetic)",
    "truncated": f"{TRUNCATED_K} VJPs of the cell from z*",
    "phantom": f"{PHANTOM_K} damped VJPs of the cell (damping {PHANTOM_DAMPING})",
    "jacobianfree": "1 VJP of the cell (no inverse)",
}


# ----------------------------------------------------------------- arguments


class _ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error message (exit status 2, as argparse)."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _modes(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of modes")
    for name in names:
        if name not in MODES:
            raise argparse.ArgumentTypeError(
                f"unknown mode {name!r}; choose from {','.join(MODES)}")
    return list(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags (used by `python -m innerloop demo` and by `main`)."""
    parser.add_argument("--modes", type=_modes, default=list(MODES),
                        help=f"comma-separated gradient modes (default: {','.join(MODES)})")
    parser.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS,
                        help=f"training steps per mode (default: {DEFAULT_STEPS})")
    parser.add_argument("--solver", choices=SOLVERS, default="anderson",
                        help="forward solver (default: anderson)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed of the initialisation and the batch order (default: 0)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output folder for demo.png and demo.json "
                             f"(default: ./{DEFAULT_OUT}/)")


def build_parser(prog: str = "python -m innerloop demo") -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (the arguments after `demo`) and run the demo.

    Returns the exit status: 0 on success, 2 for a bad command line (after a one-line
    error on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad command line (2)
        return 0 if exc.code is None else int(exc.code)
    return run(args)


# --------------------------------------------------------------------- model


class Cell(eqx.Module):
    """z -> tanh(W z + u), with W rescaled to Frobenius norm <= `cap`.

    Since |tanh'| <= 1 and the spectral norm is at most the Frobenius norm, a cap
    below 1 would make the cell a contraction; the demo's cap of 2 only keeps it
    from drifting far away from one."""

    weight: jax.Array
    cap: float | None = eqx.field(static=True, default=WEIGHT_CAP)

    def __init__(self, hidden: int, *, key, cap: float | None = WEIGHT_CAP):
        self.weight = 0.5 * jax.random.normal(key, (hidden, hidden)) / math.sqrt(hidden)
        self.cap = cap

    def __call__(self, z, u):
        w = self.weight
        if self.cap is not None:
            w = w * jnp.minimum(1.0, self.cap / jnp.linalg.norm(w))
        return jnp.tanh(w @ z + u)


class Classifier(eqx.Module):
    """A DEQ followed by a linear read-out; called on a batch."""

    deq: Any
    head: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        z, stats = self.deq(x, key=key, batched=True)
        return jax.vmap(self.head)(z), stats


def load_digits_split():
    """Digits scaled to [0, 1]: (x_train, x_test, y_train, y_test), a stratified
    80/20 split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=SPLIT_SEED)


def make_solver(name: str):
    from innerloop.solvers import Anderson, Broyden, Iteration

    return {"anderson": Anderson(memory=5), "broyden": Broyden(memory=10),
            "iteration": Iteration()}[name]


def make_grad(name: str):
    from innerloop.implicit import Implicit, JacobianFree, Phantom, Truncated, Unroll

    return {"implicit": Implicit(max_steps=ADJOINT_MAX_STEPS), "unroll": Unroll(),
            "truncated": Truncated(TRUNCATED_K),
            "phantom": Phantom(PHANTOM_K, PHANTOM_DAMPING),
            "jacobianfree": JacobianFree()}[name]


def make_model(key, *, solver="anderson", grad="implicit", max_steps=MAX_STEPS,
               jac_reg=False, hidden=HIDDEN, n_in=64, n_out=10):
    from innerloop.implicit import DEQ

    k_cell, k_inj, k_head = jax.random.split(key, 3)
    deq = DEQ(Cell(hidden, key=k_cell), eqx.nn.Linear(n_in, hidden, key=k_inj),
              solver=make_solver(solver), grad=make_grad(grad), tol=TOL,
              max_steps=max_steps, jac_reg=jac_reg)
    return Classifier(deq, eqx.nn.Linear(hidden, n_out, key=k_head))


def with_config(model, **changes):
    """The same parameters with other DEQ settings (`grad`, `solver` by name, or any
    DEQ field such as `max_steps`, `jac_reg`, `trace`)."""
    if isinstance(changes.get("grad"), str):
        changes["grad"] = make_grad(changes["grad"])
    if isinstance(changes.get("solver"), str):
        changes["solver"] = make_solver(changes["solver"])
    return dataclasses.replace(model, deq=dataclasses.replace(model.deq, **changes))


def make_optimizer(steps: int):
    import optax

    schedule = optax.cosine_decay_schedule(LEARNING_RATE, steps)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def make_step(optimizer, jac_weight: float = 0.0):
    """The jitted training step (model, opt_state, x, y, key) -> (model, opt_state,
    loss, mean forward iterations, mean jac_loss)."""
    import optax

    def loss_fn(model, x, y, key):
        logits, stats = model(x, key=key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        jac = stats.jac_loss.mean()
        return loss + jac_weight * jac, (loss, stats.steps.mean(), jac)

    @eqx.filter_jit
    def step(model, opt_state, x, y, key):
        grads, (loss, iters, jac) = eqx.filter_grad(loss_fn, has_aux=True)(model, x, y, key)
        params = eqx.filter(model, eqx.is_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss, iters, jac

    return step


def forward_only(model, **changes):
    """The model for inference: the gradient mode does not change the forward pass,
    so every mode shares one compiled inference function."""
    return with_config(model, grad="jacobianfree", jac_reg=False, correction=(), **changes)


@eqx.filter_jit
def _evaluate(model, x, y):
    logits, stats = model(x)
    return (jnp.mean(jnp.argmax(logits, -1) == y), stats.steps.mean(),
            stats.converged.mean())


def evaluate(model, x, y):
    """(accuracy, mean forward iterations, fraction converged) on a batch."""
    return tuple(float(v) for v in _evaluate(forward_only(model), x, y))


def compile_step(step, *args):
    """Compile `step` for `args` ahead of time: (callable, XLA temp bytes, seconds)."""
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    seconds = time.perf_counter() - start
    inner = getattr(compiled, "compiled", compiled)  # equinox wraps jax's Compiled
    return compiled, int(inner.memory_analysis().temp_size_in_bytes), seconds


def train(model, data, *, steps: int, seed: int, jac_weight: float = 0.0,
          desc: str = "", progress: bool = True, eval_every: int = EVAL_EVERY):
    """Adam on minibatches of `BATCH`; the batch order depends only on `seed`.

    Returns (model, history); history holds per-step loss, forward iterations,
    jac_loss and wall time, the test accuracy every `eval_every` steps, and the
    training step's compile time and XLA temporary memory."""
    from tqdm import tqdm

    x_train, x_test, y_train, y_test = data
    optimizer = make_optimizer(steps)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    key = jax.random.key(seed + 1)
    step, temp, compile_s = compile_step(make_step(optimizer, jac_weight), model,
                                         opt_state, x_train[:BATCH], y_train[:BATCH], key)
    rng = np.random.default_rng(seed)
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    history = dict(loss=[], iters=[], jac=[], step_time=[], eval_step=[], test_acc=[],
                   test_iters=[], temp_bytes=temp, compile_s=compile_s)
    order = np.array([], dtype=np.int64)
    bar = tqdm(total=steps, desc=desc, disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    acc = float("nan")
    for i in range(1, steps + 1):
        if len(order) < BATCH:
            order = np.concatenate([order, rng.permutation(len(x_train))])
        idx, order = order[:BATCH], order[BATCH:]
        key, sub = jax.random.split(key)
        start = time.perf_counter()
        model, opt_state, loss, iters, jac = step(model, opt_state, x_train[idx],
                                                  y_train[idx], sub)
        loss = float(loss)  # waits for the step
        history["step_time"].append(time.perf_counter() - start)
        history["loss"].append(loss)
        history["iters"].append(float(iters))
        history["jac"].append(float(jac))
        if i % eval_every == 0 or i == steps:
            acc, test_iters, _ = evaluate(model, x_test, y_test)
            history["eval_step"].append(i)
            history["test_acc"].append(acc)
            history["test_iters"].append(test_iters)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", iters=f"{float(iters):.1f}",
                        refresh=False)
        bar.update(1)
    bar.close()
    return model, history


def adjoint_iterations(model, x, y) -> float:
    """Mean iterations of the adjoint fixed point u = (dcell/dz)^T u + dL/dz* that
    `Implicit()` (plain adjoint iteration, the forward tol and max_steps) solves in
    the backward pass, measured on one batch: the core does not report them."""
    import optax

    from innerloop.solvers import Iteration

    @eqx.filter_jit
    def measure(model, x, y):
        deq = model.deq
        z, _ = deq(x, batched=True)

        def one(z1, x1, y1):
            u = deq.injection(x1)
            g = jax.grad(lambda zz: optax.softmax_cross_entropy_with_integer_labels(
                model.head(zz), y1) / x.shape[0])(z1)
            _, vjp = jax.vjp(lambda zz: deq.cell(zz, u), z1)
            # Implicit()'s adjoint test: the forward rtol, atol 0.
            sol = Iteration().solve(lambda v, b: vjp(v)[0] + b, g, g, rtol=deq.tol,
                                    atol=0.0, max_steps=deq.max_steps)
            return sol.steps

        return jax.vmap(one)(z, x, y).mean()

    return float(measure(model, x, y))


@eqx.filter_jit
def _trace(model, x):
    return model(x)[1].trace


def residual_trace(model, x) -> list[float]:
    """Median over the batch of the relative residual after each forward iteration
    1, 2, ..., max_steps; an example that has stopped keeps its final residual.

    (Iteration 0 is left out: from the zero initial guess the relative residual
    ||f(0) - 0|| / max(||0||, 1e-8) says nothing.)"""
    t = np.asarray(_trace(forward_only(model, trace=True), x))
    steps = np.isfinite(t).sum(axis=1) - 1  # the trace holds steps + 1 residuals
    last = t[np.arange(len(t)), steps]
    filled = np.where(np.isfinite(t), t, last[:, None])
    n = max(int(steps.max()), 1)
    return [float(v) for v in np.median(filled[:, 1:n + 1], axis=0)]


# ----------------------------------------------------------------------- run


def run(args) -> int:
    """Run the demo for parsed `args` (modes, steps, solver, seed, out)."""
    t_start = time.perf_counter()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data = load_digits_split()
    x_train, x_test, y_train, y_test = data
    init = make_model(jax.random.key(args.seed), solver=args.solver)
    print(f"innerloop demo: DEQ classifier on digits ({len(x_train)} train / "
          f"{len(x_test)} test), hidden {HIDDEN}, solver {args.solver}, tol {TOL}, "
          f"max_steps {MAX_STEPS}; {args.steps} steps of batch {BATCH} per mode, "
          f"seed {args.seed}", flush=True)

    xb, yb = x_train[:BATCH], y_train[:BATCH]
    probe_key = jax.random.key(0)
    results: dict[str, Any] = {}
    histories: dict[str, Any] = {}
    traces: dict[str, Any] = {}
    for mode in args.modes:
        model, hist = train(with_config(init, grad=mode), data, steps=args.steps,
                            seed=args.seed, desc=f"{mode:>15}")
        histories[mode] = hist
        entry = dict(
            test_acc=hist["test_acc"][-1],
            step_ms=1e3 * float(np.median(hist["step_time"])),
            fwd_iters=float(np.mean(hist["iters"])),
            test_iters=hist["test_iters"][-1],
            temp_bytes=hist["temp_bytes"],
            compile_s=hist["compile_s"],
        )
        backward = BACKWARD[mode]
        if mode == "implicit":
            entry["adjoint_iters"] = adjoint_iterations(model, xb, yb)
            backward = backward.format(adjoint=f"{entry['adjoint_iters']:.1f}")
        entry["backward"] = backward
        results[mode] = entry
        traces[mode] = residual_trace(model, x_test[:BATCH])

    # XLA temporary memory of the training step at several iteration limits.
    memory: dict[str, dict[str, int]] = {}
    optimizer = make_optimizer(args.steps)
    for mode in (m for m in ("implicit", "unroll") if m in args.modes):
        memory[mode] = {}
        for limit in MEMORY_MAX_STEPS:
            model = with_config(init, grad=mode, max_steps=limit)
            opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
            memory[mode][str(limit)] = compile_step(make_step(optimizer), model,
                                                    opt_state, xb, yb, probe_key)[1]

    # Jacobian regularisation: Implicit with and without.
    jac: dict[str, Any] = {}
    if "implicit" in results:
        r = results["implicit"]
        jac["without"] = dict(test_acc=r["test_acc"], fwd_iters=r["fwd_iters"],
                              test_iters=r["test_iters"], step_ms=r["step_ms"])
        model, hist = train(with_config(init, grad="implicit", jac_reg=True), data,
                            steps=args.steps, seed=args.seed, jac_weight=JAC_WEIGHT,
                            desc="implicit+jacreg")
        jac["with"] = dict(test_acc=hist["test_acc"][-1],
                           fwd_iters=float(np.mean(hist["iters"])),
                           test_iters=hist["test_iters"][-1],
                           step_ms=1e3 * float(np.median(hist["step_time"])),
                           final_jac_loss=float(np.mean(hist["jac"][-10:])))
        jac["weight"] = JAC_WEIGHT
        histories["implicit+jacreg"] = hist
        traces["implicit+jacreg"] = residual_trace(model, x_test[:BATCH])

    total = time.perf_counter() - t_start
    print()
    print(format_table(results, memory, jac))
    print(f"\ntotal wall time {total:.1f} s")

    report = dict(
        config=dict(steps=args.steps, modes=list(args.modes), solver=args.solver,
                    seed=args.seed, hidden=HIDDEN, batch=BATCH,
                    learning_rate=LEARNING_RATE, weight_cap=WEIGHT_CAP, tol=TOL,
                    max_steps=MAX_STEPS, jac_weight=JAC_WEIGHT, split_seed=SPLIT_SEED,
                    n_train=len(x_train), n_test=len(x_test),
                    backend=jax.default_backend(), cpu_count=os.cpu_count()),
        modes=results,
        memory_temp_bytes=memory,
        jacobian_regularisation=jac,
        curves={m: dict(step=h["eval_step"], test_acc=h["test_acc"],
                        loss=h["loss"], iters=h["iters"]) for m, h in histories.items()},
        residual_trace_median=traces,
        total_seconds=total,
    )
    json_path, png_path = os.path.join(out, "demo.json"), os.path.join(out, "demo.png")
    with open(json_path, "w") as fh:
        json.dump(report, fh, indent=1)
    save_figure(png_path, histories, traces)
    print(f"wrote {json_path} and {png_path}")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_table(results, memory, jac) -> str:
    """The side-by-side comparison printed at the end of the demo."""
    rows = [("mode", "test acc", "ms/step", "fwd iters", "temp mem", "backward cost")]
    for mode, r in results.items():
        rows.append((mode, f"{r['test_acc']:.3f}", f"{r['step_ms']:.2f}",
                     f"{r['fwd_iters']:.1f}", _mib(r["temp_bytes"]), r["backward"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    lines.append("(ms/step: median wall time of a jitted training step; fwd iters: mean "
                 "over training; temp mem: XLA temporaries of the step)")
    if memory:
        lines.append("")
        limits = [str(n) for n in MEMORY_MAX_STEPS]
        lines.append("XLA temp memory of the training step at max_steps = "
                     + " / ".join(limits) + ":")
        for mode, m in memory.items():
            lines.append(f"  {mode:<10} " + " / ".join(_mib(m[n]) for n in limits))
    if jac:
        lines.append("")
        lines.append(f"Jacobian regularisation (Implicit, loss + {jac['weight']:g} * "
                     "jac_loss):")
        for name in ("without", "with"):
            r = jac[name]
            lines.append(f"  {name:<8} test acc {r['test_acc']:.3f}   mean fwd iters: "
                         f"training {r['fwd_iters']:.1f}, test {r['test_iters']:.1f}   "
                         f"{r['step_ms']:.2f} ms/step")
    return "\n".join(lines)


def save_figure(path, histories, traces) -> None:
    """Test accuracy vs step per mode; forward residual vs iteration on a test batch."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for mode, h in histories.items():
        ax1.plot(h["eval_step"], h["test_acc"], marker=".", label=mode)
    ax1.set_xlabel("training step")
    ax1.set_ylabel("test accuracy")
    ax1.set_title("DEQ on digits: test accuracy per gradient mode")
    ax1.set_ylim(0.8, 1.0)
    ax1.grid(alpha=0.3)
    ax1.legend()
    for mode, t in traces.items():
        ax2.semilogy(range(1, len(t) + 1), t, marker=".", label=mode)
    ax2.axhline(TOL, color="gray", ls="--", lw=1, label="tol")
    ax2.set_xlabel("forward iteration")
    ax2.set_ylabel("relative residual (batch median)")
    ax2.set_title("Forward solve of each trained model, one test batch")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
