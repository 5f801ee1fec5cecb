"""What the experiment and benchmark scripts share: the command line, the results
header, the datasets and a jitted optax fit loop.

- `parser(doc, out)`: the flags every script has (`--quick`, `--seed`, `--out`) on an
  argparse parser whose errors are one line (exit status 2).
- `Run`: the header of a results file (command, machine with its CPU model, package
  versions) built in one place, and the wall time since the script started.
- `load(name, split)`: a dataset's (x_train, y_train, x_test, y_test); the default
  split is `innerloop.rules.tasks`'s, the other named splits keep the published
  numbers of the scripts that use them.
- `fit(...)`: an optax loop over a jitted step, with a progress bar.
- `claim(ok, text)`, `enforce(*claims)`: the claims a run checks; `enforce` raises
  `ClaimFailed` when one does not hold.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import _report  # benchmarks/_report.py (the script's folder is on sys.path)
import jax
import numpy as np
import optax

from innerloop.cli import Parser

RESULTS = Path(__file__).parent / "results"
PACKAGES = ("jax", "jaxlib", "equinox", "optax", "innerloop", "numpy")


# ------------------------------------------------------------------ the command line


def parser(doc: str, out: str, quick: str = "a short run, the one the tests run; it "
           "asserts the script's claim at its scale") -> Parser:
    """A parser with `--quick`, `--seed` (default 0) and `--out` (default
    benchmarks/results/<out>); `doc` is the script's docstring."""
    p = Parser(description=doc.strip().splitlines()[0],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", type=Path, default=RESULTS / out,
                   help=f"Markdown results (default benchmarks/results/{out})")
    return p


# --------------------------------------------------------------------- the header


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command(script: str, argv: list[str] | None) -> str:
    """`python benchmarks/<script> <args>` (`argv` None: this process's arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", f"benchmarks/{script}", *map(str, args)])


class Run:
    """One run of a script: its command, header lines and wall time."""

    def __init__(self, script: str, argv: list[str] | None, *packages: str):
        self.start = time.perf_counter()
        self.command = command(script, argv)
        self.packages = PACKAGES + tuple(p for p in packages if p not in PACKAGES)

    def header(self, *lines: str) -> list[str]:
        """"- command:", "- machine:", "- versions:" and then `lines` (one "- " item
        each); printed, and returned for the results file."""
        devices = jax.devices()
        out = [f"- command: {self.command}",
               f"- machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs "
               f"({len(os.sched_getaffinity(0))} usable by this process), jax backend "
               f"{jax.default_backend()} ({len(devices)} x {devices[0].device_kind})",
               "- versions: " + ", ".join(
                   f"{k} {v}" for k, v in _report.versions(*self.packages).items()),
               *(f"- {line}" for line in lines)]
        print("\n".join(out), flush=True)
        return out

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def write(self, path, title: str, header: list[str], body: str) -> None:
        """The results file: `# title`, the header, the body and the wall time."""
        body = body.rstrip("\n") + f"\n\nWall time {self.seconds():.1f} s.\n"
        _report.write(str(path), [f"# {title}", "", *header, ""], body)


# ----------------------------------------------------------------------- the data


SPLITS = {
    "tasks": "innerloop.rules.tasks.load_dataset: stratified 80/20 (random_state 0), "
             "standardised with the training statistics",
    "quarter": "stratified 75/25 (random_state 0), digits pixels / 16",
    "halves": "a random permutation (numpy seed `seed`) cut in two halves, digits "
              "pixels / 16",
    "all": "every example in the training part (no test part), standardised over all",
}


def load(name: str = "digits", split: str = "tasks", seed: int = 0):
    """(x_train, y_train, x_test, y_test) of a scikit-learn dataset under one of
    `SPLITS`; "tasks" is `innerloop.rules.tasks.load_dataset` (float32), the others
    keep the splits (and dtypes) of the scripts' published numbers."""
    from innerloop.rules import tasks

    if split not in SPLITS:
        raise ValueError(f"load: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if split == "tasks":
        return tasks.load_dataset(name)
    import sklearn.datasets

    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    if split == "quarter":
        from sklearn.model_selection import train_test_split

        x = (x / 16.0).astype(np.float32) if name == "digits" else x.astype(np.float32)
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y,
                                                  random_state=0)
        return x_tr, y_tr, x_te, y_te
    if split == "halves":
        order = np.random.default_rng(seed).permutation(len(y))
        x, y = x[order] / (16.0 if name == "digits" else 1.0), y[order]
        half = len(y) // 2
        return x[:half], y[:half], x[half:], y[half:]
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return x, y, x[:0], y[:0]


# ------------------------------------------------------------------- the fit loop


def key_chain(key, steps: int) -> list:
    """The keys `key, sub = split(key)` hands out over `steps` steps, in order."""
    subs = []
    for _ in range(steps):
        key, sub = jax.random.split(key)
        subs.append(sub)
    return subs


def value_and_grad(loss: Callable) -> Callable:
    """`loss(params, key)` as a `fit` step: (loss, gradient, aux unchanged)."""
    def step(params, key, aux):
        value, g = jax.value_and_grad(loss)(params, key)
        return value, g, aux

    return step


def fit(grad: Callable, params, optimizer: optax.GradientTransformation,
        keys: Iterable, *, aux=None, name: str = "fit", every: int | None = None):
    """Optax on `grad(params, key, aux) -> (loss, gradient, aux)`, one jitted step per
    key. Returns (params, aux, losses as a numpy array). Progress: a tqdm bar when
    stderr is a terminal, else a line every `every` steps (default: 6 lines)."""

    @jax.jit
    def update(params, state, aux, key):
        loss, g, aux = grad(params, key, aux)
        u, state = optimizer.update(g, state, params)
        return optax.apply_updates(params, u), state, aux, loss

    keys = list(keys)
    steps = len(keys)
    every = every or max(1, steps // 6)
    bar = None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=name, leave=False)
        except ImportError:
            pass
    state, losses = optimizer.init(params), []
    for i, key in enumerate(keys):
        params, state, aux, loss = update(params, state, aux, key)
        losses.append(loss)
        if bar is not None:
            bar.update()
            if (i + 1) % every == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
        elif (i + 1) % every == 0:
            recent = float(np.mean(jax.device_get(losses[-every:])))
            print(f"  {name}: step {i + 1}/{steps}, loss {recent:.4f} (mean of the last "
                  f"{every})", flush=True)
    if bar is not None:
        bar.close()
    return params, aux, np.asarray(jax.device_get(losses), np.float64)


# --------------------------------------------------------------------- the claims


class ClaimFailed(RuntimeError):
    """A run measured a number on the wrong side of its claim's threshold."""


def claim(ok, text: str) -> tuple[bool, str]:
    """(ok, "text: holds" or "text: does NOT hold"), printed."""
    line = f"{text}: {'holds' if ok else 'does NOT hold'}"
    print(f"claim: {line}", flush=True)
    return bool(ok), line


def enforce(*claims: tuple[bool, str]) -> None:
    """Raise `ClaimFailed` naming every claim that does not hold (after the script
    has written its results, so that the file records the verdict)."""
    failed = [line for ok, line in claims if not ok]
    if failed:
        raise ClaimFailed("; ".join(failed))
