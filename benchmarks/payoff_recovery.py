"""Experiment: recover a game's payoff parameters from observed quantal-response play.

    python benchmarks/payoff_recovery.py [--quick] [--out benchmarks/results/payoff_recovery.md]

Ling, Fang and Kolter 2018, "What game are we playing? End-to-end learning in normal and
extensive form games": the payoff matrix of a zero-sum game is linear in a parameter
vector, A(theta) = sum_k theta_k B_k, here rock-paper-scissors with features (3 x 3,
row player's payoff):

    B_1 = [[0, -1, 1], [1, 0, -1], [-1, 1, 0]]   the rock-paper-scissors cycle,
    B_2 = e_rock 1^T                            a bonus to the row player for rock,
    B_3 = -1 e_paper^T                          a bonus to the column player for paper,

theta = (1.0, 1.5, 1.0), temperature tau = 0.5 (chosen among a small grid for the
smallest Cramer-Rao bound at N = 5000: 0.034 relative error). Observed play: N games, each one row
action ~ x* and one column action ~ y*, where (x*, y*) = `innerloop.population.qre`
(A(theta), tau), the logit quantal-response equilibrium. The parameters are recovered by
Adam on the negative log-likelihood of the observed actions,

    NLL(theta) = -(1/N) sum_a n_a log x_a(theta) - (1/N) sum_b m_b log y_b(theta),

whose gradient goes through the equilibrium by the implicit function theorem
(`qre(..., grad=Implicit())`), from theta_0 = (0.5, 0.5, 0.5).
Reported: the relative error |theta_hat - theta| / |theta| against N, 5 seeds (fresh
samples each), mean +- standard error, a table and a PNG (log-log).

Claims (checked by every run, `--quick` included, which fails when they do not hold):
the error falls as N grows (the largest N's mean error is below half the smallest
N's, and the log-log slope is below -0.2; the MLE's rate is -0.5), and at
N = 5000 it is below 0.1 (full run). A gradient that does not reach theta (wrong or
zero) leaves the error at |theta_0 - theta| / |theta| = 0.59 for every N.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import _experiment as E  # benchmarks/_experiment.py (the script's folder is on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
import optax

import innerloop as il
from innerloop.population import qre

FEATURES = np.array([
    [[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]],   # rock-paper-scissors
    [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],      # row player's rock bonus
    [[0.0, -1.0, 0.0], [0.0, -1.0, 0.0], [0.0, -1.0, 0.0]],   # column player's paper bonus
], np.float32)
THETA = (1.0, 1.5, 1.0)
THETA0 = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Config:
    tau: float = 0.5
    games: tuple = (100, 300, 1000, 3000, 5000, 10000)
    seeds: int = 5
    steps: int = 300           # Adam steps per fit
    lr: float = 0.05
    claim_games: int | None = 5000   # the N where the error must be below 0.1
    claim_error: float = 0.1


QUICK = dict(games=(100, 10000), seeds=3, steps=150, lr=0.1, claim_games=None)


def payoff(theta):
    return jnp.tensordot(theta, jnp.asarray(FEATURES, theta.dtype), axes=1)


def equilibrium(theta, tau):
    eq = qre(payoff(theta), tau, grad=il.Implicit())
    return eq.row, eq.col


def nll(theta, counts, tau):
    """Mean negative log-likelihood of the observed row and column action counts."""
    x, y = equilibrium(theta, tau)
    row, col = counts
    n = jnp.sum(row)
    return -(row @ jnp.log(x) + col @ jnp.log(y)) / n


def fit(counts, cfg: Config):
    """Adam from THETA0 on the NLL, `cfg.steps` steps (one jitted scan)."""
    opt = optax.adam(cfg.lr)
    theta0 = jnp.asarray(THETA0, jnp.float32)

    def step(carry, _):
        theta, state = carry
        loss, g = jax.value_and_grad(nll)(theta, counts, cfg.tau)
        u, state = opt.update(g, state, theta)
        return (optax.apply_updates(theta, u), state), loss

    (theta, _), losses = jax.lax.scan(step, (theta0, opt.init(theta0)), None, cfg.steps)
    return theta, losses


_fit_batch = jax.jit(jax.vmap(fit, in_axes=(0, None)), static_argnums=1)
_grad_norms = jax.jit(jax.vmap(lambda t, c, tau: jnp.linalg.norm(jax.grad(nll)(t, c, tau)),
                               in_axes=(0, 0, None)))


def sample_counts(rng, x, y, n, seeds):
    """Action counts of n observed games (one row and one column action each), per seed."""
    x, y = (np.asarray(p, np.float64) / np.sum(np.asarray(p, np.float64)) for p in (x, y))
    rows = np.stack([rng.multinomial(n, x) for _ in range(seeds)])
    cols = np.stack([rng.multinomial(n, y) for _ in range(seeds)])
    return jnp.asarray(rows, jnp.float32), jnp.asarray(cols, jnp.float32)


def run_size(n, cfg: Config, seed: int):
    """(relative errors (seeds,), estimates (seeds, 3), losses, final gradient norms)."""
    theta = jnp.asarray(THETA, jnp.float32)
    x, y = equilibrium(theta, cfg.tau)
    counts = sample_counts(np.random.default_rng([seed, n]), x, y, n, cfg.seeds)
    est, losses = _fit_batch(counts, cfg)
    err = jnp.linalg.norm(est - theta, axis=1) / jnp.linalg.norm(theta)
    # The gradient norm at the estimate: whether the fit reached the MLE.
    gnorm = _grad_norms(est, counts, cfg.tau)
    return np.asarray(err, np.float64), np.asarray(est), np.asarray(losses), np.asarray(gnorm)


def plot(path, games, means, ses, quick):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(games, means, yerr=ses, marker="o", capsize=3,
                label="gradient descent through qre (Implicit)")
    ref = means[0] * np.sqrt(games[0] / np.asarray(games, np.float64))
    ax.plot(games, ref, "k:", label="N^-1/2 from the first point")
    ax.axhline(0.1, color="grey", lw=0.8, ls="--", label="0.1")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("observed games N")
    ax.set_ylabel("|theta_hat - theta| / |theta|")
    ax.set_title("Payoff recovery, RPS with features" + (" (quick)" if quick else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = E.parser(__doc__, "payoff_recovery.md").parse_args(argv)
    run = E.Run("payoff_recovery.py", argv, "matplotlib")
    cfg = Config()
    if args.quick:
        cfg = dataclasses.replace(cfg, **QUICK)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    header = run.header(f"config: {cfg}", f"machine load at the start (1, 5, 15 min): {load}; "
                        "other processes share the 2 cores",
                        f"theta = {THETA}, theta_0 = {THETA0}, features B_1 (RPS cycle), "
                        "B_2 (row rock bonus), B_3 (column paper bonus)")
    theta = jnp.asarray(THETA, jnp.float32)
    x, y = equilibrium(theta, cfg.tau)
    print(f"QRE at the true theta: x = {np.round(np.asarray(x), 4)}, "
          f"y = {np.round(np.asarray(y), 4)}", flush=True)

    rows, means, ses = [], [], []
    for n in cfg.games:
        err, est, losses, gnorm = run_size(n, cfg, args.seed)
        mean, se = err.mean(), err.std(ddof=1) / np.sqrt(len(err))
        means.append(mean)
        ses.append(se)
        rows.append((n, mean, se, err, est.mean(0), gnorm.max()))
        print(f"N = {n}: relative error {mean:.4f} +- {se:.4f} (seeds {np.round(err, 4)}), "
              f"mean estimate {np.round(est.mean(0), 3)}, max final |grad| {gnorm.max():.1e}",
              flush=True)

    games = np.asarray(cfg.games, np.float64)
    slope = float(np.polyfit(np.log(games), np.log(means), 1)[0])
    claims = [
        E.claim(means[-1] < means[0] / 2,
                f"the error falls with N: {means[-1]:.4f} at N = {cfg.games[-1]} < half "
                f"of {means[0]:.4f} at N = {cfg.games[0]}"),
        E.claim(slope < -0.2, f"log-log slope of the error against N {slope:.2f} < -0.2"),
    ]
    if cfg.claim_games is not None:
        at = means[cfg.games.index(cfg.claim_games)]
        claims.append(E.claim(at < cfg.claim_error, f"relative error at N = {cfg.claim_games} "
                              f"{at:.4f} < {cfg.claim_error}"))

    png = os.path.splitext(str(args.out))[0] + ".png"
    plot(png, cfg.games, np.asarray(means), np.asarray(ses), args.quick)
    lines = ["| observed games N | relative error, mean +- s.e. | per seed | "
             "mean theta_hat | max final gradient norm |", "|---|---|---|---|---|"]
    for n, mean, se, err, est, g in rows:
        lines.append(f"| {n} | {mean:.4f} +- {se:.4f} | {', '.join(f'{e:.4f}' for e in err)} "
                     f"| ({', '.join(f'{v:.3f}' for v in est)}) | {g:.1e} |")
    lines += ["", f"{cfg.seeds} seeds, each a fresh sample of N games from the QRE at the "
              f"true theta (x* = {[round(float(v), 4) for v in x]}, y* = "
              f"{[round(float(v), 4) for v in y]}, tau = {cfg.tau}); Adam (lr "
              f"{cfg.lr}, {cfg.steps} steps) from theta_0 = {THETA0}, gradients through "
              "`qre(..., grad=Implicit())`; float32. Plot: "
              f"`{os.path.basename(png)}`. Log-log slope {slope:.2f} (the MLE's rate: -0.5).",
              "", "Claims:", "", *(f"- {c[1]}" for c in claims)]
    run.write(args.out, "Payoff recovery from quantal-response play (Ling et al. 2018)",
              header, "\n".join(lines))
    E.enforce(*claims)
    return 0


if __name__ == "__main__":
    sys.exit(main())
