"""Plasticity rules: hand-computed updates, coefficient counts, jit/vmap == eager."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import innerloop as il
from innerloop.rules import ABCD, SHARING, VARIANTS, PlasticMLP, Polynomial, SparseHebbian, oja

PRE = np.array([0.5, -1.0, 2.0], np.float32)      # n_pre = 3
POST = np.array([1.5, -0.5], np.float32)          # n_post = 2
W = np.array([[0.1, -0.2, 0.3], [0.4, 0.0, -0.6]], np.float32)
# The rules' coefficients default to float32: inputs are float32 too (also under x64).
F32 = jnp.float32


# ------------------------------------------------------------------ ABCD


def _hand_abcd(variant, c, eta_fixed=1.0):
    """dw[j, i] = eta (A o_i o_j + B o_i + C o_j + D) written out element by element."""
    terms = dict(zip(VARIANTS[variant], c))
    dw = np.zeros_like(W)
    for j in range(2):
        for i in range(3):
            def at(name):
                v = terms.get(name, 0.0)
                return float(np.broadcast_to(v, W.shape)[j, i])
            total = (at("A") * PRE[i] * POST[j] + at("B") * PRE[i] + at("C") * POST[j]
                     + at("D"))
            eta = at("eta") if "eta" in terms else eta_fixed
            dw[j, i] = eta * total
    return dw


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_abcd_matches_hand_computed_update_per_synapse(variant):
    rule = ABCD(variant, "synapse", eta=0.5)
    c = np.arange(1, 1 + rule.n_coefficients(W.shape), dtype=np.float32).reshape(
        rule.coefficient_shape(W.shape)) / 10
    got = rule(jnp.asarray(c), PRE, POST, W)
    np.testing.assert_allclose(got, _hand_abcd(variant, c, 0.5), rtol=1e-6)


def test_abcd_numbers_by_hand():
    # A = 2, B = 1, C = -1, D = 0.5, eta = 0.1 on every synapse; synapse (j=0, i=2):
    # 0.1 * (2 * 2.0 * 1.5 + 1 * 2.0 - 1 * 1.5 + 0.5) = 0.1 * 7.0 = 0.7
    rule = ABCD("ABCD_lr", "layer")
    c = jnp.array([2.0, 1.0, -1.0, 0.5, 0.1], jnp.float32).reshape(5, 1, 1)
    assert float(rule(c, PRE, POST, W)[0, 2]) == pytest.approx(0.7)


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("variant", ["A", "ABCD_lr"])
def test_sharing_gives_stated_number_of_coefficients(variant, sharing):
    k = len(VARIANTS[variant])
    n_post, n_pre = 7, 5
    rule = ABCD(variant, sharing)
    per_layer = {"synapse": n_post * n_pre, "post": n_post, "pre": n_pre, "layer": 1,
                 "global": 1}[sharing]
    assert rule.n_coefficients((n_post, n_pre)) == k * per_layer
    c = rule.init(jax.random.key(0), (n_post, n_pre))
    assert c.size == k * per_layer
    # A network of three layers: "global" is one set for the network, the others one
    # set (of their size) per layer.
    net = PlasticMLP((5, 7, 4, 2), rule)
    expected = (k if sharing == "global" else
                k * sum({"synapse": o * i, "post": o, "pre": i, "layer": 1}[sharing]
                        for o, i in net.shapes))
    assert net.n_coefficients() == expected
    meta = net.init(jax.random.key(1))
    assert sum(x.size for x in jax.tree.leaves(meta)) == expected


@pytest.mark.parametrize("sharing", ["post", "pre"])
def test_shared_coefficients_are_broadcast_along_the_right_axis(sharing):
    rule = ABCD("A", sharing)
    shape = rule.coefficient_shape(W.shape)
    c = jnp.arange(1.0, 1.0 + np.prod(shape), dtype=jnp.float32).reshape(shape)
    dw = rule(c, PRE, POST, W)
    hebb = np.outer(POST, PRE)
    factor = np.asarray(c[0])  # (2, 1) or (1, 3)
    np.testing.assert_allclose(dw, factor * hebb, rtol=1e-6)


def test_abcd_rejects_bad_input():
    with pytest.raises(ValueError, match="variant"):
        ABCD("ABE")
    with pytest.raises(ValueError, match="sharing"):
        ABCD("A", "neuron")
    rule = ABCD("AD", "post")
    with pytest.raises(ValueError, match=r"must have shape \(2, 2, 1\)"):
        rule(jnp.zeros((2, 1, 3)), PRE, POST, W)
    with pytest.raises(ValueError, match="`pre` must be a vector of length 3"):
        rule(jnp.zeros((2, 2, 1)), PRE[:2], POST, W)


# ------------------------------------------------------ Polynomial and Oja


def test_oja_by_hand():
    # dw_j = eta (y_j x - y_j^2 w_j): row 1, column 2: 0.5 * (-0.5 * 2.0 - 0.25 * -0.6)
    dw = oja(PRE, POST, W, eta=0.5)
    assert float(dw[1, 2]) == pytest.approx(0.5 * (-1.0 + 0.15))
    np.testing.assert_allclose(dw, 0.5 * (np.outer(POST, PRE) - (POST ** 2)[:, None] * W),
                               rtol=1e-6)


def test_polynomial_with_oja_coefficients_is_oja():
    rule = Polynomial()
    assert rule.n_coefficients == 27
    np.testing.assert_allclose(rule(rule.oja_coefficients(), PRE, POST, W),
                               oja(PRE, POST, W), rtol=1e-6, atol=1e-7)


def test_polynomial_matches_hand_computed_sum():
    rule = Polynomial()
    theta = np.random.default_rng(0).normal(size=(3, 3, 3)).astype(np.float32)
    want = np.zeros_like(W)
    for j in range(2):
        for i in range(3):
            want[j, i] = sum(theta[a, b, c] * PRE[i] ** a * POST[j] ** b * W[j, i] ** c
                             for a in range(3) for b in range(3) for c in range(3))
    np.testing.assert_allclose(rule(jnp.asarray(theta), PRE, POST, W), want, rtol=1e-5,
                               atol=1e-6)


def test_polynomial_degree_one_has_eight_coefficients():
    rule = Polynomial(degree=1)
    assert rule.n_coefficients == 8 and rule.init(jax.random.key(0)).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="degree >= 2"):
        rule.oja_coefficients()


def test_oja_finds_the_first_principal_component():
    """The rule the Oja experiment must rediscover does what it is for."""
    var = jnp.array([1.0, 0.7, 0.2, 0.1, 0.0], jnp.float32)
    xs = jax.random.normal(jax.random.key(0), (3000, 5), jnp.float32) * jnp.sqrt(var)

    def step(w, eta, t):
        return w + oja(xs[t], w @ xs[t], w, eta)

    w = il.unroll(step, jnp.full((1, 5), 0.45, jnp.float32), 0.01, 3000)[0]
    assert abs(float(w[0])) / float(jnp.linalg.norm(w)) > 0.99
    assert float(jnp.linalg.norm(w)) == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------- SparseHebbian


def test_sparse_hebbian_by_hand():
    rule = SparseHebbian(top_percent=50.0, decay=0.5)
    m0 = jnp.zeros(W.shape, jnp.float32)
    dw, m = rule(jnp.asarray(2.0, jnp.float32), PRE, POST, W, m0)
    h = np.outer(POST, PRE)      # [[0.75, -1.5, 3.0], [-0.25, 0.5, -1.0]]
    np.testing.assert_allclose(m, 0.5 * h, rtol=1e-6)
    centred = h - 0.5 * h
    # ceil(0.5 * 6) = 3 entries: |centred| = 1.5 (3.0), 0.75 (-1.5), 0.5 (-1.0)
    want = np.where(np.abs(centred) >= 0.5, 2.0 * centred, 0.0)
    np.testing.assert_allclose(dw, want, rtol=1e-6)
    assert int(jnp.sum(dw != 0)) == 3 == rule.n_active(W.shape)


@given(p=st.sampled_from([1.0, 10.0, 25.0, 100.0]), seed=st.integers(0, 2 ** 16))
def test_sparse_hebbian_changes_top_fraction_only(p, seed):
    rule = SparseHebbian(top_percent=p)
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    pre, post = jax.random.normal(k1, (16,), F32), jax.random.normal(k2, (12,), F32)
    w = jax.random.normal(k3, (12, 16), F32)
    dw, _ = rule(jnp.asarray(1.0, F32), pre, post, w, rule.init_state(w.shape))
    assert int(jnp.sum(dw != 0)) == math.ceil(p / 100 * 192)


def test_sparse_hebbian_rejects_bad_percent():
    with pytest.raises(ValueError, match="top_percent"):
        SparseHebbian(top_percent=0.0)


# --------------------------------------------------- properties of every rule

def _rule_cases():
    cases = [(f"ABCD-{v}-{s}", ABCD(v, s)) for v in ("A", "AD_lr", "ABCD_lr")
             for s in SHARING]
    return cases + [("Polynomial", Polynomial()), ("oja", None)]


def _call(rule, key, pre, post, w):
    if rule is None:
        return lambda c, x, y, w_: oja(x, y, w_, c), jnp.asarray(0.1, F32)
    c = rule.init(key, w.shape) if isinstance(rule, ABCD) else rule.init(key)
    return rule, c


def _np_rule(rule, c, pre, post, w):
    """Every rule's update written out in float64 NumPy, for any layer shape."""
    c, pre, post, w = (np.asarray(x, np.float64) for x in (c, pre, post, w))
    if rule is None:  # oja with eta = c
        return c * (np.outer(post, pre) - (post ** 2)[:, None] * w)
    if isinstance(rule, Polynomial):
        return sum(c[a, b, k] * pre[None, :] ** a * post[:, None] ** b * w ** k
                   for a in range(3) for b in range(3) for k in range(3))
    t = {name: np.broadcast_to(x, w.shape) for name, x in zip(VARIANTS[rule.variant], c)}
    zero = np.zeros(w.shape)
    dw = (t["A"] * np.outer(post, pre) + t.get("B", zero) * pre[None, :]
          + t.get("C", zero) * post[:, None] + t.get("D", zero))
    return t.get("eta", rule.eta) * dw


@pytest.mark.parametrize("name,rule", _rule_cases(), ids=[c[0] for c in _rule_cases()])
@given(seed=st.integers(0, 2 ** 16))
def test_rule_under_jit_and_vmap_matches_numpy(name, rule, seed):
    n_post, n_pre, batch = 4, 6, 3
    keys = jax.random.split(jax.random.key(seed), 4)
    pre = jax.random.normal(keys[0], (batch, n_pre), F32)
    post = jax.random.normal(keys[1], (batch, n_post), F32)
    w = 0.3 * jax.random.normal(keys[2], (batch, n_post, n_pre), F32)
    fn, c = _call(rule, keys[3], pre[0], post[0], w[0])
    want = np.stack([_np_rule(rule, c, pre[i], post[i], w[i]) for i in range(batch)])
    jitted = jax.jit(fn)(c, pre[0], post[0], w[0])
    vmapped = jax.vmap(fn, (None, 0, 0, 0))(c, pre, post, w)
    assert vmapped.shape == (batch, n_post, n_pre)
    np.testing.assert_allclose(jitted, want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vmapped, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------- PlasticMLP


@pytest.mark.parametrize("rule", [ABCD("ABCD_lr", "synapse"), ABCD("AD", "global"),
                                  Polynomial()])
def test_plastic_mlp_lifetime_is_the_loop_of_steps(rule):
    bound = 0.05  # below init_scale: the clip is active from the first step
    net = PlasticMLP((3, 5, 2), rule, weight_bound=bound)
    meta = net.init(jax.random.key(0))
    inputs = jax.random.normal(jax.random.key(1), (6, 3), F32)
    weights, outs = net.lifetime(meta, jax.random.key(2), inputs)
    w = net.initial_weights(meta, jax.random.key(2))
    # One step by hand: o_{l+1} = tanh(W_l o_l), W_l <- clip(W_l + rule(c_l, o_l, o_{l+1})).
    acts = [np.asarray(inputs[0], np.float64)]
    for w_l in w:
        acts.append(np.tanh(np.asarray(w_l, np.float64) @ acts[-1]))
    c = [meta["rule"]] * 2 if isinstance(rule, Polynomial) or rule.sharing == "global" \
        else meta["rule"]
    hand = [np.clip(np.asarray(w_l, np.float64) + _np_rule(rule, c[l], acts[l],
                                                           acts[l + 1], w_l), -bound, bound)
            for l, w_l in enumerate(w)]
    y, w1 = jax.jit(net.step)(meta, w, inputs[0])
    np.testing.assert_allclose(y, acts[-1], rtol=1e-5, atol=1e-6)
    for got, want in zip(w1, hand, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert any(np.any(np.abs(x) == np.float32(bound)) for x in w1)  # clipped entries
    assert any(np.any(np.abs(x) < bound) for x in w1)  # and unclipped ones
    for t in range(6):
        y, w = net.step(meta, w, inputs[t])
        np.testing.assert_allclose(outs[t], y, rtol=1e-5, atol=1e-6)
    for a, b in zip(weights, w):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(float(jnp.max(jnp.abs(x))) <= np.float32(bound) for x in weights)


def test_plastic_mlp_meta_gradient_same_under_unroll_and_checkpointed():
    net = PlasticMLP((3, 4, 2), ABCD("ABCD_lr", "post"), learn_init=True)
    meta = net.init(jax.random.key(0))
    inputs = jax.random.normal(jax.random.key(1), (20, 3), F32)

    def loss(meta, mode):
        _, outs = net.lifetime(meta, jax.random.key(2), inputs, grad=mode)
        return jnp.sum(outs ** 2)

    g1 = jax.grad(loss)(meta, il.Unroll())
    g2 = jax.grad(loss)(meta, il.Checkpointed())
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert all(bool(jnp.any(a != 0)) for a in jax.tree.leaves(g1))


def test_plastic_mlp_random_weights_differ_per_lifetime_and_are_not_learned():
    net = PlasticMLP((3, 4, 2), ABCD("A", "layer"))
    meta = net.init(jax.random.key(0))
    assert set(meta) == {"rule"}
    w1 = net.initial_weights(meta, jax.random.key(1))
    w2 = net.initial_weights(meta, jax.random.key(2))
    assert not np.allclose(w1[0], w2[0])
    assert eqx.tree_equal(w1, net.initial_weights(meta, jax.random.key(1)))


def test_plastic_mlp_rejects_bad_configuration():
    with pytest.raises(ValueError, match="sizes"):
        PlasticMLP((3,), ABCD())
    with pytest.raises(TypeError, match="rule"):
        PlasticMLP((3, 2), oja)


def _np_sparse_hebbian(rule, eta, pre, post, m):
    """HebbNet's update in float64: h = y x^T, m' = decay m + (1 - decay) h, and
    eta (h - m') on the ceil(p/100 size) entries of largest |h - m'|."""
    pre, post, m = (np.asarray(x, np.float64) for x in (pre, post, m))
    h = np.outer(post, pre)
    mean = rule.decay * m + (1 - rule.decay) * h
    centred = h - mean
    k = math.ceil(rule.top_percent / 100 * centred.size)
    kth = np.sort(np.abs(centred).ravel())[::-1][k - 1]
    return float(eta) * np.where(np.abs(centred) >= kth, centred, 0.0), mean


@given(seed=st.integers(0, 2 ** 16))
def test_sparse_hebbian_under_jit_and_vmap_matches_numpy(seed):
    rule = SparseHebbian(top_percent=20.0, decay=0.8)
    keys = jax.random.split(jax.random.key(seed), 4)
    pre, post = jax.random.normal(keys[0], (3, 6), F32), jax.random.normal(keys[1], (3, 4), F32)
    w = jax.random.normal(keys[2], (3, 4, 6), F32)
    m = jax.random.normal(keys[3], (3, 4, 6), F32)
    eta = jnp.asarray(0.7, F32)
    want = [_np_sparse_hebbian(rule, eta, pre[i], post[i], m[i]) for i in range(3)]
    vmapped = jax.vmap(rule, (None, 0, 0, 0, 0))(eta, pre, post, w, m)
    jitted = jax.jit(rule)(eta, pre[0], post[0], w[0], m[0])
    for i in range(3):
        for got, ref in zip((vmapped[0][i], vmapped[1][i]), want[i]):
            assert got.shape == (4, 6)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    for got, ref in zip(jitted, want[0]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
