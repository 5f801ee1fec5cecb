r"""Plasticity rules: `delta_w = rule(coefficients, pre, post, w)`, and plastic networks.

Convention: a weight matrix `w` has shape (n_post, n_pre) and maps a pre-synaptic
activity vector `pre` (n_pre,) to post-synaptic activity `post = act(w @ pre)`
(n_post,). A rule returns the weight change of the same shape as `w`; it is a pure
function of its (meta-learnable) `coefficients`, so the slow outer loop
differentiates through, or evolves, the coefficients while the weights are fast state
changed by the rule during a lifetime (`PlasticMLP`, run with `innerloop.unroll`).

- `ABCD(variant, sharing)`: the generalised Hebbian family of Najarro and Risi
  (2020), dw_ij = eta (A o_i o_j + B o_i + C o_j + D) with o_i the pre- and o_j the
  post-synaptic activity; coefficients per synapse (the paper), per post- or
  pre-synaptic neuron, per layer, or one global set.
- `Polynomial(degree)`: dw = sum_{a,b,c <= degree} theta_abc x^a y^b w^c (Confavreux
  et al. 2020; 27 coefficients for degree 2), which contains Oja's rule.
- `oja`: Oja's rule dw = eta (y x - y^2 w) (Oja 1982).
- `SparseHebbian(top_percent)`: HebbNet's update (Gupta et al. 2021), a Hebbian term
  minus its running mean, applied only where |dw| is in the top p percent.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from innerloop.implicit import AbstractGradient, unroll

__all__ = ["ABCD", "Polynomial", "oja", "SparseHebbian", "PlasticMLP", "VARIANTS",
           "SHARING"]

# The terms of each variant of Najarro and Risi (2020), in coefficient order.
VARIANTS: dict[str, tuple[str, ...]] = {
    "A": ("A",),
    "AD": ("A", "D"),
    "AD_lr": ("A", "D", "eta"),
    "ABC": ("A", "B", "C"),
    "ABC_lr": ("A", "B", "C", "eta"),
    "ABCD": ("A", "B", "C", "D"),
    "ABCD_lr": ("A", "B", "C", "D", "eta"),
}

# How far coefficients are shared: the shape of one term's coefficients for a
# (n_post, n_pre) layer. "global" shares one set across all layers of a network
# (`PlasticMLP`); for a single layer it is the same as "layer".
SHARING = ("synapse", "post", "pre", "layer", "global")


def _check_vector(name, x, n):
    if jnp.ndim(x) != 1 or jnp.shape(x)[0] != n:
        raise ValueError(f"`{name}` must be a vector of length {n} (w has shape "
                         f"(n_post, n_pre)); got shape {jnp.shape(x)}")


def _check_layer(pre, post, w):
    if jnp.ndim(w) != 2:
        raise ValueError(f"`w` must be a (n_post, n_pre) matrix; got shape {jnp.shape(w)}")
    _check_vector("post", post, w.shape[0])
    _check_vector("pre", pre, w.shape[1])


class ABCD(eqx.Module):
    r"""The ABCD Hebbian family (Najarro and Risi, "Meta-learning through Hebbian
    plasticity in random networks", NeurIPS 2020):

        dw_ij = eta_ij (A_ij o_i o_j + B_ij o_i + C_ij o_j + D_ij),

    with o_i the pre-synaptic and o_j the post-synaptic activity of the synapse from
    i to j (`w[j, i]` here). The variant picks the terms: "A", "AD", "ABC", "ABCD"
    use the fixed learning rate `eta`; the "_lr" variants learn eta as a coefficient
    too. `sharing` picks how many coefficient sets a layer has: one per synapse
    (n_post x n_pre, the paper), per post-synaptic neuron (n_post), per pre-synaptic
    neuron (n_pre), per layer (1) or "global" (1 for the whole network).

    `coefficients` has shape (n_terms,) + `share_shape(w.shape)`, one slice per term
    in the order of `VARIANTS[variant]`.
    """

    variant: str = "ABCD_lr"
    sharing: str = "synapse"
    eta: float = 1.0
    init_scale: float = 0.1

    def __check_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ABCD variant {self.variant!r}; choose one of "
                             f"{sorted(VARIANTS)}")
        if self.sharing not in SHARING:
            raise ValueError(f"unknown sharing {self.sharing!r}; choose one of "
                             f"{list(SHARING)}")

    @property
    def terms(self) -> tuple[str, ...]:
        return VARIANTS[self.variant]

    def share_shape(self, w_shape: tuple[int, int]) -> tuple[int, int]:
        n_post, n_pre = w_shape
        return {"synapse": (n_post, n_pre), "post": (n_post, 1), "pre": (1, n_pre),
                "layer": (1, 1), "global": (1, 1)}[self.sharing]

    def coefficient_shape(self, w_shape: tuple[int, int]) -> tuple[int, ...]:
        return (len(self.terms),) + self.share_shape(w_shape)

    def n_coefficients(self, w_shape: tuple[int, int]) -> int:
        return int(np.prod(self.coefficient_shape(w_shape)))

    def init(self, key: jax.Array, w_shape: tuple[int, int],
             dtype: DTypeLike = jnp.float32) -> jax.Array:
        """Coefficients drawn from N(0, init_scale^2); a learned eta starts at 1 +
        that noise so that the initial rule is not switched off."""
        c = self.init_scale * jax.random.normal(key, self.coefficient_shape(w_shape),
                                                dtype)
        if "eta" in self.terms:
            c = c.at[self.terms.index("eta")].add(1.0)
        return c

    def __call__(self, coefficients: jax.Array, pre: jax.Array, post: jax.Array,
                 w: jax.Array) -> jax.Array:
        _check_layer(pre, post, w)
        want = self.coefficient_shape(w.shape)
        if jnp.shape(coefficients) != want:
            raise ValueError(f"ABCD({self.variant!r}, {self.sharing!r}) coefficients for "
                             f"a layer of shape {w.shape} must have shape {want}; got "
                             f"{jnp.shape(coefficients)}")
        c = dict(zip(self.terms, coefficients))
        o_pre, o_post = pre[None, :], post[:, None]
        dw = c["A"] * (o_post * o_pre)
        if "B" in c:
            dw = dw + c["B"] * o_pre + c["C"] * o_post
        if "D" in c:
            dw = dw + c["D"]
        eta = c.get("eta", self.eta)
        return jnp.broadcast_to(eta * dw, w.shape).astype(w.dtype)


class Polynomial(eqx.Module):
    r"""Polynomial plasticity rules (Confavreux, Zenke, Agnes, Lillicrap and Vogels,
    "A meta-learning approach to (re)discover plasticity rules that carve a desired
    function into a neural network", NeurIPS 2020):

        dw_ji = sum_{a, b, c = 0}^{degree} theta_abc x_i^a y_j^b w_ji^c,

    with x the pre- and y the post-synaptic activity; (degree + 1)^3 coefficients
    (27 for degree 2), shared by every synapse. Oja's rule y x - y^2 w is
    theta_110 = 1, theta_021 = -1 (`oja_coefficients`).
    """

    degree: int = 2
    init_scale: float = 0.1

    def __check_init__(self):
        if not isinstance(self.degree, int) or self.degree < 0:
            raise ValueError(f"`degree` must be an int >= 0; got {self.degree!r}")

    @property
    def coefficient_shape(self) -> tuple[int, int, int]:
        d = self.degree + 1
        return (d, d, d)

    @property
    def n_coefficients(self) -> int:
        return (self.degree + 1) ** 3

    def init(self, key: jax.Array, dtype: DTypeLike = jnp.float32) -> jax.Array:
        return self.init_scale * jax.random.normal(key, self.coefficient_shape, dtype)

    def oja_coefficients(self, dtype: DTypeLike = jnp.float32) -> jax.Array:
        if self.degree < 2:
            raise ValueError("Oja's rule needs degree >= 2 (the y^2 w term)")
        theta = jnp.zeros(self.coefficient_shape, dtype)
        return theta.at[1, 1, 0].set(1.0).at[0, 2, 1].set(-1.0)

    def __call__(self, coefficients: jax.Array, pre: jax.Array, post: jax.Array,
                 w: jax.Array) -> jax.Array:
        _check_layer(pre, post, w)
        if jnp.shape(coefficients) != self.coefficient_shape:
            raise ValueError(f"Polynomial(degree={self.degree}) coefficients must have "
                             f"shape {self.coefficient_shape}; got "
                             f"{jnp.shape(coefficients)}")
        xs = _powers(pre, self.degree)     # (a, n_pre)
        ys = _powers(post, self.degree)    # (b, n_post)
        ws = _powers(w, self.degree)       # (c, n_post, n_pre)
        m = jnp.einsum("abc,bj,ai->cji", coefficients, ys, xs)
        return jnp.sum(m * ws, axis=0).astype(w.dtype)


def _powers(x, degree):
    """x^0, ..., x^degree stacked along a new leading axis, in x's dtype.

    x^0 is ones (its derivative is 0, also at x = 0); x^k for k >= 1 is `pow` with the
    exponent k in x's dtype: the same values as an integer exponent, whose derivative
    rule mixes int and float (an error under strict dtype promotion)."""
    x = jnp.asarray(x)
    k = jnp.arange(1, degree + 1, dtype=x.dtype).reshape((-1,) + (1,) * x.ndim)
    return jnp.concatenate([jnp.ones((1,) + x.shape, x.dtype), jnp.power(x[None], k)])


def oja(pre: jax.Array, post: jax.Array, w: jax.Array, eta: ArrayLike = 1.0) -> jax.Array:
    r"""Oja's rule (Oja, "A simplified neuron model as a principal component
    analyzer", J. Math. Biol. 1982), for each post-synaptic neuron j:

        dw_j = eta (y_j x - y_j^2 w_j).

    A linear neuron y = w . x trained with it converges to the unit-norm first
    principal component of x (for small eta)."""
    _check_layer(pre, post, w)
    return eta * (post[:, None] * pre[None, :] - (post ** 2)[:, None] * w)


class SparseHebbian(eqx.Module):
    r"""HebbNet's sparse Hebbian update (Gupta, Ambikapathi and Ramasamy, "HebbNet: a
    simplified Hebbian learning framework to do biologically plausible learning",
    ICASSP 2021):

        h = y x^T,   m <- decay m + (1 - decay) h,   dw = eta (h - m) * [|h - m| in top p%]

    Only the `top_percent` percent largest |h - m| entries of a layer change (exactly
    ceil(p/100 * size) of them, ties aside); the running mean m is the baseline that
    makes the update zero-mean. Unlike the stateless rules it carries that mean:

        dw, m = rule(eta, pre, post, w, m)

    `eta` (the coefficient) is meta-learnable; `init_state(w_shape)` gives m = 0.
    """

    top_percent: float = 10.0
    decay: float = 0.9

    def __check_init__(self):
        if not 0.0 < float(self.top_percent) <= 100.0:
            raise ValueError(f"`top_percent` must be in (0, 100]; got {self.top_percent!r}")
        if not 0.0 <= float(self.decay) < 1.0:
            raise ValueError(f"`decay` must be in [0, 1); got {self.decay!r}")

    def init(self, key: jax.Array | None = None, dtype: DTypeLike = jnp.float32) -> jax.Array:
        del key
        return jnp.asarray(1.0, dtype)

    def init_state(self, w_shape: tuple[int, int], dtype: DTypeLike = jnp.float32
                   ) -> jax.Array:
        return jnp.zeros(w_shape, dtype)

    def n_active(self, w_shape: tuple[int, int]) -> int:
        return max(1, math.ceil(self.top_percent / 100.0 * int(np.prod(w_shape))))

    def __call__(self, eta: ArrayLike, pre: jax.Array, post: jax.Array, w: jax.Array,
                 state: jax.Array) -> tuple[jax.Array, jax.Array]:
        _check_layer(pre, post, w)
        h = post[:, None] * pre[None, :]
        mean = self.decay * state + (1.0 - self.decay) * h
        centred = h - mean
        k = self.n_active(w.shape)
        kth = jax.lax.top_k(jax.lax.stop_gradient(jnp.abs(centred)).ravel(), k)[0][-1]
        mask = jnp.abs(jax.lax.stop_gradient(centred)) >= kth
        return (eta * jnp.where(mask, centred, 0.0)).astype(w.dtype), mean


# ---------------------------------------------------------------------------------
# Plastic networks


class PlasticMLP(eqx.Module):
    r"""A feed-forward network whose weights are fast state changed by a plasticity
    rule at every step of a lifetime, and whose rule coefficients (and, with
    `learn_init=True`, initial weights) are the slow meta-parameters.

    One step on input x_0:  o_{l+1} = act_l(W_l o_l)  (no biases, as in Najarro and
    Risi 2020), then  W_l <- clip(W_l + rule(theta_l, o_l, o_{l+1}, W_l)).

    - `sizes`: layer widths (n_in, hidden..., n_out).
    - `rule`: an `ABCD` (any sharing; "global" shares one set across layers) or a
      `Polynomial` (one set for the network).
    - `activation`, `output_activation`: the nonlinearity of hidden and last layers.
    - `weight_bound`: weights are clipped to [-bound, bound] after each update (None:
      no clipping); keeps long lifetimes of an unconstrained rule finite.
    - `init_scale`: random weights ~ U(-init_scale, init_scale), drawn anew for each
      lifetime by `init_weights(key)` (or learned, `learn_init=True`).

    `init(key)` returns the meta-parameters {"rule": ..., ["w0": ...]}; `lifetime`
    runs it through `innerloop.unroll`, so any gradient mode or ES/PES applies.
    """

    sizes: tuple[int, ...]
    rule: Any
    activation: Callable = jnp.tanh
    output_activation: Callable = jnp.tanh
    weight_bound: float | None = None
    init_scale: float = 0.1
    learn_init: bool = False

    def __check_init__(self):
        if len(self.sizes) < 2 or any(int(s) < 1 for s in self.sizes):
            raise ValueError(f"`sizes` must list >= 2 positive layer widths; got "
                             f"{self.sizes!r}")
        if not isinstance(self.rule, (ABCD, Polynomial)):
            raise TypeError(f"`rule` must be an ABCD or a Polynomial rule; got "
                            f"{type(self.rule).__name__}")

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(int(b), int(a)) for a, b in zip(self.sizes[:-1], self.sizes[1:])]

    @property
    def _shared(self) -> bool:
        return isinstance(self.rule, Polynomial) or self.rule.sharing == "global"

    def n_coefficients(self) -> int:
        """The number of rule coefficients (meta-parameters of the rule)."""
        if isinstance(self.rule, Polynomial):
            return self.rule.n_coefficients
        if self._shared:
            return len(self.rule.terms)
        return sum(self.rule.n_coefficients(s) for s in self.shapes)

    def init_weights(self, key: jax.Array, dtype: DTypeLike = jnp.float32) -> list[jax.Array]:
        keys = jax.random.split(key, len(self.shapes))
        return [jax.random.uniform(k, s, dtype, -self.init_scale, self.init_scale)
                for k, s in zip(keys, self.shapes)]

    def init(self, key: jax.Array, dtype: DTypeLike = jnp.float32) -> dict[str, Any]:
        k_rule, k_w = jax.random.split(key)
        if isinstance(self.rule, Polynomial):
            rule = self.rule.init(k_rule, dtype)
        elif self._shared:
            rule = self.rule.init(k_rule, (1, 1), dtype)
        else:
            keys = jax.random.split(k_rule, len(self.shapes))
            rule = [self.rule.init(k, s, dtype) for k, s in zip(keys, self.shapes)]
        meta = {"rule": rule}
        if self.learn_init:
            meta["w0"] = self.init_weights(k_w, dtype)
        return meta

    def _coefficients(self, meta, layer):
        return meta["rule"] if self._shared else meta["rule"][layer]

    def forward(self, weights: list[jax.Array], x: jax.Array) -> list[jax.Array]:
        """Activities [x, o_1, ..., o_L] of one input vector."""
        acts = [x]
        for i, w in enumerate(weights):
            act = self.output_activation if i == len(weights) - 1 else self.activation
            acts.append(act(w @ acts[-1]))
        return acts

    def update(self, meta: dict[str, Any], weights: list[jax.Array],
               acts: list[jax.Array]) -> list[jax.Array]:
        """Apply the rule to every layer, given the activities of `forward`."""
        new = []
        for i, w in enumerate(weights):
            c = self._coefficients(meta, i)
            w = w + self.rule(c, acts[i], acts[i + 1], w)
            if self.weight_bound is not None:
                w = jnp.clip(w, -self.weight_bound, self.weight_bound)
            new.append(w)
        return new

    def step(self, meta: dict[str, Any], weights: list[jax.Array],
             x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        """One plastic step: (output, new weights)."""
        acts = self.forward(weights, x)
        return acts[-1], self.update(meta, weights, acts)

    def initial_weights(self, meta: dict[str, Any], key: jax.Array) -> list[jax.Array]:
        """The lifetime's starting weights: learned (`learn_init`) or random."""
        if self.learn_init:
            return meta["w0"]
        return self.init_weights(key, jnp.result_type(*jax.tree.leaves(meta["rule"])))

    def lifetime(self, meta: dict[str, Any], key: jax.Array, inputs: jax.Array, *,
                 grad: AbstractGradient | None = None) -> tuple[list[jax.Array], jax.Array]:
        """Run a lifetime over `inputs` (T, n_in) from the initial weights, the rule
        changing the weights after every input, through `innerloop.unroll` (so `grad`
        is any of its modes). Returns (final weights, outputs (T, n_out))."""
        def step(weights, meta, t):
            out, weights = self.step(meta, weights, inputs[t])
            return weights, out

        return unroll(step, self.initial_weights(meta, key), meta, inputs.shape[0],
                      grad=grad, outputs=True)
