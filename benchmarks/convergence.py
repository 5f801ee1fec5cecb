"""Experiment: the convergence guarantees of issue #15, printed.

    python benchmarks/convergence.py

No false "converged" on problems without a solution (float32 and float64), a fixed
point at 0 certified by plain iteration, the default implicit gradient on Jacobians
with eigenvalues outside the unit disc (jaxopt's custom_fixed_point and simple_grads
maps) against the exact (I - A)^{-1}, and root finding on the nonlinear heat equation
with either sign of g. tests/implicit/test_convergence.py asserts each of these.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

import innerloop as il
from innerloop.solvers import Broyden, Chord, Iteration


def no_root(z, _):
    return jnp.stack([jnp.ones_like(z[0]), jnp.tanh(z[1] - 0.5)])


def heat(n=100):
    x = jnp.linspace(0.0, 1.0, n)
    dx = x[1] - x[0]

    def f(y, _):
        lap = (jnp.roll(y, 1) - 2 * y + jnp.roll(y, -1)).at[0].set(0).at[-1].set(0)
        return 0.5 * (y + 0.1 * jnp.sin(y) + 0.2 * lap / (1 + dx) + jnp.sin(jnp.pi * x))

    return f, jnp.zeros(n)


def main():
    for x64 in (False, True):
        with jax.enable_x64(x64):
            d = jnp.float64 if x64 else jnp.float32
            name = d.__name__
            for solver in (Iteration(), None):
                s = il.fixed_point(lambda z, _: z + 1.0, jnp.zeros(3, d), solver=solver,
                                   tol=1e-2, max_steps=1000)
                print(f"{name} z + 1, {solver!r}: converged={bool(s.converged)} "
                      f"result={il.RESULTS[s.result][:25]!r} z={float(s.value[0]):.2f}")
            for solver in (None, Broyden(), Chord()):
                s = il.root(no_root, jnp.asarray([0.5, -0.3], d), solver=solver)
                print(f"{name} [1, tanh(z1 - 1/2)], {solver!r}: converged="
                      f"{bool(s.converged)} result={il.RESULTS[s.result][:25]!r} "
                      f"|g|={float(s.residual):.4f} steps={int(s.steps)}")
            s = il.fixed_point(lambda z, _: 0.9 * z, jnp.ones(4, d), solver=Iteration(),
                               max_steps=200)
            print(f"{name} z = 0.9 z: converged={bool(s.converged)} steps={int(s.steps)} "
                  f"max|z|={float(jnp.max(jnp.abs(s.value))):.2e}")
            rng = np.random.default_rng(0)
            q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
            a = (q * np.linspace(-7, -4, 5)) @ q.T
            amat, th = jnp.asarray(a, d), jnp.asarray(rng.normal(size=5), d)
            rtol = 1e-12 if x64 else 1e-5
            with warnings.catch_warnings():
                warnings.simplefilter("error", il.BackwardNotConvergedWarning)
                jac = jax.jacrev(lambda t: il.fixed_point(
                    lambda z, t: amat @ z + t, jnp.zeros(5, d), t, rtol=rtol,
                    max_steps=200).value)(th)
                jac2 = jax.jacrev(lambda x: il.fixed_point(
                    lambda z, x: -z + x, jnp.zeros(3, d), x, rtol=rtol).value)(
                        jnp.arange(3.0, dtype=d))
            err = np.max(np.abs(np.asarray(jac, np.float64) - np.linalg.inv(np.eye(5) - a)))
            err2 = np.max(np.abs(np.asarray(jac2, np.float64) - 0.5 * np.eye(3)))
            print(f"{name} Implicit(): spectrum [-7, -4] max error {err:.2e}, "
                  f"df/dz = -1 max error {err2:.2e}")
    f, y0 = heat()
    for sign in (1.0, -1.0):
        for solver in (None, Broyden(), Chord()):
            s = il.root(lambda y, _: sign * (f(y, None) - y), y0, solver=solver,
                        max_steps=200)
            print(f"heat equation, sign {sign:+.0f}, {solver!r}: converged="
                  f"{bool(s.converged)} steps={int(s.steps)} |g|={float(s.residual):.1e}")


if __name__ == "__main__":
    main()
