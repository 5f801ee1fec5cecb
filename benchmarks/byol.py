"""Experiment: BYOL, SimCLR, CLAPP and Mean Teacher on MNIST-1D, linear probes of frozen features.

    python benchmarks/byol.py            # full run (3 seeds x 1000 steps)
    python benchmarks/byol.py --quick    # the test's run (1 seed, few steps)

Data: MNIST-1D from the `mnist1d` package's generator (`make_dataset(get_dataset_args())`,
no download): 4000 training and 1000 test signals of length 40, 10 classes, used raw
(about unit scale). The self-supervised methods see the training signals without labels.

Views: `innerloop.rules.Augment`: a circular roll and a shear (the nuisances MNIST-1D's
generator applies), a zero-filled shift, an amplitude scale, a masked segment and
Gaussian noise (`--roll/--shear/--shift/--scale/--mask/--noise`).

Encoder (every row but CLAPP): a 1-D CNN, conv(1->64, k5) - ReLU - conv(64->64, k3,
stride 2) - ReLU - conv(64->64, k3) - ReLU - conv(64->64, k3, stride 2) - ReLU - global
mean and max pooling over positions (128) - linear(128 -> 128): the 128-dimensional
representation the probe reads. (`--encoder flat`, a flatten instead of the pooling:
BYOL's probe stayed at 62-73% in 3000 steps under every setting tried, SimCLR's at 79%;
see `benchmarks/results/byol_tuning.md`.) Projector and predictor: MLPs
(in -> 256 -> norm -> ReLU -> out), the projection 64-dimensional; `norm` is batch
normalisation (batch statistics, no affine), or its replacement in the ablation
(group norm with 8 groups, or layer norm).

Rows, each trained from the same initialisation per seed, the seeds `vmap`ped through
one jitted training scan:

1. random: the untrained encoder.
2. SimCLR: NT-Xent with in-batch negatives (`innerloop.rules.SimCLR`).
3. BYOL (MLP predictor), 4. BYOL (implicit predictor: the ridge regression of the
   online projections onto the target's, solved by `innerloop.argmin` per batch and
   differentiated implicitly) (`innerloop.rules.BYOL`).
5. CLAPP: `innerloop.rules.CLAPP` (dense ReLU 40-256-128, the plain local rule;
   positive: another view of the same signal, negative: a view of another signal);
   its own architecture, since the rule is defined for dense layers.
6. supervised: the encoder plus a linear head trained end to end on all 4000 labels
   (cross-entropy, the same views as augmentation).
Ablations of BYOL: no predictor, tau = 0 (the target is the online network), group
norm and layer norm instead of batch norm. Semi-supervised: Mean Teacher
(`innerloop.rules.MeanTeacher`) with 400 labels (40 per class, drawn per seed) against
supervised training on the same 400 labels, same model (encoder + linear head),
steps and views; both evaluated by their own head on the test set.

Probe: StandardScaler + LogisticRegression (lbfgs, C=1) on the frozen representation of
the unaugmented training signals, accuracy on the test signals. Collapse monitor
(`innerloop.rules.CollapseMonitor`) on the online projections, logged every step and
read every `--log-every` steps (window means).

Claims (checked in every run; `--quick` checks those marked *):
- * BYOL (MLP predictor) beats the random encoder (mean over seeds);
- * the monitor flags the no-predictor and tau = 0 runs, and not BYOL (MLP), each
  seed, before (or without) their probe falling to the random encoder's;
- BYOL (MLP) >= 82.1% (the SimCLR probe of the mnist1d project's notebook) and above
  our SimCLR, mean of the seeds;
- BYOL (implicit) >= BYOL (MLP) - one standard error of their difference;
- Mean Teacher beats supervised-only training on the same 400 labels on every seed.
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
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from innerloop.rules import (
    BYOL,
    CLAPP,
    Augment,
    CollapseMonitor,
    CollapseWarning,
    MeanTeacher,
    SimCLR,
    SSLNetwork,
)

MNIST1D_SIMCLR = 0.821  # linear probe of SimCLR in the mnist1d project's notebook
REP, HIDDEN, PROJ, CH = 128, 256, 64, 64
STRIDES = (1, 2, 1, 2)


# ------------------------------------------------------------------ the networks


def _norm(h, kind):
    eps = 1e-5
    if kind == "batch":
        mu, var = h.mean(0), h.var(0)
    elif kind == "layer":
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    elif kind == "group":
        g = h.reshape(h.shape[0], 8, -1)
        g = (g - g.mean(-1, keepdims=True)) / jnp.sqrt(g.var(-1, keepdims=True) + eps)
        return g.reshape(h.shape)
    else:
        return h
    return (h - mu) / jnp.sqrt(var + eps)


def _dense(key, n_in, n_out):
    w = jax.random.normal(key, (n_in, n_out), jnp.float32) * math.sqrt(2.0 / n_in)
    return w, jnp.zeros((n_out,), jnp.float32)


class FlatEncoder(eqx.Module):
    """`--encoder flat`: conv(1->32, k5) - ReLU - conv(32->32, k3, stride 2) - ReLU -
    conv(32->32, k3, stride 2) - ReLU - flatten - linear(320 -> 128)."""

    convs: tuple
    out: tuple

    def __init__(self, key):
        ks = jax.random.split(key, 4)
        shapes = [(5, 1, 32), (3, 32, 32), (3, 32, 32)]
        self.convs = tuple(
            (jax.random.normal(k, s, jnp.float32) * math.sqrt(2.0 / (s[0] * s[1])),
             jnp.zeros((s[2],), jnp.float32)) for k, s in zip(ks[:3], shapes))
        self.out = _dense(ks[3], 10 * 32, REP)

    def __call__(self, x):
        h = x[:, :, None]
        for (w, b), stride in zip(self.convs, (1, 2, 2)):
            h = jax.nn.relu(_conv(h, w, stride) + b)
        w, b = self.out
        return h.reshape(h.shape[0], -1) @ w + b


ENCODERS = {}


class Encoder(eqx.Module):
    convs: tuple
    out: tuple

    def __init__(self, key):
        ks = jax.random.split(key, 5)
        shapes = [(5, 1, CH), (3, CH, CH), (3, CH, CH), (3, CH, CH)]
        self.convs = tuple(
            (jax.random.normal(k, s, jnp.float32) * math.sqrt(2.0 / (s[0] * s[1])),
             jnp.zeros((s[2],), jnp.float32)) for k, s in zip(ks[:4], shapes))
        self.out = _dense(ks[4], 2 * CH, REP)

    def __call__(self, x):
        h = x[:, :, None]
        for (w, b), stride in zip(self.convs, STRIDES):
            h = jax.nn.relu(_conv(h, w, stride) + b)
        # Global mean and max pooling: MNIST-1D translates each digit circularly, so
        # features read at fixed positions let two views match by where the digit is.
        h = jnp.concatenate([h.mean(1), h.max(1)], axis=-1)
        w, b = self.out
        return h @ w + b


def _conv(h, w, stride):
    """'SAME' 1-D convolution as one matmul over gathered windows (im2col): XLA's CPU
    convolution is slow for these few channels, under vmap over seeds."""
    k = w.shape[0]
    length = h.shape[1]
    out = -(-length // stride)
    pad = max((out - 1) * stride + k - length, 0)
    hp = jnp.pad(h, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
    starts = jnp.arange(out) * stride
    windows = hp[:, starts[:, None] + jnp.arange(k)[None, :], :]  # (B, L_out, k, C)
    return windows.reshape(*windows.shape[:2], -1) @ w.reshape(-1, w.shape[2])


class MLP(eqx.Module):
    layers: tuple
    norm: str = eqx.field(static=True)

    def __init__(self, key, n_in, n_out, norm):
        k1, k2 = jax.random.split(key)
        self.layers = (_dense(k1, n_in, HIDDEN), _dense(k2, HIDDEN, n_out))
        self.norm = norm

    def __call__(self, x):
        (w1, b1), (w2, b2) = self.layers
        return jax.nn.relu(_norm(x @ w1 + b1, self.norm)) @ w2 + b2


class Classifier(eqx.Module):
    encoder: Encoder
    head: tuple

    def __call__(self, x):
        w, b = self.head
        return self.encoder(x) @ w + b


def make_network(key, norm="batch", encoder="pool"):
    ke, kp, kq = jax.random.split(key, 3)
    return SSLNetwork(ENCODERS[encoder](ke), MLP(kp, REP, PROJ, norm), MLP(kq, PROJ, PROJ, norm))


ENCODERS.update(pool=Encoder, flat=FlatEncoder)


def make_classifier(key, encoder="pool"):
    ke, kh = jax.random.split(key)
    w = jax.random.normal(kh, (REP, 10), jnp.float32) / math.sqrt(REP)
    return Classifier(ENCODERS[encoder](ke), (w, jnp.zeros((10,), jnp.float32)))


def stack(trees):
    return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def unstack(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


# ------------------------------------------------------------------ training


def load_data():
    from mnist1d.data import get_dataset_args, make_dataset

    d = make_dataset(get_dataset_args())  # the generator (no download)
    return (np.asarray(d["x"], np.float32), np.asarray(d["y"], np.int32),
            np.asarray(d["x_test"], np.float32), np.asarray(d["y_test"], np.int32))


def chunked_trainer(step_fn, batch, n_train):
    """run(states, keys (S, n), X) -> (states, metrics (S, n, ...)): n steps of
    `step_fn(state, key, x_batch)` per seed, the seeds vmapped, jitted once."""

    def one_seed(state, keys, X):
        def body(state, k):
            ki, ks = jax.random.split(k)
            idx = jax.random.randint(ki, (batch,), 0, n_train)
            return step_fn(state, ks, X[idx])
        return jax.lax.scan(body, state, keys)

    return jax.jit(jax.vmap(one_seed, in_axes=(0, 0, None)))


def probe(feats_tr, y_tr, feats_te, y_te) -> float:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs may stop at max_iter on raw features
        clf.fit(np.asarray(feats_tr, np.float64), y_tr)
    return float(clf.score(np.asarray(feats_te, np.float64), y_te))


class Result:
    """Per method: probe accuracy per seed at each checkpoint, wall time, monitors."""

    def __init__(self, name, seeds):
        self.name, self.seeds = name, seeds
        self.curve: list[tuple[int, list[float]]] = []
        self.wall = 0.0
        self.train_s = 0.0
        self.monitors = [CollapseMonitor(name=f"{name} seed {s}") for s in seeds]
        self.note = ""

    @property
    def final(self):
        return np.asarray(self.curve[-1][1])


def run_ssl(name, method, nets, cfg, data, seeds, key, features):
    X, y, Xt, yt = data
    res = Result(name, seeds)
    t0 = time.perf_counter()
    states = stack([method.init(n, X[: cfg.batch]) for n in nets])
    run = chunked_trainer(method.step, cfg.batch, len(X))
    Xd, Xtd = jnp.asarray(X), jnp.asarray(Xt)
    feats = jax.jit(jax.vmap(features, in_axes=(0, None)))

    def evaluate(step):
        ftr, fte = feats(states, Xd), feats(states, Xtd)
        res.curve.append((step, [probe(ftr[i], y, fte[i], yt) for i in range(len(seeds))]))

    evaluate(0)
    chunk = cfg.steps // cfg.evals
    keys = jax.random.split(key, (len(seeds), cfg.steps))
    for c in range(cfg.evals):
        t = time.perf_counter()
        states, m = run(states, keys[:, c * chunk:(c + 1) * chunk], Xd)
        jax.block_until_ready(states)
        res.train_s += time.perf_counter() - t
        stats = m.projection
        for i, mon in enumerate(res.monitors):
            for s in range(0, chunk, cfg.log_every):
                window = slice(s, s + cfg.log_every)
                mon(c * chunk + s + cfg.log_every, jax.tree.map(
                    lambda a: np.mean(np.asarray(a[i, window])), stats))
        evaluate((c + 1) * chunk)
        print(f"  {name}: step {(c + 1) * chunk}, probe " + ", ".join(
            f"{100 * a:.2f}" for a in res.curve[-1][1]) + f" ({time.perf_counter() - t0:.0f} s)",
            flush=True)
    last = jax.tree.map(lambda a: float(np.mean(np.asarray(a[:, -cfg.log_every:]))), m)
    res.note = (f"final loss {last.loss:.3f}, projection std ratio "
                f"{last.projection.std_ratio:.2f}, eff. rank "
                f"{last.projection.effective_rank:.1f}")
    if hasattr(m, "predictor_converged") and name.startswith("BYOL (implicit"):
        res.note += f", ridge solves converged {100 * float(np.mean(m.predictor_converged)):.1f}%"
    res.wall = time.perf_counter() - t0
    return res, states


def run_random(nets, data, seeds):
    X, y, Xt, yt = data
    res = Result("random encoder", seeds)
    t0 = time.perf_counter()
    res.curve.append((0, [probe(n.encoder(X), y, n.encoder(Xt), yt) for n in nets]))
    res.wall = time.perf_counter() - t0
    res.monitors = []
    return res


def run_supervised(name, models, data, seeds, key, cfg, augment, labelled=None):
    """Cross-entropy on the labelled examples (all when `labelled` is None); returns
    (result with the probe accuracy of the encoder, head test accuracy per seed)."""
    X, y, Xt, yt = data
    res = Result(name, seeds)
    res.monitors = []
    t0 = time.perf_counter()
    opt = optax.adam(cfg.lr)
    n_lab = len(X) if labelled is None else labelled.shape[1]
    idx_sets = (jnp.tile(jnp.arange(len(X)), (len(seeds), 1)) if labelled is None
                else jnp.asarray(labelled))

    def train(model, keys, idx_set):
        def body(carry, k):
            model, st = carry
            ki, ka = jax.random.split(k)
            i = idx_set[jax.random.randint(ki, (cfg.batch,), 0, n_lab)]
            xb, yb = augment(ka, jnp.asarray(X)[i]), jnp.asarray(y)[i]
            loss, g = eqx.filter_value_and_grad(lambda m: optax.
                                                softmax_cross_entropy_with_integer_labels(
                                                    m(xb), yb).mean())(model)
            u, st = opt.update(g, st, eqx.filter(model, eqx.is_inexact_array))
            return (eqx.apply_updates(model, u), st), loss
        (model, _), losses = jax.lax.scan(
            body, (model, opt.init(eqx.filter(model, eqx.is_inexact_array))), keys)
        return model, losses

    keys = jax.random.split(key, (len(seeds), cfg.steps))
    t = time.perf_counter()
    models, losses = jax.jit(jax.vmap(train))(models, keys, idx_sets)
    jax.block_until_ready(models)
    res.train_s = time.perf_counter() - t
    enc_tr = [np.asarray(unstack(models, i).encoder(X)) for i in range(len(seeds))]
    enc_te = [np.asarray(unstack(models, i).encoder(Xt)) for i in range(len(seeds))]
    res.curve.append((cfg.steps, [probe(a, y, b, yt) for a, b in zip(enc_tr, enc_te)]))
    head = [float(np.mean(np.argmax(np.asarray(unstack(models, i)(Xt)), -1) == yt))
            for i in range(len(seeds))]
    res.note = (f"own head test accuracy {100 * np.mean(head):.2f}%, final train CE "
                f"{float(np.mean(np.asarray(losses)[:, -50:])):.3f}")
    res.wall = time.perf_counter() - t0
    return res, head


def run_mean_teacher(models, data, seeds, key, cfg, augment, labelled):
    X, y, Xt, yt = data
    mt = MeanTeacher(optimizer=optax.adam(cfg.lr), augment=augment, tau=cfg.mt_tau,
                     consistency=cfg.mt_weight, rampup_steps=cfg.steps // 4)
    t0 = time.perf_counter()
    is_lab = np.zeros((len(seeds), len(X)), bool)
    for i, lab in enumerate(labelled):
        is_lab[i, lab] = True
    lab_idx = jnp.asarray(labelled)
    is_lab = jnp.asarray(is_lab)
    half = cfg.batch // 2

    def train(model, keys, lab_idx, is_lab):
        state = mt.init(model, jnp.asarray(X[: cfg.batch]))

        def body(state, k):
            k1, k2, ks = jax.random.split(k, 3)
            # Half of each batch from the labelled examples, half from all of them.
            i = jnp.concatenate([lab_idx[jax.random.randint(k1, (half,), 0, lab_idx.shape[0])],
                                 jax.random.randint(k2, (cfg.batch - half,), 0, len(X))])
            return mt.step(state, ks, jnp.asarray(X)[i], jnp.asarray(y)[i], is_lab[i])
        return jax.lax.scan(body, state, keys)

    keys = jax.random.split(key, (len(seeds), cfg.steps))
    states, m = jax.jit(jax.vmap(train))(models, keys, lab_idx, is_lab)
    jax.block_until_ready(states)
    acc = [float(np.mean(np.argmax(np.asarray(mt.predict(unstack(states, i), Xt)), -1) == yt))
           for i in range(len(seeds))]
    return acc, time.perf_counter() - t0, float(np.mean(np.asarray(m.consistency)[:, -50:]))


def run_clapp(cfg, data, seeds, key, augment):
    X, y, Xt, yt = data
    rule = CLAPP(sizes=(40, 256, REP), lr=cfg.clapp_lr)
    res = Result("CLAPP (dense 40-256-128, local rule)", seeds)
    res.monitors = []
    t0 = time.perf_counter()
    params = stack([rule.init(k) for k in jax.random.split(key, len(seeds))])
    n = len(X)

    def train(params, keys):
        def body(params, k):
            ki, kj, kc, kp, kn = jax.random.split(k, 5)
            i = jax.random.randint(ki, (cfg.batch,), 0, n)
            j = (i + jax.random.randint(kj, (cfg.batch,), 1, n)) % n
            Xd = jnp.asarray(X)
            return rule.update(params, augment(kc, Xd[i]), augment(kp, Xd[i]),
                               augment(kn, Xd[j]))
        return jax.lax.scan(body, params, keys)

    keys = jax.random.split(jax.random.fold_in(key, 1), (len(seeds), cfg.steps))
    t = time.perf_counter()
    params, m = jax.jit(jax.vmap(train))(params, keys)
    jax.block_until_ready(params)
    res.train_s = time.perf_counter() - t
    accs = []
    for i in range(len(seeds)):
        p = unstack(params, i)
        accs.append(probe(rule.features(p, X)[-1], y, rule.features(p, Xt)[-1], yt))
    res.curve.append((cfg.steps, accs))
    res.note = ("last-5% loss per layer " + "/".join(
        f"{v:.3f}" for v in np.asarray(m.loss)[:, -max(1, cfg.steps // 20):].mean((0, 1))))
    res.wall = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------ the report


def mean_se(a):
    a = np.asarray(a, np.float64)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def main(argv=None) -> int:
    ap = E.parser(__doc__, "byol.md")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (3; quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (1000; quick 200)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    ap.add_argument("--tau", type=float, default=0.99, help="BYOL's tau_base")
    ap.add_argument("--ridge", type=float, default=0.1, help="implicit predictor's ridge")
    ap.add_argument("--temperature", type=float, default=0.2, help="SimCLR's temperature")
    ap.add_argument("--clapp-lr", type=float, default=0.01)
    ap.add_argument("--mt-tau", type=float, default=0.99)
    ap.add_argument("--mt-weight", type=float, default=10.0)
    ap.add_argument("--encoder", choices=("pool", "flat"), default="pool",
                    help="global pooling (default) or the earlier flatten encoder")
    ap.add_argument("--roll", type=int, default=10, help="largest circular shift")
    ap.add_argument("--shear", type=float, default=0.5, help="largest added slope")
    ap.add_argument("--shift", type=int, default=5)
    ap.add_argument("--scale", type=float, nargs=2, default=(0.8, 1.2))
    ap.add_argument("--mask", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.2)
    ap.add_argument("--evals", type=int, default=None, help="probe checkpoints after step 0 (2)")
    ap.add_argument("--log-every", type=int, default=25, help="monitor window (steps)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these rows (tuning)")
    cfg = ap.parse_args(argv)
    n_seeds = cfg.seeds or (1 if cfg.quick else 3)
    seeds = list(range(cfg.seed, cfg.seed + n_seeds))
    cfg.steps = cfg.steps or (200 if cfg.quick else 1000)
    cfg.evals = cfg.evals or 2
    if cfg.steps % cfg.evals or (cfg.steps // cfg.evals) % cfg.log_every:
        ap.error("--steps must split into --evals chunks of whole --log-every windows")
    full = not cfg.quick and cfg.only is None

    run = E.Run("byol.py", argv, "scikit-learn", "mnist1d")
    data = load_data()
    augment = Augment(max_shift=cfg.shift, scale=tuple(cfg.scale), noise=cfg.noise,
                      max_mask=cfg.mask, max_roll=cfg.roll, shear=cfg.shear)
    header = run.header(
        f"data: MNIST-1D (mnist1d generator, default arguments): {len(data[0])} train / "
        f"{len(data[2])} test signals of length {data[0].shape[1]}",
        f"views: circular roll <= {cfg.roll}, shear slope <= {cfg.shear}, "
        f"shift <= {cfg.shift}, scale U{tuple(cfg.scale)}, mask <= {cfg.mask}, "
        f"noise sigma {cfg.noise}",
        f"training: {cfg.steps} steps of batch {cfg.batch}, Adam lr {cfg.lr}, the {n_seeds} "
        "seeds vmapped in one jitted scan per method; BYOL tau_base "
        f"{cfg.tau} (cosine to 1), implicit ridge {cfg.ridge}; SimCLR temperature "
        f"{cfg.temperature}; CLAPP lr {cfg.clapp_lr}; Mean Teacher tau {cfg.mt_tau}, "
        f"consistency {cfg.mt_weight} ramped up over {cfg.steps // 4} steps",
        f"seeds: {' '.join(map(str, seeds))}")

    opt = optax.adam(cfg.lr)
    keys = {s: jax.random.split(jax.random.key(s), 8) for s in seeds}
    nets = {norm: [make_network(keys[s][0], norm, cfg.encoder) for s in seeds]
            for norm in ("batch", "group", "layer")}
    tkey = jax.random.key(10_000 + cfg.seed)
    rows: dict[str, Result] = {}

    quick_rows = {"byol", "nopred", "tau0"}  # what --quick runs (its claims' rows)

    def want(name):
        if cfg.only is not None:
            return name in cfg.only
        return not cfg.quick or name in quick_rows

    def byol(name, norm="batch", **kw):
        kw = {"predictor": "mlp", "tau_base": cfg.tau, **kw}
        method = BYOL(optimizer=opt, total_steps=cfg.steps, augment=augment,
                      ridge=cfg.ridge, **kw)
        res, _ = run_ssl(name, method, nets[norm], cfg, data, seeds,
                         jax.random.fold_in(tkey, len(rows)), BYOL.features.__get__(method))
        rows[name] = res

    rows["random encoder"] = run_random(nets["batch"], data, seeds)
    if want("simclr"):
        method = SimCLR(optimizer=opt, augment=augment, temperature=cfg.temperature)
        rows["SimCLR"], _ = run_ssl("SimCLR", method, nets["batch"], cfg, data, seeds,
                                    jax.random.fold_in(tkey, 100), method.features)
    if want("byol"):
        byol("BYOL (MLP predictor)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CollapseWarning)  # the table reports the flags
        if want("nopred"):
            byol("BYOL, no predictor", predictor="none")
        if want("tau0"):
            byol("BYOL, tau = 0", tau_base=0.0, tau_schedule="constant")
    if want("implicit"):
        byol("BYOL (implicit predictor)", predictor="implicit")
    if want("clapp"):
        rows["CLAPP"] = run_clapp(cfg, data, seeds, jax.random.fold_in(tkey, 200), augment)
    if want("supervised"):
        models = stack([make_classifier(keys[s][0], cfg.encoder) for s in seeds])
        rows["supervised (4000 labels)"], _ = run_supervised(
            "supervised", models, data, seeds, jax.random.fold_in(tkey, 300), cfg, augment)
    if want("norms") and not cfg.quick:
        byol("BYOL, group norm", norm="group")
        byol("BYOL, layer norm", norm="layer")
    mt = None
    if want("meanteacher") and not cfg.quick:
        rng = [np.random.default_rng(s) for s in seeds]
        y = data[1]
        labelled = np.stack([np.concatenate([r.choice(np.flatnonzero(y == c), 40, replace=False)
                                             for c in range(10)]) for r in rng])
        models = stack([make_classifier(keys[s][1], cfg.encoder) for s in seeds])
        _, sup_head = run_supervised("supervised 400", models, data, seeds,
                                     jax.random.fold_in(tkey, 400), cfg, augment,
                                     labelled=labelled)
        mt_acc, mt_s, mt_cons = run_mean_teacher(models, data, seeds,
                                                 jax.random.fold_in(tkey, 400), cfg,
                                                 augment, labelled)
        mt = (mt_acc, sup_head, mt_s, mt_cons)

    # ----- the table
    random_acc = rows["random encoder"].final
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) +
             " | mean +- s.e. | train s (all seeds) | wall s | monitor flagged at step | "
             "notes |", "|---|" + "---|" * len(seeds) + "---|---|---|---|---|"]
    for name, r in rows.items():
        m, se = mean_se(r.final)
        flags = ", ".join("-" if mon.flagged_at is None else str(mon.flagged_at)
                          for mon in r.monitors) or "(not monitored)"
        lines.append(f"| {name} | " + " | ".join(f"{100 * a:.2f}" for a in r.final) +
                     f" | {100 * m:.2f} +- {100 * se:.2f} | {r.train_s:.1f} | {r.wall:.1f} | "
                     f"{flags} | {r.note} |")
    curves = ["| method | " + " | ".join(str(s) for s, _ in rows["BYOL (MLP predictor)"].curve)
              + " |", "|---|" + "---|" * len(rows["BYOL (MLP predictor)"].curve)] \
        if "BYOL (MLP predictor)" in rows else []
    for name, r in rows.items():
        if len(r.curve) > 1:
            curves.append(f"| {name} | " + " | ".join(f"{100 * np.mean(a):.2f}"
                                                     for _, a in r.curve) + " |")
    body = ("Linear-probe test accuracy (%) on the frozen 128-d representation (CLAPP: its "
            "last layer). train s: the jitted training scans (compilation included); "
            "wall s: the row's whole time, probes included.\n\n" + "\n".join(lines) +
            "\n\nProbe accuracy (%, mean over seeds) against training steps:\n\n" +
            "\n".join(curves) + "\n")

    claims = []
    if "BYOL (MLP predictor)" in rows:
        b = rows["BYOL (MLP predictor)"]
        bm, bse = mean_se(b.final)
        claims.append(E.claim(bm > np.mean(random_acc),
                              f"BYOL (MLP) probe {100 * bm:.2f}% beats the random encoder's "
                              f"{100 * np.mean(random_acc):.2f}%"))
        claims.append(E.claim(all(mon.flagged_at is None for mon in b.monitors),
                              "the monitor does not flag BYOL (MLP)"))
    for name in ("BYOL, no predictor", "BYOL, tau = 0"):
        if name not in rows:
            continue
        r = rows[name]
        ok, where = True, []
        for i, mon in enumerate(r.monitors):
            # Step 0 is the random encoder itself: a fall is a later checkpoint.
            fell = [s for s, a in r.curve if s > 0 and a[i] <= random_acc[i]]
            ok &= mon.flagged_at is not None and (not fell or mon.flagged_at <= fell[0])
            where.append(f"seed {seeds[i]}: flagged at {mon.flagged_at}, probe at or below "
                         f"random from step {fell[0] if fell else 'never'}")
        claims.append(E.claim(ok, f"the monitor flags '{name}' before its probe falls to the "
                              f"random encoder's ({'; '.join(where)})"))
    if full or (cfg.only and {"byol", "simclr"} <= set(cfg.only)):
        bm, _ = mean_se(rows["BYOL (MLP predictor)"].final)
        sm, _ = mean_se(rows["SimCLR"].final)
        claims.append(E.claim(bm >= MNIST1D_SIMCLR and bm > sm,
                              f"BYOL (MLP) {100 * bm:.2f}% >= {100 * MNIST1D_SIMCLR:.1f}% "
                              f"and > our SimCLR {100 * sm:.2f}%"))
    if full or (cfg.only and {"byol", "implicit"} <= set(cfg.only)):
        diff = rows["BYOL (implicit predictor)"].final - rows["BYOL (MLP predictor)"].final
        dm, dse = mean_se(diff)
        claims.append(E.claim(dm >= -dse, f"BYOL (implicit) - BYOL (MLP) = {100 * dm:+.2f} "
                              f"+- {100 * dse:.2f} points >= -1 s.e."))
    if mt is not None:
        mt_acc, sup_head, mt_s, mt_cons = mt
        body += ("\nMean Teacher with 400 labels (40 per class) against supervised training "
                 "on the same labels (test accuracy of each model's own head, %; Mean "
                 "Teacher: the teacher):\n\n| | " + " | ".join(f"seed {s}" for s in seeds)
                 + " | mean +- s.e. |\n|---|" + "---|" * (len(seeds) + 1) + "\n")
        for name, acc in (("Mean Teacher", mt_acc), ("supervised, 400 labels", sup_head)):
            m, se = mean_se(acc)
            body += (f"| {name} | " + " | ".join(f"{100 * a:.2f}" for a in acc) +
                     f" | {100 * m:.2f} +- {100 * se:.2f} |\n")
        body += f"\nMean Teacher wall {mt_s:.1f} s; final consistency term {mt_cons:.4f}.\n"
        claims.append(E.claim(all(a > b for a, b in zip(mt_acc, sup_head)),
                              "Mean Teacher beats supervised-only on the same 400 labels on "
                              "every seed (" + ", ".join(f"{100 * a:.2f} vs {100 * b:.2f}"
                                                         for a, b in zip(mt_acc, sup_head))
                              + ")"))
    body += "\nClaims:\n\n" + "\n".join(f"- {line}" for _, line in claims) + "\n"
    print("\n" + body, flush=True)
    run.write(cfg.out, "Self-supervised targets on MNIST-1D: BYOL, SimCLR, CLAPP, Mean "
              "Teacher", header, body)
    E.enforce(*claims)
    return 0


if __name__ == "__main__":
    sys.exit(main())
