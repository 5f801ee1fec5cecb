"""`unroll`: Unroll, Checkpointed and Truncated on a fixed-length inner loop (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import innerloop as il
from innerloop.implicit import unroll

N = 16


def _problem():
    k1, k2 = jax.random.split(jax.random.key(0))
    w = 0.9 * jax.random.normal(k1, (N, N), jnp.float64) / jnp.sqrt(N)
    theta = {"b": jnp.linspace(-1.0, 1.0, N), "a": jnp.asarray(0.7)}
    s0 = jax.random.normal(k2, (N,), jnp.float64)
    return w, theta, s0


def _step(w):
    def step(s, th, t):
        return jnp.tanh(th["a"] * (w @ s) + th["b"] + 0.01 * jnp.sin(t.astype(s.dtype)))
    return step


def _loss(mode, w, s0, steps):
    step = _step(w)

    def loss(th):
        return jnp.sum(unroll(step, s0, th, steps, grad=mode) ** 2)
    return loss


@pytest.mark.parametrize("checkpoints", [None, 3, 50])
def test_checkpointed_equals_unroll_to_roundoff(checkpoints):
    with jax.enable_x64(True):
        w, theta, s0 = _problem()
        v_u, g_u = jax.jit(jax.value_and_grad(_loss(il.Unroll(), w, s0, 50)))(theta)
        mode = il.Checkpointed(checkpoints)
        v_c, g_c = jax.jit(jax.value_and_grad(_loss(mode, w, s0, 50)))(theta)
        assert v_c == v_u
        for k in g_u:
            np.testing.assert_allclose(g_c[k], g_u[k], rtol=1e-13, atol=1e-14)


def test_unroll_matches_python_loop_and_finite_differences():
    with jax.enable_x64(True):
        w, theta, s0 = _problem()
        step = _step(w)

        def ref(th):
            s = s0
            for t in range(20):
                s = step(s, th, jnp.asarray(t, jnp.int32))
            return jnp.sum(s ** 2)

        g = jax.grad(_loss(il.Unroll(), w, s0, 20))(theta)
        g_ref = jax.grad(ref)(theta)
        for k in g:
            np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-12, atol=1e-14)
        eps = 1e-6
        fd = (ref({**theta, "a": theta["a"] + eps}) - ref({**theta, "a": theta["a"] - eps}))
        np.testing.assert_allclose(g["a"], fd / (2 * eps), rtol=1e-7)


def test_checkpointed_temp_memory_at_most_10_percent_of_unroll_at_T_1000():
    with jax.enable_x64(True):
        n, steps = 128, 1000
        w = 0.9 * jax.random.normal(jax.random.key(1), (n, n)) / jnp.sqrt(n)
        s0, b = jnp.ones(n), jnp.linspace(-1.0, 1.0, n)

        def step(s, th, t):
            return jnp.tanh(w @ s + th)

        def temp(mode):
            def f(th):
                return jnp.sum(unroll(step, s0, th, steps, grad=mode) ** 2)
            compiled = jax.jit(jax.value_and_grad(f)).lower(b).compile()
            return compiled.memory_analysis().temp_size_in_bytes

        full, ckpt = temp(il.Unroll()), temp(il.Checkpointed())
        assert full > steps * n * 8  # every state stored
        assert ckpt <= 0.10 * full, (ckpt, full)


@pytest.mark.parametrize("k", [1, 5])
def test_truncated_equals_hand_written_truncated_gradient(k):
    with jax.enable_x64(True):
        w, theta, s0 = _problem()
        step, steps = _step(w), 30

        def hand(th):
            s = s0
            for t in range(steps - k):
                s = step(s, th, jnp.asarray(t, jnp.int32))
            s = jax.lax.stop_gradient(s)
            for t in range(steps - k, steps):
                s = step(s, th, jnp.asarray(t, jnp.int32))
            return jnp.sum(s ** 2)

        v, g = jax.value_and_grad(_loss(il.Truncated(k), w, s0, steps))(theta)
        v_ref, g_ref = jax.value_and_grad(hand)(theta)
        np.testing.assert_allclose(v, v_ref, rtol=1e-14)
        for key in g:
            np.testing.assert_allclose(g[key], g_ref[key], rtol=1e-12, atol=1e-14)
        # and it differs from the full gradient (truncation is biased)
        g_full = jax.grad(_loss(il.Unroll(), w, s0, steps))(theta)
        assert not np.allclose(g["b"], g_full["b"], rtol=1e-6)


def test_truncated_with_k_at_least_steps_is_full_unroll():
    with jax.enable_x64(True):
        w, theta, s0 = _problem()
        g_t = jax.grad(_loss(il.Truncated(10), w, s0, 7))(theta)
        g_u = jax.grad(_loss(il.Unroll(), w, s0, 7))(theta)
        for k in g_u:
            np.testing.assert_allclose(g_t[k], g_u[k], rtol=1e-14)


@pytest.mark.parametrize("mode", [il.Unroll(), il.Checkpointed(), il.Truncated(3)],
                         ids=["unroll", "checkpointed", "truncated"])
def test_outputs_pytree_state_closure_and_vmap(mode):
    with jax.enable_x64(True):
        w, theta, s0 = _problem()
        c = jnp.linspace(0.5, 1.5, N)  # closed over and differentiated

        def step(state, th, t):
            s = jnp.tanh(th["a"] * (w @ state["s"]) + th["b"] * c)
            new = {"s": s, "count": state["count"] + 1}
            return new, jnp.sum(s)  # per-step output

        def meta_loss(th, cc, s_init):
            def step_c(state, th, t):
                new, y = step(state, th, t)
                return new, y * cc
            state, ys = unroll(step_c, {"s": s_init, "count": jnp.asarray(0)}, th, 12,
                               grad=mode, outputs=True)
            assert ys.shape == (12,)
            return jnp.sum(ys) + jnp.sum(state["s"]), state["count"]

        (v, count), g = jax.value_and_grad(meta_loss, argnums=(0, 1), has_aux=True)(
            theta, 2.0, s0)
        assert int(count) == 12

        def ref(th, cc):
            s, total = s0, 0.0
            first = 12 - mode.k if isinstance(mode, il.Truncated) else 0
            for t in range(12):
                if t == first:
                    s = jax.lax.stop_gradient(s)
                s = jnp.tanh(th["a"] * (w @ s) + th["b"] * c)
                y = jnp.sum(s) * cc
                total = total + (jax.lax.stop_gradient(y) if t < first else y)
            return total + jnp.sum(s)

        v_ref, g_ref = jax.value_and_grad(ref, argnums=(0, 1))(theta, 2.0)
        np.testing.assert_allclose(v, v_ref, rtol=1e-13)
        np.testing.assert_allclose(g[1], g_ref[1], rtol=1e-12)
        for key in theta:
            np.testing.assert_allclose(g[0][key], g_ref[0][key], rtol=1e-12, atol=1e-14)

        # vmap over initial states: one gradient per example, equal to the loop's
        batch = jnp.stack([s0, -s0, 0.5 * s0])
        gb = jax.jit(jax.vmap(jax.grad(lambda th, s: meta_loss(th, 2.0, s)[0]),
                              in_axes=(None, 0)))(theta, batch)
        g1 = jax.grad(lambda th: meta_loss(th, 2.0, batch[1])[0])(theta)
        np.testing.assert_allclose(gb["b"][1], g1["b"], rtol=1e-12, atol=1e-14)


def test_unroll_and_truncated_support_forward_mode():
    """Forward mode against references that share no code with unroll: central finite
    differences of the full loop (Unroll), and of a loop whose first steps are held
    fixed (Truncated(4): only the last 4 steps see the perturbed theta)."""
    with jax.enable_x64(True):
        w, theta, s0 = _problem()
        step, steps, k, eps = _step(w), 10, 4, 1e-6
        v = jax.tree.map(jnp.ones_like, theta)

        def loop(th_early, th_late):
            s = s0
            for t in range(steps):
                s = step(s, th_early if t < steps - k else th_late, jnp.asarray(t, jnp.int32))
            return jnp.sum(s ** 2)

        def central(fn):
            plus = jax.tree.map(lambda a, b: a + eps * b, theta, v)
            minus = jax.tree.map(lambda a, b: a - eps * b, theta, v)
            return (fn(plus) - fn(minus)) / (2 * eps)

        refs = {"unroll": central(lambda th: loop(th, th)),
                "truncated": central(lambda th: loop(theta, th))}
        for name, mode in (("unroll", il.Unroll()), ("truncated", il.Truncated(k))):
            _, jv = jax.jvp(_loss(mode, w, s0, steps), (theta,), (v,))
            np.testing.assert_allclose(jv, refs[name], rtol=1e-7)
        assert abs(float(refs["unroll"] - refs["truncated"])) > 1e-3  # truncation is biased


# ------------------------------------------------------------------ bad input


def _ok(s, th, t):
    return s * th


@pytest.mark.parametrize("mode", [il.Implicit(), il.Phantom(), il.JacobianFree()],
                         ids=["implicit", "phantom", "jacobian-free"])
def test_fixed_point_modes_are_refused(mode):
    with pytest.raises(TypeError, match="applies to fixed points"):
        unroll(_ok, jnp.ones(3), 0.5, 5, grad=mode)


def test_not_a_mode_is_refused():
    with pytest.raises(TypeError, match="grad must be"):
        unroll(_ok, jnp.ones(3), 0.5, 5, grad="unroll")


@pytest.mark.parametrize("steps, exc", [(0, ValueError), (-3, ValueError),
                                        (2.5, TypeError), (True, TypeError)])
def test_bad_steps(steps, exc):
    with pytest.raises(exc, match="steps"):
        unroll(_ok, jnp.ones(3), 0.5, steps)


def test_traced_steps_is_refused():
    with pytest.raises(TypeError, match="static"):
        jax.jit(lambda n: unroll(_ok, jnp.ones(3), 0.5, n))(4)


@pytest.mark.parametrize("step, outputs, message", [
    (lambda s, th, t: (s, s), False, "pass outputs=True"),
    (lambda s, th, t: s, True, "must return a pair"),
    (lambda s, th, t: jnp.concatenate([s, s]), False, "shape"),
    (lambda s, th, t: s.astype(jnp.float16), False, "dtype"),
], ids=["pair-without-outputs", "state-with-outputs", "shape", "dtype"])
def test_bad_step_output(step, outputs, message):
    with pytest.raises(TypeError, match=message):
        unroll(step, jnp.ones(3), 0.5, 4, outputs=outputs)


def test_a_python_scalar_state_takes_the_dtype_step_gives_it():
    # As in lax.scan: 1.0 is float64 under x64 but only weakly typed; a float32 step
    # makes it float32 (before: "returned dtype float32 for state0"), in any mode.
    theta = jnp.float32(0.5)
    with jax.enable_x64(True), jax.numpy_dtype_promotion("strict"):
        s = unroll(lambda s, th, t: s * th, 1.0, theta, 3)
        g = jax.grad(lambda th: unroll(lambda s, th, t: s * th, 1.0, th, 3,
                                       grad=il.Checkpointed()))(theta)
        with pytest.raises(TypeError, match="dtype int32"):  # another kind stays an error
            unroll(lambda s, th, t: (s * th).astype(jnp.int32), 1.0, theta, 3)
    assert s.dtype == g.dtype == jnp.float32
    assert float(s) == 0.125 and float(g) == 0.75  # d(theta^3)/d theta = 3 theta^2
