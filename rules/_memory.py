"""H-Mem: a Hebbian associative memory with saturation and decay.

Limbacher and Legenstein (2020), "H-Mem: Harnessing synaptic plasticity with
Hebbian Memory Networks", NeurIPS 33.

The memory is a matrix ``W`` of shape ``(d_key, d_value)``. Storing the association
of a key ``k`` with a value ``v`` is one Hebbian step (the paper's Eq. 2, written
here for the transposed matrix, so that rows are indexed by key units ``i`` and
columns by value units ``j``):

    dW_ij = gamma_plus * (w_max - W_ij) * k_i * v_j  -  gamma_minus * W_ij * k_i**2
    W    <- W + dW

i.e. ``dW = gamma_plus * (w_max - W) * outer(k, v) - gamma_minus * W * outer(k**2, 1)``
with elementwise products. The first term is Hebbian potentiation that saturates
at ``w_max``; the second is a decay of the synapses of active key units, which
makes the memory a palimpsest (old associations fade when their key units are
reused). Recall with a query ``q`` is the linear read-out

    v_hat = W^T q     (the paper's ``v = W^assoc k``)

In the paper the keys and queries are rectified (non-negative) activations and
``gamma_plus``, ``gamma_minus`` and ``w_max`` are trained by backpropagation
through the writes; here they are the fields of an `equinox.Module`, so
``jax.grad`` of any loss with respect to the module gives their gradients.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float

__all__ = ["HebbianMemory"]


def _scalar(x: ArrayLike) -> Array:
    if isinstance(x, (int, float)):  # a strong (not weakly typed) default float
        return jnp.asarray(x, dtype=jnp.result_type(float))
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


class HebbianMemory(eqx.Module):
    """The H-Mem write/read rule (Limbacher and Legenstein, 2020).

    Write (one shot per association, elementwise products):

        W <- W + gamma_plus * (w_max - W) * (k v^T) - gamma_minus * W * (k**2 1^T)

    Read: ``v_hat = W^T q``.

    Args:
        d_key: number of key units (rows of ``W``); static.
        d_value: number of value units (columns of ``W``); static.
        gamma_plus: potentiation rate (the paper's gamma+).
        gamma_minus: decay rate of the synapses of active key units (gamma-).
        w_max: saturation level of the weights.

    The three rates are array fields and so meta-learnable: differentiate a loss
    with respect to the module (``jax.grad(loss)(memory)``). The defaults are the
    values picked by the grid search of ``benchmarks/hebbian_memory.py`` (8-hot keys
    and values, d = 128, all pairs recalled; no decay is best when nothing should be
    forgotten); they are not the paper's, which were learned per task.
    """

    d_key: int = eqx.field(static=True)
    d_value: int = eqx.field(static=True)
    gamma_plus: Float[Array, ""] = eqx.field(converter=_scalar, default=0.7)
    gamma_minus: Float[Array, ""] = eqx.field(converter=_scalar, default=0.0)
    w_max: Float[Array, ""] = eqx.field(converter=_scalar, default=1.0)

    def init(self, key: Array | None = None,
             dtype: DTypeLike | None = None) -> Float[Array, "d_key d_value"]:
        """The empty memory: zeros of shape ``(d_key, d_value)``.

        ``key`` is accepted (and unused) so that every rule's ``init`` reads alike.
        """
        del key
        dtype = dtype or jnp.result_type(self.gamma_plus, self.gamma_minus, self.w_max)
        return jnp.zeros((self.d_key, self.d_value), dtype)

    def write(self, W: Float[Array, "d_key d_value"], k: Float[Array, " d_key"],
              v: Float[Array, " d_value"]) -> Float[Array, "d_key d_value"]:
        """Store one association ``k -> v`` (one Hebbian step, Eq. 2 of the paper)."""
        _check(W, k, v, self.d_key, self.d_value)
        hebb = jnp.outer(k, v)
        decay = (k * k)[:, None]
        potentiation = self.gamma_plus * (self.w_max - W) * hebb
        return W + potentiation - self.gamma_minus * W * decay

    def write_many(self, W: Float[Array, "d_key d_value"], keys: Float[Array, "n d_key"],
                   values: Float[Array, "n d_value"]) -> Float[Array, "d_key d_value"]:
        """Store ``n`` associations one after the other, one shot each (``lax.scan``).

        Equal to ``for k, v in zip(keys, values): W = self.write(W, k, v)``.
        """
        if keys.ndim != 2 or values.ndim != 2 or keys.shape[0] != values.shape[0]:
            raise ValueError(f"keys (n, d_key) and values (n, d_value) must be "
                             f"stacked along one leading axis; got {keys.shape} and "
                             f"{values.shape}")

        def step(W, kv):
            return self.write(W, *kv), None

        W, _ = jax.lax.scan(step, W, (keys, values))
        return W

    def read(self, W: Float[Array, "d_key d_value"],
             q: Float[Array, "*batch d_key"]) -> Float[Array, "*batch d_value"]:
        """Recall: ``v_hat = W^T q`` (leading batch axes of ``q`` are kept)."""
        if q.shape[-1:] != (self.d_key,) or W.shape != (self.d_key, self.d_value):
            raise ValueError(f"expected W {(self.d_key, self.d_value)} and q (..., "
                             f"{self.d_key}); got W {W.shape} and q {q.shape}")
        return q @ W


def _check(W, k, v, d_key, d_value):
    if W.shape != (d_key, d_value) or k.shape != (d_key,) or v.shape != (d_value,):
        raise ValueError(f"expected W {(d_key, d_value)}, k ({d_key},), v ({d_value},); "
                         f"got W {W.shape}, k {k.shape}, v {v.shape} (vmap to batch "
                         f"memories; write_many for sequences)")
