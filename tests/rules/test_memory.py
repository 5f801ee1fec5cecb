"""HebbianMemory: the H-Mem write/read rule (Limbacher and Legenstein, 2020)."""

import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from innerloop.rules import HebbianMemory

ROOT = Path(__file__).resolve().parents[2]

# A small fixed set of shapes: hypothesis draws values, not shapes (each new shape
# is a new compilation).
SHAPES = [(2, 3), (5, 4), (8, 8)]
N_WRITES = 4

shapes = st.sampled_from(SHAPES)
seeds = st.integers(0, 2**31 - 1)


def _problem(seed, d_key, d_value, n=N_WRITES):
    """Rates in [0, 1/2], non-negative keys and values in [0, 1], a non-empty W."""
    rng = np.random.default_rng(seed)
    gp, gm = rng.uniform(0, 0.5, size=2)
    w_max = rng.uniform(0.5, 2.0)
    # float32 rates (a Python float would be JAX's default float, float64 under x64).
    memory = HebbianMemory(d_key, d_value, gamma_plus=np.float32(gp),
                           gamma_minus=np.float32(gm), w_max=np.float32(w_max))
    W = rng.uniform(0, w_max, size=(d_key, d_value)).astype(np.float32)
    keys = rng.uniform(0, 1, size=(n, d_key)).astype(np.float32)
    values = rng.uniform(0, 1, size=(n, d_value)).astype(np.float32)
    return memory, jnp.asarray(W), jnp.asarray(keys), jnp.asarray(values)


def _numpy_write(W, k, v, gp, gm, w_max):
    W, k, v = (np.asarray(x, np.float64) for x in (W, k, v))
    return W + gp * (w_max - W) * np.outer(k, v) - gm * W * (k**2)[:, None]


# ------------------------------------------------------------ hand-computed


def test_write_and_read_match_hand_computed_numbers():
    # dW_ij = 0.5 (2 - W_ij) k_i v_j - 0.25 W_ij k_i^2, worked out by hand:
    # row 0 (k=1): [0.5*2*1, 0 - 0.25*1, 0.5*0*3 - 0.25*2]       = [1, -0.25, -0.5]
    # row 1 (k=2): [0.5*1*2 - 0.25*1*4, 0, 0.5*1.5*6 - 0.25*0.5*4] = [0, 0, 4]
    memory = HebbianMemory(2, 3, gamma_plus=0.5, gamma_minus=0.25, w_max=2.0)
    W = jnp.array([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]])
    W1 = memory.write(W, jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0, 3.0]))
    np.testing.assert_allclose(W1, [[1.0, 0.75, 1.5], [1.0, 0.0, 4.5]], rtol=1e-6)
    # v_hat = W^T q with q = [1, -1]
    np.testing.assert_allclose(memory.read(W1, jnp.array([1.0, -1.0])),
                               [0.0, 0.75, -3.0], rtol=1e-6)


def test_first_write_into_empty_memory_is_scaled_outer_product():
    memory = HebbianMemory(2, 3, gamma_plus=0.5, gamma_minus=0.25, w_max=2.0)
    k, v = jnp.array([1.0, 2.0]), jnp.array([1.0, 0.0, 3.0])
    W = memory.write(memory.init(), k, v)
    np.testing.assert_allclose(W, 0.5 * 2.0 * np.outer(k, v))  # the decay sees W = 0


def test_init_is_empty_memory_of_the_stated_shape():
    W = HebbianMemory(3, 5).init(jax.random.key(0))
    # The rates' dtype: JAX's default float (float32; float64 under x64).
    assert W.shape == (3, 5) and W.dtype == jnp.result_type(float) and not W.any()
    assert HebbianMemory(3, 5, *np.float32([0.5, 0.0, 1.0])).init().dtype == jnp.float32


# ------------------------------------------------------------------ properties


@given(shape=shapes, seed=seeds)
def test_write_matches_numpy_reference(shape, seed):
    memory, W, keys, values = _problem(seed, *shape)
    expected = _numpy_write(W, keys[0], values[0], float(memory.gamma_plus),
                            float(memory.gamma_minus), float(memory.w_max))
    np.testing.assert_allclose(memory.write(W, keys[0], values[0]), expected,
                               rtol=1e-5, atol=1e-6)


def _numpy_write_many(W, keys, values, memory):
    rates = (float(memory.gamma_plus), float(memory.gamma_minus), float(memory.w_max))
    for k, v in zip(keys, values):
        W = _numpy_write(W, k, v, *rates)
    return W


@given(shape=shapes, seed=seeds)
def test_write_many_and_read_match_numpy(shape, seed):
    memory, W, keys, values = _problem(seed, *shape)
    d_key, d_value = shape
    written = memory.write_many(W, keys, values)
    assert written.shape == (d_key, d_value)
    np.testing.assert_allclose(written, _numpy_write_many(W, keys, values, memory),
                               rtol=1e-5, atol=1e-6)
    read = memory.read(W, keys)  # batched queries: one row per key
    assert read.shape == (N_WRITES, d_value)
    for i in range(N_WRITES):
        want = np.asarray(keys[i], np.float64) @ np.asarray(W, np.float64)
        np.testing.assert_allclose(read[i], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(memory.read(W, keys[i]), want, rtol=1e-5, atol=1e-6)


@given(shape=shapes, seed=seeds)
def test_jit_matches_numpy(shape, seed):
    memory, W, keys, values = _problem(seed, *shape)
    jitted = eqx.filter_jit(lambda m, W, K, V: m.read(m.write_many(W, K, V), K))(
        memory, W, keys, values)
    want = np.asarray(keys, np.float64) @ _numpy_write_many(W, keys, values, memory)
    np.testing.assert_allclose(jitted, want, rtol=1e-5, atol=1e-6)


@given(shape=shapes, seed=seeds)
def test_vmap_matches_numpy(shape, seed):
    # A batch of memories, each written with its own pair and read with its own query.
    memory, W, keys, values = _problem(seed, *shape)
    Ws = jnp.stack([W, 0.5 * W, jnp.zeros_like(W), W])
    written = jax.vmap(memory.write)(Ws, keys, values)
    read = jax.vmap(memory.read)(written, keys)
    rates = (float(memory.gamma_plus), float(memory.gamma_minus), float(memory.w_max))
    for i in range(N_WRITES):
        Wi = _numpy_write(Ws[i], keys[i], values[i], *rates)
        np.testing.assert_allclose(written[i], Wi, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(read[i], np.asarray(keys[i], np.float64) @ Wi,
                                   rtol=1e-5, atol=1e-6)


@eqx.filter_jit
def _write_many_per_gamma_plus(memory, gps, W, keys, values):
    return jax.vmap(lambda gp: eqx.tree_at(lambda m: m.gamma_plus, memory, gp)
                    .write_many(W, keys, values))(gps)


@given(shape=shapes, seed=seeds)
def test_vmap_over_rates_matches_numpy(shape, seed):
    # Meta-batches of hyper-parameters: vmap over the module's rates.
    memory, W, keys, values = _problem(seed, *shape)
    gps = jnp.array([0.0, 0.1, 0.3, 0.5], jnp.float32)
    batched = _write_many_per_gamma_plus(memory, gps, W, keys, values)
    for i, gp in enumerate(gps):
        m = HebbianMemory(*shape, gamma_plus=gp, gamma_minus=memory.gamma_minus,
                          w_max=memory.w_max)
        np.testing.assert_allclose(batched[i], _numpy_write_many(W, keys, values, m),
                                   rtol=1e-5, atol=1e-6)


@given(shape=shapes, seed=seeds)
def test_zero_key_write_is_a_no_op(shape, seed):
    memory, W, _, values = _problem(seed, *shape)
    np.testing.assert_array_equal(
        memory.write(W, jnp.zeros(shape[0], jnp.float32), values[0]), W)


@given(shape=shapes, seed=seeds)
def test_weights_stay_in_zero_to_w_max(shape, seed):
    # For k, v in [0, 1] and gamma_plus + gamma_minus <= 1 every write is a convex
    # combination of W_ij and w_max (saturation), so W stays in [0, w_max].
    memory, W, keys, values = _problem(seed, *shape)
    for k, v in zip(keys, values):
        W = memory.write(W, k, v)
        assert float(W.min()) >= 0.0
        assert float(W.max()) <= float(memory.w_max) * (1 + 1e-6)


def test_gradient_matches_finite_differences(x64):
    rng = np.random.default_rng(0)
    keys = jnp.asarray(rng.uniform(0, 1, (6, 4)))
    values = jnp.asarray(rng.uniform(0, 1, (6, 3)))

    def loss(rates):
        m = HebbianMemory(4, 3, *rates)
        W = m.write_many(m.init(), keys, values)
        return jnp.sum((m.read(W, keys) - values) ** 2)

    rates = jnp.array([0.3, 0.1, 1.5])
    grad = jax.grad(loss)(rates)
    eps = 1e-6
    fd = [(loss(rates.at[i].add(eps)) - loss(rates.at[i].add(-eps))) / (2 * eps)
          for i in range(3)]
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert grad.dtype == jnp.float64


def test_rates_are_float_arrays():
    m = HebbianMemory(2, 3, gamma_plus=1, gamma_minus=0, w_max=1)
    for x in (m.gamma_plus, m.gamma_minus, m.w_max):
        assert isinstance(x, jax.Array) and not x.weak_type
        assert x.dtype == jnp.result_type(float)  # float32; float64 under x64


@pytest.mark.parametrize("call", [
    lambda m: m.write(m.init(), jnp.ones(3), jnp.ones(3)),
    lambda m: m.write(m.init(), jnp.ones((2, 2)), jnp.ones((2, 3))),
    lambda m: m.write_many(m.init(), jnp.ones(2), jnp.ones(3)),
    lambda m: m.read(m.init(), jnp.ones(3)),
], ids=["key-size", "batched-write", "unstacked-write-many", "query-size"])
def test_wrong_shapes_raise(call):
    with pytest.raises(ValueError, match="expected|stacked"):
        call(HebbianMemory(2, 3))


# ------------------------------------------------------------------ benchmark


@pytest.mark.subprocess
def test_benchmark_quick(tmp_path):
    out = tmp_path / "hebbian_memory.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "hebbian_memory.py"), "--quick",
         "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "command" in proc.stdout.lower() and "jax" in proc.stdout
    assert "innerloop" in proc.stdout
    text = out.read_text()
    assert "| load N/d | N | H-Mem recall | linear recall |" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 | 64 |")]
    assert len(rows) == 1
    h_recall = float(rows[0].split("|")[3].split("±")[0])
    assert h_recall >= 95.0  # light load: every pair recalled
    assert "Largest load with recall >= 95%" in text
    assert (tmp_path / "hebbian_memory.png").stat().st_size > 0
