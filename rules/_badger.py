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

The communications are in `innerloop.rules._topology`, the guessing task in
`innerloop.rules._guess`, MPLP in `innerloop.rules._mplp`.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from innerloop.rules._topology import Attention, _Topology

__all__ = ["Badger", "BadgerState"]


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
    return scale * jax.random.normal(key, (n_in, n_out), jnp.float32) / math.sqrt(max(n_in, 1))


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
            return eqx.nn.GRUCell(self.message_size, self.hidden_size, dtype=jnp.float32,
                                  key=key)
        if isinstance(self.expert, eqx.Module):
            return self.expert
        return self.expert(key)

    def init(self, key: jax.Array) -> dict[str, Any]:
        """The meta-parameters: the shared cell and the communication's parameters."""
        k_cell, k_comm, k_loc = jax.random.split(key, 3)
        cell = self._make_expert(k_cell)
        h = _hidden(self._cell_state(cell, jax.random.key(0), 1))
        H, M = h.shape[-1], self.message_size
        ks = iter(jax.random.split(k_comm, 16 + 4 * len(self.slots)))
        # float32 meta-parameters whatever the default dtype (x64); runs follow their dtype.
        normal = lambda k, shape: jax.random.normal(k, shape, jnp.float32)
        if isinstance(self.communication, Attention):
            d = self.communication.heads * self.communication.key_size
            comm = {"wq": _dense(next(ks), H, d), "bq": jnp.zeros(d, jnp.float32),
                    "wk": _dense(next(ks), H, d), "bk": jnp.zeros(d, jnp.float32),
                    "wv": _dense(next(ks), H, M), "bv": jnp.zeros(M, jnp.float32),
                    "slots": {name: {"key": normal(next(ks), (n, d)),
                                     "key_gain": normal(next(ks), (d,)),
                                     "value": 0.1 * normal(next(ks), (n, M)),
                                     "value_gain": normal(next(ks), (M,))}
                              for name, n in self.slots}}
            if self.n_out:
                comm["out_query"] = normal(next(ks), (self.n_out, d))
                comm["out_wv"] = _dense(next(ks), H, M)
                comm["out_bv"] = jnp.zeros(M, jnp.float32)
                comm["out_w"] = _dense(next(ks), M, self.n_out).T
                comm["out_b"] = jnp.zeros(self.n_out, jnp.float32)
        else:
            n_env = sum(n for _, n in self.slots)
            comm = {"w": _dense(next(ks), H, M), "b": jnp.zeros(M, jnp.float32)}
            if n_env:
                comm["env"] = _dense(next(ks), n_env, M)
            if self.n_out:
                comm["out_w"] = _dense(next(ks), H, self.n_out)
                comm["out_b"] = jnp.zeros(self.n_out, jnp.float32)
        meta = {"expert": cell, "comm": comm}
        k1, k2 = jax.random.split(k_loc)
        if self.local_inputs:
            meta["local_in"] = _dense(k1, self.local_inputs, M)
        if self.local_outputs:
            meta["local_out"] = _dense(k2, H, self.local_outputs)
            meta["local_out_b"] = jnp.zeros(self.local_outputs, jnp.float32)
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

    def init_state(self, key: jax.Array, n_experts: int | None = None,
                   meta: dict[str, Any] | None = None,
                   dtype: DTypeLike = jnp.float32) -> BadgerState:
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

    def messages(self, meta: dict[str, Any], state: BadgerState,
                 slots: Mapping[str, ArrayLike] | None = None) -> jax.Array:
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
        a = jax.nn.softmax(jnp.einsum("ihd,jhd->hij", q, k) / math.sqrt(dk), axis=-1)
        m = jnp.einsum("hij,jhm->ihm", a, v)
        if vals:
            keys, values = [], []
            for (name, _), x in zip(self.slots, vals):
                p = c["slots"][name]
                keys.append(p["key"] + x[:, None] * p["key_gain"])
                values.append(p["value"] + x[:, None] * p["value_gain"])
            kt = self._heads(jnp.concatenate(keys))      # (tokens, heads, dk)
            vt = self._heads(jnp.concatenate(values))
            at = jax.nn.softmax(jnp.einsum("ihd,thd->hit", q, kt) / math.sqrt(dk), axis=-1)
            m = m + jnp.einsum("hit,thm->ihm", at, vt)
        return m.reshape(h.shape[0], -1)

    def readout(self, meta: dict[str, Any], state: BadgerState) -> jax.Array:
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
            a = jax.nn.softmax(jnp.einsum("ohd,ihd->hoi", qo, k) / math.sqrt(dk), axis=-1)
            read = jnp.einsum("hoi,ihm->ohm", a, v).reshape(self.n_out, -1)
            return jnp.sum(read * c["out_w"], -1) + c["out_b"]
        return jnp.mean(h @ c["out_w"], axis=0) + c["out_b"]

    def expert_outputs(self, meta: dict[str, Any], state: BadgerState) -> jax.Array:
        """Per-expert outputs (n_experts, local_outputs) (e.g. MPLP's weight change)."""
        return _hidden(state.cells) @ meta["local_out"] + meta["local_out_b"]

    def step(self, meta: dict[str, Any], state: BadgerState,
             slots: Mapping[str, ArrayLike] | None = None,
             local: jax.Array | None = None) -> tuple[BadgerState, jax.Array]:
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
