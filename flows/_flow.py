"""`Flow`: a base distribution and a stack of transforms; `fit` by maximum likelihood;
`multiscale`, a stack that squeezes and slices out half of the channels per scale."""

from __future__ import annotations

import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from innerloop.flows._base import AbstractTransform, Kind, normal_log_prob
from innerloop.flows._bijections import ActNorm, AffineCoupling, Reverse, Squeeze
from innerloop.flows._surjections import Slice


class StandardNormal(eqx.Module):
    """N(0, I) over examples of `shape`."""

    shape: tuple = eqx.field(static=True)

    def __init__(self, shape):
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)

    def log_prob(self, z: jax.Array) -> jax.Array:
        if z.shape != self.shape:
            raise ValueError(f"StandardNormal: expects a latent of shape {self.shape}, got "
                             f"{z.shape}: the transforms' output does not match the base")
        return normal_log_prob(z)

    def sample(self, key, n: int, dtype=None) -> jax.Array:
        return jax.random.normal(key, (n, *self.shape), dtype or jnp.zeros(()).dtype)


class Flow(eqx.Module):
    r"""A SurVAE flow (Nielsen et al. 2020): x = x_0 -> x_1 -> ... -> x_T = z ~ base, with

        log p(x) = log p_base(z) + sum_t contribution_t,

    exact when every transform is a bijection or an inference surjection (see `Abs` for
    when those are exact), a one-sample ELBO (a lower bound in expectation) when one is
    a generative surjection or stochastic. All methods take one example; batches by
    `jax.vmap` (`sample` draws n). Deterministic stacks need no key (`key=None`)."""

    base: StandardNormal
    transforms: tuple

    def __init__(self, base, transforms: Sequence[AbstractTransform]):
        for i, t in enumerate(transforms):
            if not isinstance(t, AbstractTransform):
                raise TypeError(f"Flow: transforms[{i}] is a {type(t).__name__}, not a "
                                "transform (AbstractTransform)")
        self.base = base
        self.transforms = tuple(transforms)

    @property
    def exact(self) -> bool:
        """True when `log_prob` is exact (no generative surjection or stochastic layer)."""
        return all(t.kind in (Kind.bijective, Kind.inference_surjection)
                   for t in self.transforms)

    def _keys(self, key):
        # Deterministic directions take key=None; a stochastic one then raises, naming
        # its transform.
        if key is None:
            return [None] * len(self.transforms)
        return list(jax.random.split(key, len(self.transforms)))

    def forward(self, x: jax.Array, key=None) -> tuple[jax.Array, jax.Array]:
        """(z, sum of the contributions) for one example."""
        total = jnp.zeros((), x.dtype if jnp.issubdtype(x.dtype, jnp.floating)
                          else jnp.zeros(()).dtype)
        for t, k in zip(self.transforms, self._keys(key)):
            x, c = t.forward(x, k)
            total = total + c
        return x, total

    def log_prob(self, x: jax.Array, key=None) -> jax.Array:
        """log p(x) of one example (exact, or a one-sample lower bound: see `exact`)."""
        z, total = self.forward(x, key)
        return total + self.base.log_prob(z)

    def encode(self, x: jax.Array, key=None) -> jax.Array:
        """The latent z of one example."""
        return self.forward(x, key)[0]

    def decode(self, z: jax.Array, key=None) -> jax.Array:
        """x from a latent z of one example (the transforms' inverses, last first)."""
        keys = self._keys(key)
        for t, k in zip(reversed(self.transforms), reversed(keys)):
            z = t.inverse(z, k)
        return z

    def sample(self, key, n: int) -> jax.Array:
        """n samples, shape (n, *example shape)."""
        kb, kt = jax.random.split(key)
        z = self.base.sample(kb, n)
        return jax.vmap(self.decode)(z, jax.random.split(kt, n))


def fit(flow: Flow, data, key, *, steps: int = 1000, batch_size: int = 128,
        learning_rate: float = 1e-3, optimizer: optax.GradientTransformation | None = None,
        progress: bool = False) -> tuple[Flow, np.ndarray]:
    """Maximum likelihood: minimise the mean negative `log_prob` over minibatches of
    `data` (examples along axis 0) with optax (Adam by default). Returns (fitted flow,
    the loss of every step). `progress`: a tqdm bar (needs tqdm)."""
    data = jnp.asarray(data)
    if data.ndim < 2:
        raise ValueError(f"fit: data must hold examples along axis 0, got shape {data.shape}")
    if not (isinstance(steps, int) and steps > 0 and isinstance(batch_size, int)
            and batch_size > 0):
        raise ValueError(f"fit: steps and batch_size must be positive integers, got "
                         f"{steps!r} and {batch_size!r}")
    optimizer = optimizer or optax.adam(learning_rate)
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    state = optimizer.init(params)
    n = data.shape[0]

    def loss(p, batch, k):
        f = eqx.combine(p, static)
        keys = jax.random.split(k, batch.shape[0])
        return -jnp.mean(jax.vmap(f.log_prob)(batch, keys))

    @jax.jit
    def step(p, s, k):
        kb, kl = jax.random.split(k)
        idx = jax.random.randint(kb, (min(batch_size, n),), 0, n)
        value, g = jax.value_and_grad(loss)(p, data[idx], kl)
        # optax's adam raises b1 to an int32 count, which strict promotion rejects.
        with jax.numpy_dtype_promotion("standard"):
            u, s = optimizer.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="fit", leave=False)
    losses = []
    for k in jax.random.split(key, steps):
        params, state, value = step(params, state, k)
        losses.append(value)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return eqx.combine(params, static), np.asarray(jax.device_get(losses))


def multiscale(shape, key, *, scales: int = 2, couplings: int = 2, hidden: int = 64,
               dtype=None) -> tuple[list[AbstractTransform], tuple]:
    """A multiscale stack for (C, H, W) examples (Dinh et al. 2017): per scale,
    `couplings` ActNorm + affine couplings (alternating halves), then Squeeze and a
    conditional `Slice` that keeps half of the channels (the other half modelled given
    the kept one). Returns (transforms, the latent's shape) for `StandardNormal`."""
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"multiscale: expects a (C, H, W) example shape, got {shape}")
    if shape[1] % 2**scales or shape[2] % 2**scales:
        raise ValueError(f"multiscale: H and W of {shape} must be divisible by 2**scales = "
                         f"{2**scales} (one Squeeze per scale)")
    out: list[AbstractTransform] = []
    keys = iter(jax.random.split(key, scales * (couplings + 1) + 1))
    for _ in range(scales):
        dim = math.prod(shape)
        for i in range(couplings):
            out += [ActNorm((shape[0], 1, 1), dtype=dtype),
                    AffineCoupling(dim, next(keys), hidden=hidden, swap=bool(i % 2),
                                   dtype=dtype)]
        out.append(Squeeze())
        shape = (4 * shape[0], shape[1] // 2, shape[2] // 2)
        out.append(Slice(shape[0] // 2, axis=0, shape=shape, key=next(keys), hidden=hidden,
                         dtype=dtype))
        shape = (shape[0] // 2, *shape[1:])
    dim = math.prod(shape)
    out += [AffineCoupling(dim, next(keys), hidden=hidden, dtype=dtype), Reverse()]
    return out, shape
