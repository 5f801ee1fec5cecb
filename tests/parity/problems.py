"""Problems and expected answers for the parity suite, as plain functions.

The mathematics of these problems (maps, data, initial points, answers and tolerances)
comes from the test suites of two peer libraries; the code here is written afresh
for innerloop's API. Each problem carries a one-line note of the peer file it comes
from:

- jaxopt: github.com/google/jaxopt, tests/*.py
- optimistix: github.com/patrick-kidger/optimistix, tests/helpers.py and
  tests/test_fixed_point.py, tests/test_root_find.py

Conventions. A fixed-point map is `f(z, theta) -> z`, a root problem `g(z, theta)`
(solve g = 0). Data are built by functions that take a dtype, so that a test builds
them inside its precision context (`jax.enable_x64`). Expected answers are numpy
float64 (computed in closed form, or by an independent numpy reference solve).
Every map is written dtype-clean (no silent promotion), so that it also runs under
`jax.numpy_dtype_promotion("strict")`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

# Closed-form constants.
DOTTIE = 0.7390851332151607  # the real root of cos(z) = z
OMEGA = 0.5671432904097838  # the root of exp(-z) = z (Lambert W(1))


# ============================================================== precision helpers


@dataclasses.dataclass(frozen=True)
class Precision:
    """A floating-point setting for the key cases that run in several precisions.

    `solve_tol`: rtol = atol of the solve; `value_tol`: atol = rtol of the check on
    values and gradients (the peers check gradients to 1e-4 in float32, 1e-8 in
    float64)."""

    name: str
    dtype: Any
    solve_tol: float
    value_tol: float


PRECISIONS = ("float32", "float64", "float64-strict")


@contextlib.contextmanager
def precision_context(name: str):
    """float32 (JAX's default), float64 (x64 on), or float64 with strict dtype
    promotion (any implicit promotion inside the library raises)."""
    if name == "float32":
        yield Precision(name, jnp.float32, 1e-6, 1e-4)
        return
    with jax.enable_x64(True):
        spec = Precision(name, jnp.float64, 1e-12, 1e-8)
        if name == "float64-strict":
            with jax.numpy_dtype_promotion("strict"):
                yield spec
        else:
            yield spec


def tree_np(tree):
    """A pytree of arrays as a pytree of numpy arrays."""
    return jax.tree.map(np.asarray, tree)


def assert_tree_allclose(actual, expected, *, rtol, atol, err_msg=""):
    """Same tree structure, and every leaf close (numpy's rule: |a - e| <= atol +
    rtol |e|)."""
    a_leaves, a_def = jax.tree.flatten(actual)
    e_leaves, e_def = jax.tree.flatten(expected)
    assert a_def == e_def, f"tree structure differs: {a_def} vs {e_def}"
    for a, e in zip(a_leaves, e_leaves):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"shape {a.shape} vs expected {e.shape}"
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=err_msg)


def tree_norm(tree) -> float:
    flat = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])
    return float(np.linalg.norm(flat))


def tree_axpy(h, t, x):
    """x + h * t, leafwise, keeping x's dtype."""
    return jax.tree.map(lambda xi, ti: xi + jnp.asarray(h, xi.dtype) * ti, x, t)


def jvp_and_central_difference(fn, primals, tangents, h):
    """(out, jvp tangent, central difference of fn along the tangents), all from one
    compiled function: the jitted jvp is also evaluated at primals +- h tangents and
    only its primal output is used there."""
    jvp = jax.jit(lambda p, t: jax.jvp(fn, p, t))
    out, t_out = jvp(primals, tangents)
    plus = tree_np(jvp(tree_axpy(h, tangents, primals), tangents)[0])
    minus = tree_np(jvp(tree_axpy(-h, tangents, primals), tangents)[0])
    fd = jax.tree.map(lambda a, b: (a - b) / (2 * h), plus, minus)
    return out, t_out, fd


def tree_vdot(a, b):
    """sum over leaves of <a, b> (no conjugation)."""
    return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def vjp_with_value(fn, x, w):
    """(fn(x), the gradient of <w, fn(x)> w.r.t. x): one reverse pass with cotangent
    w (the check jaxopt's check_grads makes, with a random w)."""

    def loss(y):
        out = fn(y)
        return tree_vdot(w, out), out

    g, out = jax.grad(loss, has_aux=True)(x)
    return out, g


def reverse_and_central_difference(fn, x, u, w, h):
    """<w, J u> twice: from the gradient of <w, fn> (reverse mode), and by central
    differences of <w, fn> along u; both from one compiled function."""
    value_and_grad = jax.jit(jax.value_and_grad(lambda y: tree_vdot(w, fn(y))))
    analytic = float(tree_vdot(value_and_grad(x)[1], u))
    plus = float(value_and_grad(tree_axpy(h, u, x))[0])
    minus = float(value_and_grad(tree_axpy(-h, u, x))[0])
    return analytic, (plus - minus) / (2 * h)


def random_like(tree, seed):
    """Standard normal arrays shaped like `tree` (complex: both parts normal)."""
    rng = np.random.RandomState(seed)

    def one(x):
        x = jnp.asarray(x)
        r = rng.standard_normal(x.shape)
        if jnp.iscomplexobj(x):
            r = r + 1j * rng.standard_normal(x.shape)
        return jnp.asarray(r, x.dtype)

    return jax.tree.map(one, tree)


def cast_tree(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


# ================================================================ jaxopt problems

# --- Geometric decay. jaxopt tests/fixed_point_iteration_test.py, anderson_test.py,
# picard_test.py (as a fixed point, tol 1e-5) and broyden_test.py (as the root of
# f(z) - z, maxiter 10): from [1, 0.4, -0.2] the solution has norm < 1e-2 (the 0.999
# ratio makes the answer 0 reachable only to that accuracy).
GEOMETRIC_RATIOS = (0.9, 0.99, 0.999)


def geometric_decay(z, theta):
    return jnp.asarray(GEOMETRIC_RATIOS, z.dtype) * z


def geometric_decay_root(z, theta):
    return geometric_decay(z, theta) - z


def geometric_decay_z0(dtype):
    return jnp.asarray([1.0, 0.4, -0.2], dtype)


# --- Sine-polynomial pytree. jaxopt tests/fixed_point_iteration_test.py and
# picard_test.py: z = (sin(a) a^2, b^3) from a = [0.6, 0, -0.1], b = [[0.7], [0.5]];
# tol 1e-6, maxiter 100; the answer is all zeros (another fixed point a ~ 1.11 exists).
def sin_polynomial(z, theta):
    a, b = z
    return jnp.sin(a) * a**2, b**3


def sin_polynomial_z0(dtype):
    return jnp.asarray([0.6, 0.0, -0.1], dtype), jnp.asarray([[0.7], [0.5]], dtype)


def sin_polynomial_expected():
    return np.zeros(3), np.zeros((2, 1))


# jaxopt tests/broyden_test.py poses the same map as the root of f(z) - z
# (tol 1e-6, maxiter 100) and checks only ||g(z)|| < 1e-6: from b = 0.5 Newton-type
# steps may reach the other roots b = +-1 of b^3 - b.
def sin_polynomial_root(z, theta):
    fa, fb = sin_polynomial(z, theta)
    a, b = z
    return fa - a, fb - b


# jaxopt tests/anderson_test.py adds a leaf that flips sign, c -> -c (eigenvalue -1:
# plain iteration oscillates forever, Anderson extrapolates): z = (a, (b, c)) with
# c0 = [[-1, 0, 2, -0.4]] / 3; history 3, ridge 1e-6, tol 1e-6; answer all zeros.
def sin_polynomial_flip(z, theta):
    a, (b, c) = z
    return jnp.sin(a) * a**2, (b**3, -c)


def sin_polynomial_flip_z0(dtype):
    a, b = sin_polynomial_z0(dtype)
    c = jnp.asarray([[-1.0, 0.0, 2.0, -0.4]], dtype) / 3
    return a, (b, c)


def sin_polynomial_flip_expected():
    return np.zeros(3), (np.zeros((2, 1)), np.zeros((1, 4)))


# --- Cosine plus a shift. jaxopt fixed_point_iteration_test / picard_test /
# broyden_test (tol 1e-2, checked to atol 1e-2) and anderson_test (history 4,
# ridge 1e-6, tol 1e-6, maxiter 100, checked to float32 precision):
# z = cos(z) + theta, theta = [0, pi/2], z0 = [0.3, pi/4]; answer [0.739085..., pi/2].
# At the second entry df/dz = -sin(pi/2) = -1: not a contraction there.
# The `test_simple_grads` cases differentiate the same map from z0 = [0, pi/4]
# (fixed_point_iteration_test, picard_test, broyden_test) or [0, pi/2]
# (anderson_test): dz*/dtheta = diag(1 / (1 + sin z*)) = diag(0.5975..., 0.5).
def cos_shift(z, theta):
    return jnp.cos(z) + theta


def cos_shift_root(z, theta):
    return jnp.cos(z) + theta - z


def cos_shift_theta(dtype):
    return jnp.asarray([0.0, math.pi / 2], dtype)


def cos_shift_z0(dtype, start="fixed_point_test"):
    second = {"fixed_point_test": math.pi / 4, "grads": math.pi / 4,
              "anderson_grads": math.pi / 2}[start]
    first = 0.3 if start == "fixed_point_test" else 0.0
    return jnp.asarray([first, second], dtype)


def cos_shift_expected():
    return np.array([DOTTIE, math.pi / 2])


def cos_shift_jacobian(z_star=None):
    """dz*/dtheta: (I - df/dz)^-1 df/dtheta = diag(1 / (1 + sin z*))."""
    z = cos_shift_expected() if z_star is None else np.asarray(z_star, np.float64)
    return np.diag(1.0 / (1.0 + np.sin(z)))


def cos_shift_second_derivative(z_star=DOTTIE):
    """d^2 z*/dtheta^2 of the scalar problem z = cos z + theta."""
    return -math.cos(z_star) / (1.0 + math.sin(z_star)) ** 3


# --- Scalars. jaxopt tests/anderson_test.py (test_support_for_scalars): z = z/2 + 1/2
# on a 0-d array from 0, tol 1e-4; answer 1.
def half_affine(z, theta):
    return 0.5 * z + 0.5


# --- Logistic auxiliary output. jaxopt fixed_point_iteration_test / picard_test /
# broyden_test (test_has_aux): the state z -> cos z (answer 0.739085, checked to
# 1e-4 by broyden_test) carries a logistic-map side output r y (1 - y), r = 3.95.
# Here the side output is the logistic map of the state itself, so its value at the
# solution is known: 3.95 * D * (1 - D).
LOGISTIC_R = 3.95


def cos_with_logistic_aux(z, r):
    return jnp.cos(z), r * z * (1 - z)


def cos_with_logistic_aux_root(z, r):
    fz, aux = cos_with_logistic_aux(z, r)
    return fz - z, aux


def logistic_aux_expected():
    return np.array([LOGISTIC_R * DOTTIE * (1 - DOTTIE)])


# --- Rotations. jaxopt tests/anderson_test.py (test_rotation_map): z -> R(z - c) + c
# with R block-diagonal 2x2 rotations by pi / [2, 3, 4, 5, 6, 1.27, 1.73] and centre
# c = [1, ..., 14]; Banach's theorem does not apply (|eigenvalues| = 1), Anderson
# (history 10, ridge 1e-7, tol 1e-4, maxiter 400) finds c to atol 1e-3.
ROTATION_DIVISORS = (2.0, 3.0, 4.0, 5.0, 6.0, 1.27, 1.73)


def rotation(z, theta):
    angles, centre = theta
    u = (z - centre).reshape(-1, 2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    rotated = jnp.stack([cos * u[:, 0] - sin * u[:, 1], sin * u[:, 0] + cos * u[:, 1]],
                        axis=1)
    return rotated.reshape(-1) + centre


def rotation_theta(dtype):
    angles = jnp.asarray([math.pi / d for d in ROTATION_DIVISORS], dtype)
    centre = jnp.arange(1, 2 * len(ROTATION_DIVISORS) + 1).astype(dtype)
    return angles, centre


def rotation_z0(dtype):
    return jnp.asarray(np.random.RandomState(0).uniform(size=2 * len(ROTATION_DIVISORS)),
                       dtype)


# --- Affine contraction. jaxopt fixed_point_iteration_test / anderson_test /
# picard_test / broyden_test (test_affine_contractive_mapping): n = 200,
# M = (U + U^T) scaled to spectral radius < 1/2 (U uniform in [-1, 1]), b uniform in
# [0, 1]; z = M z + b from 0, tol 1e-6, maxiter 100 (5000 for Broyden); gradients
# w.r.t. (M, b) checked against finite differences. Closed form: z* = (I - M)^-1 b.
AFFINE_N = 200


@functools.cache
def _affine_np(n=AFFINE_N):
    rng = np.random.RandomState(0)
    u = rng.uniform(-1.0, 1.0, (n, n))
    m = u + u.T
    m = m / (2 * np.max(np.abs(np.linalg.eigvalsh(m))) + 1e-4)
    b = rng.uniform(0.0, 1.0, n)
    w = np.cos(np.arange(n))  # a fixed cotangent for the loss w . z*
    return m, b, w


def affine(z, theta):
    m, b = theta
    return m @ z + b


def affine_root(z, theta):
    return affine(z, theta) - z


def affine_theta(dtype):
    m, b, _ = _affine_np()
    return jnp.asarray(m, dtype), jnp.asarray(b, dtype)


def affine_cotangent(dtype):
    return jnp.asarray(_affine_np()[2], dtype)


def affine_expected():
    m, b, _ = _affine_np()
    return np.linalg.solve(np.eye(len(b)) - m, b)


def affine_loss_gradients():
    """d(w . z*)/d(M, b) in closed form: u = (I - M)^-T w, dL/db = u, dL/dM = u z*^T."""
    m, b, w = _affine_np()
    z = affine_expected()
    u = np.linalg.solve((np.eye(len(b)) - m).T, w)
    return np.outer(u, z), u


# --- Flat landscape. jaxopt fixed_point_iteration_test / anderson_test /
# picard_test / broyden_test (test_grads_flat_landscape): z = theta * z with
# theta = [0.05, 0.2] from [1, -0.5]; the fixed point is 0 for every |theta| < 1,
# so dz*/dtheta = 0 (hard for finite differences). Some variants carry an auxiliary
# output: aux = z (fixed_point_iteration_test, broyden_test) or z + 1 (picard_test).
def flat_landscape(z, theta):
    return theta * z


def flat_landscape_aux(z, theta):
    return theta * z, z + 1


def flat_landscape_root_aux(z, theta):
    return theta * z - z, z


def flat_landscape_theta(dtype):
    return jnp.asarray([0.05, 0.2], dtype)


def flat_landscape_z0(dtype):
    return jnp.asarray([1.0, -0.5], dtype)


# --- Ridge regression. jaxopt tests/implicit_diff_test.py: the minimiser of
# 0.5 mean((X w - y)^2) + 0.5 lam ||w||^2, lam = 5, n = 10 samples, 3 features
# (there from sklearn's make_regression), solved in closed form
# w = (X^T X + lam n I)^-1 X^T y and differentiated as the root of the gradient
# (custom_root) or as the fixed point of w - gradient (custom_fixed_point); jacobians
# w.r.t. lam checked against finite differences. Here X is built with known Gram
# spectrum X^T X / n in {0.2, 0.9, 1.6}: the fixed-point map w - grad has Jacobian
# I - (X^T X / n + lam I) with spectrum {-4.2, -4.9, -5.6}, inside [-7, -4] as for
# the peer's data: the map is not a contraction, so no iteration on it converges.
RIDGE_LAM = 5.0
RIDGE_GRAM_EIGS = (0.2, 0.9, 1.6)


@functools.cache
def _ridge_np():
    rng = np.random.RandomState(0)
    n, d = 10, 3
    q, _ = np.linalg.qr(rng.standard_normal((n, d)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = q @ np.diag(np.sqrt(n * np.asarray(RIDGE_GRAM_EIGS))) @ v.T
    y = x @ np.array([1.5, -2.0, 0.5]) + 0.1 * rng.standard_normal(n)
    return x, y


def ridge_theta(dtype):
    x, y = _ridge_np()
    return jnp.asarray(RIDGE_LAM, dtype), jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def ridge_objective(w, theta):
    lam, x, y = theta
    r = x @ w - y
    return 0.5 * jnp.mean(r**2) + 0.5 * lam * jnp.sum(w**2)


def ridge_optimality(w, theta):
    return jax.grad(ridge_objective)(w, theta)


def ridge_gradient_step(w, theta):
    return w - ridge_optimality(w, theta)


def ridge_closed_form(theta):
    lam, x, y = theta
    n, d = x.shape
    a = x.T @ x + lam * n * jnp.eye(d, dtype=x.dtype)
    return jnp.linalg.solve(a, x.T @ y)


def ridge_expected():
    x, y = _ridge_np()
    n, d = x.shape
    return np.linalg.solve(x.T @ x + RIDGE_LAM * n * np.eye(d), x.T @ y)


def ridge_expected_dlam():
    """dw/dlam = -(X^T X + lam n I)^-1 n w."""
    x, _ = _ridge_np()
    n, d = x.shape
    return -np.linalg.solve(x.T @ x + RIDGE_LAM * n * np.eye(d), n * ridge_expected())


def ridge_gradient_step_spectrum():
    x, _ = _ridge_np()
    n, d = x.shape
    return np.linalg.eigvalsh(np.eye(d) - (x.T @ x / n + RIDGE_LAM * np.eye(d)))


# --- Simplex projection by bisection. jaxopt tests/bisection_test.py and
# root_finding_test.py: the projection of x (50 standard normals, float32) onto the
# probability simplex is max(x - tau, 0), tau the root of the decreasing
# phi(tau) = sum(max(x - tau, 0)) - 1 in the bracket [min(x) - 1/n, max(x)]; checked
# against the sort-based projection (atol 1e-4) and its Jacobian (atol 1e-5).
# A bracket with no sign change ([max x, max x] or [min x - 1/n, min x - 1/n]) is
# an error.
def simplex_threshold(tau, x):
    return jnp.sum(jnp.maximum(x - tau, 0)) - 1


def simplex_x(seed, dtype):
    return jnp.asarray(np.random.RandomState(seed).randn(50), dtype)


def simplex_bracket(x):
    x = jax.lax.stop_gradient(x)
    return jnp.min(x) - 1 / x.shape[0], jnp.max(x)


def projection_simplex_np(x):
    x = np.asarray(x, np.float64)
    u = np.sort(x)[::-1]
    css = np.cumsum(u)
    j = np.arange(1, len(x) + 1)
    rho = np.max(np.nonzero(u - (css - 1) / j > 0)[0]) + 1
    tau = (css[rho - 1] - 1) / rho
    return np.maximum(x - tau, 0)


def projection_simplex_jacobian_np(x):
    """On the support S: I - 1 1^T / |S|; zero off it."""
    s = (projection_simplex_np(x) > 0).astype(np.float64)
    return np.diag(s) - np.outer(s, s) / s.sum()


# ============================================================= optimistix problems
#
# optimistix tests/helpers.py `fixed_point_fn_init_args`: maps from ODE/PDE steps,
# solved by test_fixed_point.py (FixedPointIteration, rtol = atol = 1e-6,
# max_steps 10_000, checked f(z) ~ z to 1e-4, x64 on) and, as roots of f(z) - z, by
# test_root_find.py (Newton and Chord, rtol = atol = 1e-6, checked |g| <= 1e-5);
# tangents by finite differences to 1e-3 in float64 and complex128. The answers below
# are exact (closed form) or from a numpy float64 reference iteration.


def ones_pytree(dtype):
    """optimistix's 28-entry initial pytree: ({"a": 0.5 (3, 2, 4)}, 0.5 (4,))."""
    return {"a": jnp.full((3, 2, 4), 0.5, dtype)}, jnp.full((4,), 0.5, dtype)


def _like_ones_pytree(value):
    return {"a": np.full((3, 2, 4), value)}, np.full((4,), value)


def _cos(z, c):
    return jax.tree.map(lambda x: jnp.cos(c * x), z)


def _sin(z, c):
    return jax.tree.map(lambda x: jnp.sin(c * x), z)


def _exponential(z, c):
    return jax.tree.map(lambda x: jnp.exp(-c * x), z)


def _mlp(z, params):
    y, unravel = ravel_pytree(z)
    w1, b1, w2, b2 = params
    return unravel(0.1 * (w2 @ jax.nn.softplus(w1 @ y + b1) + b2))


@functools.cache
def _mlp_params_np(size=28, width=8):
    # optimistix uses equinox's default MLP initialisation (uniform in +-1/sqrt(fan_in))
    # with key 42; the same distribution, drawn with numpy.
    rng = np.random.RandomState(42)
    lim1, lim2 = 1 / math.sqrt(size), 1 / math.sqrt(width)
    return (rng.uniform(-lim1, lim1, (width, size)), rng.uniform(-lim1, lim1, width),
            rng.uniform(-lim2, lim2, (size, width)), rng.uniform(-lim2, lim2, size))


def _mlp_expected():
    w1, b1, w2, b2 = _mlp_params_np()
    y = np.full(28, 0.5)
    for _ in range(200):  # a contraction with factor ~0.1: converged to rounding
        y = 0.1 * (w2 @ np.logaddexp(w1 @ y + b1, 0.0) + b2)
    return {"a": y[:24].reshape(3, 2, 4)}, y[24:]


HEAT_POINTS = 100


def _heat(z, c):
    # One Crank-Nicolson step (t 0 -> 1) of dy/dt = (1 - y) L y from y0 = x^2 on
    # 100 points of [-1, 1]. The peer's Laplacian helper builds its stencil but
    # returns its input, so the step it poses uses L = identity:
    # f(y) = c (y0 + (f(y0) + (1 - y) y) / 2), f(y0) = (1 - y0) y0.
    x = jnp.linspace(-1.0, 1.0, HEAT_POINTS).astype(z.dtype)
    y0 = x**2
    f0 = (1 - y0) * y0
    return c * (y0 + 0.5 * ((1 - z) * z + f0))


def heat_expected():
    # c = 1: z^2 + z - (3 y0 - y0^2) = 0, the root in [0, 1].
    y0 = np.linspace(-1.0, 1.0, HEAT_POINTS) ** 2
    return (-1 + np.sqrt(1 + 12 * y0 - 4 * y0**2)) / 2


MIDPOINT_DT = 1 / 16


def _midpoint_y_linear(z, m):
    y, unravel = ravel_pytree(z)  # y1 = y0 + dt M (y0 + y1) / 2 from y0 = 0
    return unravel(MIDPOINT_DT * (m @ (0.5 * y)))


def _midpoint_f_linear(z, m):
    y, unravel = ravel_pytree(z)  # the same step in "f space": k = M (y0 + dt k)
    return unravel(m @ (MIDPOINT_DT * y))


def _midpoint_k_linear(z, m):
    y, unravel = ravel_pytree(z)  # and in "k space": k = dt M (y0 + k)
    return unravel(MIDPOINT_DT * (m @ y))


@functools.cache
def _matrix_np(size=28):
    # optimistix: a standard normal 28x28 matrix (jax key 19); drawn with numpy here.
    return np.random.RandomState(19).standard_normal((size, size))


def _robertson(y, k):
    k1, k2, k3 = k
    return jnp.stack([-k1 * y[0] + k3 * y[1] * y[2],
                      k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
                      k2 * y[1] ** 2])


ROBERTSON_DT = 1e-8


def _midpoint_y_robertson(z, k):
    y, unravel = ravel_pytree(z)
    return unravel(ROBERTSON_DT * _robertson(0.5 * y, k))


def _midpoint_f_robertson(z, k):
    y, unravel = ravel_pytree(z)
    return unravel(_robertson(ROBERTSON_DT * y, k))


def _midpoint_k_robertson(z, k):
    y, unravel = ravel_pytree(z)
    return unravel(ROBERTSON_DT * _robertson(y, k))


def _robertson_z0(dtype):
    return jnp.ones((2,), dtype), {"b": jnp.asarray(1.0, dtype)}


def _robertson_zero():
    return np.zeros(2), {"b": np.zeros(())}


@dataclasses.dataclass(frozen=True)
class FixedPointCase:
    """A fixed-point problem of optimistix's list.

    `expected()`: the answer (numpy float64 tree); `value_atol`: how close a solve at
    rtol = atol = 1e-6 can be asked to come (larger only where the fixed point is
    degenerate); `max_steps`: for plain iteration; `complex_ok`: the peer also runs
    its tangent test in complex128; `jvp_ok`: dz*/d(args) exists (I - df/dz
    invertible at the answer)."""

    name: str
    f: Callable
    z0: Callable
    theta: Callable
    expected: Callable
    value_atol: float = 1e-4
    max_steps: int = 10_000
    complex_ok: bool = True
    jvp_ok: bool = True

    def __repr__(self):
        return self.name


def _scalar(value):
    return lambda dtype: jnp.asarray(value, dtype)


OPTIMISTIX_FIXED_POINTS = (
    # helpers.py `_cos` (older versions of the list), c = 1: every entry -> 0.739085.
    FixedPointCase("cos", _cos, ones_pytree, _scalar(1.0),
                   lambda: _like_ones_pytree(DOTTIE)),
    # helpers.py `_sin` (newer versions), c = 1: every entry -> 0, where
    # df/dz = 1: iteration converges like sqrt(3/k), so an entry reaches only
    # ~(6 tol)^(1/3) ~ 0.02 and the 2-norm over 28 entries needs more steps than
    # the peer's max-norm test.
    FixedPointCase("sin", _sin, ones_pytree, _scalar(1.0), lambda: _like_ones_pytree(0.0),
                   value_atol=0.02, max_steps=60_000, complex_ok=False, jvp_ok=False),
    # helpers.py `_exponential`, c = 1: every entry -> W(1) = 0.567143.
    FixedPointCase("exponential", _exponential, ones_pytree, _scalar(1.0),
                   lambda: _like_ones_pytree(OMEGA)),
    # helpers.py `_nn`: z -> 0.1 MLP(z), softplus, width 8 (reference: numpy iteration).
    FixedPointCase("mlp", _mlp, ones_pytree,
                   lambda dtype: cast_tree(_mlp_params_np(), dtype), _mlp_expected,
                   complex_ok=False),
    # helpers.py `_nonlinear_heat_pde` from hundred = ones(100), c = 1 (closed form).
    FixedPointCase("nonlinear_heat", _heat, lambda dtype: jnp.ones(HEAT_POINTS, dtype),
                   _scalar(1.0), heat_expected),
    # helpers.py `_midpoint_{y,f,k}_linear` with the 28x28 normal matrix: z -> (dt/2) M z
    # or dt M z, dt = 1/16: the fixed point is 0.
    FixedPointCase("midpoint_y_linear", _midpoint_y_linear, ones_pytree,
                   lambda dtype: jnp.asarray(_matrix_np(), dtype),
                   lambda: _like_ones_pytree(0.0)),
    FixedPointCase("midpoint_f_linear", _midpoint_f_linear, ones_pytree,
                   lambda dtype: jnp.asarray(_matrix_np(), dtype),
                   lambda: _like_ones_pytree(0.0)),
    FixedPointCase("midpoint_k_linear", _midpoint_k_linear, ones_pytree,
                   lambda dtype: jnp.asarray(_matrix_np(), dtype),
                   lambda: _like_ones_pytree(0.0)),
    # helpers.py `_midpoint_{y,f,k}_nonlinear`: Robertson's stiff kinetics
    # (k = 0.04, 3e7, 1e4), dt = 1e-8, from (ones(2), {"b": 1}): the fixed point is 0.
    FixedPointCase("midpoint_y_robertson", _midpoint_y_robertson, _robertson_z0,
                   lambda dtype: cast_tree((0.04, 3e7, 1e4), dtype), _robertson_zero),
    FixedPointCase("midpoint_f_robertson", _midpoint_f_robertson, _robertson_z0,
                   lambda dtype: cast_tree((0.04, 3e7, 1e4), dtype), _robertson_zero),
    FixedPointCase("midpoint_k_robertson", _midpoint_k_robertson, _robertson_z0,
                   lambda dtype: cast_tree((0.04, 3e7, 1e4), dtype), _robertson_zero),
)

OPTIMISTIX_FIXED_POINTS_BY_NAME = {c.name: c for c in OPTIMISTIX_FIXED_POINTS}


def as_root(f, sign):
    """The root problem of a fixed point, as optimistix writes it (sign = +1:
    g = f(z) - z) or with the opposite sign (sign = -1: g = z - f(z))."""

    def g(z, theta):
        fz = f(z, theta)
        if sign > 0:
            return jax.tree.map(lambda a, b: a - b, fz, z)
        return jax.tree.map(lambda a, b: b - a, fz, z)

    return g


# --- Scalar roots in a bracket. optimistix tests/helpers.py
# `bisection_fn_init_options_args`, solved by test_fixed_point.py::test_bisection
# (Bisection, rtol = atol = 1e-6, checked |g| <= 1e-4) from 1.0: g = f(z) - z for the
# scalar forms of the maps above (linear ones with a 1x1 "matrix"), or g = z - 1.
@dataclasses.dataclass(frozen=True)
class BisectionCase:
    name: str
    g: Callable
    lower: float
    upper: float
    theta: float | None
    expected: float
    value_atol: float = 1e-4

    def __repr__(self):
        return self.name


def _scalar_root(f):
    return lambda z, theta: f(z, theta) - z


OPTIMISTIX_BISECTIONS = (
    BisectionCase("trivial", lambda z, theta: z - 1, 0.5, 2.0, None, 1.0),
    BisectionCase("cos", _scalar_root(lambda z, c: jnp.cos(c * z)), 0.0, 1.0, 1.0, DOTTIE),
    # sin z - z = -z^3/6 + ...: the root 0 is the bracket's end and triple, so
    # |g| <= 1e-6 holds for |z| up to ~0.018.
    BisectionCase("sin", _scalar_root(lambda z, c: jnp.sin(c * z)), 0.0, 1.0, 1.0, 0.0,
                  value_atol=0.02),
    BisectionCase("exponential", _scalar_root(lambda z, c: jnp.exp(-c * z)), 0.0, 1.0,
                  1.0, OMEGA),
    # the root 0 sits at the bracket's lower end in the three linear problems
    BisectionCase("midpoint_y_linear",
                  _scalar_root(lambda z, a: MIDPOINT_DT * (a * (0.5 * z))), 0.0, 1.0,
                  0.5, 0.0),
    BisectionCase("midpoint_f_linear",
                  _scalar_root(lambda z, a: a * (MIDPOINT_DT * z)), 0.0, 1.0, 0.625, 0.0),
    BisectionCase("midpoint_k_linear",
                  _scalar_root(lambda z, a: MIDPOINT_DT * (a * z)), 0.0, 1.0, -0.137, 0.0),
)


# --- Two roots of a five-unknown system. optimistix tests/test_root_find.py
# (test_newton_bounded): z = (a, [[b, c], [d, e]]),
# g = (foo * bar, [[a, c^2], [tanh d, e + 1]]), foo = a + b + c + d + e,
# bar = a - b + c - d + e: roots a = c = d = 0, e = -1, b = +-1. The peer steers to
# each root with bounds; innerloop has none, so each is reached from the peer's
# start next to it. Checked to 1e-4 (Newton) and 1e-2 (Chord); c^2 is a double root.
def five_unknowns(z, theta):
    a, m = z
    b, c, d, e = m[0, 0], m[0, 1], m[1, 0], m[1, 1]
    foo = a + b + c + d + e
    bar = a - b + c - d + e
    return foo * bar, jnp.stack([jnp.stack([a, c**2]), jnp.stack([jnp.tanh(d), e + 1])])


FIVE_UNKNOWNS_STARTS = {
    "b=+1": ((0.1, [[1.1, 0.1], [0.1, -1.1]]), (0.0, [[1.0, 0.0], [0.0, -1.0]])),
    "b=-1": ((0.1, [[-1.1, 0.1], [0.1, -1.1]]), (0.0, [[-1.0, 0.0], [0.0, -1.0]])),
}


# --- tanh roots. optimistix tests/test_root_find.py (test_root_via_min):
# g = (tanh(a + 0.1), [tanh(b - 0.5), tanh(2 c)]) from (0.5, [-0.3, 0.7]); root
# (-0.1, [0.5, 0]). test_bad_root_via_min replaces the first entry by the constant 1:
# no root, the solve must report failure.
def tanh_roots(z, theta):
    a, bc = z
    return jnp.tanh(a + 0.1), jnp.stack([jnp.tanh(bc[0] - 0.5), jnp.tanh(2 * bc[1])])


def tanh_no_root(z, theta):
    a, bc = z
    return jnp.ones_like(a), jnp.stack([jnp.tanh(bc[0] - 0.5), jnp.tanh(2 * bc[1])])


def tanh_z0(dtype):
    return jnp.asarray(0.5, dtype), jnp.asarray([-0.3, 0.7], dtype)


def tanh_expected():
    return np.asarray(-0.1), np.asarray([0.5, 0.0])


# --- Auxiliary output. optimistix tests/test_fixed_point.py / test_root_find.py run
# every problem with a constant side output `smoke_aux`.
def smoke_aux(dtype):
    return jnp.ones((2, 3), dtype), {"smoke_aux": jnp.ones((2,), dtype)}


# --- No fixed point (f(z) = z + 1) and a fixed point at 0: the failure modes and the
# absolute tolerance every solve must honour (optimistix checks `sol.result` codes
# the same way: test_bad_root_via_min, test_newton_chord_small_diff).
def shift_by_one(z, theta):
    return z + 1


def identity_root(z, theta):
    # optimistix test_newton_chord_small_diff: g(y) = y from y = 0 is already solved
    return z


# --------------------------------------------------------------- assertions


def describe(sol) -> str:
    return (f"converged={np.asarray(sol.converged)} steps={np.asarray(sol.steps)} "
            f"residual={np.asarray(sol.residual)}")


def assert_converged(sol) -> None:
    assert bool(np.all(np.asarray(sol.converged))), describe(sol)


def successful(sol) -> bool:
    import innerloop as il

    return bool(np.all(np.asarray(sol.result == il.solvers.RESULTS.successful)))
