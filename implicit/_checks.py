"""Input checks shared by `fixed_point`, `root`, `argmin` and `unroll`: each names
the offending leaf by its path."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def as_float_arrays(tree: Any, name: str, what: str) -> Any:
    """Convert the leaves of `tree` to arrays and require a floating dtype."""

    def convert(path, x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            raise TypeError(f"{name}{jax.tree_util.keystr(path)} has dtype {x.dtype}; "
                            f"{what} must be floating point")
        return x

    return jax.tree_util.tree_map_with_path(convert, tree)


def check_like(reference: Any, out: Any, *, ref_name: str, call: str,
               prefix: str = "", hint: str = "") -> None:
    """Require `out` (shape structs) to match `reference` in pytree structure and in
    every leaf's shape and dtype."""
    want, got = jax.tree.structure(reference), jax.tree.structure(out)
    if want != got:
        raise TypeError(f"{prefix}{call} must return the same pytree structure as "
                        f"{ref_name}{hint}.\n  {ref_name}: {want}\n  {call}: {got}")
    leaves = jax.tree_util.tree_flatten_with_path(reference)[0]
    for (path, a), b in zip(leaves, jax.tree.leaves(out)):
        where = f"{ref_name}{jax.tree_util.keystr(path)}"
        if a.shape != b.shape:
            raise TypeError(f"{prefix}{call} returned shape {b.shape} for {where}, "
                            f"which has shape {a.shape}")
        if a.dtype != b.dtype:
            raise TypeError(f"{prefix}{call} returned dtype {b.dtype} for {where}, "
                            f"which has dtype {a.dtype}")
