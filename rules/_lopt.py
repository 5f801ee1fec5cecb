r"""Learned optimizers with one interface, and the inner problem that meta-trains them.

Every learned optimizer is an immutable `equinox.Module` whose fields are its
(static) architecture, with

- `init(key) -> meta_params`: a pytree of arrays, what meta-training learns;
- `optax(meta_params) -> optax.GradientTransformationExtraArgs`: an optax optimizer.
  Its `update(grads, state, params, value=loss)` receives the training loss as
  optax's extra argument `value` (the name `optax.lbfgs`, optax's zoom line search
  and `optax.contrib.reduce_on_plateau` read, and what `innerloop.argmin` passes;
  rules that do not read it ignore it, as they ignore other extra arguments), and it
  returns *updates* to add with `optax.apply_updates`, so it composes with
  `optax.chain`, clipping, `reduce_on_plateau`, `optax.apply_updates` and `jit` like
  any optax optimizer, and serves as `innerloop.argmin`'s solver.

Architectures:

- `LearnableAdam`: Adam (Kingma and Ba 2015) with meta-learned log learning rate,
  log(1 - beta1), log(1 - beta2) and log epsilon: the baseline a learned optimizer
  must beat. At its initial meta-parameters it is `optax.adam(1e-3)`.
- `MLPLOpt`: the per-parameter MLP of Metz et al. 2020 ("Tasks, stability,
  architecture, and compute: training more effective learned optimizers, and using
  them to train themselves").
- `RNNMLPLOpt`: the hierarchical variant of the same paper: a per-tensor LSTM,
  fed tensor statistics and the normalised training loss, conditions the MLP.

Meta-training (`UnrolledTask`, `meta_train`) is in `innerloop.rules._meta_train`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

__all__ = ["DECAYS", "LOPTS", "TIMESCALES", "LOptState", "LearnableAdam", "MLPLOpt",
           "RNNMLPLOpt", "normalise", "parameter_features", "step_embedding"]

DECAYS = (0.5, 0.9, 0.99, 0.999, 0.9999)
# Log-spaced from 1 to 1e5 steps (learned_optimization's 11 timescales).
TIMESCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
_RSQRT_EPS = 1e-8  # inside rsqrt(v + eps) of the features
_NORM_EPS = 1e-5  # inside the per-tensor second-moment normalisation
_ADAM_INIT_OUT_SCALE = 0.1


# ------------------------------------------------------------ shared pieces


def step_embedding(count: jax.Array, timescales=TIMESCALES) -> jax.Array:
    r"""Sinusoidal embedding of the step count t: sin(t / tau_i) for each timescale
    tau_i (shape `(len(timescales),)`)."""
    t = jnp.asarray(count, jnp.float32)
    return jnp.sin(t / jnp.asarray(timescales, jnp.float32))


def normalise(x: jax.Array, axis=0) -> jax.Array:
    r"""Per-tensor second-moment normalisation x / sqrt(mean(x^2) + 1e-5), the mean
    taken over `axis` (the tensor's entries), separately for each feature."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + _NORM_EPS)


def parameter_features(p, g, m, v) -> jax.Array:
    r"""The per-parameter features of Metz et al. 2020 for one tensor, before
    normalisation: for flat p, g of shape (N,) and moments m, v of shape (N, D),

        [g, p, m_1..m_D, v_1..v_D, rsqrt(v_d + eps), m_d rsqrt(v_d + eps)],

    shape (N, 2 + 4 D)."""
    r = jax.lax.rsqrt(v + _RSQRT_EPS)
    return jnp.concatenate([g[:, None], p[:, None], m, v, r, m * r], axis=-1)


def _mlp_init(key, sizes):
    layers = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1),
                                zip(sizes[:-1], sizes[1:])):
        w = jax.random.truncated_normal(k, -2.0, 2.0, (n_in, n_out), jnp.float32)
        layers.append({"w": w / math.sqrt(n_in), "b": jnp.zeros((n_out,), jnp.float32)})
    return layers


def _adam_like(layers, feature: int, out_scale: float):
    r"""Make a freshly initialised ReLU MLP start as (about) the identity on input
    `feature`: hidden units 0 and 1 of every layer carry relu(x_f) and relu(-x_f),
    the first output (the direction) is their difference, and the other weights of
    the last layer are scaled by `out_scale`. So the untrained optimizer steps along
    the normalised m rsqrt(v) feature: Adam-like, with a per-tensor normalisation,
    plus a little noise the meta-training can build on. Needs hidden widths >= 2."""
    layers = [dict(layer) for layer in layers]
    first = layers[0]
    w = first["w"].at[:, :2].set(0.0).at[feature, 0].set(1.0).at[feature, 1].set(-1.0)
    layers[0] = {"w": w, "b": first["b"].at[:2].set(0.0)}
    for i in range(1, len(layers) - 1):
        w = layers[i]["w"].at[:, :2].set(0.0).at[0, 0].set(1.0).at[1, 1].set(1.0)
        layers[i] = {"w": w, "b": layers[i]["b"].at[:2].set(0.0)}
    last = layers[-1]
    w = (out_scale * last["w"]).at[0, 0].add(1.0).at[1, 0].add(-1.0)
    layers[-1] = {"w": w, "b": jnp.zeros_like(last["b"])}
    return layers


def _mlp_apply(layers, x):
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


class LOptState(NamedTuple):
    """State of `MLPLOpt` / `RNNMLPLOpt`: the step `count`, the momenta and second
    moments (params-shaped, a trailing axis of one entry per decay) and, for
    `RNNMLPLOpt`, the per-tensor LSTM state and loss statistics (`rnn`)."""

    count: jax.Array
    momentum: Any
    second_moment: Any
    rnn: Any = None


def _moments(state, grads, decays):
    d = jnp.asarray(decays, jnp.float32)
    g32 = jax.tree.map(lambda g: g.astype(jnp.float32)[..., None], grads)
    m = jax.tree.map(lambda m, g: d * m + (1 - d) * g, state.momentum, g32)
    v = jax.tree.map(lambda v, g: d * v + (1 - d) * g * g, state.second_moment, g32)
    return m, v


def _zeros_moments(params, decays):
    return jax.tree.map(
        lambda p: jnp.zeros(jnp.shape(p) + (len(decays),), jnp.float32), params)


def _need_params(params, name):
    if params is None:
        raise ValueError(f"{name}.update: the rule reads the parameters; call "
                         f"update(grads, state, params)")


class _PerParameterMLP(eqx.Module):
    """The per-parameter part shared by `MLPLOpt` and `RNNMLPLOpt`."""

    hidden: tuple[int, ...] = eqx.field(default=(32, 32), static=True)
    decays: tuple[float, ...] = eqx.field(default=DECAYS, static=True)
    timescales: tuple[float, ...] = eqx.field(default=TIMESCALES, static=True)
    exp_mult: float = eqx.field(default=1e-3, static=True)
    step_mult: float = eqx.field(default=1e-3, static=True)
    adam_init: bool = eqx.field(default=True, static=True)

    @classmethod
    def pretrained(cls, directory=None) -> tuple[Any, Any]:
        r"""The optimizer meta-trained by `benchmarks/learned_optimizer.py`, shipped with
        the package: returns `(lopt, meta_params)`, so `lopt.optax(meta_params)` is an
        optax optimizer, with no meta-training and no download. `directory`: a folder
        holding `<Class>.json` and `<Class>.npz` written by `rules.save_pretrained`
        (default: the shipped `rules/pretrained/`). The weights are read without pickle
        and checked against the card's SHA-256 and the architecture it describes; a
        missing, corrupted or mismatched file raises an error naming it. The card
        (`rules/pretrained/<Class>.json`, `info`) says what it was meta-trained on and
        how it measured against tuned Adam."""
        # Imported here: _pretrained imports this module (through _checkpoint).
        from innerloop.rules._pretrained import load_pretrained
        return load_pretrained(cls, directory)

    def __check_init__(self):
        if not self.decays or not all(0 < d < 1 for d in self.decays):
            raise ValueError(f"decays must lie in (0, 1), got {self.decays}")
        if not all(int(h) >= 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be positive, got {self.hidden}")

    @property
    def n_features(self) -> int:
        """Per-parameter inputs of the MLP (before any conditioning)."""
        return 2 + 4 * len(self.decays) + len(self.timescales)

    @property
    def adam_feature(self) -> int:
        """Index of the m rsqrt(v) input at the decay nearest 0.9 (what `adam_init`
        starts the direction on)."""
        j = min(range(len(self.decays)), key=lambda i: abs(self.decays[i] - 0.9))
        return 2 + 3 * len(self.decays) + j

    def _init_mlp(self, key, n_in):
        layers = _mlp_init(key, (n_in, *self.hidden, 2))
        if self.adam_init and min(self.hidden) >= 2:
            layers = _adam_like(layers, self.adam_feature, _ADAM_INIT_OUT_SCALE)
        return layers

    def _tensor_step(self, mlp, p, g, m, v, embedding, cond=None):
        """The update (to add) for one tensor: -d exp(c1 mag) c2."""
        shape, dtype = jnp.shape(p), jnp.result_type(p)
        n = math.prod(shape)
        flat = lambda x: jnp.reshape(x, (n,) + jnp.shape(x)[len(shape):]).astype(jnp.float32)
        x = parameter_features(flat(p), flat(g), flat(m), flat(v))
        # normalise(x) @ W1 with the per-tensor scale folded into W1's rows, and the
        # inputs shared by the whole tensor (step embedding, conditioning) folded into
        # its bias: the same function, a third fewer multiplies per parameter.
        n_x = x.shape[1]
        scale = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=0) + _NORM_EPS)
        shared = jnp.concatenate([embedding] if cond is None else [embedding, cond])
        first, rest = mlp[0], mlp[1:]
        bias = shared @ first["w"][n_x:] + first["b"]
        out = x @ (scale[:, None] * first["w"][:n_x]) + bias
        for layer in rest:
            out = jax.nn.relu(out) @ layer["w"] + layer["b"]
        direction, magnitude = out[:, 0], out[:, 1]
        step = direction * jnp.exp(self.exp_mult * magnitude) * self.step_mult
        return jnp.reshape(-step, shape).astype(dtype)


# ----------------------------------------------------------------- MLPLOpt


class MLPLOpt(_PerParameterMLP):
    r"""Per-parameter MLP learned optimizer (Metz et al. 2020).

    For each parameter tensor, with gradient g, parameter p, momenta
    m_d = beta_d m_d + (1 - beta_d) g and second moments v_d = beta_d v_d + (1 - beta_d) g^2
    at decays beta_d in `decays` (0.5, 0.9, 0.99, 0.999, 0.9999), the inputs of each
    entry are

        x = normalise([g, p, m_d, v_d, rsqrt(v_d), m_d rsqrt(v_d)]) ++ sin(t / tau_i),

    normalised per tensor (x / sqrt(mean over the tensor of x^2 + 1e-5), each feature
    separately), followed by a sinusoidal embedding of the step t at 11 timescales
    tau_i from 1 to 1e5. An MLP (`hidden`, ReLU, shared by every parameter) maps x to
    a direction d and a magnitude m, and

        p <- p - d exp(c1 m) c2,   c1 = `exp_mult` = 1e-3,  c2 = `step_mult` = 1e-3,

    as in learned_optimization's `MLPLOpt`. The rule ignores the loss.

    With `adam_init=True` (the default; hidden widths >= 2) `init` makes two hidden
    units of every layer carry relu(x) and relu(-x) of the normalised m rsqrt(v) input
    at decay 0.9 and the direction their difference, with the last layer's other
    weights scaled by 0.1: the untrained rule is then a per-tensor-normalised Adam
    with steps of about `step_mult` (plus a little noise), a working optimizer that
    meta-training refines, instead of a random direction it must first turn into
    descent. `adam_init=False` is the plain random initialisation.
    """

    def init(self, key: jax.Array) -> list[dict[str, jax.Array]]:
        return self._init_mlp(key, self.n_features)

    def optax(self, meta_params: list[dict[str, jax.Array]]
              ) -> optax.GradientTransformationExtraArgs:
        def init_fn(params):
            z = _zeros_moments(params, self.decays)
            return LOptState(jnp.zeros((), jnp.int32), z, z)

        def update_fn(updates, state, params=None, **extra_args):
            del extra_args
            _need_params(params, "MLPLOpt")
            m, v = _moments(state, updates, self.decays)
            emb = step_embedding(state.count, self.timescales)
            step = jax.tree.map(
                lambda p, g, mm, vv: self._tensor_step(meta_params, p, g, mm, vv, emb),
                params, updates, m, v)
            return step, LOptState(state.count + 1, m, v)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -------------------------------------------------------------- RNNMLPLOpt


class _RNNState(NamedTuple):
    h: jax.Array  # (n_tensors, lstm_size)
    c: jax.Array
    loss_ema: jax.Array  # (len(loss_decays),)
    loss0: jax.Array  # the first loss seen


class RNNMLPLOpt(_PerParameterMLP):
    r"""Hierarchical learned optimizer (Metz et al. 2020): a per-tensor LSTM conditions
    the per-parameter MLP of `MLPLOpt`.

    Every step, each tensor's LSTM (one set of weights, `lstm_size` units, a state
    per tensor) reads

    - tensor statistics: 0.1 log RMS of g, p and each momentum m_d, and the mean of
      |m_d rsqrt(v_d)|;
    - the normalised training loss L_t: tanh((L_t - L̄_k) / |L̄_k|) against running
      means L̄_k at decays `loss_decays`, and tanh(log |L_t| - log |L_0|);
    - the step embedding sin(t / tau_i);

    and a linear read-out of its hidden state gives a conditioning vector c (size
    `cond_size`) that is appended to the inputs of every entry of that tensor:

        x = normalise([g, p, m_d, v_d, rsqrt v_d, m_d rsqrt v_d]) ++ sin(t / tau_i) ++ c,
        (d, m) = MLP(x),   p <- p - d exp(c1 m) c2.

    The update needs the loss, as optax's extra argument `value`:
    `update(grads, state, params, value=loss)`.
    """

    lstm_size: int = eqx.field(default=64, static=True)
    cond_size: int = eqx.field(default=8, static=True)
    loss_decays: tuple[float, ...] = eqx.field(default=(0.9, 0.99, 0.999), static=True)

    @property
    def n_tensor_inputs(self) -> int:
        return 2 + 2 * len(self.decays) + len(self.loss_decays) + 1 + len(self.timescales)

    def init(self, key: jax.Array) -> dict[str, Any]:
        k_mlp, k_x, k_h, k_out = jax.random.split(key, 4)
        n_in, h = self.n_tensor_inputs, self.lstm_size
        b = jnp.zeros((4 * h,), jnp.float32).at[h:2 * h].set(1.0)  # forget gate +1
        return {
            "mlp": self._init_mlp(k_mlp, self.n_features + self.cond_size),
            "lstm": {"wx": jax.random.normal(k_x, (n_in, 4 * h), jnp.float32) / math.sqrt(n_in),
                     "wh": jax.random.normal(k_h, (h, 4 * h), jnp.float32) / math.sqrt(h),
                     "b": b},
            "out": _mlp_init(k_out, (h, self.cond_size))[0],
        }

    def _tensor_stats(self, g, m, v, p):
        log_rms = lambda x, axis=None: 0.1 * jnp.log(
            jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32)), axis=axis)) + 1e-12)
        axes = tuple(range(jnp.ndim(p)))
        return jnp.concatenate([
            jnp.stack([log_rms(g), log_rms(p)]),
            log_rms(m, axes),
            jnp.mean(jnp.abs(m * jax.lax.rsqrt(v + _RSQRT_EPS)), axis=axes),
        ])

    def _loss_features(self, loss, rnn, first):
        ema = jnp.where(first, loss, rnn.loss_ema)
        loss0 = jnp.where(first, loss, rnn.loss0)
        rel = jnp.tanh((loss - ema) / (jnp.abs(ema) + 1e-8))
        since = jnp.tanh(jnp.log(jnp.abs(loss) + 1e-8) - jnp.log(jnp.abs(loss0) + 1e-8))
        d = jnp.asarray(self.loss_decays, jnp.float32)
        new = rnn._replace(loss_ema=d * ema + (1 - d) * loss, loss0=loss0)
        return jnp.concatenate([rel, since[None]]), new

    def _lstm(self, w, x, h, c):
        z = x @ w["wx"] + h @ w["wh"] + w["b"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def optax(self, meta_params: dict[str, Any]) -> optax.GradientTransformationExtraArgs:
        def init_fn(params):
            z = _zeros_moments(params, self.decays)
            n = len(jax.tree.leaves(params))
            zh = jnp.zeros((n, self.lstm_size), jnp.float32)
            rnn = _RNNState(zh, zh, jnp.zeros((len(self.loss_decays),), jnp.float32),
                            jnp.zeros((), jnp.float32))
            return LOptState(jnp.zeros((), jnp.int32), z, z, rnn)

        def update_fn(updates, state, params=None, *, value=None, **extra_args):
            del extra_args
            _need_params(params, "RNNMLPLOpt")
            if value is None:
                raise ValueError("RNNMLPLOpt.update: the rule reads the training loss; "
                                 "pass it as optax's extra argument value: "
                                 "update(grads, state, params, value=loss)")
            loss = jnp.nan_to_num(jnp.asarray(value, jnp.float32), nan=1e6,
                                  posinf=1e6, neginf=-1e6)
            m, v = _moments(state, updates, self.decays)
            emb = step_embedding(state.count, self.timescales)
            loss_feats, rnn = self._loss_features(loss, state.rnn, state.count == 0)
            leaves_p, treedef = jax.tree.flatten(params)
            leaves_g, leaves_m, leaves_v = (treedef.flatten_up_to(t) for t in (updates, m, v))
            stats = jnp.stack([self._tensor_stats(g, mm, vv, p) for p, g, mm, vv in
                               zip(leaves_p, leaves_g, leaves_m, leaves_v)])
            n = stats.shape[0]
            x = jnp.concatenate([stats, jnp.broadcast_to(loss_feats, (n, loss_feats.shape[0])),
                                 jnp.broadcast_to(emb, (n, emb.shape[0]))], axis=-1)
            h, c = self._lstm(meta_params["lstm"], x, rnn.h, rnn.c)
            cond = h @ meta_params["out"]["w"] + meta_params["out"]["b"]
            steps = [self._tensor_step(meta_params["mlp"], p, g, mm, vv, emb, cond[i])
                     for i, (p, g, mm, vv) in
                     enumerate(zip(leaves_p, leaves_g, leaves_m, leaves_v))]
            new = LOptState(state.count + 1, m, v, rnn._replace(h=h, c=c))
            return jax.tree.unflatten(treedef, steps), new

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------- LearnableAdam


class LearnableAdam(eqx.Module):
    r"""Adam with meta-learned hyper-parameters:

        m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps),

    meta-parameters {log lr, log(1 - b1), log(1 - b2), log eps} (so lr and eps stay
    positive and b1, b2 below 1). The fields are the initial values; there,
    `optax(init(key))` is `optax.adam(learning_rate, b1, b2, eps)`. Ignores the loss.
    """

    learning_rate: float = eqx.field(default=1e-3, static=True)
    b1: float = eqx.field(default=0.9, static=True)
    b2: float = eqx.field(default=0.999, static=True)
    eps: float = eqx.field(default=1e-8, static=True)

    def __check_init__(self):
        if not (self.learning_rate > 0 and self.eps > 0 and 0 <= self.b1 < 1
                and 0 <= self.b2 < 1):
            raise ValueError("LearnableAdam needs learning_rate > 0, eps > 0 and "
                             "0 <= b1, b2 < 1")

    def init(self, key: jax.Array | None = None) -> dict[str, jax.Array]:
        del key
        f = lambda x: jnp.asarray(x, jnp.float32)
        return {"log_lr": f(math.log(self.learning_rate)),
                "log1m_b1": f(math.log1p(-self.b1)), "log1m_b2": f(math.log1p(-self.b2)),
                "log_eps": f(math.log(self.eps))}

    def optax(self, meta_params: dict[str, jax.Array]
              ) -> optax.GradientTransformationExtraArgs:
        lr = jnp.exp(meta_params["log_lr"])
        b1 = 1 - jnp.exp(meta_params["log1m_b1"])
        b2 = 1 - jnp.exp(meta_params["log1m_b2"])
        eps = jnp.exp(meta_params["log_eps"])
        return _adam(lr, b1, b2, eps)


def _adam(lr, b1, b2, eps) -> optax.GradientTransformationExtraArgs:
    """optax's Adam; its update runs under standard dtype promotion because optax raises
    b1 to its int32 step count, which strict promotion rejects."""
    adam = optax.chain(optax.scale_by_adam(b1, b2, eps), optax.scale(-lr))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        with jax.numpy_dtype_promotion("standard"):
            return adam.update(updates, state, params)

    return optax.GradientTransformationExtraArgs(adam.init, update_fn)


LOPTS = {"adam": LearnableAdam, "mlp": MLPLOpt, "rnn": RNNMLPLOpt}
