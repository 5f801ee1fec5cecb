r"""Random augmentations of 1-D signals, as jittable functions of (key, signal).

Each function maps one signal x of shape (L,) (or (L, channels)) to a signal of the
same shape:

- `random_shift`: x'[i] = x[i - s], s ~ U{-max_shift, ..., max_shift}, zero-filled;
- `random_scale`: x' = a x, a ~ U[low, high];
- `gaussian_noise`: x' = x + sigma eps, eps ~ N(0, 1);
- `random_mask`: a segment of width w ~ U{0, ..., max_width} at a random place set to 0;
- `random_roll`: x'[i] = x[(i - s) mod L], s ~ U{-max_shift, ..., max_shift} (circular);
- `random_shear`: x'[i] = x[i] + c t_i, t_i = linspace(-1/2, 1/2, L), c ~ U[-a, a].

The last two are the nuisances MNIST-1D's generator itself applies (circular translation
and shear; Greydanus and Kobak 2024, "Scaling down deep learning with MNIST-1D").

`Augment` composes them (shift, scale, mask, then noise, and any `extra` functions)
and maps a batch (B, L, ...) one key per signal; it checks that every augmentation
keeps the signal's length, which the encoders of a batch need.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def random_shift(key: Array, x: ArrayLike, max_shift: int) -> Array:
    """x shifted by s ~ U{-max_shift, ..., max_shift} along its first axis, zero-filled."""
    x = jnp.asarray(x)
    s = jax.random.randint(key, (), -max_shift, max_shift + 1)
    i = jnp.arange(x.shape[0]) - s
    inside = (i >= 0) & (i < x.shape[0])
    out = jnp.take(x, jnp.clip(i, 0, x.shape[0] - 1), axis=0)
    return jnp.where(inside.reshape((-1,) + (1,) * (x.ndim - 1)), out, jnp.zeros_like(out))


def random_scale(key: Array, x: ArrayLike, low: float, high: float) -> Array:
    """x times a ~ U[low, high]."""
    x = jnp.asarray(x)
    return x * jax.random.uniform(key, (), x.dtype, low, high)


def gaussian_noise(key: Array, x: ArrayLike, sigma: float) -> Array:
    """x + sigma eps, eps ~ N(0, I)."""
    x = jnp.asarray(x)
    return x + jnp.asarray(sigma, x.dtype) * jax.random.normal(key, x.shape, x.dtype)


def random_mask(key: Array, x: ArrayLike, max_width: int) -> Array:
    """x with a segment of width w ~ U{0, ..., max_width}, at a uniform start, set to 0."""
    x = jnp.asarray(x)
    kw, ks = jax.random.split(key)
    w = jax.random.randint(kw, (), 0, max_width + 1)
    start = jax.random.randint(ks, (), 0, x.shape[0])
    i = jnp.arange(x.shape[0])
    hidden = (i >= start) & (i < start + w)
    return jnp.where(hidden.reshape((-1,) + (1,) * (x.ndim - 1)), 0, x)


def random_roll(key: Array, x: ArrayLike, max_shift: int) -> Array:
    """x rolled circularly by s ~ U{-max_shift, ..., max_shift} along its first axis."""
    x = jnp.asarray(x)
    s = jax.random.randint(key, (), -max_shift, max_shift + 1)
    return jnp.take(x, (jnp.arange(x.shape[0]) - s) % x.shape[0], axis=0)


def random_shear(key: Array, x: ArrayLike, max_slope: float) -> Array:
    """x plus the line c * linspace(-1/2, 1/2, L), c ~ U[-max_slope, max_slope]."""
    x = jnp.asarray(x)
    c = jax.random.uniform(key, (), x.dtype, -max_slope, max_slope)
    t = jnp.linspace(-0.5, 0.5, x.shape[0], dtype=x.dtype)
    return x + c * t.reshape((-1,) + (1,) * (x.ndim - 1))


class Augment(eqx.Module):
    """A random view of each signal of a batch: roll, shift, shear, scale, mask, noise,
    then `extra`.

    - `max_roll`: largest circular shift (samples); 0 for none.
    - `max_shift`: largest zero-filled shift (samples); 0 for none.
    - `shear`: largest slope of the added line (`random_shear`); 0 for none.
    - `scale`: (low, high) of the amplitude factor; (1, 1) for none.
    - `noise`: standard deviation of the additive Gaussian noise.
    - `max_mask`: largest masked segment (samples); 0 for none.
    - `extra`: more functions (key, x) -> x of one signal, applied last.

    `augment(key, x)` with x of shape (B, L, ...) returns the same shape; an
    augmentation that changes the length is an error.
    """

    max_shift: int = eqx.field(static=True, default=4)
    scale: tuple[float, float] = eqx.field(static=True, default=(0.8, 1.2))
    noise: float = eqx.field(static=True, default=0.1)
    max_mask: int = eqx.field(static=True, default=0)
    extra: tuple[Callable[[Array, Array], Array], ...] = eqx.field(static=True, default=())
    max_roll: int = eqx.field(static=True, default=0)
    shear: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        if min(self.max_shift, self.max_mask, self.noise, self.max_roll, self.shear) < 0:
            raise ValueError("Augment: max_shift, max_mask, noise, max_roll and shear must be "
                             f">= 0, got {self.max_shift}, {self.max_mask}, {self.noise}, "
                             f"{self.max_roll}, {self.shear}")
        if not self.scale[0] <= self.scale[1]:
            raise ValueError(f"Augment: scale must be (low, high) with low <= high, got "
                             f"{self.scale}")

    def _functions(self):
        fns = []
        if self.max_roll:
            fns.append(("random_roll", lambda k, x: random_roll(k, x, self.max_roll)))
        if self.max_shift:
            fns.append(("random_shift", lambda k, x: random_shift(k, x, self.max_shift)))
        if self.shear:
            fns.append(("random_shear", lambda k, x: random_shear(k, x, self.shear)))
        if self.scale != (1, 1):
            fns.append(("random_scale", lambda k, x: random_scale(k, x, *self.scale)))
        if self.max_mask:
            fns.append(("random_mask", lambda k, x: random_mask(k, x, self.max_mask)))
        if self.noise:
            fns.append(("gaussian_noise", lambda k, x: gaussian_noise(k, x, self.noise)))
        fns += [(getattr(f, "__name__", repr(f)), f) for f in self.extra]
        return fns

    def one(self, key: Array, x: ArrayLike) -> Array:
        """A random view of one signal x (L, ...)."""
        x = jnp.asarray(x)
        fns = self._functions()
        for (name, fn), k in zip(fns, jax.random.split(key, max(len(fns), 1))):
            out = jax.eval_shape(fn, k, x)
            if out.shape != x.shape:
                raise ValueError(
                    f"Augment: the augmentation {name} maps a signal of shape {x.shape} to "
                    f"{out.shape}; augmentations must keep the signal's length (crop or pad "
                    "back to it)")
            x = fn(k, x).astype(x.dtype)
        return x

    def __call__(self, key: Array, x: ArrayLike) -> Array:
        """Random views of a batch x (B, L, ...), one key per signal."""
        x = jnp.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"Augment: expected a batch of signals (B, L, ...), got shape "
                             f"{x.shape}; use Augment.one for a single signal")
        return jax.vmap(self.one)(jax.random.split(key, x.shape[0]), x)
