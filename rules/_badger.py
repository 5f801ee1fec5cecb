r"""Badger experts: many recurrent experts that share one policy and learn in their
activations by exchanging messages (Rosa et al. 2019, "BADGER: Learning to (learn
[learning algorithms] through multi-agent communication)", GoodAI); MPLP (Randazzo
et al. 2020, "MPLP: Learning a message passing learning protocol") as one
configuration of the same pieces.

An agent is n experts. Every expert runs the *same* recurrent cell (its parameters
are the shared, slow meta-parameters) on its own state h_i (fast). One inner step:

    m_i   = message_i(h_1..h_n, slots)          (the communication)
    h_i  <- cell(m_i [+ L l_i], h_i)             (all experts, one shared cell)
    y     = readout(h_1..h_n)                   (the agent's output)

`slots` are the environment's vectors at this step (e.g. "input", "error", "label",
and the agent's previous output, fed back as the slot "output"); `l_i` an optional
per-expert local observation (MPLP's weight value and activations). The
communication is one of

- a fixed topology (`FullyConnected`, `Ring`, `Adjacency`): m_i = agg_{j in N(i)} (W h_j + b)
  + E s, the neighbours' messages summed or averaged, plus a learned embedding E s of
  the concatenated slots broadcast to every expert; y = mean_i (O h_i) + c. A
  topology is a *rule* n -> adjacency, so it exists for any number of experts.
- `Attention`: key-query-value attention (as in GoodAI's Badger code). Expert i
  emits q_i, k_i, v_i = projections of h_i; every element j of slot s is a token
  with key K_s[j] + x_j a_s and value V_s[j] + x_j b_s. Then
      m_i = softmax_j(q_i . k_j / sqrt(d)) v_j  over experts
          + softmax_t(q_i . k_t / sqrt(d)) v_t  over slot tokens,
  two separate softmaxes, so that the slots' weight does not shrink as experts are
  added; output element o has a learned query Q_o and y_o = softmax_i(Q_o . k_i)
  u_i . w_o + c_o, with output values u_i = U h_i + c of their own (what the agent
  says is kept apart from what experts say to each other). Every expert-side sum is
  an average, so a policy meta-trained with 4 experts runs unchanged with 12 or 80.

The number of experts is a run-time choice: it is the leading axis of the state made
by `init_state(key, n_experts)`, and the meta-parameters from `init(key)` do not
depend on it. Initial expert states are random (`state_scale`): experts with equal
states and a shared cell would stay equal forever.

Everything is pure: `step` composes with `jax.jit`, `jax.vmap`, `jax.grad` and
`innerloop.unroll` (any gradient mode), and the meta-parameters are a pytree of
arrays, so `innerloop.ES` / `PES` apply unchanged (see `GuessTarget`).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Adjacency", "Attention", "Badger", "BadgerState", "FullyConnected", "GuessTarget",
           "MPLP", "Ring", "network_adjacency"]


# ------------------------------------------------------------ communication


def _check_reduce(reduce):
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum'; got {reduce!r}")


class _Topology(eqx.Module):
    """A fixed topology: `adjacency(n)` (an (n, n) numpy array, A[i, j] the weight of
    the message from expert j to expert i) and how messages are aggregated."""

    @abc.abstractmethod
    def adjacency(self, n: int) -> np.ndarray:
        """The (n, n) adjacency for n experts (each topology defines it)."""

    def weights(self, n: int) -> np.ndarray:
        """The (n, n) aggregation matrix: A, or A with rows divided by in-degree."""
        a = np.asarray(self.adjacency(n), np.float64)
        if a.shape != (n, n):
            raise ValueError(f"{type(self).__name__}: the adjacency for {n} experts must "
                             f"have shape ({n}, {n}); got {a.shape}")
        if self.reduce == "mean":
            a = a / np.maximum(np.abs(a).sum(axis=1, keepdims=True), 1e-12)
        return a


class FullyConnected(_Topology):
    """Every expert hears every other (A = 1 - I; with `self_loops`, A = 1)."""

    reduce: str = eqx.field(default="mean", static=True)
    self_loops: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        _check_reduce(self.reduce)

    def adjacency(self, n):
        a = np.ones((n, n))
        return a if self.self_loops else a - np.eye(n)


class Ring(_Topology):
    """Experts on a ring; i hears j when 0 < ring distance(i, j) <= k."""

    k: int = eqx.field(default=1, static=True)
    reduce: str = eqx.field(default="mean", static=True)

    def __check_init__(self):
        _check_reduce(self.reduce)
        if int(self.k) < 1:
            raise ValueError(f"Ring: k must be >= 1; got {self.k}")

    def adjacency(self, n):
        i = np.arange(n)
        d = np.abs(i[:, None] - i[None, :])
        d = np.minimum(d, n - d)
        return ((d > 0) & (d <= self.k)).astype(np.float64)


class Adjacency(_Topology):
    """Any topology: `rule(n) -> (n, n)` array, or one fixed (n, n) matrix (which then
    only fits that many experts)."""

    rule: Any = eqx.field(static=True)
    reduce: str = eqx.field(default="mean", static=True)

    def __init__(self, rule, reduce: str = "mean"):
        _check_reduce(reduce)
        if not callable(rule):
            m = np.asarray(rule, np.float64)
            if m.ndim != 2 or m.shape[0] != m.shape[1]:
                raise ValueError(f"Adjacency: a fixed matrix must be square; got shape "
                                 f"{m.shape}")
            rule = _FixedMatrix(tuple(map(tuple, m.tolist())))
        self.rule = rule
        self.reduce = reduce

    def adjacency(self, n):
        return np.asarray(self.rule(n), np.float64)


class _FixedMatrix:
    """A hashable fixed adjacency matrix (a rule that only accepts its own size)."""

    def __init__(self, rows):
        self.rows = rows

    def __call__(self, n):
        if n != len(self.rows):
            raise ValueError(f"this Adjacency is a fixed {len(self.rows)} x "
                             f"{len(self.rows)} matrix and cannot connect {n} experts; "
                             "pass a rule n -> matrix to run any number of experts")
        return np.asarray(self.rows)

    def __hash__(self):
        return hash(self.rows)

    def __eq__(self, other):
        return isinstance(other, _FixedMatrix) and other.rows == self.rows


class Attention(eqx.Module):
    """Learned key-query-value attention among experts and slot tokens (see the module
    docstring); `key_size` per head, `heads` heads (message_size % heads == 0)."""

    key_size: int = eqx.field(default=16, static=True)
    heads: int = eqx.field(default=2, static=True)


# ------------------------------------------------------------------- experts


class BadgerState(eqx.Module):
    """`cells`: the experts' cell states, leading axis n_experts; `output`: the
    agent's last output (fed back as the slot "output")."""

    cells: Any
    output: jax.Array


def _hidden(cells):
    """The part of a cell state the others see: h (GRU) or h of (h, c) (LSTM)."""
    return cells[0] if isinstance(cells, (tuple, list)) else cells


def _dense(key, n_in, n_out, scale=1.0):
    return scale * jax.random.normal(key, (n_in, n_out)) / np.sqrt(max(n_in, 1))


class Badger(eqx.Module):
    r"""n experts with one shared recurrent cell, talking through `communication`.

    - `expert`: a recurrent cell `cell(input, state) -> state` whose input has size
      `message_size` (e.g. `equinox.nn.GRUCell(message_size, 32, key=k)` or an
      `LSTMCell`), or a function `key -> cell`, or None for a GRU cell of
      `hidden_size` units. Its fields are the initial shared parameters.
    - `n_experts`: the default count for `init_state`; any other count works.
    - `communication`: `Attention()`, `FullyConnected()`, `Ring(k)` or `Adjacency(rule)`.
    - `inputs`: the slots the environment gives each step, name -> size, e.g.
      {"error": 1}. With `feedback=True` the previous output is the slot "output".
    - `n_out`: size of the agent's output (0: none; read `expert_outputs` instead).
    - `local_inputs` / `local_outputs`: sizes of optional per-expert observations
      (added to the message through a learned map) and per-expert outputs.

    `init(key)` -> meta-parameters {"expert": cell, "comm": ..., ...};
    `init_state(key, n_experts=None)` -> `BadgerState`;
    `step(meta, state, slots, local=None)` -> (state, output).
    """

    expert: Any
    n_experts: int = eqx.field(static=True)
    communication: Any
    inputs: tuple = eqx.field(static=True)
    n_out: int = eqx.field(static=True)
    message_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    local_inputs: int = eqx.field(static=True)
    local_outputs: int = eqx.field(static=True)
    feedback: bool = eqx.field(static=True)
    state_scale: float = eqx.field(static=True)

    def __init__(self, expert=None, n_experts: int = 4, communication=None, *,
                 inputs: Mapping[str, int] | None = None, n_out: int = 1,
                 message_size: int = 16, hidden_size: int = 32, local_inputs: int = 0,
                 local_outputs: int = 0, feedback: bool = True,
                 state_scale: float = 1.0):
        self.expert = expert
        self.n_experts = int(n_experts)
        self.communication = Attention() if communication is None else communication
        self.inputs = tuple((str(k), int(v)) for k, v in dict(inputs or {}).items())
        self.n_out = int(n_out)
        self.message_size = int(message_size)
        self.hidden_size = int(hidden_size)
        self.local_inputs = int(local_inputs)
        self.local_outputs = int(local_outputs)
        self.feedback = bool(feedback)
        self.state_scale = float(state_scale)

    def __check_init__(self):
        if self.n_experts < 1:
            raise ValueError(f"n_experts must be >= 1; got {self.n_experts}")
        if not isinstance(self.communication, (Attention, _Topology)):
            raise TypeError("communication must be Attention(), FullyConnected(), Ring(k) or "
                            f"Adjacency(rule); got {self.communication!r}")
        if isinstance(self.communication, Attention) and \
                self.message_size % self.communication.heads:
            raise ValueError(f"message_size ({self.message_size}) must be divisible by "
                             f"the attention heads ({self.communication.heads})")
        for name, size in self.inputs:
            if size < 1:
                raise ValueError(f"slot {name!r} must have size >= 1; got {size}")
        if self.feedback and "output" in dict(self.inputs):
            raise ValueError("the slot name 'output' is taken by the fed-back output "
                             "(feedback=True)")

    # -------------------------------------------------------------- set-up

    @property
    def slots(self) -> tuple[tuple[str, int], ...]:
        """All slots the experts read: the inputs, then the fed-back output."""
        fb = (("output", self.n_out),) if self.feedback and self.n_out else ()
        return self.inputs + fb

    def _make_expert(self, key):
        if self.expert is None:
            return eqx.nn.GRUCell(self.message_size, self.hidden_size, key=key)
        if isinstance(self.expert, eqx.Module):
            return self.expert
        return self.expert(key)

    def init(self, key) -> dict:
        """The meta-parameters: the shared cell and the communication's parameters."""
        k_cell, k_comm, k_loc = jax.random.split(key, 3)
        cell = self._make_expert(k_cell)
        h = _hidden(self._cell_state(cell, jax.random.key(0), 1))
        H, M = h.shape[-1], self.message_size
        ks = iter(jax.random.split(k_comm, 16 + 4 * len(self.slots)))
        if isinstance(self.communication, Attention):
            d = self.communication.heads * self.communication.key_size
            comm = {"wq": _dense(next(ks), H, d), "bq": jnp.zeros(d),
                    "wk": _dense(next(ks), H, d), "bk": jnp.zeros(d),
                    "wv": _dense(next(ks), H, M), "bv": jnp.zeros(M),
                    "slots": {name: {"key": jax.random.normal(next(ks), (n, d)),
                                     "key_gain": jax.random.normal(next(ks), (d,)),
                                     "value": 0.1 * jax.random.normal(next(ks), (n, M)),
                                     "value_gain": jax.random.normal(next(ks), (M,))}
                              for name, n in self.slots}}
            if self.n_out:
                comm["out_query"] = jax.random.normal(next(ks), (self.n_out, d))
                comm["out_wv"] = _dense(next(ks), H, M)
                comm["out_bv"] = jnp.zeros(M)
                comm["out_w"] = _dense(next(ks), M, self.n_out).T
                comm["out_b"] = jnp.zeros(self.n_out)
        else:
            n_env = sum(n for _, n in self.slots)
            comm = {"w": _dense(next(ks), H, M), "b": jnp.zeros(M)}
            if n_env:
                comm["env"] = _dense(next(ks), n_env, M)
            if self.n_out:
                comm["out_w"] = _dense(next(ks), H, self.n_out)
                comm["out_b"] = jnp.zeros(self.n_out)
        meta = {"expert": cell, "comm": comm}
        k1, k2 = jax.random.split(k_loc)
        if self.local_inputs:
            meta["local_in"] = _dense(k1, self.local_inputs, M)
        if self.local_outputs:
            meta["local_out"] = _dense(k2, H, self.local_outputs)
            meta["local_out_b"] = jnp.zeros(self.local_outputs)
        return meta

    def _cell_state(self, cell, key, n, dtype=jnp.float32):
        def draw(k, shape):
            return self.state_scale * jax.random.normal(k, (n,) + shape, dtype)

        k1, k2 = jax.random.split(key)
        if isinstance(cell, eqx.nn.LSTMCell):
            return (draw(k1, (cell.hidden_size,)), draw(k2, (cell.hidden_size,)))
        if hasattr(cell, "init_state"):
            return jax.vmap(cell.init_state)(jax.random.split(key, n))
        return draw(k1, (cell.hidden_size,))

    def init_state(self, key, n_experts: int | None = None, meta=None,
                   dtype=jnp.float32) -> BadgerState:
        """Random expert states for `n_experts` experts (default `self.n_experts`).
        `meta` is only needed for a custom expert built by a function of the key."""
        n = self.n_experts if n_experts is None else int(n_experts)
        if n < 1:
            raise ValueError(f"n_experts must be >= 1; got {n}")
        cell = (meta["expert"] if meta is not None
                else self._make_expert(jax.random.key(0)))
        return BadgerState(self._cell_state(cell, key, n, dtype),
                           jnp.zeros(self.n_out, dtype))

    # ------------------------------------------------------------ one step

    def _slot_values(self, slots, output):
        slots = dict(slots or {})
        missing = [n for n, _ in self.inputs if n not in slots]
        if missing:
            raise ValueError(f"Badger.step: missing slot(s) {missing}; expected "
                             f"{dict(self.inputs)}")
        vals = []
        for name, size in self.slots:
            v = output if (name == "output" and self.feedback) else slots[name]
            v = jnp.reshape(jnp.asarray(v), (-1,))
            if v.shape[0] != size:
                raise ValueError(f"Badger.step: slot {name!r} must have {size} values; "
                                 f"got shape {jnp.shape(slots.get(name, v))}")
            vals.append(v)
        return vals

    def messages(self, meta, state: BadgerState, slots=None) -> jax.Array:
        """The incoming message of every expert, (n_experts, message_size)."""
        h = _hidden(state.cells)
        vals = self._slot_values(slots, state.output)
        c = meta["comm"]
        if isinstance(self.communication, Attention):
            return self._attend(c, h, vals)
        agg = jnp.asarray(self.communication.weights(h.shape[0]), h.dtype)
        m = agg @ (h @ c["w"] + c["b"])
        if vals:
            m = m + jnp.concatenate(vals) @ c["env"]
        return m

    def _heads(self, x):
        return x.reshape(x.shape[:-1] + (self.communication.heads, -1))

    def _attend(self, c, h, vals):
        dk = self.communication.key_size
        q = self._heads(h @ c["wq"] + c["bq"])          # (n, heads, dk)
        k = self._heads(h @ c["wk"] + c["bk"])
        v = self._heads(h @ c["wv"] + c["bv"])          # (n, heads, M / heads)
        a = jax.nn.softmax(jnp.einsum("ihd,jhd->hij", q, k) / np.sqrt(dk), axis=-1)
        m = jnp.einsum("hij,jhm->ihm", a, v)
        if vals:
            keys, values = [], []
            for (name, _), x in zip(self.slots, vals):
                p = c["slots"][name]
                keys.append(p["key"] + x[:, None] * p["key_gain"])
                values.append(p["value"] + x[:, None] * p["value_gain"])
            kt = self._heads(jnp.concatenate(keys))      # (tokens, heads, dk)
            vt = self._heads(jnp.concatenate(values))
            at = jax.nn.softmax(jnp.einsum("ihd,thd->hit", q, kt) / np.sqrt(dk), axis=-1)
            m = m + jnp.einsum("hit,thm->ihm", at, vt)
        return m.reshape(h.shape[0], -1)

    def readout(self, meta, state: BadgerState) -> jax.Array:
        """The agent's output from the experts' states, (n_out,)."""
        h = _hidden(state.cells)
        c = meta["comm"]
        if not self.n_out:
            return jnp.zeros((0,), h.dtype)
        if isinstance(self.communication, Attention):
            dk = self.communication.key_size
            k = self._heads(h @ c["wk"] + c["bk"])
            v = self._heads(h @ c["out_wv"] + c["out_bv"])  # the output's own values
            qo = self._heads(c["out_query"])              # (n_out, heads, dk)
            a = jax.nn.softmax(jnp.einsum("ohd,ihd->hoi", qo, k) / np.sqrt(dk), axis=-1)
            read = jnp.einsum("hoi,ihm->ohm", a, v).reshape(self.n_out, -1)
            return jnp.sum(read * c["out_w"], -1) + c["out_b"]
        return jnp.mean(h @ c["out_w"], axis=0) + c["out_b"]

    def expert_outputs(self, meta, state: BadgerState) -> jax.Array:
        """Per-expert outputs (n_experts, local_outputs) (e.g. MPLP's weight change)."""
        return _hidden(state.cells) @ meta["local_out"] + meta["local_out_b"]

    def step(self, meta, state: BadgerState, slots=None, local=None):
        """One inner step: every expert reads its message (and `local`, shape
        (n_experts, local_inputs), if given) and updates its state with the shared
        cell. Returns (new state, output)."""
        m = self.messages(meta, state, slots)
        if self.local_inputs:
            if local is None:
                raise ValueError(f"Badger.step: this Badger has local_inputs="
                                 f"{self.local_inputs}; pass local of shape "
                                 f"(n_experts, {self.local_inputs})")
            m = m + local @ meta["local_in"]
        cells = jax.vmap(meta["expert"])(m, state.cells)
        new = BadgerState(cells, state.output)
        out = self.readout(meta, new)
        return BadgerState(cells, out), out


# -------------------------------------------------------------- the task


class GuessTarget(eqx.Module):
    r"""GoodAI's demonstration task: guess a D-dimensional target t ~ N(0, I) from a
    scalar error. Each inner step the agent outputs a guess g and next reads only
    e = ||g - t||^2 / D through the slot "error" (chance: e = 1 for g = 0).

    The loss of a run is the mean error over its steps (weighted towards later steps
    by `late_weight`: step s of T has weight 1 + late_weight * s / T).

    Also an inner problem for `innerloop.ES` / `PES` (`init(key, theta)`,
    `unroll(state, theta, K)`, `T`).
    """

    badger: Badger
    dim: int = eqx.field(static=True)
    T: int | None = eqx.field(static=True)
    n_experts: int | None = eqx.field(default=None, static=True)
    late_weight: float = eqx.field(default=1.0, static=True)

    def init(self, key, theta):
        k_s, k_t = jax.random.split(key)
        dtype = jnp.result_type(*jax.tree.leaves(theta))  # float64 meta -> float64 run
        state = self.badger.init_state(k_s, self.n_experts, dtype=dtype)
        target = jax.random.normal(k_t, (self.dim,), state.output.dtype)
        err = jnp.sum(target ** 2) / self.dim
        return (state, target, err, jnp.asarray(0, jnp.int32))

    def step(self, carry, theta):
        state, target, err, t = carry
        state, guess = self.badger.step(theta, state, {"error": err[None]})
        err = jnp.sum((guess - target) ** 2) / self.dim
        return (state, target, err, t + 1), err

    def unroll(self, carry, theta, K):
        def body(c, _):
            c, err = self.step(c, theta)
            return c, (err, c[3])

        carry, (errs, ts) = jax.lax.scan(body, carry, None, length=K)
        T = self.T if self.T is not None else K
        w = 1.0 + self.late_weight * ts.astype(errs.dtype) / T
        return carry, jnp.sum(w * errs) / jnp.sum(w)

    def errors(self, theta, key, steps: int):
        """The error after every step of one run from a fresh state, (steps,)."""
        carry = self.init(key, theta)

        def body(c, _):
            return self.step(c, theta)

        return jax.lax.scan(body, carry, None, length=steps)[1]


# -------------------------------------------------------------------- MPLP


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

    def init(self, key) -> dict:
        meta = self.badger.init(key)
        # start close to "no update": small weight changes until meta-trained
        meta["local_out"] = 0.1 * meta["local_out"]
        return meta

    def init_weights(self, key):
        keys = jax.random.split(key, len(self.sizes) - 1)
        return [(self.init_scale * jax.random.normal(k, (b, a)) / np.sqrt(a),
                 jnp.zeros(b)) for k, a, b in zip(keys, self.sizes[:-1], self.sizes[1:])]

    def init_state(self, key, meta=None):
        k_w, k_s = jax.random.split(key)
        return (self.init_weights(k_w), self.badger.init_state(k_s, meta=meta))

    def forward(self, weights, x):
        """Activations [x, o_1, ..., o_L] (last layer linear)."""
        acts = [x]
        for i, (w, b) in enumerate(weights):
            z = w @ acts[-1] + b
            acts.append(z if i == len(weights) - 1 else self.activation(z))
        return acts

    def predict(self, weights, x):
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

    def step(self, meta, state, x, y):
        """One example: returns (new state, squared error before the update)."""
        weights, bstate = state
        acts = self.forward(weights, x)
        err = acts[-1] - y
        bstate, _ = self.badger.step(meta, bstate, None,
                                     self._local(weights, acts, err))
        dw = self.badger.expert_outputs(meta, bstate)[:, 0]
        return (self._apply(weights, dw), bstate), jnp.sum(err ** 2)

    def lifetime(self, meta, key, xs, ys, *, grad=None):
        """Learn online from examples xs (T, n_in), ys (T, n_out). Returns (final
        state, per-step squared errors before each update (T,))."""
        from innerloop.implicit import unroll

        def body(state, meta, t):
            return self.step(meta, state, xs[t], ys[t])

        return unroll(body, self.init_state(key, meta), meta, xs.shape[0], grad=grad,
                      outputs=True)
