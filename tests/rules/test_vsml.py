"""VS-ML: shared-parameter LSTM grids (innerloop.rules.VSML).

Kept cheap for CI on 2 cores: tiny grids, shape checks through `jax.eval_shape`
(nothing compiled), one `jax.jit` per numerical property, compiled without XLA's
expensive backend optimisations (compilation dominates these tests; the programs
they run are tiny), and the same for the two subprocesses (the `--quick` benchmark
and the 4-device ES run).
"""

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import innerloop as il
from innerloop.rules import VSML, VSMLLayer, VSMLParams, VSMLState

ROOT = Path(__file__).resolve().parents[2]
_FAST_COMPILE = {"xla_backend_optimization_level": 0,
                 "xla_llvm_disable_expensive_passes": True}
_jit = functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
_FAST_XLA_FLAGS = " ".join(f"--{k}={str(v).lower()}" for k, v in _FAST_COMPILE.items())
# Parameters and states default to float32: so do the inputs (also under x64).
F32 = jnp.float32


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


def _np_tick(P, h, c, m, u):
    """One tick of an A x B grid, LSTM by LSTM, in float64 (the module's equations)."""
    P = jax.tree.map(lambda x: np.asarray(x, np.float64), P)
    h, c = np.asarray(h, np.float64), np.asarray(c, np.float64)
    n = h.shape[-1]
    h_new, c_new = np.zeros_like(h), np.zeros_like(c)
    for i in range(h.shape[0]):
        for j in range(h.shape[1]):
            z = P.w_fwd @ m[i] + P.w_bwd @ u[j] + P.w_h @ h[i, j] + P.bias
            gi, gf, gg, go = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
            c_new[i, j] = _sigmoid(gf) * c[i, j] + _sigmoid(gi) * np.tanh(gg)
            h_new[i, j] = _sigmoid(go) * np.tanh(c_new[i, j])
    return h_new, c_new


def _np_messages(P, h):
    """(forward (B, F), backward (A, G)): means of the projected states."""
    P = jax.tree.map(lambda x: np.asarray(x, np.float64), P)
    a, b = h.shape[:2]
    fwd = np.stack([sum(P.proj_fwd @ h[i, j] for i in range(a)) / a for j in range(b)])
    bwd = np.stack([sum(P.proj_bwd @ h[i, j] for j in range(b)) / b for i in range(a)])
    return fwd, bwd


def _np_online_step(net, params, state, x, label):
    """VSML.online_step written out: a forward tick bottom up (input in channel 0),
    logits = channel 0 of the top forward messages, then a backward tick top down from
    (softmax(logits) - label, label). Returns ([(h, c) per layer], logits)."""
    pad = lambda v, k: np.pad(v, ((0, 0), (0, k - v.shape[1])))  # noqa: E731
    x, label = np.asarray(x, np.float64), np.asarray(label, np.float64)
    msg, fwd_in, after = pad(x[:, None], net.layers[0].fwd_size), [], []
    for layer, P, s in zip(net.layers, params, state):
        fwd_in.append(msg)
        hc = _np_tick(P, s.h, s.c, msg, np.zeros((s.grid[1], layer.bwd_size)))
        msg = _np_messages(P, hc[0])[0]
        after.append(hc)
    logits = msg[:, 0]
    error = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum() - label
    bwd, new = pad(np.stack([error, label], 1), net.layers[-1].bwd_size), list(after)
    for k in reversed(range(len(net.layers))):
        new[k] = _np_tick(params[k], *after[k], fwd_in[k], bwd)
        bwd = _np_messages(params[k], new[k][0])[1]
    return new, logits


def _check_online_step(net, params, state, x, label, got_state, got_logits, tol=1e-4):
    want, logits = _np_online_step(net, params, state, x, label)
    np.testing.assert_allclose(got_logits, logits, rtol=tol, atol=tol)
    for s, (h, c) in zip(got_state, want, strict=True):
        np.testing.assert_allclose(s.h, h, rtol=tol, atol=tol)
        np.testing.assert_allclose(s.c, c, rtol=tol, atol=tol)


def test_shapes():
    # jax.eval_shape traces without compiling: shapes for free.
    layer = VSMLLayer(3, 4, state_size=6, fwd_size=2, bwd_size=3)
    p = jax.eval_shape(layer.init, jax.random.key(0))
    s = jax.eval_shape(layer.init_state, jax.random.key(1))
    assert s.h.shape == s.c.shape == (3, 4, 6)
    fwd_in, bwd_in = jax.ShapeDtypeStruct((3, 2), jnp.float32), jax.ShapeDtypeStruct(
        (4, 3), jnp.float32)
    s = jax.eval_shape(layer.step, p, s, fwd_in, bwd_in)
    fwd, bwd = jax.eval_shape(layer.messages, p, s)
    assert fwd.shape == (4, 2) and bwd.shape == (3, 3)
    net = VSML((3, 5, 2), state_size=6)
    params = jax.eval_shape(net.init, jax.random.key(0))
    state = jax.eval_shape(net.init_state, jax.random.key(1))
    x, e = jax.ShapeDtypeStruct((3,), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32)
    state, y = jax.eval_shape(net.forward, params, state, x)
    assert y.shape == (2,)
    state = jax.eval_shape(net.backward, params, state, x, e, e)
    assert [s.h.shape for s in state] == [(3, 5, 6), (5, 2, 6)]
    with pytest.raises(ValueError, match="fwd_in of shape"):
        jax.eval_shape(layer.step, p, jax.eval_shape(layer.init_state, jax.random.key(1)),
                       jax.ShapeDtypeStruct((2, 2), jnp.float32), bwd_in)
    with pytest.raises(ValueError, match="bwd_size"):
        VSML((2, 2), bwd_size=1)


# The tests share two parameter shapes (the default N = 16, F = G = 4, and N = 4,
# F = 2, G = 3): every new shape costs eager compilations of the initialisers.


def test_gate_biases_at_init():
    layer = VSMLLayer(2, 3)
    b = layer.init(jax.random.key(0)).bias
    np.testing.assert_allclose(b[:16], -5.0)    # input gate
    np.testing.assert_allclose(b[16:32], 5.0)   # forget gate
    np.testing.assert_allclose(b[32:], 0.0)


def test_messages_match_a_hand_written_loop_on_a_2x3_grid():
    layer = VSMLLayer(2, 3, state_size=4, fwd_size=2, bwd_size=3)
    p = layer.init(jax.random.key(0))
    rng = np.random.default_rng(0)  # test data from NumPy: no eager compilations
    bias = jnp.asarray(0.3 * rng.normal(size=16), jnp.float32)
    p = eqx.tree_at(lambda q: q.bias, p, bias)
    s = layer.init_state(jax.random.key(1))
    s = VSMLState(jnp.asarray(0.5 * rng.normal(size=s.h.shape), jnp.float32), s.c)
    m = rng.normal(size=(2, 2)).astype(np.float32)
    u = rng.normal(size=(3, 3)).astype(np.float32)

    @_jit
    def tick(p, s, m, u):
        new = layer.step(p, s, m, u)
        return new, layer.messages(p, new)

    new, (fwd, bwd) = tick(p, s, jnp.asarray(m), jnp.asarray(u))

    P = jax.tree.map(np.asarray, p)
    h_ref, c_ref = np.zeros((2, 3, 4)), np.zeros((2, 3, 4))
    for i in range(2):
        for j in range(3):
            z = P.w_fwd @ m[i] + P.w_bwd @ u[j] + P.w_h @ np.asarray(s.h[i, j]) + P.bias
            gi, gf, gg, go = z[:4], z[4:8], z[8:12], z[12:]
            c_ref[i, j] = _sigmoid(gf) * np.asarray(s.c[i, j]) + _sigmoid(gi) * np.tanh(gg)
            h_ref[i, j] = _sigmoid(go) * np.tanh(c_ref[i, j])
    fwd_ref = np.zeros((3, 2))
    bwd_ref = np.zeros((2, 3))
    for j in range(3):
        fwd_ref[j] = sum(P.proj_fwd @ h_ref[i, j] for i in range(2)) / 2
    for i in range(2):
        bwd_ref[i] = sum(P.proj_bwd @ h_ref[i, j] for j in range(3)) / 3
    np.testing.assert_allclose(new.h, h_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new.c, c_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fwd, fwd_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bwd, bwd_ref, rtol=1e-5, atol=1e-5)


def test_the_top_layer_reads_error_and_label_as_its_backward_message():
    net = VSML((2, 3), state_size=4, fwd_size=2, bwd_size=3)
    params, state = net.init(jax.random.key(0)), net.init_state(jax.random.key(1))
    x, err = jnp.array([0.5, -1.0], F32), jnp.array([0.1, -0.2, 0.3], F32)
    lab = jnp.eye(3, dtype=F32)[1]
    layer = net.layers[0]

    @_jit
    def both(params, state):
        expected = layer.step(params[0], state[0], jnp.array([[0.5, 0.0], [-1.0, 0.0]], F32),
                              jnp.stack([err, lab, jnp.zeros(3, F32)], axis=1))
        return net.backward(params, state, x, err, lab)[0], expected

    got, expected = both(params, state)
    _close(got, expected, 1e-6)


# A two-layer net on a tiny grid: the eager reference dispatches every op, so keep it
# small and the examples few (the eager op cache is warm after the first).
_NET = VSML((2, 3, 2), state_size=4, fwd_size=2, bwd_size=3)


@_jit
def _batched_step(params, states, xs, labels):
    return jax.vmap(_NET.online_step, in_axes=(None, 0, 0, 0))(params, states, xs, labels)


@settings(max_examples=4)
@given(seed=st.integers(0, 2**31 - 1))
def test_jit_and_vmap_match_the_numpy_reference(seed):
    net = _NET
    key = jax.random.key(seed)
    params = net.init(key)
    states = jax.vmap(net.init_state)(jax.random.split(key, 2))
    xs = jnp.asarray(np.random.default_rng(seed).normal(size=(2, 2)), jnp.float32)
    labels = jax.nn.one_hot(jnp.array([0, 1]), 2, dtype=F32)
    new, logits = _batched_step(params, states, xs, labels)
    for b in range(2):
        one = lambda tree: jax.tree.map(lambda a: a[b], tree)  # noqa: E731
        _check_online_step(net, params, one(states), xs[b], labels[b], one(new), logits[b])


def test_meta_parameter_count_does_not_depend_on_the_grid():
    small, big = VSMLLayer(2, 3), VSMLLayer(50, 7)
    count = lambda p: sum(x.size for x in jax.tree.leaves(p))  # noqa: E731
    ps, pb = small.init(jax.random.key(0)), big.init(jax.random.key(0))
    assert count(ps) == count(pb) == small.n_params() == big.n_params()
    _close(ps, pb, 0.0)  # the same key gives the same shared parameters
    assert isinstance(ps, VSMLParams)


def test_trained_params_run_on_another_grid_size():
    net = VSML((2, 3), state_size=4, fwd_size=2, bwd_size=3)
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2)), jnp.float32)
    ys = jax.nn.one_hot(jnp.arange(4) % 3, 3, dtype=F32)

    def loss(params):
        def body(s, xy):
            s, logits = net.online_step(params, s, *xy)
            return s, -jnp.sum(xy[1] * jax.nn.log_softmax(logits))
        return jnp.mean(jax.lax.scan(body, net.init_state(jax.random.key(2)),
                                     (xs, ys))[1])

    @_jit
    def train_then_run(params):
        # Two gradient steps on the 2 x 3 grid, then the same parameters on a 7 x 5
        # grid and a 1 x 1 grid (one compilation for all of it).
        for _ in range(2):
            params = jax.tree.map(lambda p, g: p - 0.1 * g, params, jax.grad(loss)(params))
        out = []
        for a, b in GRIDS:
            state = net.init_state(jax.random.key(3), sizes=(a, b))
            x = jnp.linspace(-1.0, 1.0, a, dtype=F32)
            out.append((state, x, net.online_step(params, state, x,
                                                  jnp.eye(b, dtype=F32)[0])))
        return params, out

    GRIDS = ((7, 5), (1, 1))
    params0 = net.init(jax.random.key(0))
    params, out = train_then_run(params0)
    assert not all(bool(jnp.all(p == q)) for p, q in
                   zip(jax.tree.leaves(params), jax.tree.leaves(params0)))
    for (a, b), (state, x, (new, logits)) in zip(GRIDS, out):
        assert logits.shape == (b,) and state[0].h.shape == (a, b, 4)
        _check_online_step(net, params, state, x, np.eye(b)[0], new, logits)


def test_gradient_through_a_short_unroll_is_finite_and_checkpointing_is_exact():
    net = _NET
    params = net.init(jax.random.key(0))
    state0 = net.init_state(jax.random.key(1))
    xs = jnp.asarray(np.random.default_rng(2).normal(size=(6, 2)), jnp.float32)
    ys = jax.nn.one_hot(jnp.arange(6) % 2, 2, dtype=F32)

    def loss(params, grad):
        def step(carry, params, t):
            s, total = carry
            s, logits = net.online_step(params, s, xs[t], ys[t])
            return s, total - jnp.sum(ys[t] * jax.nn.log_softmax(logits))
        return il.unroll(step, (state0, jnp.zeros((), F32)), params, 6, grad=grad)[1]

    @_jit
    def grads(params):
        return [jax.grad(loss)(params, mode) for mode in
                (il.Unroll(), il.Checkpointed(), il.Truncated(2))]

    g_full, g_ck, g_tr = grads(params)
    assert _finite(g_full) and _finite(g_tr)
    assert sum(float(np.abs(np.asarray(x)).sum()) for x in jax.tree.leaves(g_full)) > 0
    _close(g_full, g_ck, 1e-5)
    # Truncation drops the early steps' contributions: a different (biased) gradient.
    assert any(not np.allclose(a, b) for a, b in
               zip(jax.tree.leaves(g_full), jax.tree.leaves(g_tr)))


def test_mask_hides_absent_classes():
    net = VSML((2, 4))
    params, state = net.init(jax.random.key(0)), net.init_state(jax.random.key(1))
    mask = jnp.array([True, True, False, False])
    _, logits = _jit(net.online_step)(params, state, jnp.ones(2, F32), jnp.eye(4, dtype=F32)[0],
                                      mask)
    assert bool(jnp.all(logits[2:] < -1e8)) and _finite(logits)


def _run(args, timeout=600, devices=1):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + _FAST_XLA_FLAGS
                        + f" --xla_force_host_platform_device_count={devices}")
    if devices > 1:
        env["JAX_PLATFORMS"] = "cpu"   # forced host devices are CPU devices, also on a GPU machine
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.subprocess
def test_vsml_benchmark_quick(tmp_path):
    out = tmp_path / "vsml.md"
    stdout = _run([str(ROOT / "benchmarks" / "vsml.py"), "--quick", "--out", str(out)])
    assert "command: python benchmarks/vsml.py --quick" in stdout
    assert "jax " in stdout and "innerloop " in stdout
    text = out.read_text()
    assert "## 1. Backprop cloning" in text and "| W after" in text
    for row in ("| online SGD, linear |", "| online Adam, linear |",
                "| VS-ML (TBPTT) |", "| VS-ML (ES) |", "| Meta-RNN (TBPTT) |",
                "| Meta-RNN (ES) |"):
        assert row in text, row
    for col in ("iris", "wine", "breast_cancer", "held-out classes"):
        assert col in text
    assert "Meta-RNN learning rate grid (TBPTT" in text
    assert "Meta-RNN learning rate grid (ES" in text
    assert "VS-ML (TBPTT) vs the best online Adam" in text
    assert "VS-ML (ES) vs Meta-RNN (ES) out of distribution" in text
    assert "Backprop cloning tracks SGD" in text
    # The run fails when its claim does not hold (VS-ML leaves chance); the verdict:
    assert "- VS-ML (TBPTT) online accuracy on meta-training-distribution digits" in text
    assert "+ 0.15: holds" in text


SHARDED_ES = textwrap.dedent("""
    import os, sys
    import dataclasses, importlib.util
    import jax, numpy as np
    import innerloop as il

    assert len(jax.devices()) == 4, jax.devices()
    sys.path.insert(0, os.path.dirname(sys.argv[1]))  # as running the script does
    spec = importlib.util.spec_from_file_location("b", sys.argv[1])
    B = sys.modules["b"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(B)
    cfg = dataclasses.replace(B.Config(), es_steps=2, es_T=6, es_pairs=4, es_batch=2,
                              state_size=4, msg_size=2)
    digits = B._dataset("digits")
    learner = B.VSMLLearner(B.VSML((cfg.d, cfg.C), cfg.state_size, cfg.msg_size,
                                   cfg.msg_size))
    theta0 = learner.init_meta(jax.random.key(1))
    # With several devices the benchmark shards the ES population by default.
    auto = B.make_estimator(learner, digits, cfg, "es").sharding
    assert auto is not None and len(auto.device_set) == 4, auto
    one, _, _ = B.meta_train(learner, theta0, digits, cfg, "es", 2, sharding=None)
    four, _, _ = B.meta_train(learner, theta0, digits, cfg, "es", 2,
                              sharding=il.population_sharding())
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(one), jax.tree.leaves(theta0)))
    assert moved > 1e-3, moved       # two Adam steps of lr 0.01 did move theta
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    print("OK", moved)
""")


@pytest.mark.subprocess
def test_es_meta_training_sharded_over_4_host_devices_matches_one_device():
    # The benchmark's own ES meta-training (innerloop.ES, antithetic, centred ranks,
    # Adam), population sharded with innerloop.population_sharding() vs unsharded.
    stdout = _run(["-c", SHARDED_ES, str(ROOT / "benchmarks" / "vsml.py")], devices=4)
    assert "OK" in stdout
