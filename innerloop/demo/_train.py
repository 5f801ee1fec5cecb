"""Training: the optimiser, the jitted step and the loop that times it."""

from __future__ import annotations

import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from innerloop.demo._config import BATCH, EVAL_EVERY, LEARNING_RATE
from innerloop.demo._model import forward_only


def make_optimizer(steps: int):
    import optax

    schedule = optax.cosine_decay_schedule(LEARNING_RATE, steps)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


def make_step(optimizer, jac_weight: float = 0.0):
    """The jitted training step (model, opt_state, x, y, key) -> (model, opt_state,
    loss, mean forward iterations, mean jac_loss), an `eqx.filter_jit` function."""
    import optax

    def loss_fn(model, x, y, key):
        logits, stats = model(x, key=key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        jac = stats.jac_loss.mean()
        return loss + jac_weight * jac, (loss, stats.steps.mean(), jac)

    @eqx.filter_jit
    def step(model, opt_state, x, y, key):
        grads, (loss, iters, jac) = eqx.filter_grad(loss_fn, has_aux=True)(model, x, y, key)
        params = eqx.filter(model, eqx.is_array)
        # optax's Adam and schedules mix their int32 step count with floats.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss, iters, jac

    return step


@eqx.filter_jit
def _evaluate(model, x, y):
    logits, stats = model(x)
    return (jnp.mean(jnp.argmax(logits, -1).astype(y.dtype) == y), stats.steps.mean(),
            stats.converged.mean())


def evaluate(model, x, y):
    """(accuracy, mean forward iterations, fraction converged) on a batch."""
    return tuple(float(v) for v in _evaluate(forward_only(model), x, y))


def step_temp_bytes(step, *args) -> int:
    """XLA temporary memory of the jitted `step` for `args` (compiled ahead of time
    for the analysis only: the demo never times or trains through that executable)."""
    compiled = step.lower(*args).compile()
    inner = getattr(compiled, "compiled", compiled)  # equinox wraps jax's Compiled
    return int(inner.memory_analysis().temp_size_in_bytes)


def train(model, data, *, steps: int, seed: int, jac_weight: float = 0.0,
          desc: str = "", progress: bool = True, eval_every: int = EVAL_EVERY):
    """Adam on minibatches of `BATCH`; the batch order depends only on `seed`.

    The step is called as users call it, a `jax.jit` function. The first call
    (tracing, compilation and one step) is timed on its own as `compile_s`;
    `step_time` holds the wall time of every later call, each waited for.

    Returns (model, history); history holds per-step loss, forward iterations,
    jac_loss and wall time, the test accuracy every `eval_every` steps, and the
    training step's compile time and XLA temporary memory."""
    from tqdm import tqdm

    x_train, x_test, y_train, y_test = data
    optimizer = make_optimizer(steps)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    key = jax.random.key(seed + 1)
    step = make_step(optimizer, jac_weight)
    probe = (model, opt_state, x_train[:BATCH], y_train[:BATCH], key)
    rng = np.random.default_rng(seed)
    x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    history = dict(loss=[], iters=[], jac=[], step_time=[], eval_step=[], test_acc=[],
                   test_iters=[], temp_bytes=0, compile_s=float("nan"))
    order = np.array([], dtype=np.int64)
    bar = tqdm(total=steps, desc=desc, disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    acc = float("nan")
    for i in range(1, steps + 1):
        if len(order) < BATCH:
            order = np.concatenate([order, rng.permutation(len(x_train))])
        idx, order = order[:BATCH], order[BATCH:]
        key, sub = jax.random.split(key)
        xb, yb = x_train[idx], y_train[idx]
        start = time.perf_counter()
        model, opt_state, loss, iters, jac = step(model, opt_state, xb, yb, sub)
        loss = float(loss)  # waits for the step
        elapsed = time.perf_counter() - start
        if i == 1:
            history["compile_s"] = elapsed
        else:
            history["step_time"].append(elapsed)
        history["loss"].append(loss)
        history["iters"].append(float(iters))
        history["jac"].append(float(jac))
        if i % eval_every == 0 or i == steps:
            acc, test_iters, _ = evaluate(model, x_test, y_test)
            history["eval_step"].append(i)
            history["test_acc"].append(acc)
            history["test_iters"].append(test_iters)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", iters=f"{float(iters):.1f}",
                        refresh=False)
        bar.update(1)
    bar.close()
    # After the loop, so that this compilation cannot warm the timed first call.
    history["temp_bytes"] = step_temp_bytes(step, *probe)
    return model, history


def step_ms(history) -> float:
    """Median wall time of a warm training step in milliseconds (NaN after one step)."""
    times = history["step_time"]
    return 1e3 * float(np.median(times)) if times else float("nan")
