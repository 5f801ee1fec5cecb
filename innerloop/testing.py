"""Property-testing tools for fixed-point layers: hypothesis strategies and
`check_gradients`, for use in your own test suite.

    from hypothesis import given, settings
    import jax, innerloop as il
    from innerloop.testing import contractive_problems, check_gradients

    jax.config.update("jax_enable_x64", True)  # before hypothesis draws: float64 problems

    @settings(deadline=None)                   # the first example compiles
    @given(contractive_problems(n=8, lipschitz=(0.1, 0.95)))
    def test_my_layer(problem):
        check_gradients(problem.f, problem.z0, problem.theta,
                        solver=il.solvers.Anderson(), rtol=1e-6)

JAX compiles once per shape: the strategies draw values (seeds, Lipschitz
constants, matrices) for a fixed set of shapes, and `check_gradients` jit-compiles
its pieces with the map, solver and mode as static arguments, so repeated examples
reuse the compiled code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from innerloop.implicit import (
    AbstractGradient,
    Implicit,
    JacobianFree,
    Phantom,
    Truncated,
    Unroll,
    fixed_point,
)
from innerloop.solvers import AbstractSolver, Anderson

__all__ = [
    "FixedPointProblem",
    "GradientCheck",
    "check_gradients",
    "contractive_matrices",
    "contractive_problems",
    "dense_implicit_gradient",
    "finite_difference_gradient",
    "pytree_states",
    "default_modes",
    "tanh_map",
    "tanh_problem",
    "STATE_STRUCTURES",
]


# ------------------------------------------------------------------ problems


def tanh_map(z: Any, theta: dict) -> Any:
    """z -> tanh(W z + U x + b) on the flattened state z.

    Lipschitz in z with constant ||W||_2 (tanh is 1-Lipschitz), so it is a
    contraction whenever ||W||_2 < 1. A module-level function, so that jit caches
    hit across examples.
    """
    flat, unravel = ravel_pytree(z)
    out = jnp.tanh(theta["W"] @ flat + theta["U"] @ theta["x"] + theta["b"])
    return unravel(out.astype(flat.dtype))


@dataclasses.dataclass(frozen=True)
class FixedPointProblem:
    """A fixed-point problem z = f(z, theta) drawn by `contractive_problems`."""

    f: Callable[[Any, Any], Any]
    z0: Any
    theta: Any
    lipschitz: float


#: Pytree layouts of the state; each totals `n` entries (`n` must be >= 4).
STATE_STRUCTURES = ("array", "dict", "tuple", "nested")


def _layout(structure: str, n: int, dtype) -> Any:
    def zeros(k, shape=None):
        return jnp.zeros(shape if shape is not None else (k,), dtype)

    if structure == "array":
        return zeros(n)
    if structure == "dict":
        return {"a": zeros(n - n // 2), "b": zeros(n // 2)}
    if structure == "tuple":
        return (zeros(1, ()), zeros(n - 1))
    if structure == "nested":
        return {"h": (zeros(2, (2, 1)), zeros(n - 4)), "c": [zeros(2)]}
    raise ValueError(f"unknown state structure {structure!r}; one of {STATE_STRUCTURES}")


def pytree_states(n: int, dtype=jnp.float64, structures: Sequence[str] = STATE_STRUCTURES):
    """Strategy: a zero initial state with `n` entries in one of `structures`
    (a plain vector, a dict, a tuple with a scalar, or a nested dict/tuple/list)."""
    return st.sampled_from(tuple(structures)).map(lambda s: _layout(s, n, dtype))


def contractive_matrices(n: int, lipschitz: float, seed: int) -> np.ndarray:
    """An n x n matrix with spectral norm exactly `lipschitz` and the other singular
    values drawn uniformly below it (random orthogonal singular vectors)."""
    rng = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(rng.normal(size=(n, n)))
    q2, _ = np.linalg.qr(rng.normal(size=(n, n)))
    s = lipschitz * np.sort(rng.uniform(0.2, 1.0, size=n))[::-1]
    s[0] = lipschitz
    return (q1 * s) @ q2.T


def tanh_problem(n: int = 8, p: int = 4, lipschitz: float = 0.8, seed: int = 0,
                 dtype=jnp.float64, structure: str = "array",
                 scale: float = 1.0) -> FixedPointProblem:
    """A deterministic z = tanh(W z + U x + b) problem with ||W||_2 = `lipschitz`;
    theta = {"W", "U", "x", "b"}, every entry differentiable; z0 = 0 laid out as
    `structure` (one of `STATE_STRUCTURES`)."""
    rng = np.random.default_rng(seed + 1)
    theta = {
        "W": contractive_matrices(n, lipschitz, seed),
        "U": scale * rng.normal(size=(n, p)) / np.sqrt(p),
        "x": rng.normal(size=(p,)),
        "b": 0.5 * rng.normal(size=(n,)),
    }
    theta = {k: jnp.asarray(v, dtype) for k, v in theta.items()}
    return FixedPointProblem(tanh_map, _layout(structure, n, dtype), theta,
                             float(lipschitz))


@st.composite
def contractive_problems(
    draw,
    n: int = 8,
    p: int = 4,
    lipschitz: tuple[float, float] = (0.1, 0.95),
    dtype=jnp.float64,
    structures: Sequence[str] = ("array",),
    scale: tuple[float, float] = (0.1, 2.0),
) -> FixedPointProblem:
    """Strategy: `tanh_problem` with ||W||_2 = L drawn from `lipschitz` (an upper
    end near 1, e.g. (0.97, 0.995), makes I - df/dz nearly singular), a random seed,
    injection scale and state layout. Shapes stay fixed, so jit caches hit."""
    return tanh_problem(
        n, p,
        lipschitz=draw(st.floats(*lipschitz, allow_nan=False)),
        seed=draw(st.integers(0, 2**31 - 1)),
        dtype=dtype,
        structure=draw(st.sampled_from(tuple(structures))),
        scale=draw(st.floats(*scale, allow_nan=False)),
    )


# ------------------------------------------------------------------ references


def _loss(z, cotangent):
    return jnp.vdot(ravel_pytree(z)[0], cotangent)


@eqx.filter_jit
def _solution(f, z0, theta, solver, tol, max_steps):
    return fixed_point(f, z0, theta, solver=solver, tol=tol, max_steps=max_steps)


@eqx.filter_jit
def dense_implicit_gradient(f, z_star, theta, cotangent):
    """The implicit-function-theorem gradient of <cotangent, z*> with respect to the
    inexact leaves of theta, by dense Jacobians: J_theta^T (I - J_z)^{-T} c."""
    flat, unravel = ravel_pytree(z_star)
    diff, static = eqx.partition(theta, eqx.is_inexact_array)

    def flat_f(zf, d):
        return ravel_pytree(f(unravel(zf), eqx.combine(d, static)))[0]

    jz = jax.jacfwd(flat_f)(flat, diff)
    eye = jnp.eye(flat.shape[0], dtype=flat.dtype)
    u = jnp.linalg.solve((eye - jz).T, cotangent)
    _, vjp = jax.vjp(lambda d: flat_f(flat, d), diff)
    return vjp(u)[0]


@eqx.filter_jit
def _mode_gradient(f, z0, theta, cotangent, solver, mode, tol, max_steps):
    diff, static = eqx.partition(theta, eqx.is_inexact_array)

    def loss(d):
        sol = fixed_point(f, z0, eqx.combine(d, static), solver=solver, grad=mode,
                          tol=tol, max_steps=max_steps)
        return _loss(sol.value, cotangent)

    return jax.grad(loss)(diff)


@eqx.filter_jit
def _jvp_vjp(f, z0, theta, cotangent, tangent, solver, mode, tol, max_steps):
    diff, static = eqx.partition(theta, eqx.is_inexact_array)

    def value(d):
        sol = fixed_point(f, z0, eqx.combine(d, static), solver=solver, grad=mode,
                          tol=tol, max_steps=max_steps)
        return ravel_pytree(sol.value)[0]

    _, jv = jax.jvp(value, (diff,), (tangent,))
    _, vjp = jax.vjp(value, diff)
    (vj,) = vjp(cotangent)
    return jnp.vdot(cotangent, jv), _tree_vdot(vj, tangent)


def finite_difference_gradient(f, z0, theta, cotangent, *, solver, tol, max_steps,
                               step: float | None = None, max_entries: int = 400):
    """Central finite differences of <cotangent, z*(theta)> over every inexact entry
    of theta (at most `max_entries`; use float64)."""
    diff, static = eqx.partition(theta, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(diff)
    if flat.size > max_entries:
        raise ValueError(f"theta has {flat.size} entries; finite differences would "
                         f"need {2 * flat.size} solves (max_entries={max_entries})")
    if step is None:
        step = float(jnp.finfo(flat.dtype).eps) ** (1 / 3)

    def loss(fl):
        theta_ = eqx.combine(unravel(fl), static)
        return _solution_loss(f, z0, theta_, cotangent, solver, tol, max_steps)

    eye = np.eye(flat.size, dtype=flat.dtype)
    grads = [(loss(flat + step * e) - loss(flat - step * e)) / (2 * step) for e in eye]
    return unravel(jnp.stack(grads))


@eqx.filter_jit
def _solution_loss(f, z0, theta, cotangent, solver, tol, max_steps):
    sol = fixed_point(f, z0, theta, solver=solver, tol=tol, max_steps=max_steps)
    return _loss(sol.value, cotangent)


# -------------------------------------------------------------------- checks


@dataclasses.dataclass
class GradientCheck:
    """Per mode: relative error ||g - g_ref||_inf / ||g_ref||_inf and the cosine
    between g and g_ref; `jvp_vjp` is the relative gap between <c, J v> computed by
    forward and reverse mode through `Implicit`."""

    reference: str
    errors: dict[str, float]
    cosines: dict[str, float]
    jvp_vjp: float | None
    converged: bool


def _tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _rel_error(g, ref):
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in
              zip(jax.tree.leaves(g), jax.tree.leaves(ref)))
    den = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(ref))
    return num / max(den, 1e-300)


def _cosine(g, ref):
    num = float(_tree_vdot(g, ref))
    den = float(jnp.sqrt(_tree_vdot(g, g) * _tree_vdot(ref, ref)))
    return num / max(den, 1e-300)


def _name(mode: AbstractGradient) -> str:
    return repr(mode).replace("\n", "").replace("  ", "")


def check_gradients(
    f: Callable[[Any, Any], Any],
    z0: Any,
    theta: Any,
    *,
    solver: AbstractSolver | None = None,
    modes: Sequence[AbstractGradient] | None = None,
    reference: str = "dense",
    rtol: float = 1e-6,
    atol: float = 0.0,
    tol: float | None = None,
    max_steps: int = 2000,
    key: jax.Array | None = None,
) -> GradientCheck:
    """Compare the gradient of <c, z*(theta)> (c a random cotangent) under each mode
    with a reference, and raise `AssertionError` naming the mode if an exact mode
    (`Implicit`, `Unroll`, `Checkpointed`) is off by more than
    `atol + rtol * ||g_ref||_inf` in any entry.

    - `reference="dense"`: J_theta^T (I - J_z)^{-T} c from dense Jacobians at a
      tightly solved fixed point; `"finite_differences"`: central differences of the
      loss (2 solves per entry of theta; small problems, float64).
    - `modes`: default `[Implicit(), Unroll()]`. Approximate modes (`Truncated`,
      `Phantom`, `JacobianFree`) are reported, never asserted: their error and cosine
      with the reference are in the returned `GradientCheck`.
    - `tol`: forward tolerance, default 1e-12 in float64 and 1e-6 in float32.

    Also checks forward against reverse mode through `Implicit()`:
    <c, J v> == <J^T c, v> for a random tangent v.
    """
    solver = Anderson() if solver is None else solver
    modes = [Implicit(), Unroll()] if modes is None else list(modes)
    dtype = ravel_pytree(z0)[0].dtype
    if tol is None:
        tol = 1e-12 if dtype == jnp.float64 else 1e-6
    key = jax.random.key(0) if key is None else key
    k1, k2 = jax.random.split(key)
    n = ravel_pytree(z0)[0].size
    cotangent = jax.random.normal(k1, (n,), dtype)

    sol = _solution(f, z0, theta, solver, tol, max_steps)
    converged = bool(jnp.all(sol.converged))
    if not converged:
        raise AssertionError(
            f"check_gradients: the forward solve did not converge to tol={tol} in "
            f"max_steps={max_steps} (residual {float(sol.residual):.3g})")
    if reference == "dense":
        ref = dense_implicit_gradient(f, sol.value, theta, cotangent)
    elif reference == "finite_differences":
        ref = finite_difference_gradient(f, z0, theta, cotangent, solver=solver,
                                         tol=tol, max_steps=max_steps)
    else:
        raise ValueError(f"reference must be 'dense' or 'finite_differences', got "
                         f"{reference!r}")

    errors, cosines, failures = {}, {}, []
    for mode in modes:
        g = _mode_gradient(f, z0, theta, cotangent, solver, mode, tol, max_steps)
        name = _name(mode)
        errors[name] = _rel_error(g, ref)
        cosines[name] = _cosine(g, ref)
        if mode.exact:
            for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(ref)):
                bound = atol + rtol * float(jnp.max(jnp.abs(y)))
                if not float(jnp.max(jnp.abs(x - y))) <= bound:
                    failures.append(f"{name}: relative error {errors[name]:.3g} "
                                    f"> rtol={rtol} against the {reference} reference")
                    break

    diff, _ = eqx.partition(theta, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(diff)
    keys = jax.random.split(k2, len(leaves))
    tangent = jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    fwd, rev = _jvp_vjp(f, z0, theta, cotangent, tangent, solver, Implicit(), tol,
                        max_steps)
    jvp_vjp = abs(float(fwd) - float(rev)) / max(abs(float(rev)), 1e-300)
    if not jvp_vjp <= max(rtol, 100 * float(jnp.finfo(dtype).eps)):
        failures.append(f"forward and reverse mode disagree: <c, Jv> = {float(fwd)!r}, "
                        f"<J^T c, v> = {float(rev)!r}")
    if failures:
        raise AssertionError("check_gradients failed:\n  " + "\n  ".join(failures))
    return GradientCheck(reference, errors, cosines, jvp_vjp, converged)


def default_modes() -> list[AbstractGradient]:
    """Every gradient mode, exact and approximate, with default settings."""
    return [Implicit(), Unroll(), Truncated(5), Phantom(), JacobianFree()]

