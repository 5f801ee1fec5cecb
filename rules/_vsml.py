r"""VS-ML: variable shared meta learning (Kirsch and Schmidhuber 2021, "Meta learning
backpropagation and improving it", NeurIPS 2021).

A VS-ML layer replaces each weight w_ij of an A x B dense layer (A inputs, B outputs)
by a tiny LSTM V_ij with its own state s_ij = (h_ij, c_ij) in R^N x R^N; all A B LSTMs
share one parameter set theta (the slow meta-parameters), so the learning algorithm
lives in the states (fast) and theta encodes how to learn. One tick updates every
state from the forward message m_i of its input unit and the backward message u_j of
its output unit,

    z_ij  = W_m m_i + W_u u_j + W_h h_ij + b                    (4 N gate pre-activations)
    c_ij' = sigma(z^f) * c_ij + sigma(z^i) * tanh(z^g)
    h_ij' = sigma(z^o) * tanh(c_ij'),

and emits the messages of the next tick: forward messages to the B units of the next
layer and backward messages to the A units of the layer below, each a mean of a learned
projection of the states,

    m'_j = (1 / A) sum_i P_m h_ij'    (B x F),     u'_i = (1 / B) sum_j P_u h_ij'    (A x G).

The forget gate's bias starts at +5 and the input gate's at -5 (an LSTM that starts
by remembering and barely writing: the states change slowly until theta learns when
to write). theta = (W_m, W_u, W_h, b, P_m, P_u) has 4N(F + G + N + 1) + N(F + G)
entries whatever A and B are, so a theta meta-trained on one grid size runs on any
other: the grid size is read from the state.

`VSML(sizes)` stacks layers (one theta per layer). For one example x with target y:

- forward tick, bottom up: layer 1 reads m_i = (x_i, 0, ..., 0) and u_j = 0; layer
  k + 1 reads the forward messages of layer k just updated; the network output is
  channel 0 of the top layer's forward messages, y_hat_j = m'_j[0];
- backward tick, top down: the top layer reads u_j = (e_j, y_j, 0, ..., 0), with
  e = dL/dy_hat the error signal (softmax(y_hat) - y for cross-entropy) and y the
  label; layer k reads the backward messages of layer k + 1 just updated, and again
  the forward messages of the layer below.

Everything is a pure function of (params, state, inputs): it composes with `jax.jit`,
`jax.vmap` (over tasks, population members) and `jax.grad` (through
`innerloop.unroll`), and the flat parameter vector suits `innerloop.ES`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, Bool, Float

from innerloop._shared import check_positive_int

__all__ = ["VSMLLayer", "VSML", "VSMLParams", "VSMLState"]


class VSMLParams(eqx.Module):
    """The shared (slow) parameters of one VS-ML layer; gates ordered (i, f, g, o)."""

    w_fwd: Float[Array, "4N F"]   # reads the forward message m_i
    w_bwd: Float[Array, "4N G"]   # reads the backward message u_j
    w_h: Float[Array, "4N N"]     # recurrent weights
    bias: Float[Array, " 4N"]
    proj_fwd: Float[Array, "F N"]  # P_m: state -> forward message
    proj_bwd: Float[Array, "G N"]  # P_u: state -> backward message


class VSMLState(eqx.Module):
    """The fast states of an A x B grid of LSTMs."""

    h: Float[Array, "A B N"]
    c: Float[Array, "A B N"]

    @property
    def grid(self) -> tuple[int, int]:
        return self.h.shape[-3], self.h.shape[-2]


class VSMLLayer(eqx.Module):
    r"""A grid of `n_in` x `n_out` LSTMs with one shared parameter set (see the module
    docstring for the equations).

    - `n_in`, `n_out`: the default grid (A, B); `init_state` and the step functions
      take any other grid with the same parameters.
    - `state_size`: N, the LSTM state size of every connection (16 in the paper).
    - `fwd_size`, `bwd_size`: F and G, the sizes of forward and backward messages.
    - `forget_bias`, `input_bias`: initial gate biases (+5 and -5).
    - `state_scale`: standard deviation of the random initial cell states.

    `init(key)` returns the meta-parameters (`VSMLParams`); `init_state(key)` the fast
    states (`VSMLState`); `step(params, state, fwd_in, bwd_in)` one tick;
    `messages(params, state)` the outgoing (forward, backward) messages.
    """

    n_in: int = eqx.field(static=True)
    n_out: int = eqx.field(static=True)
    state_size: int = eqx.field(static=True, default=16)
    fwd_size: int = eqx.field(static=True, default=4)
    bwd_size: int = eqx.field(static=True, default=4)
    forget_bias: float = eqx.field(static=True, default=5.0)
    input_bias: float = eqx.field(static=True, default=-5.0)
    state_scale: float = eqx.field(static=True, default=0.1)

    def __check_init__(self):
        for name in ("n_in", "n_out", "state_size", "fwd_size", "bwd_size"):
            check_positive_int(f"VSMLLayer({name}=...)", getattr(self, name))

    def n_params(self) -> int:
        """4N(F + G + N + 1) + N(F + G): independent of the grid size."""
        n, f, g = self.state_size, self.fwd_size, self.bwd_size
        return 4 * n * (f + g + n + 1) + n * (f + g)

    def init(self, key: Array, dtype: DTypeLike = jnp.float32) -> VSMLParams:
        n, f, g = self.state_size, self.fwd_size, self.bwd_size
        k = jax.random.split(key, 5)
        fan_in = f + g + n

        def normal(key, shape, fan):
            return jax.random.normal(key, shape, dtype) / math.sqrt(fan)

        zeros = jnp.zeros((n,), dtype)
        bias = jnp.concatenate([zeros + self.input_bias, zeros + self.forget_bias,
                                zeros, zeros])
        return VSMLParams(normal(k[0], (4 * n, f), fan_in),
                          normal(k[1], (4 * n, g), fan_in),
                          normal(k[2], (4 * n, n), fan_in), bias,
                          normal(k[3], (f, n), n), normal(k[4], (g, n), n))

    def init_state(self, key: Array, n_in: int | None = None, n_out: int | None = None,
                   dtype: DTypeLike = jnp.float32) -> VSMLState:
        """Random fast states for an `n_in` x `n_out` grid (default: the layer's):
        c ~ N(0, state_scale^2), h = 0."""
        a = self.n_in if n_in is None else n_in
        b = self.n_out if n_out is None else n_out
        check_positive_int("VSMLLayer.init_state(n_in=...)", a)
        check_positive_int("VSMLLayer.init_state(n_out=...)", b)
        shape = (a, b, self.state_size)
        c = self.state_scale * jax.random.normal(key, shape, dtype)
        return VSMLState(jnp.zeros(shape, dtype), c)

    def step(self, params: VSMLParams, state: VSMLState,
             fwd_in: Float[Array, "A F"], bwd_in: Float[Array, "B G"]) -> VSMLState:
        """One tick: every LSTM (i, j) reads (fwd_in[i], bwd_in[j]) and its state."""
        a, b = state.grid
        if fwd_in.shape != (a, self.fwd_size) or bwd_in.shape != (b, self.bwd_size):
            raise ValueError(
                f"VSMLLayer.step: a {a} x {b} grid needs fwd_in of shape "
                f"{(a, self.fwd_size)} and bwd_in of shape {(b, self.bwd_size)}; got "
                f"{fwd_in.shape} and {bwd_in.shape}")
        n = self.state_size
        z = (jnp.einsum("gn,abn->abg", params.w_h, state.h)
             + (fwd_in @ params.w_fwd.T)[:, None, :]
             + (bwd_in @ params.w_bwd.T)[None, :, :] + params.bias)
        zi, zf, zg, zo = (z[..., k * n:(k + 1) * n] for k in range(4))
        c = jax.nn.sigmoid(zf) * state.c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        h = jax.nn.sigmoid(zo) * jnp.tanh(c)
        return VSMLState(h, c)

    def messages(self, params: VSMLParams, state: VSMLState
                 ) -> tuple[Float[Array, "B F"], Float[Array, "A G"]]:
        """(forward, backward): m_j = mean_i P_m h_ij and u_i = mean_j P_u h_ij."""
        fwd = jnp.einsum("fn,abn->bf", params.proj_fwd, state.h) / state.grid[0]
        bwd = jnp.einsum("gn,abn->ag", params.proj_bwd, state.h) / state.grid[1]
        return fwd, bwd


def _pad(v, size):
    """(k,) or (k, m) values -> (k, size): the values in the first channels, zeros after."""
    v = v[:, None] if v.ndim == 1 else v
    if v.shape[1] > size:
        raise ValueError(f"VSML: {v.shape[1]} channels do not fit a message of size "
                         f"{size}")
    return jnp.pad(v, ((0, 0), (0, size - v.shape[1])))


class VSML(eqx.Module):
    r"""A stack of VS-ML layers for `sizes = (d_0, d_1, ..., d_L)` (one parameter set
    per layer, shared by all its connections). The input enters channel 0 of layer 1's
    forward messages; the output is channel 0 of the top layer's forward messages;
    the error signal and the label enter channels 0 and 1 of the top layer's backward
    messages (so `bwd_size >= 2`).

    - `init(key)`: a tuple of `VSMLParams`, one per layer.
    - `init_state(key, sizes=None)`: a tuple of `VSMLState` (any `sizes` with the same
      number of layers: the same params run on any grid).
    - `forward(params, state, x) -> (state, y_hat)`: the forward tick.
    - `backward(params, state, x, error, label) -> state`: the backward tick.
    - `online_step(params, state, x, label, mask=None) -> (state, logits)`: predict x,
      then feed back the cross-entropy error softmax(logits) - label and the label.
    """

    layers: tuple[VSMLLayer, ...]

    def __init__(self, sizes: Sequence[int], state_size: int = 16, fwd_size: int = 4,
                 bwd_size: int = 4, forget_bias: float = 5.0, input_bias: float = -5.0,
                 state_scale: float = 0.1):
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"VSML: sizes needs at least (n_in, n_out), got {sizes}")
        if bwd_size < 2:
            raise ValueError("VSML: bwd_size must be >= 2 (error and label channels)")
        for size in sizes:
            check_positive_int("VSML(sizes=...) entries", size)
        for name, value in (("state_size", state_size), ("fwd_size", fwd_size),
                            ("bwd_size", bwd_size)):
            check_positive_int(f"VSML({name}=...)", value)
        self.layers = tuple(
            VSMLLayer(a, b, state_size, fwd_size, bwd_size, forget_bias, input_bias,
                      state_scale) for a, b in zip(sizes[:-1], sizes[1:]))

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.layers[0].n_in,) + tuple(layer.n_out for layer in self.layers)

    def n_params(self) -> int:
        return sum(layer.n_params() for layer in self.layers)

    def init(self, key: Array, dtype: DTypeLike = jnp.float32) -> tuple[VSMLParams, ...]:
        keys = jax.random.split(key, len(self.layers))
        return tuple(layer.init(k, dtype) for layer, k in zip(self.layers, keys))

    def init_state(self, key: Array, sizes: Sequence[int] | None = None,
                   dtype: DTypeLike = jnp.float32) -> tuple[VSMLState, ...]:
        sizes = self.sizes if sizes is None else tuple(sizes)
        if len(sizes) != len(self.layers) + 1:
            raise ValueError(f"VSML: {len(self.layers)} layers need "
                             f"{len(self.layers) + 1} sizes, got {sizes}")
        for size in sizes:
            check_positive_int("VSML.init_state(sizes=...) entries", size)
        keys = jax.random.split(key, len(self.layers))
        return tuple(layer.init_state(k, a, b, dtype) for layer, k, a, b in
                     zip(self.layers, keys, sizes[:-1], sizes[1:]))

    def _zeros_bwd(self, layer, state):
        return jnp.zeros((state.grid[1], layer.bwd_size), state.h.dtype)

    def forward(self, params: tuple[VSMLParams, ...], state: tuple[VSMLState, ...],
                x: Float[Array, " A"]) -> tuple[tuple[VSMLState, ...], Float[Array, " B"]]:
        """Forward tick, bottom up; returns the new states and y_hat (B_L,)."""
        msg = _pad(x, self.layers[0].fwd_size)
        new = []
        for layer, p, s in zip(self.layers, params, state):
            s = layer.step(p, s, msg, self._zeros_bwd(layer, s))
            msg = layer.messages(p, s)[0]
            new.append(s)
        return tuple(new), msg[:, 0]

    def backward(self, params: tuple[VSMLParams, ...], state: tuple[VSMLState, ...],
                 x: Float[Array, " A"], error: Float[Array, " B"],
                 label: Float[Array, " B"]) -> tuple[VSMLState, ...]:
        """Backward tick, top down: the top layer reads (error, label)."""
        top = self.layers[-1]
        bwd = _pad(jnp.stack([error, label], axis=1), top.bwd_size)
        # Forward messages each layer reads: x, then the lower layers' current messages.
        fwd = [_pad(x, self.layers[0].fwd_size)]
        for layer, p, s in zip(self.layers[:-1], params[:-1], state[:-1]):
            fwd.append(layer.messages(p, s)[0])
        new = list(state)
        for k in reversed(range(len(self.layers))):
            layer = self.layers[k]
            new[k] = layer.step(params[k], state[k], fwd[k], bwd)
            bwd = layer.messages(params[k], new[k])[1]
        return tuple(new)

    def online_step(self, params: tuple[VSMLParams, ...], state: tuple[VSMLState, ...],
                    x: Float[Array, " A"], label: Float[Array, " B"],
                    mask: Bool[Array, " B"] | None = None
                    ) -> tuple[tuple[VSMLState, ...], Float[Array, " B"]]:
        """One online example: predict, then learn from the label (one-hot `label`).
        `mask` (bool, B_L) hides absent classes: their logits are -1e9 and their
        error and label are 0. Returns (state, logits before learning)."""
        state, logits = self.forward(params, state, x)
        if mask is not None:
            logits = jnp.where(mask, logits, -1e9)
        error = jax.nn.softmax(logits) - label
        if mask is not None:
            error = jnp.where(mask, error, 0.0)
        state = self.backward(params, state, x, error, label)
        return state, logits
