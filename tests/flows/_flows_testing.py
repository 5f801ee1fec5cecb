"""Helpers of the flows tests: random parameters for transforms that start as the identity."""

import equinox as eqx
import jax


def perturb(module, key, scale):
    """Every floating array of `module` plus scale * N(0, 1) noise (integer arrays, such
    as permutations, unchanged)."""
    leaves, tree = jax.tree.flatten(module)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [
        leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
        if eqx.is_inexact_array(leaf) else leaf for leaf, k in zip(leaves, keys)])
