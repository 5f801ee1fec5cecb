"""Sharding over 4 (forced) host devices: ES and PES with the population sharded give
the same estimates as on one device; a vmapped batch of fixed points with the batch
sharded gives the same gradients and is never gathered onto one device."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"   # forced host devices are CPU devices, also on a GPU
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from innerloop.implicit import ES, PES, InfluenceBalancing, population_sharding

    assert len(jax.devices()) == 4, jax.devices()
    sharding = population_sharding()
    task = InfluenceBalancing(n=23, T=20)
    theta = jnp.asarray(0.5)
    for make in (lambda s: PES(task, sigma=0.1, pairs=64, K=1, sharding=s),
                 lambda s: ES(task, sigma=0.1, pairs=64, K=5, sharding=s)):
        results = []
        for s in (None, sharding):
            est = make(s)
            grad = jax.jit(est.grad)
            state = est.init(jax.random.key(0), theta)
            gs = []
            for i in range(25):          # crosses an episode boundary (T = 20)
                g, state, _ = grad(jax.random.key(i + 1), theta, state)
                gs.append(float(g))
            results.append((np.asarray(gs), state))
        (g1, s1), (g4, s4) = results
        np.testing.assert_allclose(g4, g1, rtol=1e-9, atol=1e-9)
        if isinstance(s4, tuple):
            continue
        assert len(s4.xi.sharding.device_set) == 4, s4.xi.sharding
        assert len(s1.xi.sharding.device_set) == 1
    print("OK")
""")


def _run_on_four_devices(script: str) -> None:
    """Run `script` in a fresh process (the forced device count must be set before
    JAX starts) and require it to print OK."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OK" in proc.stdout


@pytest.mark.subprocess
def test_sharded_population_matches_single_device():
    _run_on_four_devices(SCRIPT)


FIXED_POINT_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import innerloop as il

    assert len(jax.devices()) == 4, jax.devices()
    batch = NamedSharding(Mesh(np.array(jax.devices()), ("b",)), P("b"))

    def f(z, t):
        return jnp.tanh(0.9 * z + t)

    def loss(t):
        return jnp.sum(il.fixed_point(f, jnp.zeros(64), t, tol=1e-5, max_steps=200).value)

    grads = jax.jit(jax.vmap(jax.grad(loss)))
    ts = jax.random.normal(jax.random.key(0), (16, 64))
    sharded = jax.device_put(ts, batch)
    # Each device solves its own examples: the compiled program never gathers the
    # batch (the loop's stopping test and the adjoint warning's predicate reduce
    # scalars across devices, which is an all-reduce, not a gather).
    hlo = grads.lower(sharded).compile().as_text()
    assert "all-gather" not in hlo, [l for l in hlo.splitlines() if "all-gather" in l][:3]
    g4, g1 = grads(sharded), grads(ts)
    assert len(g4.sharding.device_set) == 4, g4.sharding
    np.testing.assert_allclose(np.asarray(g4), np.asarray(g1), rtol=1e-6, atol=1e-6)
    print("OK")
""")


@pytest.mark.subprocess
def test_sharded_batch_of_fixed_points_is_not_gathered():
    _run_on_four_devices(FIXED_POINT_SCRIPT)
