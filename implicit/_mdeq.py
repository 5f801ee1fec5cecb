r"""`MDEQ`: a multiscale deep-equilibrium model (Bai, Koltun and Kolter 2020,
"Multiscale deep equilibrium models", NeurIPS).

The state is a tuple of feature maps at n resolutions, z = (z_1, ..., z_n), branch i of
shape (C_i, S / 2^(i-1)) for a highest-resolution spatial shape S (a length L in 1-D,
(H, W) in 2-D). One application of the map f is

    b_i   = ReLU(z_i + GN(conv(m_i * ReLU(GN(conv(z_i)))) + [i = 1] u))  (residual block)
    z_i'  = GN(ReLU(sum_j F_ij(b_j)))                                   (fusion)

with u = injection(x) added into the highest resolution only, m_i the variational
dropout mask of branch i (one mask per forward solve, held fixed across iterations;
1 without dropout), F_ii the identity, F_ij for j < i (a higher resolution into a
lower one) i - j strided 3-wide convolutions, and F_ij for j > i a 1x1 convolution
followed by nearest-neighbour upsampling by 2^(j-i). Every branch receives the sum of
all branches, so the resolutions are coupled, and all of them are solved as ONE fixed
point z* = f(z*, u) by `innerloop.fixed_point` (the tuple is the state pytree), with
any solver and any gradient mode.

Training aids of the paper, and of `DEQ`:

- Variational dropout (Gal and Ghahramani 2016): the mask is drawn once per call from
  its `key` and passed to f as a constant, so f is one map and z* one fixed point.
- Weight normalisation (Salimans and Kingma 2016) of every convolution,
  w = g v / ||v|| per output channel (`weight_norm=True`).
- Warm-up: for training steps below `warmup_steps` the call runs the same f as a
  weight-tied explicit network of `warmup_depth` layers, z^[k+1] = f(z^[k], u) from
  z^[0] = 0, differentiated by backpropagation through the layers; afterwards it
  solves for the equilibrium and differentiates it with `grad`.
- Jacobian regularisation (`jac_reg`): `stats.jac_loss` as in `DEQ`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from innerloop._shared import check_positive_float, check_positive_int, final_result
from innerloop.implicit._deq import DEQStats, jacobian_frobenius
from innerloop.implicit._fixed_point import fixed_point
from innerloop.implicit._modes import AbstractGradient, Implicit
from innerloop.solvers import AbstractSolver, Anderson


def _conv(dims, c_in, c_out, kernel, stride, weight_norm, dtype, key):
    conv = eqx.nn.Conv(dims, c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                       dtype=dtype, key=key)
    return eqx.nn.WeightNorm(conv) if weight_norm else conv


class _ResidualBlock(eqx.Module):
    conv1: Any
    norm1: eqx.nn.GroupNorm
    conv2: Any
    norm2: eqx.nn.GroupNorm

    def __call__(self, z, u, mask):
        h = jax.nn.relu(self.norm1(self.conv1(z)))
        if mask is not None:
            h = h * mask
        h = self.norm2(self.conv2(h))
        if u is not None:
            h = h + u
        return jax.nn.relu(z + h)


class _Down(eqx.Module):
    """Higher resolution j into lower resolution i: i - j strided convolutions, each
    followed by GroupNorm, with a ReLU between them."""

    convs: tuple
    norms: tuple

    def __call__(self, x):
        for k, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if k:
                x = jax.nn.relu(x)
            x = norm(conv(x))
        return x


class _Up(eqx.Module):
    """Lower resolution j into higher resolution i: 1x1 convolution, GroupNorm, then
    nearest-neighbour upsampling by `factor` along every spatial axis."""

    conv: Any
    norm: eqx.nn.GroupNorm
    factor: int = eqx.field(static=True)

    def __call__(self, x):
        x = self.norm(self.conv(x))
        for axis in range(1, x.ndim):
            x = jnp.repeat(x, self.factor, axis=axis)
        return x


class MultiscaleCell(eqx.Module):
    """The map f of an `MDEQ`: `cell(z, u, masks) -> z'` on the tuple of branches
    (`masks` None, or one array per branch shaped like it); see the module docstring.
    It holds every parameter of f; the injection is outside it."""

    blocks: tuple
    fuse: tuple  # fuse[i][j]: branch j into branch i (None on the diagonal)
    norms: tuple

    def __call__(self, z, u, masks=None):
        n = len(self.blocks)
        masks = (None,) * n if masks is None else masks
        b = [blk(zi, u if i == 0 else None, m)
             for i, (blk, zi, m) in enumerate(zip(self.blocks, z, masks))]
        out = []
        for i in range(n):
            total = b[i]
            for j in range(n):
                if j != i:
                    total = total + self.fuse[i][j](b[j])
            out.append(self.norms[i](jax.nn.relu(total)))
        return tuple(out)


class MDEQ(eqx.Module):
    r"""A multiscale deep-equilibrium model: z* = f(z*, injection(x)) on a tuple of
    resolutions (see the module docstring for f).

        mdeq = MDEQ(in_channels=1, channels=(16, 32, 64), shape=40, key=key)
        z_star, stats = mdeq(x)                        # x: (1, 40); z_star: a tuple of
                                                       # (16, 40), (32, 20), (64, 10)
        z_star, stats = mdeq(xs, batched=True)         # a batch, each example its own
        z_star, stats = mdeq(x, key=key)               # dropout > 0: one mask per call
        z_star, stats = mdeq(x, key=key, step=i)       # warm-up: unrolled for i < N

    Arguments:

    - `in_channels`: channels of the input x, shaped (in_channels, *shape) per example.
    - `channels`: C_1, ..., C_n, the channel count of each branch (highest resolution
      first); n = len(channels) branches. Each must be divisible by `groups`.
    - `shape`: the spatial shape of the highest resolution, an int (1-D, a length) or a
      tuple ((H, W) for 2-D). Branch i has shape // 2^(i-1) along each axis, so every
      axis must be divisible by 2^(n-1).
    - `key`: PRNG key for the initial parameters.
    - `groups`: GroupNorm groups (default 4); `kernel_size`: of the residual blocks'
      convolutions (odd, default 3).
    - `dropout`: variational dropout rate p in the residual blocks (default 0). With
      p > 0 a call needs a `key` (or `inference=True`).
    - `weight_norm`: weight-normalise every convolution (default False).
    - `solver`, `grad`, `tol`, `atol`, `max_steps`: as in `DEQ` (default Anderson(),
      `Implicit(fallback=None)`, 1e-4, tol, 30). Without the NormalCG fallback: an
      MDEQ state has thousands of entries n and NormalCG may take 2n steps, 100 times
      a training step's cost where the adjoint iteration stops short of its tolerance
      (which is then reported, a `BackwardNotConvergedWarning`).
    - `jac_reg`, `jac_samples`: as in `DEQ`; the call then needs a `key`.
    - `warmup_steps`, `warmup_depth`: training steps (the call's `step`) below
      `warmup_steps` run f as a weight-tied explicit network of `warmup_depth`
      layers (default `max_steps`) differentiated by backpropagation.
    - `dtype`: of the parameters (default JAX's default float).

    The fields: `injection` (a convolution in_channels -> C_1), `cell` (a
    `MultiscaleCell`, the map f) and the static configuration.

    Returns `(z_star, stats)`: z_star the tuple of branches, stats a `DEQStats`
    (`iterates`, `correction_steps` and `trace` are None). A call with `depth=L` (or in
    warm-up) reports `steps = L` and the residual ||f(z^[L]) - z^[L]||.
    """

    injection: Any
    cell: MultiscaleCell
    in_channels: int = eqx.field(static=True)
    channels: tuple[int, ...] = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)
    groups: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    solver: AbstractSolver = eqx.field(static=True)
    grad: AbstractGradient = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    jac_reg: bool = eqx.field(static=True)
    jac_samples: int = eqx.field(static=True)
    warmup_steps: int = eqx.field(static=True)
    warmup_depth: int = eqx.field(static=True)

    def __init__(self, in_channels: int, channels: Sequence[int] = (16, 32, 64),
                 shape: int | Sequence[int] = 40, *, key: jax.Array, groups: int = 4,
                 kernel_size: int = 3, dropout: float = 0.0, weight_norm: bool = False,
                 solver: AbstractSolver | None = None, grad: AbstractGradient | None = None,
                 tol: float = 1e-4, atol: float | None = None, max_steps: int = 30,
                 jac_reg: bool = False, jac_samples: int = 1, warmup_steps: int = 0,
                 warmup_depth: int | None = None, dtype=None):
        check_positive_int("MDEQ: in_channels", in_channels)
        channels = tuple(channels) if isinstance(channels, Sequence) else (channels,)
        if not channels:
            raise ValueError("MDEQ: channels must name at least one branch, got ()")
        for c in channels:
            check_positive_int("MDEQ: every entry of channels", c)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not shape:
            raise ValueError("MDEQ: shape must be a length (1-D) or a tuple such as "
                             "(H, W) (2-D), got ()")
        for s in shape:
            check_positive_int("MDEQ: every entry of shape", s)
        check_positive_int("MDEQ: groups", groups)
        check_positive_int("MDEQ: kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"MDEQ: kernel_size must be odd (same-size convolutions), "
                             f"got {kernel_size}")
        n = len(channels)
        factor = 2 ** (n - 1)
        if any(s % factor for s in shape):
            raise ValueError(
                f"MDEQ: with {n} branches each halves the resolution, so every axis of "
                f"shape must be divisible by 2^{n - 1} = {factor}; got shape {shape}. "
                "Use fewer branches or pad the input.")
        bad = [c for c in channels if c % groups]
        if bad:
            raise ValueError(f"MDEQ: every branch's channel count must be divisible by "
                             f"the GroupNorm groups ({groups}); {bad} in {channels} are "
                             "not. Change channels or groups.")
        if not 0 <= dropout < 1:
            raise ValueError(f"MDEQ: dropout must be in [0, 1), got {dropout!r}")
        solver = Anderson() if solver is None else solver
        grad = Implicit(fallback=None) if grad is None else grad
        if not isinstance(solver, AbstractSolver):
            raise TypeError("MDEQ: solver must be an innerloop solver (e.g. Anderson()), "
                            f"got {solver!r}")
        if not isinstance(grad, AbstractGradient):
            raise TypeError(f"MDEQ: grad must be a gradient mode (e.g. Implicit()), got "
                            f"{grad!r}")
        check_positive_float("MDEQ: tol", tol)
        if atol is not None:
            check_positive_float("MDEQ: atol", atol, allow_zero=True)
        check_positive_int("MDEQ: max_steps", max_steps)
        check_positive_int("MDEQ: jac_samples", jac_samples)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) \
                or warmup_steps < 0:
            raise ValueError(f"MDEQ: warmup_steps must be an integer >= 0, got "
                             f"{warmup_steps!r}")
        warmup_depth = max_steps if warmup_depth is None else warmup_depth
        check_positive_int("MDEQ: warmup_depth", warmup_depth)

        dims = len(shape)
        k_inj, k_blocks, k_fuse = jax.random.split(key, 3)

        def norm(c):
            return eqx.nn.GroupNorm(groups, c, dtype=dtype)

        blocks = []
        for c, kb in zip(channels, jax.random.split(k_blocks, n)):
            k1, k2 = jax.random.split(kb)
            blocks.append(_ResidualBlock(
                _conv(dims, c, c, kernel_size, 1, weight_norm, dtype, k1), norm(c),
                _conv(dims, c, c, kernel_size, 1, weight_norm, dtype, k2), norm(c)))
        fuse_keys = jax.random.split(k_fuse, n * n)
        fuse = []
        for i in range(n):
            row = []
            for j in range(n):
                kij = fuse_keys[i * n + j]
                if j == i:
                    row.append(None)
                elif j < i:  # down: i - j strided convolutions, C_j until the last
                    ks = jax.random.split(kij, i - j)
                    outs = [channels[j]] * (i - j - 1) + [channels[i]]
                    convs = tuple(_conv(dims, channels[j], c_out, 3, 2, weight_norm,
                                        dtype, kk) for c_out, kk in zip(outs, ks))
                    row.append(_Down(convs, tuple(norm(c) for c in outs)))
                else:
                    row.append(_Up(_conv(dims, channels[j], channels[i], 1, 1,
                                         weight_norm, dtype, kij),
                                   norm(channels[i]), 2 ** (j - i)))
            fuse.append(tuple(row))
        self.injection = _conv(dims, in_channels, channels[0], kernel_size, 1, weight_norm,
                               dtype, k_inj)
        self.cell = MultiscaleCell(tuple(blocks), tuple(fuse),
                                   tuple(norm(c) for c in channels))
        self.in_channels = in_channels
        self.channels = channels
        self.shape = shape
        self.groups = groups
        self.dropout = float(dropout)
        self.solver = solver
        self.grad = grad
        self.tol = tol
        self.atol = atol
        self.max_steps = max_steps
        self.jac_reg = jac_reg
        self.jac_samples = jac_samples
        self.warmup_steps = warmup_steps
        self.warmup_depth = warmup_depth

    # ------------------------------------------------------------------ shapes

    @property
    def branch_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shape of each branch of the state, (C_i, *shape / 2^(i-1))."""
        return tuple((c, *(s // 2 ** i for s in self.shape))
                     for i, c in enumerate(self.channels))

    def z_init(self, dtype) -> tuple[jax.Array, ...]:
        """The default initial state: zeros in every branch."""
        return tuple(jnp.zeros(s, dtype) for s in self.branch_shapes)

    def masks(self, key: jax.Array, dtype) -> tuple[jax.Array, ...] | None:
        """The variational dropout masks one solve uses (None when dropout = 0): per
        branch, Bernoulli(1 - p) / (1 - p) shaped like the branch."""
        if self.dropout == 0:
            return None
        keep = 1.0 - self.dropout
        keys = jax.random.split(key, len(self.channels))
        return tuple(jax.random.bernoulli(k, keep, s).astype(dtype) / jnp.asarray(keep, dtype)
                     for k, s in zip(keys, self.branch_shapes))

    # -------------------------------------------------------------------- call

    def __call__(self, x: jax.Array, z0: Any = None, *, key: jax.Array | None = None,
                 batched: bool = False, step: Any = None, depth: int | None = None,
                 inference: bool = False) -> tuple[tuple[jax.Array, ...], DEQStats]:
        """Solve for one example x of shape (in_channels, *shape), or a batch with
        `batched=True` (leading axis N; vmapped, each example stops on its own).

        - `z0`: warm start, a tuple shaped like the state (batched likewise); held
          constant (`stop_gradient`).
        - `key`: PRNG key for the dropout masks and the Jacobian probes (split over the
          batch: one mask per example and call).
        - `step`: the training step, for the warm-up: below `warmup_steps` the call
          runs the unrolled network. A Python int picks the branch when tracing; a
          traced integer compiles both behind `lax.cond`. None: after the warm-up.
        - `depth`: run as a weight-tied network of exactly `depth` layers instead of
          solving (overrides `step`).
        - `inference`: no dropout (evaluation).
        """
        expected = (self.in_channels, *self.shape)
        got = tuple(jnp.shape(x))
        if (got[1:] if batched else got) != expected:
            what = "(N, in_channels, *shape)" if batched else "(in_channels, *shape)"
            raise ValueError(
                f"MDEQ: the input must have shape {what} = "
                f"{('N', *expected) if batched else expected} (the highest resolution), "
                f"got {got}" + ("" if batched or len(got) != len(expected) + 1 else
                                "; pass batched=True for a batch"))
        use_dropout = self.dropout > 0 and not inference
        if (use_dropout or self.jac_reg) and key is None:
            raise ValueError("MDEQ: dropout > 0 and jac_reg=True need a PRNG key: "
                             "mdeq(x, key=key) (or inference=True for no dropout)")
        if depth is not None:
            check_positive_int("MDEQ(...)(depth=...)", depth)
        if not batched:
            return self._one(x, z0, key, step, depth, use_dropout)
        n = got[0]
        keys = None if key is None else jax.random.split(key, n)
        one = lambda x_, z0_, k_: self._one(x_, z0_, k_, step, depth, use_dropout)  # noqa: E731
        return jax.vmap(one, in_axes=(0, None if z0 is None else 0,
                                      None if keys is None else 0))(x, z0, keys)

    def _one(self, x, z0, key, step, depth, use_dropout):
        u = self.injection(x)
        dtype = u.dtype
        # The masks come from `key` itself, so `self.masks(key, dtype)` reproduces them.
        masks = self.masks(key, dtype) if use_dropout else None
        k_jac = None if key is None else jax.random.fold_in(key, 1)
        z0 = self.z_init(dtype) if z0 is None else tuple(z0)
        z0 = lax.stop_gradient(z0)
        theta = (self.cell, u, masks)

        def implicit():
            return self._solve(z0, theta, k_jac)

        def unrolled():
            return self._unrolled(z0, theta, k_jac, depth or self.warmup_depth)

        if depth is not None or self.warmup_steps == 0 or step is None:
            return unrolled() if depth is not None else implicit()
        if isinstance(step, int):
            return unrolled() if step < self.warmup_steps else implicit()
        return lax.cond(jnp.asarray(step) < self.warmup_steps, unrolled, implicit)

    def _jac_loss(self, z, theta, key, dtype):
        if not self.jac_reg:
            return jnp.zeros((), dtype)
        cell, u, masks = theta
        return jacobian_frobenius(lambda z_, u_: cell(z_, u_, masks), lax.stop_gradient(z),
                                  u, key, samples=self.jac_samples)

    def _solve(self, z0, theta, key):
        sol = fixed_point(_apply, z0, theta, solver=self.solver, grad=self.grad,
                          rtol=self.tol, atol=self.atol, max_steps=self.max_steps)
        dtype = sol.residual.dtype
        stats = DEQStats(steps=sol.steps, residual=sol.residual, result=sol.result,
                         converged=sol.converged,
                         jac_loss=self._jac_loss(sol.value, theta, key, dtype))
        return sol.value, stats

    def _unrolled(self, z0, theta, key, depth):
        z = lax.fori_loop(0, depth, lambda _, z: _apply(z, theta), z0)
        params, static = eqx.partition((z, theta), eqx.is_array)
        z_, theta_ = eqx.combine(lax.stop_gradient(params), static)
        fz = _apply(z_, theta_)
        sq = lambda t: sum(jnp.sum(a * a) for a in jax.tree.leaves(t))  # noqa: E731
        r = jnp.sqrt(sq(jax.tree.map(jnp.subtract, fz, z_)))
        atol = self.tol if self.atol is None else self.atol
        ok = r <= atol + self.tol * jnp.sqrt(sq(z_))
        stats = DEQStats(steps=jnp.asarray(depth, jnp.int32), residual=r,
                         result=final_result(ok, r, None), converged=ok,
                         jac_loss=self._jac_loss(z, theta, key, r.dtype))
        return z, stats


def _apply(z, theta):
    cell, u, masks = theta
    return cell(z, u, masks)
