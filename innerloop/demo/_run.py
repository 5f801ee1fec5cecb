"""`run`: train every requested mode, measure, check the claim, report."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import equinox as eqx
import jax
import numpy as np

from innerloop.demo._config import (
    BATCH,
    CLAIM_ACC,
    CLAIM_STEPS,
    HIDDEN,
    JAC_WEIGHT,
    LEARNING_RATE,
    MAX_STEPS,
    MEMORY_MAX_STEPS,
    SPLIT_SEED,
    TOL,
    WEIGHT_CAP,
)
from innerloop.demo._flags import resolve
from innerloop.demo._measure import adjoint_cost, residual_trace
from innerloop.demo._model import load_digits_split, make_model, with_config
from innerloop.demo._report import BACKWARD, format_table, save_figure
from innerloop.demo._train import make_optimizer, make_step, step_ms, step_temp_bytes, train


def check_claim(results, steps: int) -> str | None:
    """The failure message when a run of at least `CLAIM_STEPS` steps left Implicit at
    or below `CLAIM_ACC` test accuracy; None when the claim holds or does not apply."""
    if "implicit" not in results or steps < CLAIM_STEPS:
        return None
    acc = results["implicit"]["test_acc"]
    if acc > CLAIM_ACC:
        return None
    return (f"innerloop demo: Implicit reached test accuracy {acc:.3f} after {steps} steps, "
            f"not above {CLAIM_ACC} (measured 0.96-0.97 at {CLAIM_STEPS} steps): its "
            "gradient is probably wrong; run tests/implicit")


def run(args) -> int:
    """Run the demo for parsed `args` (modes, steps, quick, solver, seed, out).

    Returns 0, or 1 when the run fails the claim (`check_claim`)."""
    args = resolve(args)
    load = list(os.getloadavg())  # other processes compete for the cores and the timings
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
            step_ms=step_ms(hist),
            compile_s=hist["compile_s"],
            fwd_iters=float(np.mean(hist["iters"])),
            test_iters=hist["test_iters"][-1],
            temp_bytes=hist["temp_bytes"],
        )
        backward = BACKWARD[mode]
        if mode == "implicit":
            cost = adjoint_cost(model, xb, yb)
            entry["adjoint"] = cost
            count = f"{cost['vjps']:.1f}"
            if cost["unconverged"] > 0:  # the fallback ran on those: a lower bound
                count = f">= {count} ({100 * cost['unconverged']:.0f}% fell back)"
            if not cost["grad_rel_err"] <= 1e-6:  # rebuilt solve != the mode's: say so
                count += f" (unverified: gradients differ by {cost['grad_rel_err']:.1e})"
            backward = backward.format(adjoint=count)
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
            memory[mode][str(limit)] = step_temp_bytes(make_step(optimizer), model,
                                                       opt_state, xb, yb, probe_key)

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
                           step_ms=step_ms(hist), compile_s=hist["compile_s"],
                           final_jac_loss=float(np.mean(hist["jac"][-10:])))
        jac["weight"] = JAC_WEIGHT
        histories["implicit+jacreg"] = hist
        traces["implicit+jacreg"] = residual_trace(model, x_test[:BATCH])

    total = time.perf_counter() - t_start
    print()
    print(format_table(results, memory, jac))
    print(f"\ntotal wall time {total:.1f} s (load average at start "
          f"{', '.join(f'{v:.1f}' for v in load)}, {os.cpu_count()} cores)")

    failure = check_claim(results, args.steps)
    report = dict(
        config=dict(steps=args.steps, modes=list(args.modes), quick=args.quick,
                    solver=args.solver, seed=args.seed, hidden=HIDDEN, batch=BATCH,
                    learning_rate=LEARNING_RATE, weight_cap=WEIGHT_CAP, tol=TOL,
                    max_steps=MAX_STEPS, jac_weight=JAC_WEIGHT, split_seed=SPLIT_SEED,
                    n_train=len(x_train), n_test=len(x_test),
                    backend=jax.default_backend(), cpu_count=os.cpu_count(),
                    load_average_at_start=load),
        modes=results,
        memory_temp_bytes=memory,
        jacobian_regularisation=jac,
        claim=dict(min_steps=CLAIM_STEPS, implicit_test_acc_above=CLAIM_ACC,
                   checked="implicit" in results and args.steps >= CLAIM_STEPS,
                   holds=failure is None),
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
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    return 0
