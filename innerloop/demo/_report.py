"""The demo's printed comparison and figure."""

from __future__ import annotations

from innerloop.demo._config import PHANTOM_DAMPING, PHANTOM_K, TOL, TRUNCATED_K

BACKWARD = {
    "implicit": "adjoint fixed-point solve: {adjoint} VJPs of the cell",
    "unroll": "backprop through every forward iteration (and the solver's own arithmetic)",
    "truncated": f"{TRUNCATED_K} VJPs of the cell from z*",
    "phantom": f"{PHANTOM_K} damped VJPs of the cell (damping {PHANTOM_DAMPING})",
    "jacobianfree": "1 VJP of the cell (no inverse)",
}


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def format_table(results, memory, jac) -> str:
    """The side-by-side comparison printed at the end of the demo."""
    rows = [("mode", "test acc", "ms/step", "compile s", "fwd iters", "temp mem",
             "backward cost")]
    for mode, r in results.items():
        rows.append((mode, f"{r['test_acc']:.3f}", f"{r['step_ms']:.2f}",
                     f"{r['compile_s']:.2f}", f"{r['fwd_iters']:.1f}",
                     _mib(r["temp_bytes"]), r["backward"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
             for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    lines.append("(ms/step: median wall time of a warm call of the jitted training step; "
                 "compile s: its first call (trace, compile, one step); fwd iters: mean "
                 "over training; temp mem: XLA temporaries of the step)")
    if memory:
        lines.append("")
        limits = list(next(iter(memory.values())))
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
