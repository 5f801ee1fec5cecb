r"""Meta-learned bandit agents: an LSTM (a Meta-RNN) whose weights are meta-trained per
environment ("nature") and whose activations learn within a lifetime ("nurture").

The agent sees (one-hot last action, last reward, t / T) and outputs logits over the
two arms. `meta_train_bandit` trains one agent per grid cell, `jax.vmap`ped over the
cells, by policy gradient through the lifetime (REINFORCE with a learned baseline) or
by `innerloop.ES` over whole lifetimes (the paper's evolutionary outer loop,
antithetic, centred ranks, an annealed entropy bonus in the fitness), both with Adam.
"""

from __future__ import annotations

import math
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import lax

from innerloop._shared import check_positive_int
from innerloop.implicit import ES
from innerloop.rules._bandit import GaussianBandit, _concrete

METHODS = ("pg", "es")


class BanditLSTM(eqx.Module):
    """The Meta-RNN: an LSTM of `hidden` units and a linear read-out to two logits.
    Parameters are a dict of arrays (`init`), so a grid of agents is one stacked dict."""

    hidden: int = eqx.field(static=True, default=16)

    def init(self, key: jax.Array, dtype=None) -> dict[str, jax.Array]:
        dtype = dtype or jnp.result_type(float)
        h, k1, k2 = self.hidden, *jax.random.split(key)
        return {"wx": jax.random.normal(k1, (4, 4 * h), dtype) / 2.0,
                "wh": jax.random.normal(k2, (h, 4 * h), dtype) / math.sqrt(h),
                "b": jnp.zeros(4 * h, dtype).at[h:2 * h].set(1.0),  # forget gate open
                "wo": jnp.zeros((h, 2), dtype), "bo": jnp.zeros(2, dtype),
                "wv": jnp.zeros(h, dtype), "bv": jnp.zeros((), dtype)}

    def start(self, dtype) -> tuple[jax.Array, jax.Array]:
        return jnp.zeros(self.hidden, dtype), jnp.zeros(self.hidden, dtype)

    def step(self, params, carry, obs):
        """(logits, carry) after one observation."""
        hid, cell = carry
        z = obs @ params["wx"] + hid @ params["wh"] + params["b"]
        i, f, g, o = jnp.split(z, 4, -1)
        cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
        hid = jax.nn.sigmoid(o) * jnp.tanh(cell)
        return hid @ params["wo"] + params["bo"], (hid, cell)

    def value(self, params, carry):
        """The critic: the expected reward-to-go, from the hidden state (training only)."""
        return carry[0] @ params["wv"] + params["bv"]

    def policy(self, params, *, greedy: bool = True) -> "LSTMPolicy":
        """The agent as a policy for `lifetimes` (greedy: the most likely arm)."""
        return LSTMPolicy(self, params, greedy)


class LSTMPolicy(eqx.Module):
    agent: BanditLSTM
    params: dict
    greedy: bool = eqx.field(static=True, default=True)

    def init(self, env):
        return self.agent.start(env.dtype)

    def act(self, env, carry, obs, key):
        logits, carry = self.agent.step(self.params, carry, obs)
        a = (jnp.argmax(logits) if self.greedy else jax.random.categorical(key, logits))
        return a.astype(jnp.int32), carry


def _episodes(agent, params, env, key, batch, T_max, noise=1.0):
    """`batch` lifetimes: log-probabilities of the arms taken, rewards, live masks, the
    policy's entropies and the critic's values, each (T_max, batch). Arms are
    argmax(logits + noise x Gumbel): noise 1 samples the policy, 0 is greedy."""
    dt = env.dtype

    def one(k):
        k_mu, k_r, k_a = jax.random.split(k, 3)
        mu = env.sample_mu(k_mu)

        def step(c, t):
            carry, last, reward = c
            logits, carry = agent.step(params, carry, env.observe(t, last, reward))
            gumbel = jax.random.gumbel(jax.random.fold_in(k_a, t), logits.shape, logits.dtype)
            a = jnp.argmax(logits + noise * gumbel).astype(jnp.int32)
            r = env.reward(jax.random.fold_in(k_r, t), mu, a)
            live = t < env.T
            logps = jax.nn.log_softmax(logits)
            ent = -jnp.sum(jnp.exp(logps) * logps)
            return (carry, a, r), (logps[a], jnp.where(live, r, jnp.zeros_like(r)), live, ent,
                                   agent.value(params, carry))

        init = (agent.start(dt), jnp.asarray(-1, jnp.int32), jnp.zeros((), dt))
        _, out = lax.scan(step, init, jnp.arange(T_max, dtype=jnp.int32))
        return out

    return jax.vmap(one, out_axes=1)(jax.random.split(key, batch))


def _pg_loss(agent, params, env, key, batch, T_max, entropy):
    """REINFORCE with a learned baseline (the critic's value of the hidden state, which
    sees the lifetime so far): advantage = reward-to-go - value, in units of the
    reward-to-go's spread over the batch; returns (loss, mean return)."""
    logp, rewards, live, ent, value = _episodes(agent, params, env, key, batch, T_max)
    to_go = jnp.cumsum(rewards[::-1], 0)[::-1]
    scale = lax.stop_gradient(jnp.std(to_go) + 1e-3)
    err = (to_go - value) / scale
    # centred per step over the batch: unbiased (to O(1/batch)) while the critic is poor
    adv = lax.stop_gradient(err - jnp.mean(err, 1, keepdims=True))
    livef = live.astype(logp.dtype)
    loss = (-jnp.sum(logp * adv * livef) + 0.5 * jnp.sum(err ** 2 * livef)) / batch
    loss = loss - entropy * jnp.sum(ent * livef) / batch
    return loss, jnp.mean(jnp.sum(rewards, 0))


class _Lifetimes(eqx.Module):
    """The inner problem ES sees: a batch of sampled lifetimes of one cell, loss = minus
    (the mean return + `entropy` x the policy's summed entropy); every particle meets
    the same lifetimes (common random numbers)."""

    agent: BanditLSTM
    env: GaussianBandit
    entropy: jax.Array
    noise: jax.Array
    batch: int = eqx.field(static=True)
    T: int = eqx.field(static=True)

    def init(self, key, theta):
        return key

    def unroll(self, state, theta, K):
        _, rewards, live, ent, _ = _episodes(self.agent, theta, self.env, state, self.batch,
                                             self.T, self.noise)
        bonus = jnp.sum(ent * live.astype(ent.dtype), 0)
        return state, -jnp.mean(jnp.sum(rewards, 0) + self.entropy * bonus)


def meta_train_bandit(grid: GaussianBandit, T_max: int, key: jax.Array, *,
                      method: str = "pg", steps: int = 1000, batch: int = 64,
                      lr: float = 1e-2, hidden: int = 16, entropy: float = 0.0,
                      pairs: int = 16, sigma: float = 0.1, chunk: int = 25,
                      progress: bool | str = True) -> tuple[dict, jax.Array]:
    """Meta-train one `BanditLSTM` per cell of `grid` (a `GaussianBandit` with a
    leading cell axis, lifetimes <= T_max), `jax.vmap`ped over the cells. Returns the
    stacked parameters and the mean training return per step (steps, cells).

    method "pg": REINFORCE through whole lifetimes (`batch` of them per step); the
    entropy bonus falls linearly from `entropy` to 0 over the steps.
    "es": `innerloop.ES` (antithetic, `pairs` pairs, `sigma`, centred ranks, whole
    lifetimes, `batch` lifetimes per particle, all particles on the same lifetimes); the
    fitness is the return plus `entropy` x the policy's summed entropy, the bonus falling
    to 0 by mid-training, and the arms are sampled until then and turn greedy by 3/4 of
    the steps (the agent is evaluated greedily). The curve is the return alone.
    `chunk` steps run in one jitted call; `progress`: a tqdm bar (True, or its label)
    on stderr."""
    if method not in METHODS:
        raise ValueError(f"meta_train_bandit: unknown method {method!r}; choose from "
                         f"{', '.join(METHODS)}")
    for name, v in (("T_max", T_max), ("steps", steps), ("batch", batch),
                    ("hidden", hidden), ("pairs", pairs), ("chunk", chunk)):
        check_positive_int(f"meta_train_bandit: {name}", v)
    if grid.sigma_p.ndim != 1 or grid.sigma_p.shape[0] == 0:
        raise ValueError("meta_train_bandit: grid must be a GaussianBandit with one "
                         "leading cell axis and at least one cell (see bandit_grid); got "
                         f"shape {grid.sigma_p.shape}")
    T = _concrete(grid.T)
    if T is not None and T.max() > T_max:
        raise ValueError(f"meta_train_bandit: T_max = {T_max} is shorter than the longest "
                         f"lifetime {int(T.max())}; give T_max >= max(T)")
    chunk = min(chunk, steps)
    if steps % chunk:
        raise ValueError(f"meta_train_bandit: steps ({steps}) must be a multiple of chunk "
                         f"({chunk}), the steps one jitted call runs")
    agent = BanditLSTM(hidden)
    cells = grid.sigma_p.shape[0]
    k_init, key = jax.random.split(key)
    params = jax.vmap(lambda k: agent.init(k, grid.dtype))(jax.random.split(k_init, cells))
    opt = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05)))
    state = jax.vmap(opt.init)(params)

    def grad_one(p, env, k, frac):
        if method == "pg":
            (_, ret), g = jax.value_and_grad(
                lambda q: _pg_loss(agent, q, env, k, batch, T_max, entropy * (1.0 - frac)),
                has_aux=True)(p)
            return g, ret
        # annealed to 0 by mid-training: the sampled policy then sharpens into its greedy one
        bonus = jnp.asarray(entropy, env.dtype) * jnp.maximum(1.0 - 2.0 * frac, 0.0)
        # then the sampled arms turn greedy (the agent is evaluated greedily) by 3/4
        noise = jnp.clip(3.0 - 4.0 * frac, 0.0, 1.0)
        task = _Lifetimes(agent, env, bonus, noise, batch, T_max)
        es = ES(task, sigma=sigma, pairs=pairs, centred_ranks=True)
        g, _, _ = es.grad(k, p, es.init(k, p))
        # the training curve is the return alone (the fitness adds the entropy bonus)
        return g, jnp.mean(jnp.sum(_episodes(agent, p, env, k, batch, T_max, noise)[1], 0))

    def one_step(c, x):
        (p, s), (k, i) = c, x
        frac = i.astype(grid.dtype) / steps
        g, ret = jax.vmap(grad_one, in_axes=(0, 0, 0, None))(p, grid, jax.random.split(k, cells),
                                                             frac)
        with jax.numpy_dtype_promotion("standard"):  # optax's int32 step count meets floats
            u, s = jax.vmap(opt.update)(g, s, p)
        return (optax.apply_updates(p, u), s), ret

    @jax.jit
    def run(p, s, k, start):
        steps_ = start + jnp.arange(chunk, dtype=jnp.int32)
        return lax.scan(one_step, (p, s), (jax.random.split(k, chunk), steps_))

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=progress if isinstance(progress, str)
                       else f"meta-train ({method})", file=sys.stderr, leave=False)
        except ImportError:
            pass
    curves, done = [], 0
    while done < steps:
        key, k = jax.random.split(key)
        (params, state), ret = run(params, state, k, jnp.asarray(done, jnp.int32))
        n = chunk
        curves.append(ret[:n])
        done += n
        if bar is not None:
            bar.update(n)
            bar.set_postfix(mean_return=f"{float(jnp.mean(ret[-1])):.3g}")
    if bar is not None:
        bar.close()
    return params, jnp.concatenate(curves)
