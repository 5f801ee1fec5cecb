r"""MPLP (Randazzo et al. 2020, "MPLP: Learning a message passing learning protocol")
as a Badger configuration: every weight and bias of a dense network is an expert, and
messages travel along the network's own graph, backwards."""

from __future__ import annotations

import math
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from innerloop.implicit import AbstractGradient, unroll
from innerloop.rules._badger import Badger, BadgerState
from innerloop.rules._topology import Adjacency

#: A network's weights: one (w (n_out, n_in), b (n_out,)) pair per layer.
Weights = list[tuple[jax.Array, jax.Array]]
#: An MPLP lifetime's state: the network's weights and its agents' states.
State = tuple[Weights, BadgerState]

__all__ = ["MPLP", "network_adjacency"]


def network_adjacency(sizes) -> np.ndarray:
    """MPLP's message graph for a dense network with layer widths `sizes`.

    Agents are every weight (layer l, output unit b, input unit a) then every bias
    (l, b), layer by layer. A weight or bias agent whose output unit is b hears the
    agents of the next layer whose *input* unit is b (messages travel backwards,
    like errors in backpropagation); the last layer hears the error instead, as a
    local observation.
    """
    sizes = [int(s) for s in sizes]
    index, offset = [], 0
    for a, b in zip(sizes[:-1], sizes[1:]):
        w = offset + np.arange(a * b).reshape(b, a)
        bias = offset + a * b + np.arange(b)
        index.append((w, bias))
        offset += a * b + b
    adj = np.zeros((offset, offset))
    for l in range(len(index) - 1):
        w, bias = index[l]
        w_next, _ = index[l + 1]
        for unit in range(w.shape[0]):
            senders = w_next[:, unit]            # next-layer weights reading this unit
            for receiver in list(w[unit]) + [bias[unit]]:
                adj[receiver, senders] = 1.0
    return adj


class MPLP(eqx.Module):
    r"""MPLP (Randazzo et al. 2020) as a Badger configuration: every weight and bias
    of a dense network is an expert (one shared GRU), the communication is the
    network's own graph (`Adjacency(network_adjacency(sizes))`, backward messages),
    and each expert's local observation is (its value, its input activation, its
    output unit's activation, the error at its output unit if in the last layer).
    Its per-expert output is the weight change: w <- w + lr * dw.

    One inner step on an example (x, y): forward pass, error e = y_hat - y, one Badger
    step, weight update. `lifetime` runs `steps` examples through
    `innerloop.unroll`; meta-train through it (about 20 steps in the paper).
    """

    sizes: tuple = eqx.field(static=True)
    badger: Badger
    lr: float = eqx.field(static=True)
    init_scale: float = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(self, sizes, *, hidden_size: int = 8, message_size: int = 8,
                 lr: float = 0.1, init_scale: float = 0.5, expert=None,
                 activation: Callable = jnp.tanh, state_scale: float = 0.0):
        self.sizes = tuple(int(s) for s in sizes)
        n = sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        adj = network_adjacency(self.sizes)
        self.badger = Badger(expert, n, Adjacency(adj, reduce="mean"), n_out=0,
                             message_size=message_size, hidden_size=hidden_size,
                             local_inputs=4, local_outputs=1, feedback=False,
                             state_scale=state_scale)
        self.lr = float(lr)
        self.init_scale = float(init_scale)
        self.activation = activation

    @property
    def n_agents(self) -> int:
        return self.badger.n_experts

    def init(self, key: jax.Array) -> dict[str, Any]:
        meta = self.badger.init(key)
        # start close to "no update": small weight changes until meta-trained
        meta["local_out"] = 0.1 * meta["local_out"]
        return meta

    def init_weights(self, key: jax.Array) -> Weights:
        keys = jax.random.split(key, len(self.sizes) - 1)
        return [(self.init_scale * jax.random.normal(k, (b, a), jnp.float32) / math.sqrt(a),
                 jnp.zeros(b, jnp.float32))
                for k, a, b in zip(keys, self.sizes[:-1], self.sizes[1:])]

    def init_state(self, key: jax.Array, meta: dict[str, Any] | None = None) -> State:
        k_w, k_s = jax.random.split(key)
        return (self.init_weights(k_w), self.badger.init_state(k_s, meta=meta))

    def forward(self, weights: Weights, x: jax.Array) -> list[jax.Array]:
        """Activations [x, o_1, ..., o_L] (last layer linear)."""
        acts = [x]
        for i, (w, b) in enumerate(weights):
            z = w @ acts[-1] + b
            acts.append(z if i == len(weights) - 1 else self.activation(z))
        return acts

    def predict(self, weights: Weights, x: jax.Array) -> jax.Array:
        return self.forward(weights, x)[-1]

    def _local(self, weights, acts, err):
        rows = []
        last = len(weights) - 1
        for l, (w, b) in enumerate(weights):
            pre, post = acts[l], acts[l + 1]
            e = err if l == last else jnp.zeros_like(post)
            shape = w.shape
            rows.append(jnp.stack([w, jnp.broadcast_to(pre[None, :], shape),
                                   jnp.broadcast_to(post[:, None], shape),
                                   jnp.broadcast_to(e[:, None], shape)], -1)
                        .reshape(-1, 4))
            rows.append(jnp.stack([b, jnp.ones_like(b), post, e], -1))
        return jnp.concatenate(rows)

    def _apply(self, weights, dw):
        new, i = [], 0
        for w, b in weights:
            new.append((w + self.lr * dw[i:i + w.size].reshape(w.shape),
                        b + self.lr * dw[i + w.size:i + w.size + b.size]))
            i += w.size + b.size
        return new

    def step(self, meta: dict[str, Any], state: State, x: jax.Array,
             y: jax.Array) -> tuple[State, jax.Array]:
        """One example: returns (new state, squared error before the update)."""
        weights, bstate = state
        acts = self.forward(weights, x)
        err = acts[-1] - y
        bstate, _ = self.badger.step(meta, bstate, None,
                                     self._local(weights, acts, err))
        dw = self.badger.expert_outputs(meta, bstate)[:, 0]
        return (self._apply(weights, dw), bstate), jnp.sum(err ** 2)

    def lifetime(self, meta: dict[str, Any], key: jax.Array, xs: jax.Array, ys: jax.Array, *,
                 grad: AbstractGradient | None = None) -> tuple[State, jax.Array]:
        """Learn online from examples xs (T, n_in), ys (T, n_out). Returns (final
        state, per-step squared errors before each update (T,))."""
        def body(state, meta, t):
            return self.step(meta, state, xs[t], ys[t])

        return unroll(body, self.init_state(key, meta), meta, xs.shape[0], grad=grad,
                      outputs=True)
