"""Experiment: a multiscale DEQ (MDEQ) on MNIST-1D against one-resolution DEQ, unrolled f, CNN.

    python benchmarks/mdeq.py            # full run (3 seeds)
    python benchmarks/mdeq.py --quick    # the test's run: the memory claim only, at
                                         # L = 4 and 32, two resolutions (40/20), batch 8

Bai, Koltun and Kolter 2020 ("Multiscale deep equilibrium models") solve feature maps at
several resolutions as one equilibrium. Here, on MNIST-1D (the `mnist1d` package's
generator, `make_dataset(get_dataset_args())`, no download: 4000 training and 1000 test
signals of length 40, 10 classes), with 1-D convolutions at resolutions 40/20/10:

- MDEQ: `innerloop.MDEQ(1, channels, 40)` (one residual block per branch, multiscale
  fusion, injection into the length-40 branch), solved by Anderson, differentiated by
  `--grad`: `Implicit(fallback=None)` (default), `Phantom(5, 0.5)` (Geng et al. 2021) or
  `JacobianFree()`; trained as the same f unrolled `--warmup-depth` times for the first
  `--warmup` steps (the paper's warm-up).
- DEQ (single resolution): the same model with one branch (length 40) whose channel count
  is chosen so that the whole classifier has about the MDEQ's parameter count (the
  paper's ablation); same solver, gradient, warm-up and tuning.
- unrolled L: the MDEQ's f applied L times from z = 0, L in {4, 8, 16, 32}, trained by
  backpropagation through the L layers (a weight-tied explicit network; `MDEQ(..., depth=L)`).
- CNN: an untied 1-D CNN with the same resolutions and channels (two conv-GroupNorm-ReLU
  layers per resolution, strided convolutions between them).

Every model ends in the same head: each resolution average-pooled to length 10, the
channels concatenated, flattened, a linear layer to 10 logits. Adam, cross-entropy, the
same steps, batch and learning rate for every row; 3 seeds (initialisation and batch
order).

Measured: test accuracy (mean and standard error over seeds); forward f-evaluations per
example (the solver's iterations + 1 for the implicit models, on the test set; L for the
unrolled ones); backward f-evaluations per example (vector-Jacobian products of f: the
adjoint iterations of `Implicit()`'s linear solve, counted by solving the same adjoint
system u = (df/dz)^T u + dL/dz with `fixed_point(Iteration())` at `Implicit()`'s
tolerance and step limit on a test batch; k = 5 for Phantom, 1 for JacobianFree; L for
the unrolled ones); the temporary memory
XLA allocates for one training step (`jax.jit(step).lower(...).compile()
.memory_analysis().temp_size_in_bytes`) against L for the unrolled network and against
`max_steps` in 4..32 for the MDEQ; wall time.

Claims (checked in every run; `--quick` checks those marked *):
- MDEQ mean test accuracy > the single-resolution DEQ's;
- MDEQ mean test accuracy >= the best unrolled network's - 2 points;
- * the MDEQ's training-step temp memory is flat in max_steps (max / min <= 1.1 over
  4..32), * while the unrolled network's grows with L (L = 32 over L = 4 > 1.1).
"""

from __future__ import annotations

import math
import sys
import time
import warnings

import _experiment as E  # benchmarks/_experiment.py (the script's folder is on sys.path)
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import innerloop as il
from innerloop import MDEQ

LENGTH = 40
POOL = 10  # every resolution is pooled to this length before the head
DEPTHS = (4, 8, 16, 32)


# ------------------------------------------------------------------------ models


def _features(zs):
    """Each resolution average-pooled to length POOL, concatenated and flattened."""
    out = []
    for z in zs:
        c, n = z.shape
        out.append(z.reshape(c, POOL, n // POOL).mean(-1))
    return jnp.concatenate(out, 0).reshape(-1)


class _CNNStage(eqx.Module):
    down: eqx.nn.Conv | None
    convs: tuple
    norms: tuple

    def __call__(self, h):
        if self.down is not None:
            h = jax.nn.relu(self.down(h))
        for conv, norm in zip(self.convs, self.norms):
            h = jax.nn.relu(norm(conv(h)))
        return h


class CNN(eqx.Module):
    """An untied 1-D CNN: per resolution two conv(3)-GroupNorm-ReLU layers, a strided
    conv(3) between resolutions; returns the feature map of every resolution."""

    stem: eqx.nn.Conv
    stages: tuple

    def __init__(self, channels, groups, key):
        keys = jax.random.split(key, 1 + 3 * len(channels))
        self.stem = eqx.nn.Conv(1, 1, channels[0], 3, padding=1, key=keys[0])
        stages = []
        for i, c in enumerate(channels):
            k = keys[1 + 3 * i: 4 + 3 * i]
            down = None if i == 0 else eqx.nn.Conv(1, channels[i - 1], c, 3, stride=2,
                                                   padding=1, key=k[0])
            convs = tuple(eqx.nn.Conv(1, c, c, 3, padding=1, key=kk) for kk in k[1:])
            stages.append(_CNNStage(down, convs, tuple(eqx.nn.GroupNorm(groups, c)
                                                       for _ in convs)))
        self.stages = tuple(stages)

    def __call__(self, x):
        h, out = self.stem(x), []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return tuple(out)


class Classifier(eqx.Module):
    body: eqx.Module
    head: eqx.nn.Linear

    def __call__(self, x, key, *, depth=None, inference=False):
        """(logits (N, 10), stats or None) for a batch x (N, 1, LENGTH)."""
        if isinstance(self.body, MDEQ):
            zs, stats = self.body(x, key=key, batched=True, depth=depth,
                                  inference=inference)
        else:
            zs, stats = jax.vmap(self.body)(x), None
        return jax.vmap(lambda *z: self.head(_features(z)))(*zs), stats


def n_params(model) -> int:
    return sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


def make_mdeq(channels, key, cfg, **kw):
    k1, k2 = jax.random.split(key)
    solver = (il.solvers.Iteration() if cfg.solver == "iteration"
              else il.solvers.Anderson(memory=cfg.memory))
    grad = {"implicit": lambda: il.Implicit(fallback=None), "phantom": il.Phantom,
            "jacobianfree": il.JacobianFree}[cfg.grad]()
    body = MDEQ(1, channels, LENGTH, key=k1, groups=cfg.groups, solver=solver,
                grad=grad, tol=cfg.tol, max_steps=cfg.max_steps,
                jac_reg=cfg.jac_reg > 0, **kw)
    return Classifier(body, eqx.nn.Linear(sum(channels) * POOL, 10, key=k2))


def make_cnn(channels, key, cfg):
    k1, k2 = jax.random.split(key)
    return Classifier(CNN(channels, cfg.groups, k1),
                      eqx.nn.Linear(sum(channels) * POOL, 10, key=k2))


def matched_width(target: int, cfg) -> int:
    """The one-branch channel count whose classifier's parameter count is nearest the
    MDEQ's (a multiple of the GroupNorm groups)."""
    best = None
    for c in range(cfg.groups, 40 * cfg.groups + 1, cfg.groups):
        n = n_params(make_mdeq((c,), jax.random.key(0), cfg))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (c, n)
    return best[0]


# ---------------------------------------------------------------------- training


def loss_fn(model, x, y, key, cfg, depth):
    logits, stats = model(x, key, depth=depth)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    if stats is not None and cfg.jac_reg > 0:
        ce = ce + cfg.jac_reg * stats.jac_loss.mean()
    return ce


_STEPS: dict = {}
_EVALS: dict = {}


def compiled_step(model, cfg, opt, depth=None):
    """(the compiled training step, its temp bytes) for this model's structure (its
    treedef holds the configuration) and `depth` (None: the equilibrium solve): one
    compilation shared by the seeds, the warm-up and the memory table."""
    k = (jax.tree.structure(model), depth)
    if k not in _STEPS:
        def train_step(model, opt_state, x, y, key):
            loss, g = eqx.filter_value_and_grad(loss_fn)(model, x, y, key, cfg, depth)
            updates, opt_state = opt.update(g, opt_state, model)
            return eqx.apply_updates(model, updates), opt_state, loss

        x = jnp.zeros((cfg.batch, 1, LENGTH), jnp.float32)
        y = jnp.zeros((cfg.batch,), jnp.int32)
        compiled = jax.jit(train_step).lower(model, opt.init(model), x, y,
                                             jax.random.key(0)).compile()
        _STEPS[k] = (compiled, int(compiled.memory_analysis().temp_size_in_bytes))
    return _STEPS[k]


def train(name, model, data, seed, cfg, opt, *, depth=None):
    """Adam on the training set; an implicit model's first cfg.warmup steps run the same
    f unrolled cfg.warmup_depth times (what `MDEQ(warmup_steps=...)` does below its
    step count). Returns (model, training seconds)."""
    x_tr, y_tr = data[0], data[1]
    is_deq = isinstance(model.body, MDEQ) and depth is None
    main = compiled_step(model, cfg, opt, depth)[0]
    warm = compiled_step(model, cfg, opt, cfg.warmup_depth)[0] if is_deq else main
    opt_state = opt.init(model)
    rng = np.random.default_rng(seed)
    key = jax.random.key(1000 + seed)
    start, losses = time.perf_counter(), []
    for i in range(cfg.steps):
        idx = rng.choice(len(y_tr), cfg.batch, replace=False)
        key, sub = jax.random.split(key)
        step = warm if is_deq and i < cfg.warmup else main
        model, opt_state, loss = step(model, opt_state, x_tr[idx], y_tr[idx], sub)
        losses.append(loss)
        if (i + 1) % max(1, cfg.steps // 4) == 0:
            print(f"  {name} seed {seed}: step {i + 1}/{cfg.steps}, loss "
                  f"{float(np.mean(jax.device_get(losses[-50:]))):.3f}", flush=True)
    jax.block_until_ready(model)
    return model, time.perf_counter() - start


def _eval_fn(model, depth):
    k = (jax.tree.structure(model), depth)
    if k not in _EVALS:
        def run(model, x):
            logits, stats = model(x, None, depth=depth, inference=True)
            if stats is None:
                return logits, None, None
            return logits, stats.steps, stats.residual

        _EVALS[k] = jax.jit(run)
    return _EVALS[k]


def evaluate(model, data, *, depth=None):
    """(test accuracy, mean forward f-evaluations per example, mean residual)."""
    x_te, y_te = data[2], data[3]
    run = _eval_fn(model, depth)
    correct, fevals, resid = 0, [], []
    for s in range(0, len(y_te), 500):
        logits, steps, r = run(model, x_te[s:s + 500])
        correct += int(jnp.sum(jnp.argmax(logits, -1) == y_te[s:s + 500]))
        if steps is not None:
            fevals.append(np.asarray(steps) + (0 if depth else 1))
            resid.append(np.asarray(r))
    acc = correct / len(y_te)
    if not fevals:
        return acc, math.nan, math.nan
    return acc, float(np.mean(np.concatenate(fevals))), float(np.mean(np.concatenate(resid)))


def _adjoint(mdeq, head, x, y):
    def one(xi, yi):
        z, _ = mdeq(xi, inference=True)
        u = mdeq.injection(xi)
        gz = jax.grad(lambda z_: optax.softmax_cross_entropy_with_integer_labels(
            head(_features(z_)), yi))(z)
        _, vjp = jax.vjp(lambda z_: mdeq.cell(z_, u), z)

        def adjoint(w, g):
            return jax.tree.map(jnp.add, vjp(w)[0], g)

        sol = il.fixed_point(adjoint, gz, gz, solver=il.solvers.Iteration(),
                             grad=il.JacobianFree(), rtol=mdeq.tol, atol=0.0,
                             max_steps=mdeq.max_steps)
        return sol.steps, sol.converged

    return jax.vmap(one)(x, y)


def adjoint_iterations(model, data, n=200) -> tuple[float, float]:
    """Mean iterations of the adjoint system u = (df/dz)^T u + dL/dz at z* per example,
    solved as `Implicit(fallback=None)` solves it (plain iteration, its tolerance, the
    forward max_steps): each is one vector-Jacobian product of f. And the fraction of
    examples whose adjoint converged."""
    steps, ok = eqx.filter_jit(_adjoint)(model.body, model.head, data[2][:n], data[3][:n])
    return float(np.mean(np.asarray(steps))), float(np.mean(np.asarray(ok)))


# ------------------------------------------------------------------------ memory


def memory_table(cfg, opt, key, depths):
    """Temp bytes of one training step: MDEQ (Implicit) at max_steps = L and the
    unrolled network at depth L."""
    rows = {}
    for L in depths:
        mdeq = make_mdeq(cfg.channels, key, _with(cfg, max_steps=L))
        unrolled = make_mdeq(cfg.channels, key, cfg)
        rows[L] = (compiled_step(mdeq, cfg, opt)[1], compiled_step(unrolled, cfg, opt, L)[1])
        print(f"  memory L={L}: MDEQ {rows[L][0]} B, unrolled {rows[L][1]} B", flush=True)
    return rows


def _with(cfg, **kw):
    import copy

    c = copy.copy(cfg)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


# -------------------------------------------------------------------------- main


def load_data():
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # the generator (no download)
    return (np.asarray(d["x"], np.float32)[:, None], np.asarray(d["y"], np.int32),
            np.asarray(d["x_test"], np.float32)[:, None], np.asarray(d["y_test"], np.int32))


def mean_se(v):
    v = np.asarray(v, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def main(argv=None) -> int:
    ap = E.parser(__doc__, "mdeq.md")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (3)")
    ap.add_argument("--steps", type=int, default=400, help="training steps (400)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (32; quick 8)")
    ap.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    ap.add_argument("--channels", type=int, nargs="+", default=None,
                    help="MDEQ channels per resolution (16 8 8; quick 4 8)")
    ap.add_argument("--groups", type=int, default=2, help="GroupNorm groups")
    ap.add_argument("--solver", choices=("anderson", "iteration"), default=None,
                    help="forward solver (anderson; quick iteration)")
    ap.add_argument("--memory", type=int, default=5, help="Anderson memory")
    ap.add_argument("--grad", choices=("implicit", "phantom", "jacobianfree"),
                    default="implicit", help="gradient mode of the MDEQ and the DEQ: "
                    "Implicit(fallback=None), Phantom(5, 0.5) or JacobianFree()")
    ap.add_argument("--tol", type=float, default=1e-3, help="forward solver rtol")
    ap.add_argument("--max-steps", type=int, default=12, help="forward max_steps")
    ap.add_argument("--jac-reg", type=float, default=0.0,
                    help="Jacobian regularisation weight (0: off)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="warm-up steps, unrolled (a fifth of --steps)")
    ap.add_argument("--warmup-depth", type=int, default=8, help="warm-up depth")
    ap.add_argument("--only", nargs="+", default=None,
                    help="rows to run (tuning): mdeq deq unrolled cnn memory")
    cfg = ap.parse_args(argv)
    cfg.batch = cfg.batch or (8 if cfg.quick else 32)
    cfg.channels = tuple(cfg.channels or ((4, 8) if cfg.quick else (16, 8, 8)))
    cfg.warmup = cfg.steps // 5 if cfg.warmup is None else cfg.warmup
    cfg.solver = cfg.solver or ("iteration" if cfg.quick else "anderson")
    want = (lambda r: r == "memory") if cfg.quick else (
        lambda r: cfg.only is None or r in cfg.only)
    seeds = list(range(cfg.seed, cfg.seed + cfg.seeds))

    # The table reports how far the adjoint solves converge (backward column).
    warnings.filterwarnings("ignore", category=il.BackwardNotConvergedWarning)
    run = E.Run("mdeq.py", argv, "mnist1d")
    opt = optax.adam(cfg.lr)
    header = run.header(
        "data: MNIST-1D (mnist1d generator, default arguments), 4000 train / 1000 test "
        "signals of length 40" + (" (not used by --quick)" if cfg.quick else ""),
        f"MDEQ: channels {cfg.channels} at lengths "
        f"{'/'.join(str(LENGTH // 2 ** i) for i in range(len(cfg.channels)))}, GroupNorm "
        f"groups {cfg.groups}, "
        + (f"Anderson(memory={cfg.memory})" if cfg.solver == "anderson" else "Iteration()")
        + f", tol {cfg.tol}, max_steps {cfg.max_steps}, gradient {cfg.grad}; "
        f"warm-up {cfg.warmup} steps unrolled to depth {cfg.warmup_depth}; "
        f"Jacobian regularisation weight {cfg.jac_reg}",
        f"training: {cfg.steps} Adam steps (lr {cfg.lr}) of batch {cfg.batch}, seeds "
        f"{' '.join(map(str, seeds))}")

    claims, body = [], []
    if want("memory"):
        depths = (DEPTHS[0], DEPTHS[-1]) if cfg.quick else DEPTHS
        mem = memory_table(cfg, opt, jax.random.key(cfg.seed), depths)
        body += ["## Temp memory of one training step (bytes)", "",
                 f"Batch {cfg.batch}, channels {cfg.channels}; MDEQ: gradient {cfg.grad} at "
                 "max_steps = L; unrolled: f applied L times, backpropagation.", "",
                 "| L | MDEQ (max_steps = L) | unrolled (depth L) |", "|---|---|---|"]
        body += [f"| {L} | {a} | {b} |" for L, (a, b) in mem.items()]
        mdeq_mem = [a for a, _ in mem.values()]
        flat = max(mdeq_mem) / min(mdeq_mem)
        grows = mem[depths[-1]][1] / mem[depths[0]][1]
        claims += [E.claim(flat <= 1.1, f"MDEQ temp memory flat in max_steps "
                           f"{depths[0]}..{depths[-1]} (max/min {flat:.3f} <= 1.1)"),
                   E.claim(grows > 1.1, f"unrolled temp memory grows with L (L={depths[-1]}"
                           f" / L={depths[0]}: {grows:.2f} > 1.1)")]
        body.append("")

    rows = {}
    if not cfg.quick:
        data = load_data()
        probe = make_mdeq(cfg.channels, jax.random.key(0), cfg)
        width = matched_width(n_params(probe), cfg)
        specs = []
        if want("mdeq"):
            specs.append(("MDEQ", lambda k: make_mdeq(cfg.channels, k, cfg), None))
        if want("deq"):
            specs.append((f"DEQ (one resolution, {width} channels)",
                          lambda k: make_mdeq((width,), k, cfg), None))
        if want("unrolled"):
            specs += [(f"unrolled L={L}", lambda k: make_mdeq(cfg.channels, k, cfg), L)
                      for L in DEPTHS]
        if want("cnn"):
            specs.append(("CNN (untied)", lambda k: make_cnn(cfg.channels, k, cfg), None))
        for name, make, depth in specs:
            accs, fwd, resid, bwd, ok, secs = [], [], [], [], [], []
            for s in seeds:
                model = make(jax.random.key(s))
                model, t = train(name, model, data, s, cfg, opt, depth=depth)
                acc, fe, r = evaluate(model, data, depth=depth)
                accs.append(acc)
                fwd.append(fe)
                resid.append(r)
                secs.append(t)
                if isinstance(model.body, MDEQ) and depth is None and cfg.grad == "implicit":
                    b, c = adjoint_iterations(model, data)
                    bwd.append(b)
                    ok.append(c)
                print(f"{name} seed {s}: test accuracy {100 * acc:.2f}%, train {t:.1f} s",
                      flush=True)
            rows[name] = dict(acc=accs, fwd=fwd, resid=resid, bwd=bwd, ok=ok, secs=secs,
                              depth=depth, params=n_params(model),
                              implicit=isinstance(model.body, MDEQ) and depth is None)
        table = ["| model | params | " + " | ".join(f"seed {s}" for s in seeds) +
                 " | mean +- s.e. (%) | forward f-evals | backward f-evals (VJPs) | "
                 "residual | train s / seed |",
                 "|---|---|" + "---|" * len(seeds) + "---|---|---|---|---|"]
        for name, r in rows.items():
            m, se = mean_se(r["acc"])
            if r["depth"] is not None:
                fwd, bwd = str(r["depth"]), str(r["depth"])
            elif r["bwd"]:
                fwd = f"{np.mean(r['fwd']):.1f}"
                bwd = (f"{np.mean(r['bwd']):.1f} ({100 * np.mean(r['ok']):.0f}% converged)")
            elif r["implicit"]:
                fwd = f"{np.mean(r['fwd']):.1f}"
                bwd = {"phantom": "5 (Phantom(5, 0.5))", "jacobianfree": "1 (JacobianFree)"}[
                    cfg.grad]
            else:
                fwd = bwd = "- (one pass)"
            resid = "-" if math.isnan(np.mean(r["resid"])) else f"{np.mean(r['resid']):.3g}"
            table.append(f"| {name} | {r['params']} | " +
                         " | ".join(f"{100 * a:.2f}" for a in r["acc"]) +
                         f" | {100 * m:.2f} +- {100 * se:.2f} | {fwd} | {bwd} | {resid} | "
                         f"{np.mean(r['secs']):.1f} |")
        body = ["## Test accuracy", "", *table, "",
                "Forward f-evals: the solver's iterations + 1 (mean over test examples) for "
                "the implicit models, L for the unrolled ones. Backward: vector-Jacobian "
                "products of f per example (Implicit()'s adjoint iterations, measured on 200 "
                "test examples; Phantom's k; L for the unrolled ones). Residual: ||f(z) - z|| "
                "(absolute, mean over test examples) at the returned state.", "", *body]
        mdeq_name = "MDEQ"
        deq_name = next((n for n in rows if n.startswith("DEQ")), None)
        unrolled = [n for n in rows if n.startswith("unrolled")]
        if cfg.only is None:
            acc = {n: mean_se(r["acc"])[0] for n, r in rows.items()}
            best = max(unrolled, key=lambda n: acc[n])
            claims += [
                E.claim(acc[mdeq_name] > acc[deq_name],
                        f"MDEQ mean accuracy {100 * acc[mdeq_name]:.2f}% > single-resolution "
                        f"DEQ's {100 * acc[deq_name]:.2f}%"),
                E.claim(acc[mdeq_name] >= acc[best] - 0.02,
                        f"MDEQ mean accuracy {100 * acc[mdeq_name]:.2f}% within 2 points of "
                        f"the best unrolled network ({best}: {100 * acc[best]:.2f}%)")]

    body += ["## Claims", "", *(f"- {line}" for _, line in claims)]
    run.write(cfg.out, "MDEQ on MNIST-1D" + (" (--quick)" if cfg.quick else ""), header,
              "\n".join(body))
    E.enforce(*claims)
    return 0


if __name__ == "__main__":
    sys.exit(main())
