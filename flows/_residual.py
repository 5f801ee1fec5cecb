"""Residual flows (Behrmann et al. 2019, "Invertible residual networks"; Chen et al. 2019,
"Residual flows for invertible generative modeling") and implicit flows (Lu et al. 2021,
"Implicit normalizing flows"): layers whose inverse is a fixed point or a root, solved and
differentiated by `innerloop.fixed_point` and `innerloop.root`."""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from innerloop.flows._base import AbstractTransform, Kind, check_finite, need_key
from innerloop.implicit import AbstractGradient, Implicit, fixed_point, root
from innerloop.solvers import AbstractSolver, Anderson

LogDet = Literal["exact", "roulette"]


def lipswish(x):
    """x sigmoid(x) / 1.1: smooth and 1-Lipschitz (Chen et al. 2019, sec. 4)."""
    return x * jax.nn.sigmoid(x) / 1.1


def _stop(tree):
    return jax.tree.map(lambda a: lax.stop_gradient(a) if eqx.is_array(a) else a, tree)


class LipschitzMLP(eqx.Module):
    r"""g(x) = W_L phi(... phi(W_1 x + b_1) ...) + b_L with every W_i spectrally
    normalised, W_i / max(1, sigma_i / c) with sigma_i estimated by `n_power` steps of
    power iteration from a stored vector (Miyato et al. 2018), and phi 1-Lipschitz
    (LipSwish), so that Lip(g) <= c^L < 1 for the per-layer bound c = `lipschitz`."""

    weights: list
    biases: list
    vectors: list
    lipschitz: float = eqx.field(static=True)
    n_power: int = eqx.field(static=True)

    def __init__(self, dim: int, hidden: int, key, *, depth: int = 2, lipschitz: float = 0.9,
                 n_power: int = 20, dtype=None, caller: str = "LipschitzMLP"):
        if not 0 < lipschitz < 1:
            raise ValueError(f"{caller}: the residual map g must be contractive for the block "
                             f"to be invertible: its Lipschitz bound lipschitz={lipschitz} "
                             "must be in (0, 1); use e.g. 0.9")
        dtype = dtype or jnp.zeros(()).dtype
        sizes = [dim] + [hidden] * (depth - 1) + [dim]
        keys = jax.random.split(key, 2 * depth)
        self.weights, self.biases, self.vectors = [], [], []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = jax.random.normal(keys[2 * i], (b, a), dtype) / jnp.sqrt(jnp.asarray(a, dtype))
            u = jax.random.normal(keys[2 * i + 1], (b,), dtype)
            self.weights.append(w)
            self.biases.append(jnp.zeros((b,), dtype))
            self.vectors.append(u / jnp.linalg.norm(u))
        self.lipschitz, self.n_power = float(lipschitz), int(n_power)

    def normalised(self, w, u):
        """w / max(1, sigma / c), sigma by power iteration (no gradient through u, v)."""
        ws = lax.stop_gradient(w)

        def step(_, u):
            v = ws.T @ u
            v = v / jnp.linalg.norm(v)
            u = ws @ v
            return u / jnp.linalg.norm(u)

        u = lax.fori_loop(0, self.n_power, step, lax.stop_gradient(u))
        v = ws.T @ u
        v = lax.stop_gradient(v / jnp.linalg.norm(v))
        sigma = u @ (w @ v)
        return w / jnp.maximum(1.0, sigma / self.lipschitz)

    def __call__(self, x):
        h = x
        n = len(self.weights)
        for i, (w, b, u) in enumerate(zip(self.weights, self.biases, self.vectors)):
            h = self.normalised(w, u) @ h + b
            if i < n - 1:
                h = lipswish(h)
        return h


def exact_logdet(g, x):
    """log |det(I + dg/dx)| by a dense Jacobian (small dimensions)."""
    jac = jax.jacfwd(g)(x)
    return jnp.linalg.slogdet(jnp.eye(x.shape[0], dtype=x.dtype) + jac)[1]


def roulette_logdet(g, x, key, *, n_exact: int = 2, p: float = 0.5, max_terms: int = 64):
    r"""Unbiased estimate of log det(I + J), J = dg/dx, Lip(g) < 1 (Chen et al. 2019):

        log det(I + J) = sum_{k>=1} (-1)^{k+1} tr(J^k) / k
                       ~ sum_{k=1}^{N} (-1)^{k+1} v^T J^k v / (k P(N >= k)),

    v ~ N(0, I) (Hutchinson), N = n_exact + Geometric(p) (Russian roulette; truncated
    at `max_terms`). Its gradient is the Neumann-series estimator
    sum_{k=0}^{N} (-1)^k v^T J^k (dJ) v / P(N >= k) of tr((I + J)^{-1} dJ), attached to
    w^T J v with w held constant, so that no power of J is differentiated."""
    kv, kn = jax.random.split(key)
    v = jax.random.normal(kv, x.shape, x.dtype)
    uniform = jax.random.uniform(kn, (), x.dtype, minval=jnp.finfo(x.dtype).tiny)
    extra = jnp.floor(jnp.log(uniform) / jnp.log1p(-jnp.asarray(p, x.dtype)))
    n_terms = jnp.minimum(n_exact + extra, max_terms).astype(jnp.int32)
    g_const, x_const = _stop(g), lax.stop_gradient(x)
    _, vjp = jax.vjp(g_const, x_const)
    log_keep = jnp.log1p(-jnp.asarray(p, x.dtype))

    def body(state):
        k, uk, w, est = state
        kf = k.astype(x.dtype)
        inv_p = jnp.exp(-jnp.maximum(kf - n_exact, 0.0) * log_keep)
        sign = jnp.where(k % 2 == 0, 1.0, -1.0).astype(x.dtype)
        w = w + sign * inv_p * uk
        est = est + jnp.where(k >= 1, -sign * inv_p * jnp.vdot(uk, v) / jnp.maximum(kf, 1.0),
                              0.0)
        return k + 1, vjp(uk)[0], w, est

    init = (jnp.zeros((), jnp.int32), v, jnp.zeros_like(v), jnp.zeros((), x.dtype))
    _, _, w, est = lax.while_loop(lambda s: s[0] <= n_terms, body, init)
    w = lax.stop_gradient(w)
    surrogate = jnp.vdot(w, jax.jvp(g, (x,), (v,))[1])
    return lax.stop_gradient(est) + surrogate - lax.stop_gradient(surrogate)


def _logdet(block, g, x, key):
    if block.logdet == "exact":
        return exact_logdet(g, x)
    key = need_key(block, key, "forward (logdet='roulette')")
    return roulette_logdet(g, x, key, n_exact=block.n_exact, p=block.p,
                           max_terms=block.max_terms)


def _check_logdet(name, logdet):
    if logdet not in ("exact", "roulette"):
        raise ValueError(f"{name}: logdet must be 'exact' (dense Jacobian, small dimensions) "
                         f"or 'roulette' (Hutchinson + Russian roulette), got {logdet!r}")


class ResidualBlock(AbstractTransform):
    r"""z = x + g(x) with Lip(g) < 1 (`LipschitzMLP`), invertible by Banach's theorem
    (Behrmann et al. 2019). The inverse is the fixed point x = z - g(x), solved by
    `innerloop.fixed_point` with `solver` and differentiated as `grad` says (`Implicit()`
    by default: exact, O(1) memory in the iterations). The log-determinant
    log det(I + dg/dx) is `logdet="exact"` (dense; small dimensions) or `"roulette"`
    (Hutchinson + Russian-roulette power series with the Neumann-series gradient, Chen
    et al. 2019, "Residual flows"; the forward pass then needs a key). Acts on the
    flattened example."""

    g: LipschitzMLP
    logdet: str = eqx.field(static=True)
    grad: AbstractGradient
    solver: AbstractSolver | None
    rtol: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    n_exact: int = eqx.field(static=True)
    p: float = eqx.field(static=True)
    max_terms: int = eqx.field(static=True)
    kind = Kind.bijective

    def __init__(self, dim: int, key, *, hidden: int = 32, depth: int = 2,
                 lipschitz: float = 0.9, n_power: int = 20, logdet: LogDet = "exact",
                 grad: AbstractGradient | None = None, solver: AbstractSolver | None = None,
                 rtol: float | None = None, max_steps: int = 100, n_exact: int = 2,
                 p: float = 0.5, max_terms: int = 64, dtype=None):
        _check_logdet("ResidualBlock", logdet)
        self.g = LipschitzMLP(dim, hidden, key, depth=depth, lipschitz=lipschitz,
                              n_power=n_power, dtype=dtype, caller="ResidualBlock")
        self.logdet, self.grad, self.solver = logdet, grad or Implicit(), solver
        self.rtol, self.max_steps = rtol, int(max_steps)
        self.n_exact, self.p, self.max_terms = int(n_exact), float(p), int(max_terms)

    def forward(self, x, key=None):
        x = check_finite(self, x)
        if self.logdet == "roulette":
            need_key(self, key, "forward (logdet='roulette')")
        flat = x.reshape(-1)
        return (flat + self.g(flat)).reshape(x.shape), _logdet(self, self.g, flat, key)

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        flat = z.reshape(-1)
        sol = fixed_point(lambda x, th: th[1] - th[0](x), flat, (self.g, flat),
                          solver=self.solver, grad=self.grad, rtol=self.rtol,
                          max_steps=self.max_steps)
        return sol.value.reshape(z.shape)


class ImplicitBlock(AbstractTransform):
    r"""Implicit flow layer (Lu et al. 2021, "Implicit normalizing flows"): z is defined
    by

        g_x(x) + x = g_z(z) + z,    Lip(g_x), Lip(g_z) < 1,

    both directions solved by `innerloop.root` and differentiated by the implicit
    function theorem. The default solver is `Anderson()`: the root of
    g_z(z) + z - (g_x(x) + x) is the fixed point of the contraction
    z -> g_x(x) + x - g_z(z), which it accelerates without Jacobians (pass
    `solver=Newton()` for small, stiff cases). log|det dz/dx| = log det(I + J_{g_x}(x)) -
    log det(I + J_{g_z}(z)), each exact (dense) or by the Russian-roulette estimator.
    Acts on the flattened example."""

    gx: LipschitzMLP
    gz: LipschitzMLP
    logdet: str = eqx.field(static=True)
    grad: AbstractGradient | None
    solver: AbstractSolver | None
    rtol: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    n_exact: int = eqx.field(static=True)
    p: float = eqx.field(static=True)
    max_terms: int = eqx.field(static=True)
    kind = Kind.bijective

    def __init__(self, dim: int, key, *, hidden: int = 32, depth: int = 2,
                 lipschitz: float = 0.9, n_power: int = 20, logdet: LogDet = "exact",
                 grad: AbstractGradient | None = None, solver: AbstractSolver | None = None,
                 rtol: float | None = None, max_steps: int = 100, n_exact: int = 2,
                 p: float = 0.5, max_terms: int = 64, dtype=None):
        _check_logdet("ImplicitBlock", logdet)
        kx, kz = jax.random.split(key)
        self.gx = LipschitzMLP(dim, hidden, kx, depth=depth, lipschitz=lipschitz,
                               n_power=n_power, dtype=dtype, caller="ImplicitBlock")
        self.gz = LipschitzMLP(dim, hidden, kz, depth=depth, lipschitz=lipschitz,
                               n_power=n_power, dtype=dtype, caller="ImplicitBlock")
        self.logdet, self.grad, self.solver = logdet, grad, solver
        self.rtol, self.max_steps = rtol, int(max_steps)
        self.n_exact, self.p, self.max_terms = int(n_exact), float(p), int(max_terms)

    def _solve(self, g_out, g_in, v):
        """The u with g_out(u) + u = g_in(v) + v."""
        target = g_in(v) + v
        sol = root(lambda u, th: th[0](u) + u - th[1], v, (g_out, target),
                   solver=Anderson() if self.solver is None else self.solver,
                   grad=self.grad, rtol=self.rtol, max_steps=self.max_steps)
        return sol.value

    def forward(self, x, key=None):
        x = check_finite(self, x)
        if self.logdet == "roulette":
            need_key(self, key, "forward (logdet='roulette')")
        flat = x.reshape(-1)
        z = self._solve(self.gz, self.gx, flat)
        kx, kz = (None, None) if key is None else jax.random.split(key)
        logdet = _logdet(self, self.gx, flat, kx) - _logdet(self, self.gz, z, kz)
        return z.reshape(x.shape), logdet

    def inverse(self, z, key=None):
        z = check_finite(self, z)
        flat = z.reshape(-1)
        return self._solve(self.gx, self.gz, flat).reshape(z.shape)
