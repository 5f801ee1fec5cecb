"""Badger experts: shared-cell experts, their communication, MPLP as a configuration."""

import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given

import innerloop as il
from innerloop.rules import LearnableAdam
from innerloop.rules._badger import Badger, BadgerState
from innerloop.rules._guess import GuessTarget
from innerloop.rules._mplp import MPLP, network_adjacency
from innerloop.rules._topology import Adjacency, Attention, FullyConnected, Ring

ROOT = Path(__file__).resolve().parents[2]
COMMS = {"attention": Attention(key_size=4, heads=2), "dense": FullyConnected(), "ring": Ring(1),
         "adjacency": Adjacency(lambda n: np.triu(np.ones((n, n)), 1), reduce="sum")}


def _badger(comm, **kw):
    kw = {"inputs": {"x": 3, "error": 1}, "n_out": 2, "message_size": 4,
          "hidden_size": 5, **kw}
    return Badger(None, 4, comm, **kw)


def _slots(key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    return {"x": jax.random.normal(k1, (3,), jnp.float32),
            "error": jax.random.normal(k2, (1,), jnp.float32)}


# ------------------------------------------------------------ NumPy reference


def _np_aggregation(name, n):
    """The (n, n) aggregation matrix of COMMS[name], written out independently."""
    i = np.arange(n)
    if name == "dense":
        a = 1.0 - np.eye(n)
    elif name == "ring":  # ring distance 1
        d = np.abs(i[:, None] - i[None, :])
        a = (np.minimum(d, n - d) == 1).astype(float)
    else:  # "adjacency": expert i hears every j > i, summed
        return (i[None, :] > i[:, None]).astype(float)
    return a / np.maximum(a.sum(1, keepdims=True), 1)  # mean over the neighbours


def _np_messages(name, meta, h, slots, output):
    """Every expert's message for n experts with hidden states h (n, H), in float64:
    the module docstring's equations, expert by expert."""
    c = jax.tree.map(lambda x: np.asarray(x, np.float64), meta["comm"])
    h = np.asarray(h, np.float64)
    vals = [("x", slots["x"]), ("error", slots["error"]), ("output", output)]
    vals = [(k, np.asarray(v, np.float64).ravel()) for k, v in vals]
    if name != "attention":
        sent = h @ c["w"] + c["b"]
        env = np.concatenate([v for _, v in vals]) @ c["env"]
        agg = _np_aggregation(name, len(h))
        return np.stack([sum(agg[i, j] * sent[j] for j in range(len(h))) + env
                         for i in range(len(h))]), env
    q, k, v = h @ c["wq"] + c["bq"], h @ c["wk"] + c["bk"], h @ c["wv"] + c["bv"]
    tok_k, tok_v = [], []
    for slot, x in vals:
        p = c["slots"][slot]
        for j, xj in enumerate(x):
            tok_k.append(p["key"][j] + xj * p["key_gain"])
            tok_v.append(p["value"][j] + xj * p["value_gain"])
    tok_k, tok_v = np.stack(tok_k), np.stack(tok_v)
    out = np.zeros((len(h), 4))
    for i in range(len(h)):
        for hd in range(2):  # head hd: key dims 4 hd..4 hd + 3, value dims 2 hd..2 hd + 1
            kq, vs = slice(4 * hd, 4 * hd + 4), slice(2 * hd, 2 * hd + 2)
            a = _softmax(np.array([q[i, kq] @ k[j, kq] for j in range(len(h))]) / 2.0)
            out[i, vs] += a @ v[:, vs]
            out[i, vs] += _softmax(tok_k[:, kq] @ q[i, kq] / 2.0) @ tok_v[:, vs]
    return out, None


def _np_readout(name, meta, h):
    c = jax.tree.map(lambda x: np.asarray(x, np.float64), meta["comm"])
    h = np.asarray(h, np.float64)
    if name != "attention":
        return np.mean(h @ c["out_w"], 0) + c["out_b"]
    k, u = h @ c["wk"] + c["bk"], h @ c["out_wv"] + c["out_bv"]
    out = np.zeros(len(c["out_b"]))
    for o in range(len(out)):
        read = np.zeros(4)
        for hd in range(2):
            kq, vs = slice(4 * hd, 4 * hd + 4), slice(2 * hd, 2 * hd + 2)
            read[vs] = _softmax(k[:, kq] @ c["out_query"][o, kq] / 2.0) @ u[:, vs]
        out[o] = read @ c["out_w"][o] + c["out_b"][o]
    return out


def _softmax(z):
    z = np.exp(z - z.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _check_step(name, badger, meta, state, slots, new, out, tol=1e-4):
    """`badger.step`'s result against the reference: messages, the shared cell applied
    expert by expert to the reference messages, and the read-out."""
    m_ref, env = _np_messages(name, meta, jax.tree.leaves(state.cells)[0], slots,
                              state.output)
    np.testing.assert_allclose(eqx.filter_jit(badger.messages)(meta, state, slots), m_ref,
                               rtol=tol, atol=tol)
    want = _vcell(meta["expert"], jnp.asarray(m_ref, jnp.float32), state.cells)
    for a, b in zip(jax.tree.leaves(new.cells), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    h_new = jax.tree.leaves(new.cells)[0]
    np.testing.assert_allclose(out, _np_readout(name, meta, h_new), rtol=tol, atol=tol)
    return m_ref, env


@eqx.filter_jit
def _vcell(cell, m, cells):
    """The shared cell (equinox's own) applied to every expert's message."""
    return jax.vmap(cell)(m, cells)


# ------------------------------------------------------------ expert counts


@pytest.mark.parametrize("name", list(COMMS))
def test_same_meta_parameters_run_with_any_expert_count(name):
    badger = _badger(COMMS[name])
    meta = jax.jit(badger.init)(jax.random.key(0))
    step = jax.jit(badger.step)
    slots = _slots()
    for n in (1, 4, 12):
        state = BadgerState(jax.random.normal(jax.random.key(n), (n, 5), jnp.float32),
                            jnp.asarray([0.3, -0.7], jnp.float32))
        new, out = step(meta, state, slots)
        assert new.cells.shape == (n, 5)
        m_ref, env = _check_step(name, badger, meta, state, slots, new, out)
        if n == 1 and name == "dense":  # one expert hears nobody: the environment only
            np.testing.assert_allclose(m_ref[0], env, rtol=0, atol=0)


def test_lstm_expert_state_is_a_pair_per_expert():
    cell = eqx.nn.LSTMCell(4, 6, dtype=jnp.float32, key=jax.random.key(0))
    badger = Badger(cell, 3, Attention(key_size=4, heads=2), inputs={"x": 3, "error": 1},
                    n_out=2, message_size=4)
    meta = badger.init(jax.random.key(0))
    state = badger.init_state(jax.random.key(1), 7)
    state = BadgerState(state.cells, jnp.asarray([0.3, -0.7], jnp.float32))
    new, out = badger.step(meta, state, _slots())
    assert [c.shape for c in new.cells] == [(7, 6), (7, 6)]
    # The experts talk through h, the first of the pair; the cell updates both.
    _check_step("attention", badger, meta, state, _slots(), new, out)


def test_meta_parameters_do_not_depend_on_the_expert_count():
    a = jax.eval_shape(Badger(None, 4, Attention(), inputs={"e": 1}, n_out=3).init,
                       jax.random.key(0))
    b = jax.eval_shape(Badger(None, 80, Attention(), inputs={"e": 1}, n_out=3).init,
                       jax.random.key(0))
    assert jax.tree.map(jnp.shape, a) == jax.tree.map(jnp.shape, b)


# -------------------------------------------------------------- topologies


def test_dense_topology_connects_every_other_expert():
    np.testing.assert_array_equal(FullyConnected().adjacency(3), 1 - np.eye(3))
    np.testing.assert_array_equal(FullyConnected(self_loops=True).adjacency(2), np.ones((2, 2)))
    assert FullyConnected().weights(1).shape == (1, 1)  # one expert hears nobody


def test_ring_topology_for_any_count():
    a = Ring(1).adjacency(5)
    for i in range(5):
        assert set(np.flatnonzero(a[i])) == {(i - 1) % 5, (i + 1) % 5}
    assert Ring(2).adjacency(5).sum(1).tolist() == [4] * 5
    np.testing.assert_allclose(Ring(1).weights(5).sum(1), 1.0)  # mean


def test_fixed_adjacency_matrix_only_fits_its_own_count():
    m = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    adj = Adjacency(m)
    np.testing.assert_array_equal(adj.adjacency(3), m)
    with pytest.raises(ValueError, match="cannot connect 4 experts"):
        adj.adjacency(4)


def test_network_adjacency_routes_messages_backwards():
    # sizes (2, 2, 1): agents 0-3 = W1 (rows: hidden unit), 4-5 = b1, 6-7 = W2, 8 = b2
    a = network_adjacency((2, 2, 1))
    assert a.shape == (9, 9)
    # weights into hidden unit 0 (agents 0, 1) and its bias (4) hear W2[0, 0] (agent 6)
    for r in (0, 1, 4):
        assert np.flatnonzero(a[r]).tolist() == [6]
    for r in (2, 3, 5):
        assert np.flatnonzero(a[r]).tolist() == [7]
    assert a[6:].sum() == 0  # the last layer hears the error, not other agents


# ------------------------------------------ messages against hand computation


def _three_experts(badger, meta):
    h = np.asarray(jax.random.normal(jax.random.key(5), (3, 5), jnp.float32))
    return BadgerState(jnp.asarray(h), jnp.asarray([0.3, -0.7], jnp.float32)), h


def test_dense_message_matches_hand_computation():
    badger = _badger(FullyConnected())
    meta = badger.init(jax.random.key(0))
    state, h = _three_experts(badger, meta)
    slots = _slots()
    c = jax.tree.map(np.asarray, meta["comm"])
    sent = h @ c["w"] + c["b"]
    env = np.concatenate([slots["x"], slots["error"], [0.3, -0.7]]) @ c["env"]
    expected = np.stack([(sent[1] + sent[2]) / 2, (sent[0] + sent[2]) / 2,
                         (sent[0] + sent[1]) / 2]) + env
    np.testing.assert_allclose(badger.messages(meta, state, slots), expected, rtol=1e-5,
                               atol=1e-6)
    out = np.mean(h @ c["out_w"], 0) + c["out_b"]
    np.testing.assert_allclose(badger.readout(meta, state), out, rtol=1e-5, atol=1e-6)


def test_summed_adjacency_message_matches_hand_computation():
    m = np.array([[0, 2, 0], [0, 0, 1], [0, 0, 0]])
    badger = _badger(Adjacency(m, reduce="sum"), inputs={}, feedback=False)
    meta = badger.init(jax.random.key(0))
    state, h = _three_experts(badger, meta)
    c = jax.tree.map(np.asarray, meta["comm"])
    sent = h @ c["w"] + c["b"]
    expected = np.stack([2 * sent[1], sent[2], np.zeros(4)])
    np.testing.assert_allclose(badger.messages(meta, state), expected, rtol=1e-5,
                               atol=1e-6)


def test_attention_message_matches_hand_computation():
    badger = _badger(Attention(key_size=4, heads=2))
    meta = badger.init(jax.random.key(0))
    state, h = _three_experts(badger, meta)
    slots = _slots()
    c = jax.tree.map(np.asarray, meta["comm"])
    q, k, v = h @ c["wq"] + c["bq"], h @ c["wk"] + c["bk"], h @ c["wv"] + c["bv"]
    tok_k, tok_v = [], []
    for name, x in (("x", slots["x"]), ("error", slots["error"]),
                    ("output", np.array([0.3, -0.7]))):
        p = c["slots"][name]
        for j, xj in enumerate(np.asarray(x)):
            tok_k.append(p["key"][j] + xj * p["key_gain"])
            tok_v.append(p["value"][j] + xj * p["value_gain"])
    tok_k, tok_v = np.stack(tok_k), np.stack(tok_v)
    expected = np.zeros((3, 4))
    for i in range(3):
        for hd in range(2):  # head hd: key dims 4 hd..4 hd + 3, value dims 2 hd..2 hd + 1
            kq, vs = slice(4 * hd, 4 * hd + 4), slice(2 * hd, 2 * hd + 2)
            a = _softmax(np.array([q[i, kq] @ k[j, kq] for j in range(3)]) / 2.0)
            expected[i, vs] += a @ v[:, vs]
            at = _softmax(tok_k[:, kq] @ q[i, kq] / 2.0)
            expected[i, vs] += at @ tok_v[:, vs]
    np.testing.assert_allclose(badger.messages(meta, state, slots), expected, rtol=1e-4,
                               atol=1e-5)
    u = h @ c["out_wv"] + c["out_bv"]
    out = np.zeros(2)
    for o in range(2):
        read = np.zeros(4)
        for hd in range(2):
            kq, vs = slice(4 * hd, 4 * hd + 4), slice(2 * hd, 2 * hd + 2)
            a = _softmax(k[:, kq] @ c["out_query"][o, kq] / 2.0)
            read[vs] = a @ u[:, vs]
        out[o] = read @ c["out_w"][o] + c["out_b"][o]
    np.testing.assert_allclose(badger.readout(meta, state), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["attention", "dense"])
@given(seed=st.integers(0, 2 ** 16), perm=st.permutations(range(5)))
def test_experts_are_interchangeable(name, seed, perm):
    """Permuting the experts permutes their next states and leaves the output alone
    (one shared cell, permutation-invariant communication)."""
    badger = _badger(COMMS[name])
    meta = badger.init(jax.random.key(seed))
    state = badger.init_state(jax.random.key(seed + 1), 5)
    perm = np.asarray(perm)
    permuted = BadgerState(state.cells[perm], state.output)
    new, out = badger.step(meta, state, _slots(seed))
    new_p, out_p = badger.step(meta, permuted, _slots(seed))
    np.testing.assert_allclose(new_p.cells, new.cells[perm], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out_p, out, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------ transformations


@pytest.mark.parametrize("name", ["attention", "ring"])
def test_jit_and_vmap_match_the_numpy_reference(name):
    badger = _badger(COMMS[name])
    meta = badger.init(jax.random.key(0))
    states = [badger.init_state(jax.random.key(i), 4) for i in range(3)]
    states = [BadgerState(s.cells, jnp.asarray([0.1 * i, -0.5], jnp.float32))
              for i, s in enumerate(states)]
    slots = _slots()
    new, out = jax.jit(badger.step)(meta, states[0], slots)
    _check_step(name, badger, meta, states[0], slots, new, out)
    batched = jax.tree.map(lambda *x: jnp.stack(x), *states)
    news, outs = jax.jit(jax.vmap(badger.step, (None, 0, None)))(meta, batched, slots)
    for i, s in enumerate(states):
        _check_step(name, badger, meta, s, slots, jax.tree.map(lambda x: x[i], news),
                    outs[i])


def _guess_badger():
    return Badger(None, 4, Attention(key_size=4, heads=2), inputs={"error": 1}, n_out=3,
                  message_size=4, hidden_size=6)


def test_gradient_through_a_short_unroll_is_that_of_a_python_loop():
    badger = _guess_badger()
    task = GuessTarget(badger, 3, 8)
    meta = badger.init(jax.random.key(0))

    def loss(meta, grad):
        carry = task.init(jax.random.key(1), meta)
        step = lambda c, th, t: task.step(c, th)  # noqa: E731
        _, errs = il.unroll(step, carry, meta, 8, grad=grad, outputs=True)
        return jnp.mean(errs)

    def loop(meta, cut):
        """Plain Python loop over task.step; steps before `cut` see neither the
        meta-parameters' derivative nor pass on the state's."""
        carry, errs = task.init(jax.random.key(1), meta), []
        for t in range(8):
            if t == cut:
                carry = jax.lax.stop_gradient(carry)
            theta = jax.lax.stop_gradient(meta) if t < cut else meta
            carry, err = task.step(carry, theta)
            errs.append(err)
        return jnp.mean(jnp.stack(errs))

    # One compilation for the three modes, one for the two loops.
    modes = (il.Unroll(), il.Checkpointed(), il.Truncated(3))
    got = jax.jit(lambda m: [jax.grad(loss)(m, mode) for mode in modes])(meta)
    full, cut = jax.jit(lambda m: [jax.grad(loop)(m, c) for c in (0, 8 - 3)])(meta)
    for g, want in zip(got, (full, full, cut)):
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # The truncation drops something: the two references differ.
    assert any(not np.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in
               zip(jax.tree.leaves(full), jax.tree.leaves(cut)))


# ES with n antithetic pairs estimates the gradient up to noise of cosine about
# sqrt(n / (n + d)) (d = 258 meta-parameters: 0.71 for n = 256); a sign flip gives -0.7.
COSINE_PAIRS, COSINE_MIN = 256, 0.5


def test_guess_target_is_an_es_inner_problem():
    badger = Badger(None, 4, FullyConnected(), inputs={"error": 1}, n_out=2, message_size=4,
                    hidden_size=6)
    task = GuessTarget(badger, 2, 6)
    meta = badger.init(jax.random.key(0))
    es = il.ES(task, sigma=1e-2, pairs=COSINE_PAIRS)
    key = jax.random.key(1)
    g, _, metrics = jax.jit(es.grad)(key, meta, es.init(jax.random.key(2), meta))
    # Over whole episodes ES starts each from task.init(first half of the key).
    k_init = jax.random.split(key)[0]
    episode = lambda m: task.unroll(task.init(k_init, m), m, 6)[1]  # noqa: E731
    loss, true = jax.jit(jax.value_and_grad(episode))(meta)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])  # noqa: E731
    ges, gtrue = flat(g), flat(true)
    cosine = ges @ gtrue / (np.linalg.norm(ges) * np.linalg.norm(gtrue))
    assert cosine > COSINE_MIN, cosine


def test_missing_slot_is_a_clear_error():
    badger = _badger(FullyConnected())
    meta = badger.init(jax.random.key(0))
    with pytest.raises(ValueError, match="missing slot"):
        badger.step(meta, badger.init_state(jax.random.key(1)), {"x": jnp.zeros(3)})


# ------------------------------------------------------------------- MPLP


def _regression(key, T):
    """y = a x + b on x ~ U(-1, 1), a, b ~ N(0, 1): T online examples + 32 held out."""
    k1, k2, k3 = jax.random.split(key, 3)
    a, b = jax.random.normal(k1, (2,), jnp.float32)
    xs = jax.random.uniform(k2, (T + 32, 1), jnp.float32, minval=-1, maxval=1)
    return xs[:T], a * xs[:T] + b, xs[T:], a * xs[T:] + b


def test_mplp_is_a_badger_with_the_network_graph():
    mplp = MPLP((2, 3, 1))
    assert isinstance(mplp.badger, Badger)
    assert mplp.n_agents == 2 * 3 + 3 + 3 + 1
    np.testing.assert_array_equal(mplp.badger.communication.adjacency(mplp.n_agents),
                                  network_adjacency((2, 3, 1)))


def test_mplp_learns_a_toy_regression_better_than_no_update():
    mplp = MPLP((1, 4, 1), hidden_size=6, message_size=4, lr=0.1)
    T = 20
    meta = mplp.init(jax.random.key(0))

    def heldout(meta, key, update=True):
        k_task, k_net = jax.random.split(key)
        xs, ys, xt, yt = _regression(k_task, T)
        if update:
            (weights, _), _ = mplp.lifetime(meta, k_net, xs, ys)
        else:
            weights = mplp.init_weights(jax.random.split(k_net)[0])
        pred = jax.vmap(lambda x: mplp.predict(weights, x))(xt)
        return jnp.mean((pred - yt) ** 2)

    def loss(meta, key):
        return jnp.mean(jax.vmap(heldout, (None, 0))(meta, jax.random.split(key, 8)))

    adam = LearnableAdam(learning_rate=1e-2)  # optax.adam, in a form strict promotion accepts
    opt = optax.chain(optax.clip_by_global_norm(1.0), adam.optax(adam.init()))

    @jax.jit
    def update(meta, state, key):
        value, g = jax.value_and_grad(loss)(meta, key)
        u, state = opt.update(g, state, meta)
        return optax.apply_updates(meta, u), state, value

    state = opt.init(meta)
    for i in range(80):
        meta, state, _ = update(meta, state, jax.random.key(i))
    keys = jax.random.split(jax.random.key(999), 256)
    learned = float(jnp.mean(jax.vmap(heldout, (None, 0))(meta, keys)))
    frozen = float(jnp.mean(jax.vmap(lambda k: heldout(meta, k, False))(keys)))
    assert learned < 0.5 * frozen, (learned, frozen)


# ------------------------------------------------------- sharded meta-training

SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"   # forced host devices are CPU devices, also on a GPU
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    import innerloop as il
    from innerloop.rules import Attention, Badger, GuessTarget

    assert len(jax.devices()) == 4, jax.devices()
    badger = Badger(None, 4, Attention(key_size=4, heads=2), inputs={"error": 1},
                    n_out=2, message_size=4, hidden_size=6)
    task = GuessTarget(badger, 2, 6)
    meta0 = jax.tree.map(lambda x: x.astype(jnp.float64), badger.init(jax.random.key(0)))
    results = []
    for sharding in (None, il.population_sharding()):
        es = il.ES(task, sigma=0.05, pairs=8, sharding=sharding)
        opt = optax.adam(1e-2)

        @jax.jit
        def update(meta, ost, key):
            g, _, m = es.grad(key, meta, es.init(key, meta))
            u, ost = opt.update(g, ost, meta)
            return optax.apply_updates(meta, u), ost, m["loss"]

        meta, ost = meta0, opt.init(meta0)
        for i in range(4):
            meta, ost, loss = update(meta, ost, jax.random.key(i))
        results.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(meta)]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-8, atol=1e-10)
    assert not np.allclose(results[0], np.concatenate(
        [np.ravel(x) for x in jax.tree.leaves(meta0)]))
    print("OK")
""")


@pytest.mark.subprocess
def test_sharded_and_single_device_meta_training_agree():
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OK" in proc.stdout


# --------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("script,rows", [
    ("badger.py", ("| 4 |", "| 12 |", "| 80 |", "Online digits")),
    ("lifelong.py", ("online Adam", "Badger", "forgetting")),
])
@pytest.mark.subprocess
def test_benchmark_quick(tmp_path, script, rows):
    out = tmp_path / "out.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick",
                           "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "command" in proc.stdout.lower() and "jax" in proc.stdout
    text = out.read_text()
    for row in rows:
        assert row in text, row
