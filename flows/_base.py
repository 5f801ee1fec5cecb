"""The transform protocol shared by every layer of a flow, and the checks they share.

A transform maps one example (no batch axis; batches by `jax.vmap`):

    forward(x, key) -> (z, contribution)        inverse(z, key) -> x

so that log p(x) = log p(z) + contribution for bijections and inference surjections
(exact), and log p(x) >= E[log p(z) + contribution] for generative surjections and
stochastic layers (an ELBO term). Nielsen et al. 2020, "SurVAE Flows".
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp


class Kind:
    """What a transform is, in the SurVAE taxonomy (`AbstractTransform.kind`)."""

    #: deterministic both ways; the contribution is log |det dz/dx|.
    bijective = "bijective"
    #: deterministic x -> z (many-to-one), stochastic z -> x; the contribution is
    #: log p(x | z), exact.
    inference_surjection = "inference surjection"
    #: stochastic x -> z, deterministic z -> x (many-to-one); the contribution is
    #: log p(x | z) - log q(z | x), a lower bound in expectation.
    generative_surjection = "generative surjection"
    #: stochastic both ways (a VAE layer); the contribution is an ELBO term.
    stochastic = "stochastic"


class AbstractTransform(eqx.Module):
    """A layer of a `Flow`: per example, `forward(x, key) -> (z, contribution)` and
    `inverse(z, key) -> x`; `kind` is one of `Kind`'s values. Deterministic
    directions ignore `key` (it may be None)."""

    kind: ClassVar[str] = Kind.bijective

    @abc.abstractmethod
    def forward(self, x: jax.Array, key: jax.Array | None = None
                ) -> tuple[jax.Array, jax.Array]:
        ...

    @abc.abstractmethod
    def inverse(self, z: jax.Array, key: jax.Array | None = None) -> jax.Array:
        ...


def name_of(t) -> str:
    return type(t).__name__


def check_finite(t, x: jax.Array, what: str = "input") -> jax.Array:
    """x, raising (also under jit) "<Transform>: input contains NaN or inf" when it does."""
    if not isinstance(x, jax.core.Tracer):
        if not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError(f"{name_of(t)}: the {what} contains NaN or inf; pass finite "
                             "values (one example, no batch axis; vmap over batches)")
        return x
    return eqx.error_if(x, ~jnp.all(jnp.isfinite(x)),
                        f"{name_of(t)}: the {what} contains NaN or inf; pass finite values")


def need_key(t, key, direction: str):
    if key is None:
        raise ValueError(f"{name_of(t)}: the {direction} direction is stochastic; pass a "
                         "PRNG key (jax.random.key(seed))")
    return key


def normal_log_prob(x: jax.Array, mean=0.0, log_std=0.0) -> jax.Array:
    """Sum over all entries of log N(x; mean, exp(log_std)^2)."""
    log_std = jnp.asarray(log_std, x.dtype)
    mean = jnp.asarray(mean, x.dtype)
    half_log_2pi = jnp.asarray(0.5 * math.log(2 * math.pi), x.dtype)
    return jnp.sum(-0.5 * ((x - mean) * jnp.exp(-log_std)) ** 2 - log_std - half_log_2pi)


def mlp(in_size: int, out_size: int, hidden: int, depth: int, key, *, zero_last=True,
        dtype=None):
    """An MLP conditioner; its last layer starts at zero so that a coupling starts as
    the identity."""
    net = eqx.nn.MLP(in_size, out_size, hidden, depth, activation=jax.nn.tanh, key=key,
                     dtype=dtype)
    if zero_last:
        last = net.layers[-1]
        net = eqx.tree_at(lambda n: (n.layers[-1].weight, n.layers[-1].bias), net,
                          (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
    return net
