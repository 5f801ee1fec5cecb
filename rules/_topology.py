r"""How Badger experts talk: fixed topologies and attention.

A fixed topology (`FullyConnected`, `Ring`, `Adjacency`) is a *rule* n -> (n, n)
adjacency, so it exists for any number of experts; expert i receives

    m_i = agg_{j in N(i)} (W h_j + b) + E s,

the neighbours' messages summed or averaged (`reduce`), plus a learned embedding of
the slots. `Attention` is learned key-query-value attention among experts and slot
tokens. The equations of both, and how `Badger` uses them, are in
`innerloop.rules._badger`'s docstring.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import numpy as np

__all__ = ["Adjacency", "Attention", "FullyConnected", "Ring"]


def _check_reduce(reduce):
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum'; got {reduce!r}")


class _Topology(eqx.Module):
    """A fixed topology: `adjacency(n)` (an (n, n) numpy array, A[i, j] the weight of
    the message from expert j to expert i) and how messages are aggregated."""

    @abc.abstractmethod
    def adjacency(self, n: int) -> np.ndarray:
        """The (n, n) adjacency for n experts (each topology defines it)."""

    def weights(self, n: int) -> np.ndarray:
        """The (n, n) aggregation matrix: A, or A with rows divided by in-degree."""
        a = np.asarray(self.adjacency(n), np.float64)
        if a.shape != (n, n):
            raise ValueError(f"{type(self).__name__}: the adjacency for {n} experts must "
                             f"have shape ({n}, {n}); got {a.shape}")
        if self.reduce == "mean":
            a = a / np.maximum(np.abs(a).sum(axis=1, keepdims=True), 1e-12)
        return a


class FullyConnected(_Topology):
    """Every expert hears every other (A = 1 - I; with `self_loops`, A = 1)."""

    reduce: str = eqx.field(default="mean", static=True)
    self_loops: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        _check_reduce(self.reduce)

    def adjacency(self, n: int) -> np.ndarray:
        a = np.ones((n, n))
        return a if self.self_loops else a - np.eye(n)


class Ring(_Topology):
    """Experts on a ring; i hears j when 0 < ring distance(i, j) <= k."""

    k: int = eqx.field(default=1, static=True)
    reduce: str = eqx.field(default="mean", static=True)

    def __check_init__(self):
        _check_reduce(self.reduce)
        if int(self.k) < 1:
            raise ValueError(f"Ring: k must be >= 1; got {self.k}")

    def adjacency(self, n: int) -> np.ndarray:
        i = np.arange(n)
        d = np.abs(i[:, None] - i[None, :])
        d = np.minimum(d, n - d)
        return ((d > 0) & (d <= self.k)).astype(np.float64)


class Adjacency(_Topology):
    """Any topology: `rule(n) -> (n, n)` array, or one fixed (n, n) matrix (which then
    only fits that many experts)."""

    rule: Any = eqx.field(static=True)
    reduce: str = eqx.field(default="mean", static=True)

    def __init__(self, rule, reduce: str = "mean"):
        _check_reduce(reduce)
        if not callable(rule):
            m = np.asarray(rule, np.float64)
            if m.ndim != 2 or m.shape[0] != m.shape[1]:
                raise ValueError(f"Adjacency: a fixed matrix must be square; got shape "
                                 f"{m.shape}")
            rule = _FixedMatrix(tuple(map(tuple, m.tolist())))
        self.rule = rule
        self.reduce = reduce

    def adjacency(self, n: int) -> np.ndarray:
        return np.asarray(self.rule(n), np.float64)


class _FixedMatrix:
    """A hashable fixed adjacency matrix (a rule that only accepts its own size)."""

    def __init__(self, rows):
        self.rows = rows

    def __call__(self, n):
        if n != len(self.rows):
            raise ValueError(f"this Adjacency is a fixed {len(self.rows)} x "
                             f"{len(self.rows)} matrix and cannot connect {n} experts; "
                             "pass a rule n -> matrix to run any number of experts")
        return np.asarray(self.rows)

    def __hash__(self):
        return hash(self.rows)

    def __eq__(self, other):
        return isinstance(other, _FixedMatrix) and other.rows == self.rows


class Attention(eqx.Module):
    """Learned key-query-value attention among experts and slot tokens (see the module
    docstring); `key_size` per head, `heads` heads (message_size % heads == 0)."""

    key_size: int = eqx.field(default=16, static=True)
    heads: int = eqx.field(default=2, static=True)
