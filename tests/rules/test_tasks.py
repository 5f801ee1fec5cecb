"""Task families: deterministic from a key, fixed shapes under jit/vmap, real data."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from innerloop.rules import LearnableAdam, tasks

DIGITS = tasks.family("digits")
VARIED = tasks.family("digits", widths=(8, 16, 32), depths=(1, 2),
                      activations=("relu", "tanh"), batch_sizes=(16, 32))


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in zip(la, lb))


@pytest.mark.parametrize("seed", [0, 2**31 - 1])
def test_families_are_deterministic_from_a_key(seed):
    key = jax.random.key(seed)
    for family in (DIGITS, VARIED, tasks.family("quadratic"),
                   tasks.family("iris", subset=0.5)):
        a, b = family.sample(key), family.sample(key)
        assert _equal(a, b)
        k = jax.random.key(seed + 1)
        assert _equal(a.init(k), b.init(k))
        assert _equal(a.batch(k), b.batch(k))


def test_different_keys_give_different_tasks():
    a, b = DIGITS.sample(jax.random.key(0)), DIGITS.sample(jax.random.key(1))
    assert float(a.init_scale) != float(b.init_scale)
    configs = {(t.hidden, t.activation, t.batch_size)
               for t in (VARIED.sample(jax.random.key(i)) for i in range(12))}
    assert len(configs) > 3  # the static choices vary too


def _np_loss(task, params, batch):
    """Mean softmax cross-entropy of the ReLU MLP, written out in float64 NumPy."""
    assert task.activation == "relu"
    x, y = (np.asarray(a) for a in batch)
    h = x.astype(np.float64)
    for i, layer in enumerate(params):
        h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < len(params) - 1:
            h = np.maximum(h, 0.0)
    log_z = h.max(1) + np.log(np.exp(h - h.max(1, keepdims=True)).sum(1))
    return np.mean(log_z - h[np.arange(len(y)), y])


def test_fixed_shape_family_samples_under_jit_and_vmap_with_shared_shapes():
    keys = jax.random.split(jax.random.key(0), 4)

    def first_loss(key):
        task = DIGITS.sample(key)
        params = task.init(key)
        return task.loss(params, task.batch(key)), task.init_scale

    losses, scales = jax.jit(jax.vmap(first_loss))(keys)
    assert len(set(np.asarray(scales).tolist())) == 4
    # Each vmapped loss is that of the task sampled eagerly from its key, computed by hand.
    for i, key in enumerate(keys):
        task = DIGITS.sample(key)
        assert float(task.init_scale) == float(scales[i])
        want = _np_loss(task, task.init(key), task.batch(key))
        np.testing.assert_allclose(losses[i], want, rtol=1e-5)
    eager = [DIGITS.sample(k) for k in keys]
    assert len({jax.tree.structure(t.init(keys[0])) for t in eager}) == 1
    assert DIGITS.fixed_shapes and not VARIED.fixed_shapes


def test_varied_family_under_jit_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot be sampled under jit"):
        jax.jit(lambda k: VARIED.sample(k).init_scale)(jax.random.key(0))


@pytest.mark.parametrize("name,features,classes,n_test", [
    ("digits", 64, 10, 360), ("iris", 4, 3, 30), ("wine", 13, 3, 36),
    ("breast_cancer", 30, 2, 114), ("mnist1d", 40, 10, 1000)])
def test_datasets_are_standardised_with_a_fixed_split(name, features, classes, n_test):
    x_tr, y_tr, x_te, y_te = tasks.load_dataset(name)
    assert x_tr.shape[1] == x_te.shape[1] == features and x_te.shape[0] == n_test
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    assert set(np.unique(y_tr)) == set(range(classes))
    np.testing.assert_allclose(x_tr.mean(0), 0, atol=1e-4)
    assert np.all(np.abs(x_tr.std(0) - 1) < 1e-3) or name == "digits"  # constant pixels
    assert tasks.load_dataset(name)[0] is x_tr  # cached, not regenerated


def test_subset_restricts_the_minibatches():
    task = tasks.family("wine", subset=0.1).sample(jax.random.key(3))
    x, _ = task.batches(jax.random.key(4), 20)
    assert x.shape == (20, 128, 13)
    rows = {tuple(r) for r in np.asarray(x).reshape(-1, 13).round(5)}
    assert len(rows) <= task.subset.shape[0] == round(0.1 * task.x_train.shape[0])


def test_training_with_adam_learns_each_classifier():
    for name in ("digits", "wine"):
        task = tasks.family(name).sample(jax.random.key(0))
        # Adam at 1e-2: LearnableAdam at its initial values, which strict dtype
        # promotion accepts (optax.adam raises b1 to an int32 count).
        adam = LearnableAdam(learning_rate=1e-2)
        train = eqx.filter_jit(lambda t, k: tasks.train(t, adam.optax(adam.init()), k, 100))
        params, losses = train(task, jax.random.key(1))
        assert losses.shape == (100,) and float(losses[-10:].mean()) < float(losses[0])
        metrics = task.evaluate(params)
        assert float(metrics["test_accuracy"]) > 0.8, (name, metrics)


def test_accuracy_is_the_fraction_of_examples_whose_largest_logit_is_the_label():
    """A linear classifier on one-hot inputs: the logits of example i are row i of W,
    so the accuracy is counted here by hand from W and the labels."""
    w = np.asarray([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 1.0],
                    [0.0, 1.0, 2.0]], np.float32)
    y_test = np.asarray([0, 1, 0, 0, 2], np.int32)
    y_train = np.asarray([1, 1, 2, 1, 2], np.int32)
    x = jnp.eye(5, dtype=jnp.float32)
    task = tasks.MLPTask(x_train=x, y_train=jnp.asarray(y_train), x_test=x,
                         y_test=jnp.asarray(y_test), init_scale=jnp.asarray(1.0),
                         subset=None, hidden=(), activation="relu", batch_size=2,
                         n_classes=3)
    params = [{"w": jnp.asarray(w), "b": jnp.zeros(3, jnp.float32)}]
    for split, labels in (("test", y_test), ("train", y_train)):
        hits = sum(int(max(range(3), key=lambda j: row[j]) == label)
                   for row, label in zip(w.tolist(), labels.tolist()))
        assert float(task.accuracy(params, split)) == pytest.approx(hits / len(labels))
        assert float(task.evaluate(params)[f"{split}_accuracy"]) == pytest.approx(
            hits / len(labels))
    assert float(task.accuracy(params, "test")) != float(task.accuracy(params, "train"))


def test_train_passes_optax_extra_arguments_so_lbfgs_and_reduce_on_plateau_work():
    """value=, grad= and value_fn= (the names optax's line search and
    reduce_on_plateau read) reach optimizers that take extra arguments; L-BFGS then
    solves a noise-free quadratic task."""
    task = tasks.family("quadratic", dim=6, noise=(0.0, 0.0)).sample(jax.random.key(0))
    run = lambda opt: jax.jit(lambda k: tasks.train(task, opt, k, 30))(jax.random.key(1))[1]
    # optax's line search and reduce_on_plateau mix int32 counters with floats.
    with jax.numpy_dtype_promotion("standard"):
        plateau = run(optax.chain(optax.sgd(0.5), optax.contrib.reduce_on_plateau()))
        lbfgs = run(optax.lbfgs())
    for losses in (plateau, lbfgs):
        assert bool(jnp.all(jnp.isfinite(losses))) and float(losses[-1]) < float(losses[0])
    assert float(lbfgs[-1]) < 1e-6 * float(lbfgs[0])


def test_deeper_varied_networks_have_their_sampled_shapes():
    task = tasks.family("digits", widths=(16,), depths=(3,), activations=("gelu",)).sample(
        jax.random.key(0))
    params = task.init(jax.random.key(1))
    assert [p["w"].shape for p in params] == [(64, 16), (16, 16), (16, 16), (16, 10)]
    assert task.apply(params, task.x_test).shape == (360, 10)


def test_noisy_quadratic_gradient_is_noisy_and_evaluation_is_clean():
    task = tasks.family("quadratic", dim=6).sample(jax.random.key(0))
    x = task.centre
    assert float(task.evaluate(x)["train_loss"]) == 0.0
    g1 = jax.grad(task.loss)(x, task.batch(jax.random.key(1)))
    g2 = jax.grad(task.loss)(x, task.batch(jax.random.key(2)))
    assert not bool(jnp.array_equal(g1, g2))


def test_bad_family_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown family"):
        tasks.family("cifar")
    with pytest.raises(ValueError, match="unknown activation"):
        tasks.family("digits", activations=("swish!",))
    with pytest.raises(ValueError, match="init_scale"):
        tasks.family("digits", init_scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="split"):
        DIGITS.sample(jax.random.key(0)).accuracy(None, "valid")


def test_cross_entropy_matches_optax_and_keeps_losses_below_float32_eps():
    key = jax.random.key(0)
    logits = 5.0 * jax.random.normal(key, (64, 10))
    labels = jax.random.randint(jax.random.key(1), (64,), 0, 10)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(tasks.cross_entropy(logits, labels), ref, rtol=1e-5,
                               atol=1e-6)
    g = jax.grad(lambda l: tasks.cross_entropy(l, labels).sum())(logits)
    g_ref = jax.grad(lambda l: optax.softmax_cross_entropy_with_integer_labels(
        l, labels).sum())(logits)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
    # A margin of 30: the logsumexp form rounds to exactly 0 in float32; the true
    # loss is log1p(2 exp(-30)) = 1.87e-13.
    confident = jnp.asarray([[30.0, 0.0, 0.0]], jnp.float32)
    assert float(optax.softmax_cross_entropy_with_integer_labels(
        confident, jnp.asarray([0]))[0]) == 0.0
    np.testing.assert_allclose(float(tasks.cross_entropy(confident, jnp.asarray([0]))[0]),
                               np.log1p(2 * np.exp(-30.0)), rtol=1e-5)
    # Wrong and confident: the loss is the margin.
    np.testing.assert_allclose(float(tasks.cross_entropy(confident, jnp.asarray([1]))[0]),
                               30.0, rtol=1e-6)
