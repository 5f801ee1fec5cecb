"""The demo's model and data: a DEQ classifier on scikit-learn's digits."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from innerloop.demo._config import (
    ADJOINT_MAX_STEPS,
    HIDDEN,
    MAX_STEPS,
    PHANTOM_DAMPING,
    PHANTOM_K,
    SPLIT_SEED,
    TOL,
    TRUNCATED_K,
    WEIGHT_CAP,
)


class Cell(eqx.Module):
    """z -> tanh(W z + u), with W rescaled to Frobenius norm <= `cap`.

    Since |tanh'| <= 1 and the spectral norm is at most the Frobenius norm, a cap
    below 1 would make the cell a contraction; the demo's cap of 2 only keeps it
    from drifting far away from one."""

    weight: jax.Array
    cap: float | None = eqx.field(static=True, default=WEIGHT_CAP)

    def __init__(self, hidden: int, *, key, cap: float | None = WEIGHT_CAP,
                 dtype=jnp.float32):
        self.weight = (0.5 * jax.random.normal(key, (hidden, hidden), dtype)
                       / math.sqrt(hidden))
        self.cap = cap

    def __call__(self, z, u):
        w = self.weight
        if self.cap is not None:
            w = w * jnp.minimum(1.0, self.cap / jnp.linalg.norm(w))
        return jnp.tanh(w @ z + u)


class Classifier(eqx.Module):
    """A DEQ followed by a linear read-out; called on a batch."""

    deq: Any
    head: eqx.nn.Linear

    def __call__(self, x, *, key=None):
        z, stats = self.deq(x, key=key, batched=True)
        return jax.vmap(self.head)(z), stats


def load_digits_split():
    """Digits scaled to [0, 1]: (x_train, x_test, y_train, y_test), a stratified
    80/20 split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=SPLIT_SEED)


def make_solver(name: str):
    from innerloop.solvers import Anderson, Broyden, Iteration

    return {"anderson": Anderson(memory=5), "broyden": Broyden(memory=10),
            "iteration": Iteration()}[name]


def make_grad(name: str):
    from innerloop.implicit import Implicit, JacobianFree, Phantom, Truncated, Unroll

    return {"implicit": Implicit(max_steps=ADJOINT_MAX_STEPS), "unroll": Unroll(),
            "truncated": Truncated(TRUNCATED_K),
            "phantom": Phantom(PHANTOM_K, PHANTOM_DAMPING),
            "jacobianfree": JacobianFree()}[name]


def make_model(key, *, solver="anderson", grad="implicit", max_steps=MAX_STEPS,
               jac_reg=False, hidden=HIDDEN, n_in=64, n_out=10):
    from innerloop.implicit import DEQ

    # float32 like the data (also under x64, where equinox's default would be float64).
    k_cell, k_inj, k_head = jax.random.split(key, 3)
    f32 = jnp.float32
    deq = DEQ(Cell(hidden, key=k_cell, dtype=f32),
              eqx.nn.Linear(n_in, hidden, key=k_inj, dtype=f32),
              solver=make_solver(solver), grad=make_grad(grad), tol=TOL,
              max_steps=max_steps, jac_reg=jac_reg)
    return Classifier(deq, eqx.nn.Linear(hidden, n_out, key=k_head, dtype=f32))


def with_config(model, **changes):
    """The same parameters with other DEQ settings (`grad`, `solver` by name, or any
    DEQ field such as `max_steps`, `jac_reg`, `trace`)."""
    if isinstance(changes.get("grad"), str):
        changes["grad"] = make_grad(changes["grad"])
    if isinstance(changes.get("solver"), str):
        changes["solver"] = make_solver(changes["solver"])
    return dataclasses.replace(model, deq=dataclasses.replace(model.deq, **changes))


def forward_only(model, **changes):
    """The model for inference: the gradient mode does not change the forward pass,
    so every mode shares one compiled inference function."""
    return with_config(model, grad="jacobianfree", jac_reg=False, correction=(), **changes)
