r"""`CLAPP`: contrastive, local and predictive plasticity.

Illing, Ventura, Bellec and Gerstner 2021, "Local plasticity rules can learn deep
representations using self-supervised contrastive predictions" (NeurIPS).

Each layer l of a ReLU network has encoder weights W_l (n_post, n_pre), a bias b_l and
a prediction matrix P_l = W_pred_l (n_post, n_post). The features are

    h_0(x) = x,    h_l(x) = relu(a_l(x)),    a_l(x) = W_l h_{l-1}(x) + b_l,

and the input of every layer is treated as a constant (stop-gradient): no learning
signal crosses layers. For a context x_t and a sample x' (the true future / a
positive view, y = +1, or a negative, y = -1) layer l scores

    c = h_l(x_t),    z = h_l(x'),    s = z^T P_l c,

and pays the layer-local hinge loss

    L_l = max(0, m - y s)          (m = `margin`, 1 in the paper).

The CLAPP update of (W_l, b_l, P_l) is -lr times the gradient of L_l with respect to
that layer's own parameters only. Writing u = h_{l-1} for the layer's input,
d = relu'(a) = 1[a > 0] for the postsynaptic gate, and

    gamma = 1[m - y s > 0]         (the hinge is active: the paper's "gating"),

the update is a gated, modulated Hebbian rule (the paper's CLAPP rule, with both the
sample and the context (retrograde) terms, i.e. the exact local gradient):

    dP = lr * gamma * y *  z c^T
    dW = lr * gamma * y * [ ((P c) * d_z) u_z^T  +  ((P^T z) * d_c) u_c^T ]
    db = lr * gamma * y * [  (P c) * d_z         +   (P^T z) * d_c        ]

where * is the elementwise product and u_z, u_c (d_z, d_c) are the layer's input
(gate) for the sample and the context. It is exactly zero when the hinge is inactive.
Each factor is available at the synapse: pre-synaptic activity u, post-synaptic gate
d, a dendritic prediction P c (or retrograde P^T z) and one broadcast scalar gamma y.

Here every context comes with one positive and one negative sample, and a batch of B
contexts averages: L_l = (1/B) sum_b [max(0, m - s_pos_b) + max(0, m + s_neg_b)], so
the update is the batch mean of the per-pair updates above, summed over the positive
(y = +1) and the negative (y = -1) pair. (The paper draws y at random per time step;
presenting both pairs is the same rule in expectation, up to a factor of 2.)

    rule = CLAPP(sizes=(64, 32), lr=0.01)
    params = rule.init(jax.random.key(0))             # tuple of CLAPPLayer
    params, metrics = rule.update(params, x_ctx, x_pos, x_neg)   # (B, 64) each
    feats = rule.features(params, x)                  # tuple: h_1(x), ..., h_L(x)
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float


class CLAPPLayer(eqx.Module):
    """Parameters of one CLAPP layer: h = relu(w @ u + b); score s = z^T w_pred c."""

    w: Float[Array, "n_post n_pre"]
    b: Float[Array, " n_post"]
    w_pred: Float[Array, "n_post n_post"]


class CLAPPMetrics(eqx.Module):
    """What `CLAPP.update` reports, one entry per layer (shape (n_layers,)).

    - `loss`: the layer-local loss before the update (batch mean, positive plus
      negative hinge).
    - `active_pos`, `active_neg`: fraction of positive / negative pairs whose hinge
      is active (gamma = 1), i.e. that drive plasticity.
    - `score_pos`, `score_neg`: batch mean of s = z^T W_pred c for positive /
      negative samples.
    """

    loss: Float[Array, " n_layers"]
    active_pos: Float[Array, " n_layers"]
    active_neg: Float[Array, " n_layers"]
    score_pos: Float[Array, " n_layers"]
    score_neg: Float[Array, " n_layers"]


def _forward(layer: CLAPPLayer, u: Array) -> tuple[Array, Array]:
    a = u @ layer.w.T + layer.b
    return jax.nn.relu(a), (a > 0).astype(u.dtype)


def _layer_grads(layer: CLAPPLayer, u_c: Array, u_p: Array, u_n: Array, margin
                 ) -> tuple[CLAPPLayer, tuple[Array, ...]]:
    """Closed-form gradient of the batch-mean local loss of one layer (inputs fixed).

    Returns (the gradient as a CLAPPLayer, (loss, active_pos, active_neg, score_pos,
    score_neg), (h_c, h_p, h_n)); the layer's outputs are the next layer's inputs.
    """
    P = layer.w_pred
    h_c, d_c = _forward(layer, u_c)                  # (B, n)
    h_p, d_p = _forward(layer, u_p)
    h_n, d_n = _forward(layer, u_n)
    pc = h_c @ P.T                                   # (P c)_b
    s_p = jnp.sum(h_p * pc, axis=-1)                 # (B,)
    s_n = jnp.sum(h_n * pc, axis=-1)
    m_p, m_n = margin - s_p, margin + s_n            # y = +1, y = -1
    g_p = (m_p > 0).astype(pc.dtype)
    g_n = (m_n > 0).astype(pc.dtype)
    B = u_c.shape[0]
    # Modulating factor -dL/ds = gamma * y, per pair, with the 1/B of the batch mean.
    e_p, e_n = g_p / B, -g_n / B
    # Sample terms: post = (P c) * d_z, pre = u_z.
    post_p = e_p[:, None] * pc * d_p
    post_n = e_n[:, None] * pc * d_n
    # Context term: post = (P^T z) * d_c, with z summed over the two pairs.
    z_mod = e_p[:, None] * h_p + e_n[:, None] * h_n  # sum_k gamma_k y_k z_k
    post_c = (z_mod @ P) * d_c
    dW = post_p.T @ u_p + post_n.T @ u_n + post_c.T @ u_c
    db = jnp.sum(post_p + post_n + post_c, axis=0)
    dP = z_mod.T @ h_c
    # The loss's gradient is minus the update direction.
    grad = CLAPPLayer(w=-dW, b=-db, w_pred=-dP)
    loss = jnp.mean(jnp.where(m_p > 0, m_p, 0) + jnp.where(m_n > 0, m_n, 0))
    stats = (loss, jnp.mean(g_p), jnp.mean(g_n), jnp.mean(s_p), jnp.mean(s_n))
    return grad, stats, (h_c, h_p, h_n)


class CLAPP(eqx.Module):
    r"""The CLAPP rule for a stack of dense ReLU layers (Illing et al. 2021).

    Fields (meta-parameters):

    - `sizes`: (n_in, n_1, ..., n_L), the input size and each layer's width (static).
    - `lr`: the plasticity rate; the update is -lr * the local gradient.
    - `margin`: the hinge margin m (1 in the paper).
    - `init_scale`: encoder weights start ~ N(0, init_scale^2 * 2 / n_pre) (He), biases 0.
    - `pred_init_scale`: W_pred starts ~ N(0, pred_init_scale^2 / n_post).

    Inputs are batches: `x` of shape (B, n_in). Use `jax.vmap` for more batch axes
    (e.g. several independent networks and data streams).

    Per layer, with u its (stop-gradient) input, c / z the context / sample
    features, gamma = 1[m - y z^T P c > 0] and d = 1[a > 0]:

        dW_pred = lr gamma y z c^T
        dW      = lr gamma y [((P c) * d_z) u_z^T + ((P^T z) * d_c) u_c^T]
        db      = lr gamma y [ (P c) * d_z        +  (P^T z) * d_c       ]

    averaged over the batch and summed over the positive and negative pair.
    """

    sizes: tuple[int, ...] = eqx.field(static=True)
    lr: float | Array = 1e-2
    margin: float | Array = 1.0
    init_scale: float = eqx.field(static=True, default=1.0)
    pred_init_scale: float = eqx.field(static=True, default=0.1)

    def __check_init__(self):
        if len(self.sizes) < 2 or any(int(n) < 1 for n in self.sizes):
            raise ValueError(f"CLAPP needs sizes=(n_in, n_1, ...) with every size >= 1, "
                             f"got {self.sizes}")

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def init(self, key: Array, dtype: DTypeLike = jnp.float32) -> tuple[CLAPPLayer, ...]:
        """Random parameters: a tuple of one `CLAPPLayer` per layer."""
        layers = []
        for k, (n_pre, n_post) in zip(jax.random.split(key, self.n_layers),
                                      zip(self.sizes[:-1], self.sizes[1:])):
            kw, kp = jax.random.split(k)
            w = jax.random.normal(kw, (n_post, n_pre), dtype) * (
                self.init_scale * math.sqrt(2.0 / n_pre))
            w_pred = jax.random.normal(kp, (n_post, n_post), dtype) * (
                self.pred_init_scale / math.sqrt(n_post))
            layers.append(CLAPPLayer(w=w, b=jnp.zeros((n_post,), dtype), w_pred=w_pred))
        return tuple(layers)

    def features(self, params: tuple[CLAPPLayer, ...], x: Float[ArrayLike, "B n_in"]
                 ) -> tuple[Array, ...]:
        """h_1(x), ..., h_L(x): every layer's features, each (B, n_l)."""
        h, out = jnp.asarray(x), []
        for layer in params:
            h, _ = _forward(layer, h)
            out.append(h)
        return tuple(out)

    def local_losses(self, params: tuple[CLAPPLayer, ...],
                     x_context: Float[ArrayLike, "B n_in"],
                     x_positive: Float[ArrayLike, "B n_in"],
                     x_negative: Float[ArrayLike, "B n_in"]) -> Float[Array, " n_layers"]:
        r"""The layer-local losses L_l, shape (n_layers,), written as autodiff sees them.

        L_l = mean_b [max(0, m - z_pos^T P_l c) + max(0, m + z_neg^T P_l c)], with
        every layer's input behind `jax.lax.stop_gradient`, so that
        `jax.grad(lambda p: rule.local_losses(p, ...).sum())` is the local gradient
        of each layer (what `update` computes in closed form).
        """
        hs = [jnp.asarray(x_context), jnp.asarray(x_positive), jnp.asarray(x_negative)]
        losses = []
        for layer in params:
            hs = [jax.nn.relu(jax.lax.stop_gradient(u) @ layer.w.T + layer.b) for u in hs]
            h_c, h_p, h_n = hs
            pc = h_c @ layer.w_pred.T
            m_p = self.margin - jnp.sum(h_p * pc, axis=-1)
            m_n = self.margin + jnp.sum(h_n * pc, axis=-1)
            # where(m > 0, m, 0), not maximum: its gradient at the kink is 0, as gamma.
            losses.append(jnp.mean(jnp.where(m_p > 0, m_p, 0) + jnp.where(m_n > 0, m_n, 0)))
        return jnp.stack(losses)

    def local_grads(self, params: tuple[CLAPPLayer, ...],
                    x_context: Float[ArrayLike, "B n_in"],
                    x_positive: Float[ArrayLike, "B n_in"],
                    x_negative: Float[ArrayLike, "B n_in"]
                    ) -> tuple[tuple[CLAPPLayer, ...], CLAPPMetrics]:
        """The gradient of each layer's local loss with respect to its own parameters,
        in closed form (the Hebbian factors of the class docstring), and the metrics.

        Feed it to an optax optimizer for an adaptive-rate variant of the rule;
        `update` is plain CLAPP: params - lr * local_grads.
        """
        u_c, u_p, u_n = (jnp.asarray(x) for x in (x_context, x_positive, x_negative))
        grads, stats = [], []
        for layer in params:
            g, s, (u_c, u_p, u_n) = _layer_grads(layer, u_c, u_p, u_n, self.margin)
            grads.append(g)
            stats.append(s)
        metrics = CLAPPMetrics(*(jnp.stack(col) for col in zip(*stats)))
        return tuple(grads), metrics

    def update(self, params: tuple[CLAPPLayer, ...],
               x_context: Float[ArrayLike, "B n_in"],
               x_positive: Float[ArrayLike, "B n_in"],
               x_negative: Float[ArrayLike, "B n_in"]
               ) -> tuple[tuple[CLAPPLayer, ...], CLAPPMetrics]:
        """One CLAPP step on a batch: (params + delta, metrics), delta = -lr * grad."""
        grads, metrics = self.local_grads(params, x_context, x_positive, x_negative)
        new = jax.tree.map(lambda p, g: p - self.lr * g, params, grads)
        return new, metrics
