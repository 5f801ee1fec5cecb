"""Experiment: one-shot storage and recall in the H-Mem Hebbian memory
(`innerloop.rules.HebbianMemory`, Limbacher and Legenstein 2020), against a
plain outer-product (linear Hebbian) memory.

    python benchmarks/hebbian_memory.py            # full run (about a minute, 1 core)
    python benchmarks/hebbian_memory.py --quick    # tiny smoke configuration (< 20 s)
    python benchmarks/hebbian_memory.py --out benchmarks/results/hebbian_memory.md \
        --plot docs/hebbian_memory.png

Task: N random key-value pairs are written into an empty d x d memory, one write
per pair, in sequence (`write_many`); then every stored value is recalled from its
own key (`read`, v_hat = W^T k). Keys and values are sparse binary vectors with
exactly `a` (keys) and `m` (values) ones at uniformly random positions, drawn
independently per pair: non-negative, like the rectified activations of the paper.

- recall accuracy: the pair counts as recalled when the cosine similarity of v_hat
  with its own value is strictly larger than with every other stored value
  (nearest-neighbour clean-up over the N stored values; chance is 1 / N).
- bit accuracy: v_hat is decoded to a binary vector by setting its m largest
  entries to one (values have exactly m ones); the fraction of the d bits that
  equal the stored value's (chance with m/d = 1/16 is about 88%).
- load = N / d. Every number is the mean over seeds (fresh pairs per seed).

H-Mem's rates are chosen by a small grid search on separate tuning seeds (never the
evaluation seeds): the (gamma_plus, gamma_minus) pair with the largest mean recall
over the tuning loads. w_max is fixed to 1: starting from W = 0, every write is
homogeneous of degree one in (W, w_max), so W is proportional to w_max and neither
read-out criterion depends on it. The baseline is W = sum_n k_n v_n^T (no
saturation, no decay), which is also H-Mem's limit gamma_plus -> 0 up to scale.

Claim (checked by every run, `--quick` included, which fails when it does not hold):
at load N/d = 2 H-Mem recalls at least 90% of the pairs (chance 1/N; quick measured
97.7%), and at least 5 points more than the linear memory (quick: 97.7% vs 87.5%).
"""

from __future__ import annotations

import itertools
import os
import sys
from functools import partial

import _experiment as E  # benchmarks/_experiment.py (the script's folder is on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from innerloop.rules import HebbianMemory

FULL = dict(d=128, a=8, m=8, loads=(0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8),
            tune_loads=(2, 3, 4, 5), seeds=10, tune_seeds=3,
            gamma_plus=(0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 1.0),
            gamma_minus=(0.0, 0.003, 0.01, 0.03, 0.1))
QUICK = dict(d=64, a=4, m=4, loads=(0.5, 1, 2, 3), tune_loads=(2,), seeds=2,
             tune_seeds=1, gamma_plus=(0.5, 1.0), gamma_minus=(0.0, 0.01))
TARGET = 0.95
CLAIM_LOAD, CLAIM_RECALL, CLAIM_LEAD = 2, 0.90, 0.05  # the claim: see the docstring


# ---------------------------------------------------------------- the task


def sparse_binary(key, n, d, ones):
    """n binary vectors of length d with exactly `ones` ones each."""
    ranks = jnp.argsort(jax.random.uniform(key, (n, d)), axis=1)
    return (ranks < ones).astype(jnp.float32)


def pairs(seed, n_max, d, a, m):
    kk, kv = jax.random.split(jax.random.key(seed))
    return sparse_binary(kk, n_max, d, a), sparse_binary(kv, n_max, d, m)


def scores(V_hat, V, valid, m):
    """(recall accuracy, bit accuracy) over the valid rows of V_hat (N, d), V (N, d)."""
    unit = lambda X: X / jnp.maximum(jnp.linalg.norm(X, axis=1, keepdims=True), 1e-30)
    cos = unit(V_hat) @ unit(V).T
    own = jnp.diagonal(cos)
    rivals = valid[None, :] & ~jnp.eye(cos.shape[0], dtype=bool)
    others = jnp.where(rivals, cos, -jnp.inf).max(axis=1)
    n = valid.sum()
    recall = jnp.sum(valid & (own > others)) / n
    _, top = jax.lax.top_k(V_hat, m)
    decoded = jnp.zeros_like(V_hat).at[jnp.arange(V.shape[0])[:, None], top].set(1.0)
    bits = jnp.sum(valid[:, None] * (decoded == V)) / (n * V.shape[1])
    return recall, bits


# One compilation serves every load: the pairs of a seed are drawn for the largest
# load, and a load of n pairs zeroes the keys after the n-th. A zero key is an exact
# no-op for both memories (every term of the write is multiplied by k), so W equals
# the memory of the first n pairs, and the scores are taken over those n only.


@partial(jax.jit, static_argnames=("n_max", "d", "a", "m"))
def hmem_scores(gamma_plus, gamma_minus, ns, seeds, *, n_max, d, a, m):
    """H-Mem's (recall, bits) for every rate pair i, load ns[j], seed: each (G, L, S)."""

    def one(gp, gm, n, seed):
        K, V = pairs(seed, n_max, d, a, m)
        valid = jnp.arange(n_max) < n
        K = K * valid[:, None]
        memory = HebbianMemory(d, d, gamma_plus=gp, gamma_minus=gm, w_max=1.0)
        W = memory.write_many(memory.init(), K, V)
        return scores(memory.read(W, K), V, valid, m)

    def per_rate_and_load(args):
        gp, gm, n = args
        return jax.vmap(lambda s: one(gp, gm, n, s))(seeds)

    G, L = gamma_plus.shape[0], ns.shape[0]
    gp, gm, n = (jnp.repeat(gamma_plus, L), jnp.repeat(gamma_minus, L),
                 jnp.tile(ns, G))
    out = jax.lax.map(per_rate_and_load, (gp, gm, n))
    return jax.tree.map(lambda x: x.reshape(G, L, -1), out)


@partial(jax.jit, static_argnames=("n_max", "d", "a", "m"))
def linear_scores(ns, seeds, *, n_max, d, a, m):
    """The outer-product memory W = sum_n k_n v_n^T: (recall, bits), each (L, S)."""

    def one(n, seed):
        K, V = pairs(seed, n_max, d, a, m)
        valid = jnp.arange(n_max) < n
        K = K * valid[:, None]
        W = K.T @ V
        return scores(K @ W, V, valid, m)

    return jax.lax.map(lambda n: jax.vmap(lambda s: one(n, s))(seeds), ns)


# ------------------------------------------------------------------ the runs


def sizes(cfg, loads):
    return jnp.array([int(round(x * cfg["d"])) for x in loads])


def static(cfg):
    return dict(n_max=int(round(max(cfg["loads"]) * cfg["d"])), d=cfg["d"], a=cfg["a"],
                m=cfg["m"])


def tune(cfg):
    grid = list(itertools.product(cfg["gamma_plus"], cfg["gamma_minus"]))
    gp = jnp.array([g[0] for g in grid], jnp.float32)
    gm = jnp.array([g[1] for g in grid], jnp.float32)
    seeds = jnp.arange(cfg["tune_seeds"]) + 10_000  # disjoint from evaluation seeds
    recall, _ = hmem_scores(gp, gm, sizes(cfg, cfg["tune_loads"]), seeds, **static(cfg))
    mean = np.asarray(recall).mean(axis=(1, 2))
    best = int(np.argmax(mean))
    return grid, mean, grid[best]


def evaluate(cfg, gamma_plus, gamma_minus, seed=0):
    seeds = jnp.arange(cfg["seeds"]) + seed  # --seed: the first evaluation seed
    ns = sizes(cfg, cfg["loads"])
    h_rec, h_bit = hmem_scores(jnp.array([gamma_plus], jnp.float32),
                               jnp.array([gamma_minus], jnp.float32), ns, seeds,
                               **static(cfg))
    l_rec, l_bit = linear_scores(ns, seeds, **static(cfg))
    h_rec, h_bit, l_rec, l_bit = map(np.asarray, (h_rec[0], h_bit[0], l_rec, l_bit))
    return [dict(load=load, n=int(n), h_rec=h_rec[i], h_bit=h_bit[i], l_rec=l_rec[i],
                 l_bit=l_bit[i]) for i, (load, n) in enumerate(zip(cfg["loads"], ns))]


def max_load(rows, key):
    """Largest load of the grid up to which every load has mean recall >= TARGET."""
    best = None
    for r in rows:
        if r[key].mean() < TARGET:
            break
        best = r["load"]
    return best


def table(rows):
    lines = ["| load N/d | N | H-Mem recall | linear recall | H-Mem bit acc. | "
             "linear bit acc. |", "|---|---|---|---|---|---|"]
    for r in rows:
        pm = lambda x: f"{100 * x.mean():.1f} ± {100 * x.std():.1f}"
        lines.append(f"| {r['load']:g} | {r['n']} | {pm(r['h_rec'])} | {pm(r['l_rec'])} "
                     f"| {100 * r['h_bit'].mean():.2f} | {100 * r['l_bit'].mean():.2f} |")
    return "\n".join(lines)


def grid_table(cfg, grid, mean):
    gms = cfg["gamma_minus"]
    lines = ["| gamma_plus \\ gamma_minus | " + " | ".join(f"{g:g}" for g in gms) + " |",
             "|---|" + "---|" * len(gms)]
    scores_ = dict(zip(grid, mean))
    for gp in cfg["gamma_plus"]:
        lines.append(f"| {gp:g} | " + " | ".join(f"{100 * scores_[(gp, gm)]:.1f}"
                                                 for gm in gms) + " |")
    return "\n".join(lines)


def plot(rows, path, gamma_plus, gamma_minus, cfg):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = [r["load"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    hmem = f"H-Mem (γ+={gamma_plus:g}, γ−={gamma_minus:g})"
    for key, label, style in (("h_rec", hmem, "o-"),
                              ("l_rec", "linear outer product", "s--")):
        mean = np.array([r[key].mean() for r in rows])
        std = np.array([r[key].std() for r in rows])
        ax.plot(loads, 100 * mean, style, label=label, ms=4)
        ax.fill_between(loads, 100 * (mean - std), 100 * (mean + std), alpha=0.2)
    ax.axhline(100 * TARGET, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("load N / d")
    ax.set_ylabel("recall accuracy (%)")
    ax.set_title(f"one-shot recall, d={cfg['d']}, {cfg['a']}-hot keys, "
                 f"{cfg['m']}-hot values", fontsize=9)
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = E.parser(__doc__, "hebbian_memory.md")
    ap.add_argument("--plot", default=None,
                    help="PNG of recall against load (default docs/hebbian_memory.png; "
                         "with --quick, beside --out)")
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    plot_path = args.plot or (os.path.splitext(args.out)[0] + ".png" if args.quick
                              else os.path.join("docs", "hebbian_memory.png"))

    run = E.Run("hebbian_memory.py", argv)
    header = run.header(
        f"memory: d_key = d_value = d = {cfg['d']}; keys: {cfg['a']}-hot binary, "
        f"values: {cfg['m']}-hot binary (uniform random positions, independent per "
        f"pair; a seed's loads share a prefix of one sequence of pairs); N pairs "
        "written once each, in sequence, into W = 0; float32",
        "recall accuracy: share of the N pairs whose read-out W^T k is strictly "
        "closer (cosine) to its own value than to every other stored value; "
        "bit accuracy: share of the d bits right after setting the m largest "
        "read-out entries to one",
        f"{cfg['seeds']} evaluation seeds (mean ± std over seeds); H-Mem rates from "
        f"a grid search on {cfg['tune_seeds']} separate tuning seeds at loads "
        f"{', '.join(f'{x:g}' for x in cfg['tune_loads'])} (criterion: mean recall); "
        "w_max = 1 (W is proportional to w_max, so recall does not depend on it)")

    grid, grid_mean, (gamma_plus, gamma_minus) = tune(cfg)
    print(f"grid search picked gamma_plus={gamma_plus:g}, gamma_minus={gamma_minus:g}",
          flush=True)
    rows = evaluate(cfg, gamma_plus, gamma_minus, args.seed)
    h_max, l_max = max_load(rows, "h_rec"), max_load(rows, "l_rec")
    fmt_load = lambda x: "none of the grid" if x is None else f"{x:g} (N = " \
        f"{int(round(x * cfg['d']))})"
    plot(rows, plot_path, gamma_plus, gamma_minus, cfg)
    row = next(r for r in rows if r["load"] == CLAIM_LOAD)
    h, lin = float(row["h_rec"].mean()), float(row["l_rec"].mean())
    claim = E.claim(h >= CLAIM_RECALL and h - lin >= CLAIM_LEAD,
                    f"at load {CLAIM_LOAD} (N = {row['n']}, chance {1 / row['n']:.3f}) "
                    f"H-Mem recalls {h:.3f} >= {CLAIM_RECALL}, {h - lin:+.3f} >= "
                    f"+{CLAIM_LEAD} over the linear memory ({lin:.3f})")

    body = (
        f"### Recall against load (H-Mem: gamma_plus = {gamma_plus:g}, gamma_minus = "
        f"{gamma_minus:g}, w_max = 1)\n\n" + table(rows) + "\n\n"
        f"Largest load with recall >= {100 * TARGET:.0f}% (at it and every smaller "
        f"load of the grid): H-Mem {fmt_load(h_max)}; linear {fmt_load(l_max)}.\n\n"
        f"### Grid search: mean recall (%) over the tuning loads\n\n"
        + grid_table(cfg, grid, grid_mean) + "\n\n"
        "Notes: the decay term (gamma_minus > 0) makes the memory a palimpsest that "
        "forgets its oldest pairs, so it can only cost recall in this task, where "
        "every stored pair is recalled; it is for streams in which recent "
        "associations should win. gamma_plus = 1 with binary patterns is a clipped "
        "(Willshaw) memory, whose weights saturate at high load.\n\n"
        f"Claim: {claim[1]}.\n\nPlot: `{plot_path}`.\n")
    print("\n" + body, flush=True)
    run.write(args.out, "H-Mem benchmark: one-shot storage and recall of key-value pairs",
              header, body)
    E.enforce(claim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
