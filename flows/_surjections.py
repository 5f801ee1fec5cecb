"""Surjections and stochastic layers (Nielsen et al. 2020, "SurVAE Flows").

Inference surjections (x -> z deterministic and many-to-one; z -> x sampled from
p(x | z)): `Slice`, `Abs`, `Sort`, `MaxPool1D`, `MaxPool2D`; the contribution log p(x | z)
is exact (for `Abs` and `Sort`, when the rest of the flow keeps z in their image).
Generative surjections (x -> z sampled from q(z | x); z -> x deterministic): `Augment`,
`UniformDequantization`, `VariationalDequantization`; the contribution
log p(x | z) - log q(z | x) = -log q(z | x) is a lower bound in expectation. Stochastic:
`VAE`, contribution log p(x | z) - log q(z | x).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from innerloop.flows._base import (
    AbstractTransform,
    Kind,
    check_finite,
    mlp,
    name_of,
    need_key,
    normal_log_prob,
)


def _split(t, x, axis, keep):
    size = x.shape[axis] if x.ndim else 0
    if x.ndim == 0 or not 0 < keep < size:
        raise ValueError(f"{name_of(t)}: cannot keep {keep} of {size} entries along axis "
                         f"{axis} of an example of shape {x.shape}; keep must be between 1 "
                         f"and the axis size - 1")
    return jnp.split(x, [keep], axis=axis)


class _ConditionalNormal(eqx.Module):
    """N(mean(c), exp(log_std(c))^2) over an array of `shape`, given a conditioning
    array c (flattened into an MLP whose last layer starts at zero: N(0, I) at first)."""

    net: eqx.nn.MLP
    shape: tuple = eqx.field(static=True)

    def __init__(self, cond_size, shape, key, hidden=32, depth=2, dtype=None):
        self.shape = tuple(shape)
        n = math.prod(self.shape)
        self.net = mlp(cond_size, 2 * n, hidden, depth, key, dtype=dtype)

    def __call__(self, c):
        out = self.net(c.reshape(-1))
        n = out.shape[0] // 2
        return out[:n].reshape(self.shape), out[n:].reshape(self.shape)


class Slice(AbstractTransform):
    r"""Inference surjection z = x[:keep] along `axis` (Nielsen et al. 2020, sec. 3):
    the dropped part x_2 is modelled by p(x_2 | z), a standard normal, or, given
    `shape` (the example's) and `key`, a Gaussian whose mean and log-scale a network
    computes from z. Contribution: log p(x_2 | z) (exact). The inverse samples x_2, so it
    needs `shape`. Slicing half of the channels per scale makes a multiscale flow
    (`multiscale`)."""

    keep: int = eqx.field(static=True)
    axis: int = eqx.field(static=True)
    dropped_shape: tuple | None = eqx.field(static=True)
    decoder: _ConditionalNormal | None
    kind = Kind.inference_surjection

    def __init__(self, keep: int, axis: int = -1, *, shape=None, key=None, hidden=32,
                 dtype=None):
        self.keep, self.axis = int(keep), int(axis)
        self.dropped_shape, self.decoder = None, None
        if shape is not None:
            shape = tuple(shape)
            z, x2 = _split(self, jnp.zeros(shape), self.axis, self.keep)
            self.dropped_shape = x2.shape
            if key is not None:
                self.decoder = _ConditionalNormal(z.size, x2.shape, key, hidden=hidden,
                                                  dtype=dtype)

    def _dist(self, z):
        if self.decoder is None:
            return 0.0, 0.0
        return self.decoder(z)

    def forward(self, x, key=None):
        x = check_finite(self, x)
        z, x2 = _split(self, x, self.axis, self.keep)
        if self.dropped_shape is not None and x2.shape != self.dropped_shape:
            raise ValueError(f"Slice: built for examples whose dropped part has shape "
                             f"{self.dropped_shape}, got an example of shape {x.shape}")
        mean, log_std = self._dist(z)
        return z, normal_log_prob(x2, mean, log_std)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        if self.dropped_shape is None:
            raise ValueError("Slice: the inverse samples the dropped part, whose shape it "
                             "needs: build the Slice with shape=(the example's shape)")
        mean, log_std = self._dist(z)
        key = need_key(self, key, "inverse")
        x2 = mean + jnp.exp(log_std) * jax.random.normal(key, self.dropped_shape, z.dtype)
        return jnp.concatenate([z, x2], axis=self.axis)


class Augment(AbstractTransform):
    r"""Generative surjection z = (x, e), e ~ q(e | x) = N(0, I) of shape `extra`
    (along the last axis), or with `key` a Gaussian conditioned on x by a network
    (Nielsen et al. 2020; Huang et al. 2020, "Augmented normalizing flows"). The
    inverse drops e. Contribution: -log q(e | x)."""

    extra: int = eqx.field(static=True)
    encoder: _ConditionalNormal | None
    kind = Kind.generative_surjection

    def __init__(self, extra: int, *, shape=None, key=None, hidden=32, dtype=None):
        if extra < 1:
            raise ValueError(f"Augment: extra must be >= 1, got {extra}")
        self.extra = int(extra)
        if shape is None:
            self.encoder = None
        else:
            shape = tuple(shape)
            self.encoder = _ConditionalNormal(math.prod(shape), shape[:-1] + (extra,), key,
                                              hidden=hidden, dtype=dtype)

    def forward(self, x, key=None):
        x = check_finite(self, x)
        if x.ndim == 0:
            raise ValueError(f"Augment: expects an example with at least one axis, got "
                             f"shape {x.shape}")
        key = need_key(self, key, "forward")
        mean, log_std = (0.0, 0.0) if self.encoder is None else self.encoder(x)
        e_shape = x.shape[:-1] + (self.extra,)
        e = mean + jnp.exp(log_std) * jax.random.normal(key, e_shape, x.dtype)
        return jnp.concatenate([x, e], axis=-1), -normal_log_prob(e, mean, log_std)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        if z.shape[-1] <= self.extra:
            raise ValueError(f"Augment: cannot drop {self.extra} entries of the last axis of "
                             f"shape {z.shape}")
        return z[..., :z.shape[-1] - self.extra]


class Abs(AbstractTransform):
    r"""Inference surjection z = |x| (Nielsen et al. 2020, sec. 4.1): the signs
    s = sign(x) are modelled by independent Bernoulli(sigmoid(logits)) (logits of the
    example's shape, 0 at first: p = 1/2). Contribution: sum log p(s).
    Suits densities symmetric about the origin. Exact when the rest of the flow gives z
    a density on z >= 0; mass it puts on negative z is lost, and log p(x) is then a lower
    bound of the density of the generative process x = s |z|."""

    logits: jax.Array
    kind = Kind.inference_surjection

    def __init__(self, shape, dtype=None):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.logits = jnp.zeros(shape, dtype or jnp.zeros(()).dtype)

    def forward(self, x, key=None):
        x = check_finite(self, x)
        logp = jnp.where(x >= 0, jax.nn.log_sigmoid(self.logits),
                         jax.nn.log_sigmoid(-self.logits))
        return jnp.abs(x), jnp.sum(logp)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        key = need_key(self, key, "inverse")
        positive = jax.random.bernoulli(key, jax.nn.sigmoid(self.logits), z.shape)
        return jnp.where(positive, jnp.abs(z), -jnp.abs(z))


class Sort(AbstractTransform):
    r"""Inference surjection z = x sorted along axis 0 (rows by column `by` for a
    (n, m) set of points) (Nielsen et al. 2020, sec. 4.3): for an exchangeable density
    every one of the n! orderings is equally likely. Contribution: -log n!. As for
    `Abs`, exact when the rest of the flow gives z a density on sorted arrays, a lower
    bound otherwise."""

    by: int = eqx.field(static=True)
    kind = Kind.inference_surjection

    def __init__(self, by: int = 0):
        self.by = int(by)

    def _keys(self, x):
        if x.ndim not in (1, 2):
            raise ValueError(f"Sort: expects n values (n,) or n points (n, m), got shape "
                             f"{x.shape}")
        return x if x.ndim == 1 else x[:, self.by]

    def forward(self, x, key=None):
        x = check_finite(self, x)
        order = jnp.argsort(self._keys(x))
        n = x.shape[0]
        return x[order], -jnp.asarray(gammaln(n + 1.0), x.dtype)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        self._keys(z)
        key = need_key(self, key, "inverse")
        return z[jax.random.permutation(key, z.shape[0])]


class _MaxPool(AbstractTransform):
    r"""z = the maximum of each window; in p(x | z) the argmax is uniform over the k
    entries of its window and each other entry is z - e, e ~ HalfNormal(exp(log_scale)).
    Contribution: sum over windows of -log k + sum over non-maxima log p(e)."""

    log_scale: jax.Array
    size: int = eqx.field(static=True)
    kind = Kind.inference_surjection

    def __init__(self, size: int = 2, dtype=None):
        if size < 2:
            raise ValueError(f"{type(self).__name__}: size must be >= 2, got {size}")
        self.size = int(size)
        self.log_scale = jnp.zeros((), dtype or jnp.zeros(()).dtype)

    def forward(self, x, key=None):
        x = check_finite(self, x)
        windows, z_shape = self._windows(x)
        z = jnp.max(windows, axis=-1)
        hot = jax.nn.one_hot(jnp.argmax(windows, axis=-1), windows.shape[-1], dtype=bool)
        e = z[..., None] - windows
        k = windows.shape[-1]
        per = jnp.where(hot, 0.0, _elementwise_half_normal(e, self.log_scale))
        n_windows = math.prod(z_shape)
        contribution = jnp.sum(per) - n_windows * math.log(k)
        return z.reshape(z_shape), contribution.astype(x.dtype)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        key = need_key(self, key, "inverse")
        k = self.size ** self._ndim
        ki, ke = jax.random.split(key)
        flat = z.reshape(-1)
        idx = jax.random.randint(ki, flat.shape, 0, k)
        e = jnp.abs(jax.random.normal(ke, flat.shape + (k,), z.dtype)) * jnp.exp(self.log_scale)
        e = jnp.where(jax.nn.one_hot(idx, k, dtype=bool), 0.0, e)
        return self._unwindows(flat[:, None] - e, z.shape)


def _elementwise_half_normal(e, log_scale):
    log_scale = jnp.asarray(log_scale, e.dtype)
    return (math.log(2.0) - 0.5 * math.log(2 * math.pi) - log_scale
            - 0.5 * (e * jnp.exp(-log_scale)) ** 2)


class MaxPool1D(_MaxPool):
    __doc__ = ("Inference surjection: max-pooling over windows of `size` along the last "
               "axis (Nielsen et al. 2020, sec. 4.2). " + (_MaxPool.__doc__ or ""))
    _ndim = 1

    def _windows(self, x):
        if x.ndim < 1 or x.shape[-1] % self.size:
            raise ValueError(f"MaxPool1D: the last axis of shape {x.shape} is not divisible "
                             f"by the pool size {self.size}")
        z_shape = x.shape[:-1] + (x.shape[-1] // self.size,)
        return x.reshape(z_shape + (self.size,)), z_shape

    def _unwindows(self, w, z_shape):
        return w.reshape(z_shape[:-1] + (z_shape[-1] * self.size,))


class MaxPool2D(_MaxPool):
    __doc__ = ("Inference surjection: max-pooling over size x size windows of a (C, H, W) "
               "example (Nielsen et al. 2020, sec. 4.2). " + (_MaxPool.__doc__ or ""))
    _ndim = 2

    def _windows(self, x):
        s = self.size
        if x.ndim != 3 or x.shape[1] % s or x.shape[2] % s:
            raise ValueError(f"MaxPool2D: expects one (C, H, W) example with H and W "
                             f"divisible by the pool size {s}, got shape {x.shape}")
        c, h, w = x.shape
        win = x.reshape(c, h // s, s, w // s, s).transpose(0, 1, 3, 2, 4)
        return win.reshape(c, h // s, w // s, s * s), (c, h // s, w // s)

    def _unwindows(self, w, z_shape):
        s = self.size
        c, h, wd = z_shape
        x = w.reshape(c, h, wd, s, s).transpose(0, 1, 3, 2, 4)
        return x.reshape(c, h * s, wd * s)


class UniformDequantization(AbstractTransform):
    r"""Generative surjection from integers to reals (Theis et al. 2016; Nielsen et al.
    2020): z = x + u, u ~ U[0, 1)^d; x = floor(z). Contribution: -log q(u) = 0, so
    log p(x) >= E[log p(z)]. `x` holds integer values (any dtype); z is floating."""

    kind = Kind.generative_surjection

    def forward(self, x, key=None):
        x = check_finite(self, x.astype(jnp.zeros(()).dtype)
                         if not jnp.issubdtype(x.dtype, jnp.floating) else x)
        key = need_key(self, key, "forward")
        u = jax.random.uniform(key, x.shape, x.dtype)
        return x + u, jnp.zeros((), x.dtype)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        return jnp.floor(z)


class VariationalDequantization(AbstractTransform):
    r"""Generative surjection (Ho et al. 2019, "Flow++"; Nielsen et al. 2020):
    z = x + u with u = sigmoid(m(x) + exp(s(x)) eps), eps ~ N(0, I), m and s a network of
    x. Contribution: -log q(u | x) = -log N(eps) + sum (s + log sigmoid'(v)) where
    v = m + exp(s) eps. x = floor(z)."""

    encoder: _ConditionalNormal
    kind = Kind.generative_surjection

    def __init__(self, shape, key, *, hidden: int = 32, dtype=None):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.encoder = _ConditionalNormal(math.prod(shape), shape, key, hidden=hidden,
                                          dtype=dtype)

    def forward(self, x, key=None):
        x = check_finite(self, x.astype(self.encoder.net.layers[0].weight.dtype)
                         if not jnp.issubdtype(x.dtype, jnp.floating) else x)
        key = need_key(self, key, "forward")
        mean, log_std = self.encoder(x)
        eps = jax.random.normal(key, x.shape, x.dtype)
        v = mean + jnp.exp(log_std) * eps
        u = jax.nn.sigmoid(v)
        log_q = (normal_log_prob(eps) - jnp.sum(log_std)
                 - jnp.sum(jax.nn.log_sigmoid(v) + jax.nn.log_sigmoid(-v)))
        return x + u, -log_q

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        return jnp.floor(z)


class VAE(AbstractTransform):
    r"""Stochastic layer (Kingma and Welling 2014 as a SurVAE layer): z ~ q(z | x) =
    N(encoder(x)), x ~ p(x | z) = N(decoder(z)); encoder and decoder return
    (mean, log_std). Contribution: log p(x | z) - log q(z | x), whose expectation plus
    E[log p(z)] is the ELBO <= log p(x). The inverse samples p(x | z) (with key None: its
    mean)."""

    encoder: eqx.Module
    decoder: eqx.Module
    latent_shape: tuple = eqx.field(static=True)
    kind = Kind.stochastic

    def __init__(self, dim: int, latent: int, key, *, hidden: int = 32, encoder=None,
                 decoder=None, dtype=None):
        ke, kd = jax.random.split(key)
        self.encoder = encoder or _ConditionalNormal(dim, (latent,), ke, hidden=hidden,
                                                     dtype=dtype)
        self.decoder = decoder or _ConditionalNormal(latent, (dim,), kd, hidden=hidden,
                                                     dtype=dtype)
        self.latent_shape = (latent,)

    def forward(self, x, key=None):
        x = check_finite(self, x)
        key = need_key(self, key, "forward")
        mean, log_std = self.encoder(x)
        z = mean + jnp.exp(log_std) * jax.random.normal(key, self.latent_shape, x.dtype)
        dm, dls = self.decoder(z)
        return z, normal_log_prob(x, dm, dls) - normal_log_prob(z, mean, log_std)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        mean, log_std = self.decoder(z)
        if key is None:
            return mean
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, z.dtype)
