"""ES and PES with the population sharded over 4 (forced) host devices give the same
estimates as on one device."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"   # forced host devices are CPU devices, also on a GPU machine
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from innerloop.implicit import ES, PES, InfluenceBalancing, population_sharding

    assert len(jax.devices()) == 4, jax.devices()
    sharding = population_sharding()
    task = InfluenceBalancing(n=23, T=20)
    theta = jnp.asarray(0.5)
    for make in (lambda s: PES(task, 0.1, 64, 1, sharding=s),
                 lambda s: ES(task, 0.1, 64, 5, sharding=s)):
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


def test_sharded_population_matches_single_device():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OK" in proc.stdout
