"""One process of the multi-process checks of tests/test_distributed.py (not collected:
no test_ prefix). Run as

    python tests/_distributed_worker.py OUT PHASE PROCESSES [PROCESS_ID PORT]

PROCESSES = 1: one process with 4 forced host devices (the reference); 2: one of two
processes with 2 forced host devices each, joined by `jax.distributed.initialize`
(coordinator on localhost:PORT, CPU collectives over gloo). Populations are sharded over
all 4 devices in both cases.

PHASE "run": ES and PES estimates over 12 truncations (an episode boundary crossed),
then `meta_train` for STEPS outer steps (PES, checkpoint every step) into OUT/full;
with 2 processes it then starts the same run into OUT/kill and SIGKILLs itself right
after step KILL_AT and its checkpoint. PHASE "resume": the killed run resumed
to STEPS. Each process writes what it computed to OUT/<phase>-<processes>-<id>.npz.
"""

import os
import signal
import sys

OUT, PHASE, PROCESSES = sys.argv[1], sys.argv[2], int(sys.argv[3])
PROCESS_ID, PORT = (int(sys.argv[4]), sys.argv[5]) if PROCESSES > 1 else (0, None)
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // PROCESSES}"
os.environ["JAX_PLATFORMS"] = "cpu"  # forced host devices are CPU devices, also on a GPU

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
if PROCESSES > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{PORT}",
                               num_processes=PROCESSES, process_id=PROCESS_ID)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from innerloop.implicit import ES, PES, InfluenceBalancing, population_sharding  # noqa: E402
from innerloop.rules import MLPLOpt, meta_train, tasks  # noqa: E402

STEPS, KILL_AT = 2, 1  # each step a compile (its input layout changes): few steps
OUTER = optax.adam(1e-3)  # one object: the killed run reuses the full run's compiled step
assert jax.device_count() == 4 and jax.local_device_count() == 4 // PROCESSES, jax.devices()
assert jax.process_count() == PROCESSES


def estimates(make):
    """12 estimates of one estimator with its particles sharded over all devices."""
    est = make(population_sharding())
    grad = jax.jit(est.grad)
    theta = jnp.asarray(0.5, jnp.float64)
    state = est.init(jax.random.key(0), theta)
    out = []
    for i in range(12):  # T = 10 with K = 1 (PES) or 5 (ES): crosses an episode boundary
        g, state, _ = grad(jax.random.key(i + 1), theta, state)
        out.append(np.asarray(g))
    return np.asarray(out), state


def train(folder, callback=None):
    # PES's particles are split across the processes (meta_train's auto_shard).
    return meta_train(MLPLOpt(hidden=(4,)), tasks.QuadraticFamily(dim=3),
                      estimator=PES(pairs=4, K=5, sigma=0.01), outer=OUTER, T=10,
                      steps=STEPS, seed=3,
                      checkpoint_dir=os.path.join(OUT, folder), checkpoint_every=1,
                      progress=False, callback=callback)


def save(result, **arrays):
    for i, leaf in enumerate(jax.tree.leaves(result.meta_params)):
        arrays[f"meta_params.{i:05d}"] = np.asarray(leaf)
    np.savez(os.path.join(OUT, f"{PHASE}-{PROCESSES}-{PROCESS_ID}.npz"),
             losses=result.losses, step=result.step, **arrays)


if PHASE == "run":
    task = InfluenceBalancing(n=23, T=10)
    pes, pes_state = estimates(lambda s: PES(task, sigma=0.1, pairs=8, K=1, sharding=s))
    es, _ = estimates(lambda s: ES(task, sigma=0.1, pairs=8, K=5, sharding=s))
    # Each process holds only its own particles: half of them with two processes.
    local = {shard.index[0].start for shard in pes_state.xi.addressable_shards}
    assert len(local) == 4 // PROCESSES, pes_state.xi.sharding
    assert pes_state.xi.is_fully_addressable == (PROCESSES == 1)
    save(train("full"), pes=pes, es=es)
    if PROCESSES > 1:

        def kill(step, loss):
            if step == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)

        train("kill", kill)
        raise AssertionError("not killed")
elif PHASE == "resume":
    save(train("kill"))
else:
    raise ValueError(f"_distributed_worker: unknown phase {PHASE!r}")
