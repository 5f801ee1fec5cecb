"""Multi-process meta-training: ES, PES and `meta_train` under `jax.distributed` with the
particles split across 2 CPU processes (2 forced host devices each) equal the
1-process, 4-device run to float rounding; a 2-process `meta_train` killed (SIGKILL)
after a checkpoint and resumed by 2 fresh processes ends bit-identical to the
uninterrupted 2-process run, and its checkpoint reads in a single process.

One launch of each kind, shared by every check (tests/_distributed_worker.py)."""

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_distributed_worker.py")
TIMEOUT_S = 300


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def _launch(out, phase, processes):
    """Start the worker's processes; returns them (not yet waited for)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = _free_port()
    ids = [[str(i), port] for i in range(processes)] if processes > 1 else [[]]
    return [subprocess.Popen([sys.executable, WORKER, str(out), phase, str(processes), *a],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for a in ids]


def _wait(procs):
    """Wait for every process; their return codes and output."""
    try:
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:  # a process left hanging by a dead peer
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], logs


def _load(path):
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    one, two = _launch(out, "run", 1), _launch(out, "run", 2)  # side by side
    (rc1,), log1 = _wait(one)
    assert rc1 == 0, log1[0][-4000:]
    rcs, logs = _wait(two)
    # Each process kills itself (SIGKILL) during the run it is to resume.
    assert rcs == [-signal.SIGKILL] * 2, (rcs, [log[-4000:] for log in logs])
    from innerloop.rules import load_checkpoint
    killed_at = load_checkpoint(str(out / "kill")).step
    rcs, logs = _wait(_launch(out, "resume", 2))
    assert rcs == [0, 0], [log[-4000:] for log in logs]
    return {"out": out, "killed_at": killed_at,
            **{name[:-4]: _load(out / name) for name in os.listdir(out)
               if name.endswith(".npz")}}


def _largest_difference(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)


@pytest.mark.subprocess
def test_two_processes_equal_one(runs):
    """ES and PES estimates (float64) and meta_train's meta-parameters (float32) of
    the 2-process run equal the 1-process run to float rounding; both processes hold
    the same (replicated) results."""
    one, two = runs["run-1-0"], runs["run-2-0"]
    for name in runs["run-2-1"]:
        np.testing.assert_array_equal(runs["run-2-1"][name], two[name])
    for name in ("es", "pes"):
        assert one[name].dtype == np.float64 and one[name].shape == (12,)
        assert np.all(one[name] != 0)  # real estimates, not an empty population
        np.testing.assert_allclose(two[name], one[name], rtol=1e-12, atol=0)
    params = [n for n in one if n.startswith("meta_params.")]
    assert params
    for name in params:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert int(two["step"]) == 2


@pytest.mark.subprocess
def test_kill_and_resume_across_processes_is_bit_identical(runs, tmp_path):
    """Killed (SIGKILL) after step 1 and its checkpoint, resumed by two new processes
    (which restore the particles' states, split across them): the meta-parameters, the
    meta-loss history and every array of the final checkpoint equal the uninterrupted
    run's exactly."""
    assert runs["killed_at"] == 1
    full, resumed = runs["run-2-0"], runs["resume-2-0"]
    for name in full.keys() - {"es", "pes"}:
        np.testing.assert_array_equal(resumed[name], full[name])
    a = _load(runs["out"] / "full" / "checkpoint.npz")
    b = _load(runs["out"] / "kill" / "checkpoint.npz")
    assert a.keys() == b.keys() and len(a) > 10  # the PES particles' states included
    for name in a:
        np.testing.assert_array_equal(b[name], a[name])


@pytest.mark.subprocess
def test_checkpoint_of_two_processes_reads_in_one(runs):
    """The checkpoint written by process 0 holds the whole population (gathered from
    both processes) and loads in this single process."""
    import jax

    from innerloop.rules import load_checkpoint
    ckpt = load_checkpoint(str(runs["out"] / "full"))
    full = runs["run-2-0"]
    assert ckpt.step == 2
    leaves = jax.tree.leaves(ckpt.meta_params)
    for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(np.asarray(leaf), full[f"meta_params.{i:05d}"])
    arrays = _load(runs["out"] / "full" / "checkpoint.npz")
    xi = [arrays[n] for n in arrays if n.startswith("estimator_state.")][-2]
    assert xi.shape[0] == 4  # all 4 pairs, 2 from each process
    assert np.all(np.abs(xi).sum(axis=1) > 0)  # each pair's accumulated perturbations
