"""Learned optimizers: the optax interface, features, meta-training, exact resume, CLI."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import innerloop
from innerloop import _lopt_cli as lopt_cli
from innerloop.implicit import ES, PES, TruncatedBPTT
from innerloop.rules import _lopt as lopt
from innerloop.rules import _meta_train as meta
from innerloop.rules import tasks
from innerloop.rules._checkpoint import load_checkpoint

KEY = jax.random.key(0)
LOPTS = {"adam": lopt.LearnableAdam(), "mlp": lopt.MLPLOpt(hidden=(8,)),
         "rnn": lopt.RNNMLPLOpt(hidden=(8,), lstm_size=8, cond_size=4)}

# One small meta-training configuration, shared so its outer step compiles once.
QUAD = tasks.QuadraticFamily(dim=5)
SMALL = lopt.MLPLOpt(hidden=(4,))


def _adam(learning_rate):
    """optax.adam(learning_rate) (what LearnableAdam is at its initial values), in the
    form that strict dtype promotion accepts (optax's raises b1 to an int32 count)."""
    rule = lopt.LearnableAdam(learning_rate=learning_rate)
    return rule.optax(rule.init())


OUTER = _adam(0.05)
EST = PES(pairs=2, K=5, sigma=0.01)
RUN = dict(estimator=EST, T=10, seed=3, outer=OUTER, progress=False)


def _params(dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.key(1))
    return {"w": jax.random.normal(k1, (3, 4), dtype), "b": jnp.zeros(4, dtype),
            "s": jnp.asarray(0.5, dtype), "nested": [jax.random.normal(k2, (2,), dtype)]}


def _loss(params, x):
    y = jnp.tanh(x @ params["w"] + params["b"]) * params["s"]
    return jnp.sum(y ** 2) + jnp.sum((params["nested"][0] - 1.0) ** 2)


def _same(a, b):
    return all(bool(jnp.array_equal(x, y)) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture
def standard_promotion():
    """The CLI's outer optimizer and its evaluation baseline are optax.adam, which
    raises b1 to an int32 count: strict dtype promotion rejects it (optax's code)."""
    with jax.numpy_dtype_promotion("standard"):
        yield


# ------------------------------------------------------- the optax interface


@pytest.mark.parametrize("name", sorted(LOPTS))
def test_learned_optimizers_lower_the_loss_in_a_plain_optax_loop(name):
    """optax.chain with clipping, apply_updates, a jitted step with the loss passed
    as optax's extra argument value=: the loss goes down and stays finite."""
    rule = LOPTS[name]
    opt = optax.chain(optax.clip_by_global_norm(1.0), rule.optax(rule.init(KEY)))
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    params = _params()
    state = opt.init(params)
    x = jax.random.normal(jax.random.key(2), (5, 3), jnp.float32)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(_loss)(params, x)
        updates, state = opt.update(grads, state, params, value=loss)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(20):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert jax.tree.structure(params) == jax.tree.structure(_params())
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_learned_optimizer_chained_with_reduce_on_plateau_trains_a_task(name):
    """The loss reaches every link of an optax chain as value=: reduce_on_plateau
    (which requires it) after the learned optimizer, driven by tasks.train_step."""
    rule = LOPTS[name]
    plateau = optax.contrib.reduce_on_plateau(patience=5, factor=0.5)
    opt = optax.chain(rule.optax(rule.init(KEY)), plateau)
    task = tasks.family("quadratic", dim=8, noise=(0.0, 0.0)).sample(jax.random.key(1))

    @jax.jit
    def run(key):
        params = task.init(key)

        def body(carry, t):
            params, state = carry
            params, state, loss = tasks.train_step(task, opt, params, state,
                                                   jax.random.fold_in(key, t))
            return (params, state), loss

        (_, state), losses = jax.lax.scan(body, (params, opt.init(params)),
                                          jnp.arange(200))
        return losses, state

    # optax's reduce_on_plateau compares float32 losses with int32 counters.
    with jax.numpy_dtype_promotion("standard"):
        losses, state = run(jax.random.key(2))
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert float(losses[-10:].mean()) < 0.8 * float(losses[0]), losses
    # reduce_on_plateau saw the losses: its best value is one of them, not its initial inf.
    best = float(state[1].best_value)
    assert float(losses.min()) <= best <= float(losses[0])


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_learned_optimizer_is_an_argmin_solver(name):
    """innerloop.argmin runs an optax solver with value= (and grad=, value_fn=): a
    learned optimizer at its initial meta-parameters (steps of 1e-2) reaches the
    minimiser x* = theta A^-1 b of a strongly convex quadratic, and the implicit
    gradient dx*/dtheta = A^-1 b."""
    rule = LOPTS[name]
    rule = type(rule)(**{**{f: getattr(rule, f) for f in rule.__dataclass_fields__},
                         "step_mult": 1e-2})
    curv = jnp.asarray([1.0, 2.0, 4.0])
    b = jnp.asarray([1.0, -1.0, 0.5])

    def loss(x, theta):
        return 0.5 * jnp.sum(curv * x ** 2) - theta * jnp.sum(b * x)

    solver = rule.optax(rule.init(KEY))
    rtol = 1e-3

    def solve(theta):
        return innerloop.argmin(loss, jnp.zeros(3), theta, solver=solver, rtol=rtol,
                                max_steps=2000)

    sol = jax.jit(solve)(jnp.asarray(1.0))
    want = b / curv
    assert bool(sol.converged), sol
    # Converged means |grad| / L <= rtol (1 + |x|), so |x - x*| <= (L / mu) rtol (1 + |x|).
    bound = float(curv.max() / curv.min()) * rtol * (1 + float(jnp.linalg.norm(sol.value)))
    assert float(jnp.linalg.norm(sol.value - want)) <= bound
    dx = jax.jit(jax.jacfwd(lambda t: solve(t).value))(jnp.asarray(1.0))
    np.testing.assert_allclose(dx, want, rtol=1e-4)


def test_learnable_adam_at_its_initial_values_is_optax_adam():
    rule = lopt.LearnableAdam(learning_rate=3e-3, b1=0.8, b2=0.99, eps=1e-6)
    mine, ref = rule.optax(rule.init(KEY)), optax.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6)
    params = _params()
    s_mine, s_ref = mine.init(params), ref.init(params)
    for t in range(5):
        grads = jax.grad(_loss)(params, jnp.full((2, 3), 0.1 * t + 0.3, jnp.float32))
        u_mine, s_mine = mine.update(grads, s_mine, params, value=1.0)
        with jax.numpy_dtype_promotion("standard"):  # optax raises b1 to an int32 count
            u_ref, s_ref = ref.update(grads, s_ref, params)
        for a, b in zip(jax.tree.leaves(u_mine), jax.tree.leaves(u_ref)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-9)
        params = optax.apply_updates(params, u_ref)


def test_features_shapes_and_per_tensor_normalisation():
    rule = lopt.MLPLOpt()
    assert rule.n_features == 2 + 4 * 5 + 11 == 33
    n, d = 7, len(lopt.DECAYS)
    rng = np.random.default_rng(0)
    p, g, m = rng.normal(size=n), rng.normal(size=n), rng.normal(size=(n, d))
    v = rng.uniform(0.5, 2.0, size=(n, d))  # eps (1e-8) is below float32 resolution here
    feats = lopt.parameter_features(*(jnp.asarray(a, jnp.float32) for a in (p, g, m, v)))
    assert feats.shape == (n, 2 + 4 * d)
    # Columns: [g, p, m_1..m_D, v_1..v_D, rsqrt(v_d), m_d rsqrt(v_d)].
    want = np.concatenate([g[:, None], p[:, None], m, v, 1 / np.sqrt(v), m / np.sqrt(v)], 1)
    np.testing.assert_allclose(feats, want, rtol=1e-6, atol=1e-7)
    x = lopt.normalise(jax.random.normal(KEY, (50, 6)) * jnp.arange(1.0, 7.0))
    np.testing.assert_allclose(jnp.mean(x ** 2, axis=0), 1.0, rtol=1e-3)
    emb = lopt.step_embedding(jnp.asarray(17))
    np.testing.assert_allclose(emb, np.sin(17 / np.asarray(lopt.TIMESCALES)), rtol=1e-6,
                               atol=1e-7)
    mp = rule.init(KEY)
    assert [layer["w"].shape for layer in mp] == [(33, 32), (32, 32), (32, 2)]
    rnn = lopt.RNNMLPLOpt()
    mp = rnn.init(KEY)
    assert mp["mlp"][0]["w"].shape == (33 + rnn.cond_size, 32)
    assert mp["lstm"]["wh"].shape == (64, 4 * 64)


def _np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _np_lopt_updates(rule, mp, params, grads, values):
    """The updates of MLPLOpt / RNNMLPLOpt for successive steps with the same grads,
    written out in float64 NumPy from the module docstrings (Metz et al. 2020)."""
    f64 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float64), t)  # noqa: E731
    mp, params, grads = f64(mp), f64(params), f64(grads)
    d, taus = np.asarray(rule.decays), np.asarray(rule.timescales)
    eps = lopt._RSQRT_EPS
    leaves_g = jax.tree.leaves(grads)
    m = [np.zeros(np.shape(g) + (len(d),)) for g in leaves_g]
    v = [np.zeros(np.shape(g) + (len(d),)) for g in leaves_g]
    rnn = isinstance(rule, lopt.RNNMLPLOpt)
    if rnn:
        h = np.zeros((len(leaves_g), rule.lstm_size))
        c = np.zeros_like(h)
        ld = np.asarray(rule.loss_decays)
    mlp = mp["mlp"] if rnn else mp
    all_updates = []
    for t, loss in enumerate(values):
        leaves_p = jax.tree.leaves(params)
        m = [d * mi + (1 - d) * np.asarray(g)[..., None] for mi, g in zip(m, leaves_g)]
        v = [d * vi + (1 - d) * np.asarray(g)[..., None] ** 2 for vi, g in zip(v, leaves_g)]
        emb = np.sin(t / taus)
        if rnn:
            if t == 0:
                ema, loss0 = np.full(len(ld), loss), loss
            feats = np.concatenate([np.tanh((loss - ema) / (np.abs(ema) + 1e-8)),
                                    [np.tanh(np.log(abs(loss) + 1e-8)
                                             - np.log(abs(loss0) + 1e-8))]])
            ema = ld * ema + (1 - ld) * loss
            rms = lambda x, axis=None: 0.1 * np.log(  # noqa: E731
                np.sqrt(np.mean(np.square(x), axis=axis)) + 1e-12)
            rows = []
            for p, g, mi, vi in zip(leaves_p, leaves_g, m, v):
                axes = tuple(range(np.ndim(p)))
                rows.append(np.concatenate([[rms(g), rms(p)], rms(mi, axes),
                                            np.mean(np.abs(mi / np.sqrt(vi + eps)), axis=axes),
                                            feats, emb]))
            z = np.stack(rows) @ mp["lstm"]["wx"] + h @ mp["lstm"]["wh"] + mp["lstm"]["b"]
            zi, zf, zg, zo = np.split(z, 4, axis=-1)
            c = _np_sigmoid(zf) * c + _np_sigmoid(zi) * np.tanh(zg)
            h = _np_sigmoid(zo) * np.tanh(c)
            cond = h @ mp["out"]["w"] + mp["out"]["b"]
        updates = []
        for k, (p, g, mi, vi) in enumerate(zip(leaves_p, leaves_g, m, v)):
            n = np.size(p)
            mi, vi = mi.reshape(n, -1), vi.reshape(n, -1)
            r = 1 / np.sqrt(vi + eps)
            x = np.concatenate([np.reshape(g, (n, 1)), np.reshape(p, (n, 1)), mi, vi, r,
                                mi * r], 1)
            x = x / np.sqrt(np.mean(x ** 2, 0) + lopt._NORM_EPS)
            shared = np.concatenate([emb, cond[k]]) if rnn else emb
            out = np.concatenate([x, np.broadcast_to(shared, (n, len(shared)))], 1)
            for layer in mlp[:-1]:
                out = np.maximum(out @ layer["w"] + layer["b"], 0)
            out = out @ mlp[-1]["w"] + mlp[-1]["b"]
            step = out[:, 0] * np.exp(rule.exp_mult * out[:, 1]) * rule.step_mult
            updates.append(-step.reshape(np.shape(p)))
        all_updates.append(updates)
        params = jax.tree.unflatten(jax.tree.structure(params),
                                    [p + u for p, u in zip(leaves_p, updates)])
    return all_updates


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_update_under_jit_matches_numpy(name):
    rule = LOPTS[name]
    mp = rule.init(KEY)
    opt = rule.optax(mp)
    params = _params()
    grads = jax.grad(_loss)(params, jnp.ones((2, 3), jnp.float32))

    @jax.jit
    def two_steps(params, grads):
        state = opt.init(params)
        u1, state = opt.update(grads, state, params, value=jnp.asarray(2.0, jnp.float32))
        u2, state = opt.update(grads, state, optax.apply_updates(params, u1),
                               value=jnp.asarray(1.5, jnp.float32))
        return u1, u2

    want = _np_lopt_updates(rule, mp, params, grads, (2.0, 1.5))
    # float32 against float64: the updates are about step_mult = 1e-3 in size.
    for got, ref in zip(two_steps(params, grads), want, strict=True):
        for a, b in zip(jax.tree.leaves(got), ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)


def test_initial_step_size_is_about_step_mult_and_scalar_parameters_work():
    rule = lopt.MLPLOpt()
    opt = rule.optax(rule.init(KEY))
    params = _params()
    grads = jax.grad(_loss)(params, jnp.ones((2, 3), jnp.float32))
    updates, _ = opt.update(grads, opt.init(params), params)
    size = jnp.concatenate([jnp.abs(u).ravel() for u in jax.tree.leaves(updates)])
    assert updates["s"].shape == () and 1e-5 < float(jnp.median(size)) < 1e-2


def test_missing_loss_or_params_is_a_clear_error():
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    rnn = LOPTS["rnn"].optax(LOPTS["rnn"].init(KEY))
    with pytest.raises(ValueError, match="RNNMLPLOpt.update: .*value=loss"):
        rnn.update(grads, rnn.init(params), params)
    with pytest.raises(ValueError, match="value=loss"):  # not optax's name for it
        rnn.update(grads, rnn.init(params), params, loss=1.0)
    mlp = LOPTS["mlp"].optax(LOPTS["mlp"].init(KEY))
    with pytest.raises(ValueError, match="params"):
        mlp.update(grads, mlp.init(params))


# ---------------------------------------------------------- inner problem


def test_unrolled_task_continues_where_it_stopped():
    """Two unrolls of 3 steps reach the state of one unroll of 6 steps."""
    problem = meta.UnrolledTask(SMALL, QUAD, T=10)
    theta = SMALL.init(KEY)
    state = problem.init(jax.random.key(5), theta)
    once, _ = jax.jit(lambda s: problem.unroll(s, theta, 6))(state)
    twice = jax.jit(
        lambda s: problem.unroll(problem.unroll(s, theta, 3)[0], theta, 3))(state)[0]
    assert int(once.t) == int(twice.t) == 6
    for a, b in zip(jax.tree.leaves(once.params), jax.tree.leaves(twice.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_meta_loss_is_capped_for_diverging_runs_and_needs_fixed_shapes():
    rule = lopt.LearnableAdam(learning_rate=1e3)
    problem = meta.UnrolledTask(rule, QUAD, T=10, n_tasks=3, loss_cap=50.0)
    theta = rule.init(KEY)
    _, loss = problem.unroll(problem.init(KEY, theta), theta, 10)
    assert np.isfinite(float(loss)) and float(loss) <= 50.0
    with pytest.raises(ValueError, match="share their shapes"):
        meta.UnrolledTask(rule, tasks.family("digits", widths=(8, 16)), T=10)


def test_log_meta_loss_is_the_log_of_each_tasks_mean_training_loss():
    """log_loss=True: log(mean over the truncation of the capped loss + 1e-5), per
    task, averaged over tasks; recomputed here from the plain per-step losses."""
    rule = lopt.LearnableAdam(learning_rate=0.05)
    theta = rule.init(KEY)
    plain = meta.UnrolledTask(rule, QUAD, T=10, n_tasks=3)
    logged = meta.UnrolledTask(rule, QUAD, T=10, n_tasks=3, log_loss=True)
    state = plain.init(jax.random.key(3), theta)
    per_task = [plain._unroll_one(jax.tree.map(lambda x: x[i], state), theta, 4)[1]
                for i in range(3)]
    want = np.mean([np.log(float(v) + 1e-5) for v in per_task])
    _, got = logged.unroll(state, theta, 4)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


# ------------------------------------------------------------ meta-training


def test_meta_training_lowers_the_meta_loss_on_quadratics():
    rule = lopt.LearnableAdam()
    evaluate = jax.jit(lambda th: meta.meta_loss(rule, th, QUAD, jax.random.key(9),
                                                 n_tasks=8, steps=10))
    result = meta.meta_train(rule, QUAD, steps=15, **{**RUN, "outer": _adam(0.5)})
    assert result.losses.shape == (15,) and result.step == 15
    assert float(evaluate(result.meta_params)) < 0.7 * float(evaluate(rule.init(KEY)))
    assert float(result.meta_params["log_lr"]) > float(rule.init(KEY)["log_lr"])


@pytest.mark.parametrize("estimator", [ES(pairs=2, K=5, sigma=0.01),
                                       ES(samples=3, K=5, sigma=0.01),
                                       TruncatedBPTT(K=5, batch=2)],
                         ids=["es-pairs", "es-samples", "tbptt"])
def test_meta_training_binds_any_estimator_object(estimator):
    """The estimator comes without its task; meta_train binds an UnrolledTask and
    records the estimator's configuration (not its task) in the checkpoint's config."""
    result = meta.meta_train(SMALL, QUAD, steps=2, **{**RUN, "estimator": estimator})
    assert result.step == 2 and np.isfinite(result.losses).all()
    assert not _same(result.meta_params, SMALL.init(jax.random.split(
        jax.random.key(3), 3)[1]))  # it took steps
    config = result.config["estimator"]
    assert config["class"] == type(estimator).__name__
    assert "task" not in config["fields"]
    assert {k: v for k, v in config["fields"].items() if v is not None} == {
        k: v for k, v in (("pairs", getattr(estimator, "pairs", None)),
                          ("samples", getattr(estimator, "samples", None)),
                          ("batch", getattr(estimator, "batch", None)),
                          ("K", estimator.K), ("sigma", getattr(estimator, "sigma", None)),
                          ("centred_ranks", getattr(estimator, "centred_ranks", None)))
        if v is not None}


def test_meta_train_wants_an_unbound_estimator_object():
    with pytest.raises(ValueError, match="meta_train: estimator must be an estimator "
                                         "object.*PES\\(pairs="):
        meta.meta_train(SMALL, QUAD, steps=1, **{**RUN, "estimator": "pes"})
    bound = PES(meta.UnrolledTask(SMALL, QUAD, T=10), pairs=2, K=5, sigma=0.01)
    with pytest.raises(ValueError, match="meta_train: give the estimator without its task"):
        meta.meta_train(SMALL, QUAD, steps=1, **{**RUN, "estimator": bound})


class _Killed(Exception):
    pass


def _full_and_resumed(family, tmp_path):
    """Six outer steps uninterrupted ("full"), and stopped after 4 then resumed to 6
    ("part")."""
    full = meta.meta_train(SMALL, family, steps=6, checkpoint_dir=str(tmp_path / "full"),
                           checkpoint_every=2, **RUN)
    meta.meta_train(SMALL, family, steps=4, checkpoint_dir=str(tmp_path / "part"),
                    checkpoint_every=2, **RUN)
    resumed = meta.meta_train(SMALL, family, steps=6,
                              checkpoint_dir=str(tmp_path / "part"), checkpoint_every=2,
                              **RUN)
    return full, resumed


def test_kill_and_resume_is_bit_identical(tmp_path):
    full, resumed = _full_and_resumed(QUAD, tmp_path)
    # Killed during step 5 (after the step-4 checkpoint), then resumed to 6.

    def kill(step, loss):
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        meta.meta_train(SMALL, QUAD, steps=6, checkpoint_dir=str(tmp_path / "kill"),
                        checkpoint_every=2, callback=kill, **RUN)
    assert load_checkpoint(str(tmp_path / "kill")).step == 4
    killed = meta.meta_train(SMALL, QUAD, steps=6, checkpoint_dir=str(tmp_path / "kill"),
                             checkpoint_every=2, **RUN)
    for other in (resumed, killed):
        assert jax.tree.structure(other.meta_params) == jax.tree.structure(full.meta_params)
        for a, b in zip(jax.tree.leaves(full.meta_params), jax.tree.leaves(other.meta_params)):
            assert jnp.array_equal(a, b)
        np.testing.assert_array_equal(other.losses, full.losses)
    initial = SMALL.init(jax.random.split(jax.random.key(3), 3)[1])
    assert not _same(full.meta_params, initial)  # it did train
    # The checkpoints themselves agree, array by array.
    with np.load(tmp_path / "full" / "checkpoint.npz") as a, \
            np.load(tmp_path / "kill" / "checkpoint.npz") as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
    assert sorted(os.listdir(tmp_path / "kill")) == ["checkpoint.npz"]  # no temporaries


def test_several_families_alternate_and_resume_bit_identically(tmp_path):
    """A tuple of families (different shapes): outer step i trains on family i mod 2,
    each with its own estimator state; a killed-and-resumed run equals an
    uninterrupted one, and the checkpoint rebuilds the tuple."""
    fams = (tasks.QuadraticFamily(dim=3), tasks.QuadraticFamily(dim=5))
    full, resumed = _full_and_resumed(fams, tmp_path)
    assert _same(full.meta_params, resumed.meta_params)
    np.testing.assert_array_equal(full.losses, resumed.losses)
    ckpt = load_checkpoint(str(tmp_path / "full"))
    assert ckpt.family == fams and ckpt.step == 6
    assert np.isfinite(full.losses).all() and full.losses.shape == (6,)
    assert not _same(full.meta_params, SMALL.init(jax.random.split(
        jax.random.key(3), 3)[1]))  # it did train
    # A different order of the families is a different configuration.
    with pytest.raises(ValueError, match="another configuration"):
        meta.meta_train(SMALL, fams[::-1], steps=8, checkpoint_dir=str(tmp_path / "full"),
                        checkpoint_every=2, **RUN)


@pytest.fixture
def run_dir(tmp_path):
    meta.meta_train(SMALL, QUAD, steps=2, checkpoint_dir=str(tmp_path), checkpoint_every=1,
                    **RUN)
    return tmp_path


def test_corrupt_or_truncated_checkpoint_is_a_clear_error(run_dir):
    path = run_dir / "checkpoint.npz"
    data = path.read_bytes()
    for broken in (data[: len(data) // 2], data[:200] + bytes(100) + data[300:], b""):
        path.write_bytes(broken)
        with pytest.raises(ValueError, match="corrupt or truncated") as info:
            meta.meta_train(SMALL, QUAD, steps=4, checkpoint_dir=str(run_dir), **RUN)
        assert str(path) in str(info.value)
        assert path.read_bytes() == broken  # nothing overwritten
        with pytest.raises(ValueError, match="corrupt or truncated"):
            load_checkpoint(str(run_dir))


def test_missing_mismatched_or_existing_checkpoint_is_a_clear_error(run_dir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ValueError, match="no checkpoint to resume") as info:
        meta.meta_train(SMALL, QUAD, steps=2, checkpoint_dir=str(empty), resume="require",
                        **RUN)
    assert str(empty) in str(info.value) and os.listdir(empty) == []
    path = run_dir / "checkpoint.npz"
    before = path.read_bytes()
    for other in (PES(pairs=3, K=5, sigma=0.01), PES(pairs=2, K=5, sigma=0.02),
                  PES(pairs=2, K=4, sigma=0.01), ES(pairs=2, K=5, sigma=0.01),
                  TruncatedBPTT(K=5, batch=2)):
        with pytest.raises(ValueError, match="another configuration.*estimator"):
            meta.meta_train(SMALL, QUAD, steps=4, checkpoint_dir=str(run_dir),
                            **{**RUN, "estimator": other})
    with pytest.raises(ValueError, match="another configuration.*lopt"):
        meta.meta_train(lopt.MLPLOpt(hidden=(5,)), QUAD, steps=4,
                        checkpoint_dir=str(run_dir), **RUN)
    with pytest.raises(ValueError, match="already there"):
        meta.meta_train(SMALL, QUAD, steps=4, checkpoint_dir=str(run_dir), resume=False,
                        **RUN)
    with pytest.raises(ValueError, match="beyond steps=1"):
        meta.meta_train(SMALL, QUAD, steps=1, checkpoint_dir=str(run_dir), **RUN)
    assert path.read_bytes() == before


@pytest.mark.usefixtures("standard_promotion")
def test_cli_trains_several_shapes_with_the_benchmarks_objective(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--lopt", "adam", "--family", "iris", "--width", "4,6", "--depth",
            "1", "--tasks", "2", "--K", "3", "--T", "6", "--steps", "2", "--lr", "0.01",
            "--cosine", "--meta-loss", "log", "--out", out, "--no-progress"]
    assert lopt_cli.main(args) == 0
    assert "(2 shapes in turn)" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert isinstance(ckpt.family, tuple) and [f.widths for f in ckpt.family] == [(4,), (6,)]
    assert ckpt.config["log_loss"] is True and ckpt.step == 2
    assert lopt_cli.main(["train", "--family", "quadratic", "--width", "8", "--out",
                          str(tmp_path / "q")]) == 2
    assert "apply to the MLP families" in capsys.readouterr().err


def test_load_checkpoint_rebuilds_the_optimizer(run_dir):
    ckpt = load_checkpoint(str(run_dir))
    assert ckpt.lopt == SMALL and ckpt.family == QUAD and ckpt.step == 2
    assert ckpt.losses.shape == (2,)
    again = meta.meta_train(SMALL, QUAD, steps=2, checkpoint_dir=str(run_dir), **RUN)
    assert _same(ckpt.meta_params, again.meta_params)  # nothing left to do: same params


# -------------------------------------------------------------------- CLI


@pytest.mark.usefixtures("standard_promotion")
def test_cli_train_resume_and_eval(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["train", "--lopt", "adam", "--family", "quadratic", "--tasks", "2", "--K", "5",
            "--T", "10", "--steps", "2", "--out", out, "--no-progress"]
    assert lopt_cli.main(args) == 0
    assert lopt_cli.main(args[:-5] + ["--steps", "3", "--out", out, "--no-progress"]) == 0
    assert load_checkpoint(out).step == 3
    assert "meta-loss" in capsys.readouterr().out
    assert lopt_cli.main(["eval", "--checkpoint", out, "--tasks", "2", "--steps", "10",
                          "--json", str(tmp_path / "eval.json")]) == 0
    text = capsys.readouterr().out
    assert "quadratic" in text and "adam_1e-3" in text and (tmp_path / "eval.json").exists()


@pytest.mark.usefixtures("standard_promotion")
def test_cli_evaluates_each_family_of_a_several_family_checkpoint(tmp_path, capsys):
    fams = (tasks.QuadraticFamily(dim=3), tasks.QuadraticFamily(dim=5))
    meta.meta_train(SMALL, fams, steps=2, checkpoint_dir=str(tmp_path), **RUN)
    assert lopt_cli.main(["eval", "--checkpoint", str(tmp_path), "--tasks", "2",
                          "--steps", "5", "--json", str(tmp_path / "eval.json")]) == 0
    import json
    with open(tmp_path / "eval.json") as f:
        assert set(json.load(f)["results"]) == {"quadratic[0]", "quadratic[1]"}


def test_cli_knows_every_family():
    assert lopt_cli.FAMILIES == tasks.FAMILIES


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert lopt_cli.main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint there" in err
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04garbage")
    assert lopt_cli.main(["eval", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt or truncated" in err
    assert lopt_cli.main(["train", "--out", str(tmp_path), "--resume", "never"]) == 2
    assert "already there" in capsys.readouterr().err
    assert lopt_cli.main(["train", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert lopt_cli.main(["frobnicate"]) == 2
