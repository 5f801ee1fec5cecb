"""The pretrained learned optimizers shipped in the package (`rules/pretrained/`):
they load with no meta-training and no network, train a model no other test uses
(a small tanh MLP regressing a generated nonlinear function) as plain optax
optimizers under `jit`, and a corrupted, mismatched or missing file fails with an
error that names it."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from innerloop import rules
from innerloop.rules import _pretrained

LOPTS = (rules.MLPLOpt, rules.RNNMLPLOpt)
STEPS = 200  # the horizon the optimizers were meta-trained for
FALLS = 0.05  # the loss after STEPS steps is at most this fraction of the first
BEATS = 0.5  # ... and this fraction of the untrained initialisation's


def _problem():
    """A 8-32-1 tanh MLP's initial parameters, and data y = sin(x @ a) @ b + 0.1 noise
    (256 points in 8 dimensions); float32 whether or not x64 is on. (NumPy draws them:
    no compilation.)"""
    rng = np.random.default_rng(7)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    x, a, b = f32(256, 8), f32(8, 4) / np.float32(np.sqrt(8)), f32(4, 1)
    y = jnp.asarray(np.sin(np.asarray(x) @ np.asarray(a)) @ np.asarray(b), jnp.float32) \
        + 0.1 * f32(256, 1)
    params = {"w1": f32(8, 32) / np.float32(np.sqrt(8)), "b1": jnp.zeros((32,), jnp.float32),
              "w2": f32(32, 1) / np.float32(np.sqrt(32)), "b2": jnp.zeros((1,), jnp.float32)}
    return params, x, y


def _loss(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean(jnp.square(h @ params["w2"] + params["b2"] - y))


def _train(lopt, meta_params, params, x, y):
    """STEPS full-batch steps of `lopt.optax(meta_params)`, a plain optax optimizer
    (the loss passed as optax's extra argument `value`). Returns the losses."""
    opt = lopt.optax(meta_params)

    def step(carry, _):
        p, s = carry
        loss, grads = jax.value_and_grad(_loss)(p, x, y)
        updates, s = opt.update(grads, s, p, value=loss)
        return (optax.apply_updates(p, updates), s), loss

    (p, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=STEPS)
    return jnp.append(losses, _loss(p, x, y))


train = jax.jit(_train, static_argnums=0)


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.mark.parametrize("cls", LOPTS, ids=lambda c: c.__name__)
def test_pretrained_trains_an_unseen_model_under_jit(cls, problem):
    """The loss falls by FALLS, and ends at most BEATS x where the same optimizer's
    untrained initialisation ends (so the shipped weights are meta-trained ones)."""
    lopt, meta = cls.pretrained()
    assert type(lopt) is cls
    losses = np.asarray(train(lopt, meta, *problem))
    assert np.all(np.isfinite(losses))
    assert losses[-1] <= FALLS * losses[0], (losses[0], losses[-1])
    untrained = lopt.init(jax.random.split(jax.random.key(0), 3)[1])  # as meta_train's
    assert losses[-1] <= BEATS * np.asarray(train(lopt, untrained, *problem))[-1]


def test_zero_meta_params_fail_the_loss_falls_check(problem):
    """The check above can fail: an optimizer whose MLP is all zeros takes no step."""
    lopt, meta = rules.MLPLOpt.pretrained()
    zeros = jax.tree.map(jnp.zeros_like, meta)
    losses = np.asarray(train(lopt, zeros, *problem))
    assert not losses[-1] <= FALLS * losses[0]


@pytest.mark.parametrize("cls", LOPTS, ids=lambda c: c.__name__)
def test_the_card_says_how_it_was_meta_trained_and_how_it_measured(cls):
    card = _pretrained.read_card(cls)
    info = card["info"]
    assert info["outer_steps"] >= 1 and info["meta_training_seconds"] > 0
    assert info["meta_trained_on"] and info["estimator"]["class"] == "PES"
    ev = info["evaluation"]
    assert float(ev["median_ratio_in_family"]) > 0
    assert float(ev["median_ratio_out_of_family"]) > 0
    assert {r["group"] for r in ev["held_out"]} == {"in", "out"}


@pytest.fixture
def shipped(tmp_path):
    """A copy of the shipped files, to damage."""
    for cls in LOPTS:
        for ext in ("json", "npz"):
            shutil.copy(_pretrained.PRETRAINED_DIR / f"{cls.__name__}.{ext}", tmp_path)
    return tmp_path


def test_a_copy_loads_equal_to_the_shipped_one(shipped):
    for cls in LOPTS:
        (a, ma), (b, mb) = cls.pretrained(), cls.pretrained(shipped)
        assert a == b
        assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(ma),
                                                        jax.tree.leaves(mb)))


def test_corrupted_weights_fail_the_hash(shipped):
    path = shipped / "RNNMLPLOpt.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"RNNMLPLOpt.pretrained: .*RNNMLPLOpt.npz is "
                                         r"corrupted.*reinstall"):
        rules.RNNMLPLOpt.pretrained(shipped)


def test_another_optimizers_files_fail(shipped):
    for ext in ("json", "npz"):
        shutil.copy(shipped / f"MLPLOpt.{ext}", shipped / f"RNNMLPLOpt.{ext}")
    with pytest.raises(ValueError, match=r"RNNMLPLOpt.pretrained: .*card of a MLPLOpt, not "
                                         r"a RNNMLPLOpt; load it with MLPLOpt.pretrained"):
        rules.RNNMLPLOpt.pretrained(shipped)


def test_a_card_with_other_hidden_sizes_fails(shipped):
    path = shipped / "MLPLOpt.json"
    card = json.loads(path.read_text())
    card["fields"]["hidden"] = [h + 1 for h in card["fields"]["hidden"]]
    path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"MLPLOpt.pretrained: .*MLPLOpt.npz does not match "
                                         r"the MLPLOpt its card describes.*expected"):
        rules.MLPLOpt.pretrained(shipped)


def test_weights_of_another_architecture_with_a_matching_hash_fail(shipped):
    """The RNN optimizer's weights under the MLP optimizer's card, hash updated."""
    card_path = shipped / "MLPLOpt.json"
    card = json.loads(card_path.read_text())
    shutil.copy(shipped / "RNNMLPLOpt.npz", shipped / "MLPLOpt.npz")
    card["sha256"] = json.loads((shipped / "RNNMLPLOpt.json").read_text())["sha256"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"MLPLOpt.npz does not match .*missing 0.b, 0.w.*"
                                         r"unexpected lstm"):
        rules.MLPLOpt.pretrained(shipped)


def test_missing_or_unreadable_files_fail(shipped):
    (shipped / "MLPLOpt.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"MLPLOpt.pretrained: .*MLPLOpt.npz.* is "
                                                r"missing"):
        rules.MLPLOpt.pretrained(shipped)
    (shipped / "MLPLOpt.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"MLPLOpt.pretrained: no card .*MLPLOpt.json"):
        rules.MLPLOpt.pretrained(shipped)
    (shipped / "RNNMLPLOpt.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"RNNMLPLOpt.pretrained: .*RNNMLPLOpt.json is not "
                                         r"a pretrained-optimizer card"):
        rules.RNNMLPLOpt.pretrained(shipped)


def test_save_pretrained_round_trips_and_refuses_other_meta_params(tmp_path):
    lopt = rules.MLPLOpt(hidden=(4,))
    rng = np.random.default_rng(3)  # any arrays of init's shapes (NumPy: no compilation)
    meta = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                        jax.eval_shape(lopt.init, jax.random.key(3)))
    rules.save_pretrained(tmp_path, lopt, meta, info={"note": "x"})
    back, back_meta = rules.MLPLOpt.pretrained(tmp_path)
    assert back == lopt
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(meta),
                                                    jax.tree.leaves(back_meta)))
    with pytest.raises(ValueError, match=r"save_pretrained: .*not what MLPLOpt's init makes"):
        rules.save_pretrained(tmp_path, rules.MLPLOpt(hidden=(5,)), meta)
