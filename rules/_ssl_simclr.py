r"""`SimCLR`: contrastive learning with in-batch negatives (Chen et al., ICML 2020).

Two random views of a batch of B examples give 2B l2-normalised projections
u_1..u_2B; for the pair (i, j(i)) of views of one example, the NT-Xent loss is

    l_i = -log( exp(u_i . u_j(i) / T) / sum_{k != i} exp(u_i . u_k / T) ),

averaged over the 2B views (T = `temperature`): the other 2B - 2 views are the
negatives. The baseline against which BYOL (no negatives) is measured.

    simclr = SimCLR(optimizer=optax.adam(1e-3), augment=Augment())
    state = simclr.init(SSLNetwork(encoder, projector), x)
    state, metrics = jax.jit(simclr.step)(state, key, x)
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, Int

from innerloop.rules._byol import SSLNetwork, _apply, _l2_normalise, _views
from innerloop.rules._ssl_augment import Augment
from innerloop.rules._targets import CollapseStats, collapse_stats


def nt_xent(z1: Float[ArrayLike, "B d"], z2: Float[ArrayLike, "B d"],
            temperature: float = 0.5) -> Array:
    """The NT-Xent loss of two batches of views (row b of z1 and of z2: one example)."""
    z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent: the two views must be (B, d) batches of one shape, got "
                         f"{z1.shape} and {z2.shape}")
    b = z1.shape[0]
    u = _l2_normalise(jnp.concatenate([z1, z2]))
    logits = u @ u.T / jnp.asarray(temperature, u.dtype)
    logits = jnp.where(jnp.eye(2 * b, dtype=bool), -jnp.inf, logits)
    partner = jnp.concatenate([jnp.arange(b, 2 * b), jnp.arange(b)])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, partner))


class SimCLRState(eqx.Module):
    network: SSLNetwork
    opt_state: Any
    step: Int[Array, ""]


class SimCLRMetrics(eqx.Module):
    """The loss (before the update) and the collapse monitors of the projections and
    representations of the first view."""

    loss: Float[Array, ""]
    projection: CollapseStats
    representation: CollapseStats


class SimCLR(eqx.Module):
    """SimCLR's training step: `optimizer` (optax), `augment` ((key, x) -> view),
    `temperature` T of NT-Xent."""

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    augment: Callable[[Array, Array], Array] = eqx.field(static=True, default=Augment())
    temperature: float = eqx.field(static=True, default=0.5)

    def __check_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"SimCLR: temperature must be > 0, got {self.temperature}")

    def init(self, network: SSLNetwork, x: ArrayLike) -> SimCLRState:
        """The state of `network` (its predictor, if any, is dropped); x: an example
        batch, for the shapes."""
        network = SSLNetwork(network.encoder, network.projector)
        eqx.filter_eval_shape(network.project, x)
        return SimCLRState(network, self.optimizer.init(eqx.filter(network,
                                                                   eqx.is_inexact_array)),
                           jnp.zeros((), jnp.int32))

    def loss(self, network: SSLNetwork, x1: ArrayLike, x2: ArrayLike
             ) -> tuple[Array, tuple[Array, Array]]:
        r1 = network.encoder(x1)
        z1, z2 = network.projector(r1), network.project(x2)
        return nt_xent(z1, z2, self.temperature), (z1, r1)

    def step(self, state: SimCLRState, key: Array, x: ArrayLike
             ) -> tuple[SimCLRState, SimCLRMetrics]:
        """One SimCLR step on the batch x. Pure: `jit` it, `vmap` it over seeds."""
        x1, x2 = _views(self.augment, key, jnp.asarray(x), "SimCLR.step")
        (loss, (z1, r1)), grads = eqx.filter_value_and_grad(self.loss, has_aux=True)(
            state.network, x1, x2)
        network, opt_state = _apply(self.optimizer, state.network, grads, state.opt_state)
        return SimCLRState(network, opt_state, state.step + 1), SimCLRMetrics(
            loss, collapse_stats(z1), collapse_stats(r1))

    def features(self, state: SimCLRState, x: ArrayLike) -> Array:
        return state.network.encoder(jnp.asarray(x))
