"""Bijections: couplings (affine; rational-quadratic spline, Durkan et al. 2019), ActNorm
(Kingma and Dhariwal 2018), an invertible linear map in LU form, permutations, elementwise
maps and Squeeze. Each acts on one example; the couplings, LU and permutations act on the
flattened example, so they take any event shape."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from innerloop.flows._base import AbstractTransform, Kind, check_finite, mlp, name_of


def _halves(t, x, swap):
    flat = x.reshape(-1)
    d = flat.shape[0]
    if d < 2:
        raise ValueError(f"{name_of(t)}: a coupling needs at least 2 entries to split, got "
                         f"shape {x.shape}")
    d1 = d // 2
    a, b = flat[:d1], flat[d1:]
    return (b, a) if swap else (a, b)


def _join(a, b, swap, shape):
    return (jnp.concatenate([b, a]) if swap else jnp.concatenate([a, b])).reshape(shape)


class AffineCoupling(AbstractTransform):
    r"""Affine coupling (Dinh et al. 2017, "Real NVP"): with x = (x_1, x_2),

        z_1 = x_1,   z_2 = x_2 exp(s(x_1)) + t(x_1),   log|det| = sum s(x_1),

    s = tanh(.) of a network's output (bounded scales). `swap` conditions on the
    second half instead. Starts as the identity."""

    net: eqx.nn.MLP
    swap: bool = eqx.field(static=True)
    kind = Kind.bijective

    def __init__(self, dim: int, key, *, hidden: int = 32, depth: int = 2,
                 swap: bool = False, dtype=None):
        d1 = dim // 2
        cond, out = (dim - d1, d1) if swap else (d1, dim - d1)
        self.net = mlp(cond, 2 * out, hidden, depth, key, dtype=dtype)
        self.swap = swap

    def _params(self, a):
        raw = self.net(a)
        k = raw.shape[0] // 2
        return jnp.tanh(raw[:k]), raw[k:]

    def forward(self, x, key=None):
        x = check_finite(self, x)
        a, b = _halves(self, x, self.swap)
        s, t = self._params(a)
        return _join(a, b * jnp.exp(s) + t, self.swap, x.shape), jnp.sum(s)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        a, b = _halves(self, z, self.swap)
        s, t = self._params(a)
        return _join(a, (b - t) * jnp.exp(-s), self.swap, z.shape)


def _spline(x, w, h, d, bound, inverse):
    """One monotone rational-quadratic spline on [-bound, bound], the identity outside
    (Durkan et al. 2019, eqs. 4-6 and appendix A). Returns (y, log dy/dx at x or, for the
    inverse, log dx/dy)."""
    k = w.shape[0]
    min_size, min_deriv = 1e-3, 1e-3
    widths = 2 * bound * (min_size + (1 - min_size * k) * jax.nn.softmax(w))
    heights = 2 * bound * (min_size + (1 - min_size * k) * jax.nn.softmax(h))
    one = jnp.ones((1,), x.dtype)
    derivs = jnp.concatenate([one, min_deriv + jax.nn.softplus(d), one])
    lo = -bound * one
    knots_x = jnp.concatenate([lo, lo + jnp.cumsum(widths)])
    knots_y = jnp.concatenate([lo, lo + jnp.cumsum(heights)])
    inside = (x > -bound) & (x < bound)
    xc = jnp.clip(x, -bound, bound)
    knots = knots_y if inverse else knots_x
    idx = jnp.clip(jnp.sum(xc >= knots[1:k]), 0, k - 1)
    xk, yk, wk, hk = knots_x[idx], knots_y[idx], widths[idx], heights[idx]
    dk, dk1 = derivs[idx], derivs[idx + 1]
    sk = hk / wk
    mix = dk1 + dk - 2 * sk
    if inverse:
        dy = xc - yk
        a = hk * (sk - dk) + dy * mix
        b = hk * dk - dy * mix
        c = -sk * dy
        theta = 2 * c / (-b - jnp.sqrt(jnp.maximum(b * b - 4 * a * c, 0.0)))
        out = theta * wk + xk
    else:
        theta = (xc - xk) / wk
        out = yk + hk * (sk * theta**2 + dk * theta * (1 - theta)) / (
            sk + mix * theta * (1 - theta))
    t1 = theta * (1 - theta)
    log_deriv = (2 * jnp.log(sk) + jnp.log(dk1 * theta**2 + 2 * sk * t1 + dk * (1 - theta)**2)
                 - 2 * jnp.log(sk + mix * t1))
    if inverse:
        log_deriv = -log_deriv
    return jnp.where(inside, out, x), jnp.where(inside, log_deriv, 0.0)


class RQSCoupling(AbstractTransform):
    r"""Rational-quadratic spline coupling (Durkan et al. 2019, "Neural spline flows"):
    z_1 = x_1 and each entry of x_2 passes through a monotone rational-quadratic spline
    with `bins` bins on [-bound, bound] (identity outside) whose widths, heights and
    inner derivatives are a network's outputs given x_1; log|det| = sum log z_2'(x_2)."""

    net: eqx.nn.MLP
    bins: int = eqx.field(static=True)
    bound: float = eqx.field(static=True)
    swap: bool = eqx.field(static=True)
    kind = Kind.bijective

    def __init__(self, dim: int, key, *, bins: int = 8, bound: float = 4.0,
                 hidden: int = 32, depth: int = 2, swap: bool = False, dtype=None):
        d1 = dim // 2
        cond, out = (dim - d1, d1) if swap else (d1, dim - d1)
        self.net = mlp(cond, out * (3 * bins - 1), hidden, depth, key, dtype=dtype)
        self.bins, self.bound, self.swap = bins, float(bound), swap

    def _apply(self, x, inverse):
        x = check_finite(self, x)
        a, b = _halves(self, x, self.swap)
        k = self.bins
        p = self.net(a).reshape(b.shape[0], 3 * k - 1)
        y, logd = jax.vmap(lambda v, q: _spline(v, q[:k], q[k:2 * k], q[2 * k:],
                                                self.bound, inverse))(b, p)
        return _join(a, y, self.swap, x.shape), jnp.sum(logd)

    def forward(self, x, key=None):
        return self._apply(x, False)

    def inverse(self, z, key=None):
        return self._apply(z, True)[0]


class ActNorm(AbstractTransform):
    r"""ActNorm (Kingma and Dhariwal 2018, "Glow"): z = (x - loc) exp(-log_scale),
    log|det| = -sum log_scale over the example. `shape` is the parameters' shape,
    broadcast against the example ((C, 1, 1) for per-channel on images).
    `initialise(xs)` sets loc and scale from a batch (data-dependent initialisation)."""

    loc: jax.Array
    log_scale: jax.Array
    kind = Kind.bijective

    def __init__(self, shape, dtype=None):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = dtype or jnp.zeros(()).dtype
        self.loc = jnp.zeros(shape, dtype)
        self.log_scale = jnp.zeros(shape, dtype)

    def initialise(self, xs: jax.Array) -> "ActNorm":
        """A copy whose output on the batch `xs` (batch axis first) has zero mean and
        unit variance per parameter entry."""
        xs = check_finite(self, jnp.asarray(xs), "batch")
        shape = self.loc.shape
        event = xs.shape[1:]
        if len(shape) > len(event):
            raise ValueError(f"ActNorm.initialise: parameters of shape {shape} do not "
                             f"broadcast against examples of shape {event}")
        full = (1,) * (len(event) - len(shape)) + shape
        axes = (0,) + tuple(i + 1 for i, (p, e) in enumerate(zip(full, event)) if p == 1)
        mean = jnp.mean(xs, axis=axes).reshape(shape)
        std = jnp.std(xs, axis=axes).reshape(shape)
        return eqx.tree_at(lambda m: (m.loc, m.log_scale), self,
                           (mean.astype(self.loc.dtype),
                            jnp.log(std + 1e-6).astype(self.loc.dtype)))

    def forward(self, x, key=None):
        x = check_finite(self, x)
        ls = jnp.broadcast_to(self.log_scale, x.shape)
        return (x - self.loc) * jnp.exp(-self.log_scale), -jnp.sum(ls)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        return z * jnp.exp(self.log_scale) + self.loc


class LULinear(AbstractTransform):
    r"""Invertible linear map z = P L U x in LU form (Kingma and Dhariwal 2018): P a
    fixed permutation, L unit lower triangular, U upper triangular with diagonal
    exp(log_diag); log|det| = sum log_diag. Acts on the flattened example."""

    lower: jax.Array
    upper: jax.Array
    log_diag: jax.Array
    perm: jax.Array
    kind = Kind.bijective

    def __init__(self, dim: int, key, *, scale: float = 0.0, dtype=None):
        """`scale`: standard deviation of the initial off-diagonal entries and
        log-diagonal (0: the identity after the permutation)."""
        dtype = dtype or jnp.zeros(()).dtype
        kp, kl, ku, kd = jax.random.split(key, 4)
        self.perm = jax.random.permutation(kp, dim)
        self.lower = scale * jax.random.normal(kl, (dim, dim), dtype)
        self.upper = scale * jax.random.normal(ku, (dim, dim), dtype)
        self.log_diag = scale * jax.random.normal(kd, (dim,), dtype)

    def _factors(self):
        d = self.log_diag.shape[0]
        eye = jnp.eye(d, dtype=self.lower.dtype)
        lo = jnp.tril(self.lower, -1) + eye
        up = jnp.triu(self.upper, 1) + jnp.diag(jnp.exp(self.log_diag))
        return lo, up

    def _check(self, x):
        if x.size != self.log_diag.shape[0]:
            raise ValueError(f"LULinear: built for {self.log_diag.shape[0]} entries, got an "
                             f"example of shape {x.shape}")

    def forward(self, x, key=None):
        x = check_finite(self, x)
        self._check(x)
        lo, up = self._factors()
        z = (lo @ (up @ x.reshape(-1)))[jnp.argsort(self.perm)]
        return z.reshape(x.shape), jnp.sum(self.log_diag)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        self._check(z)
        lo, up = self._factors()
        y = z.reshape(-1)[self.perm]
        y = solve_triangular(lo, y, lower=True, unit_diagonal=True)
        return solve_triangular(up, y, lower=False).reshape(z.shape)


class Permutation(AbstractTransform):
    """A fixed permutation of the flattened example: z = x[perm]; log|det| = 0.
    `Permutation.random(dim, key)` draws one; `Reverse()` reverses."""

    perm: jax.Array
    kind = Kind.bijective

    def __init__(self, perm):
        self.perm = jnp.asarray(perm)

    @classmethod
    def random(cls, dim: int, key) -> "Permutation":
        return cls(jax.random.permutation(key, dim))

    def forward(self, x, key=None):
        x = check_finite(self, x)
        if x.size != self.perm.shape[0]:
            raise ValueError(f"Permutation: built for {self.perm.shape[0]} entries, got an "
                             f"example of shape {x.shape}")
        return x.reshape(-1)[self.perm].reshape(x.shape), jnp.zeros((), x.dtype)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        return z.reshape(-1)[jnp.argsort(self.perm)].reshape(z.shape)


class Reverse(AbstractTransform):
    """Reverses the flattened example; log|det| = 0."""

    kind = Kind.bijective

    def forward(self, x, key=None):
        x = check_finite(self, x)
        return x.reshape(-1)[::-1].reshape(x.shape), jnp.zeros((), x.dtype)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        return z.reshape(-1)[::-1].reshape(z.shape)


class LeakyReLU(AbstractTransform):
    """z = x for x >= 0, slope * x otherwise (slope > 0); log|det| = (number of
    negative entries) log slope."""

    slope: float = eqx.field(static=True)
    kind = Kind.bijective

    def __init__(self, slope: float = 0.1):
        if not slope > 0:
            raise ValueError(f"LeakyReLU: slope must be > 0 to be invertible, got {slope}")
        self.slope = float(slope)

    def forward(self, x, key=None):
        x = check_finite(self, x)
        neg = x < 0
        logdet = jnp.sum(jnp.where(neg, math.log(self.slope), 0.0)).astype(x.dtype)
        return jnp.where(neg, self.slope * x, x), logdet

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        return jnp.where(z < 0, z / self.slope, z)


class Sigmoid(AbstractTransform):
    """z = sigmoid(x), onto (0, 1); log|det| = sum log sigmoid(x) + log sigmoid(-x)."""

    kind = Kind.bijective

    def forward(self, x, key=None):
        x = check_finite(self, x)
        return jax.nn.sigmoid(x), jnp.sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x))

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        return jnp.log(z) - jnp.log1p(-z)


class Logit(AbstractTransform):
    """z = log(x / (1 - x)) for x in (0, 1), the inverse of `Sigmoid`;
    log|det| = -sum log x + log(1 - x)."""

    kind = Kind.bijective

    def forward(self, x, key=None):
        x = check_finite(self, x)
        x = eqx.error_if(x, jnp.any((x <= 0) | (x >= 1)),
                         "Logit: the input must lie in (0, 1); rescale it first")
        return jnp.log(x) - jnp.log1p(-x), -jnp.sum(jnp.log(x) + jnp.log1p(-x))

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        return jax.nn.sigmoid(z)


class Squeeze(AbstractTransform):
    """(C, H, W) -> (4C, H/2, W/2): each 2x2 spatial block becomes 4 channels (Dinh et
    al. 2017); log|det| = 0. H and W must be even."""

    kind = Kind.bijective

    def forward(self, x, key=None):
        x = check_finite(self, x)
        if x.ndim != 3 or x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"Squeeze: expects one (C, H, W) example with H and W even, got "
                             f"shape {x.shape}")
        c, h, w = x.shape
        z = x.reshape(c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3)
        return z.reshape(4 * c, h // 2, w // 2), jnp.zeros((), x.dtype)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        if z.ndim != 3 or z.shape[0] % 4:
            raise ValueError(f"Squeeze: the inverse expects (4C, H, W), got shape {z.shape}")
        c4, h, w = z.shape
        x = z.reshape(c4 // 4, 2, 2, h, w).transpose(0, 3, 1, 4, 2)
        return x.reshape(c4 // 4, 2 * h, 2 * w)
