r"""Meta-training learned optimizers: the inner problem, an estimator-driven outer loop,
checkpoints and exact resume.

    result = meta_train(MLPLOpt(), MLPFamily("digits"),
                        estimator=PES(pairs=8, K=50, sigma=0.01), T=200, steps=1000,
                        checkpoint_dir="runs/mlp", checkpoint_every=50)
    result.meta_params   # the learned optimizer: MLPLOpt().optax(result.meta_params)

`UnrolledTask(lopt, family, T)` is the inner problem of the meta-gradient estimators
(`innerloop.implicit.PES`, `ES`, `TruncatedBPTT`): `init(key, theta)` samples a task
from the family and initialises it, `unroll(state, theta, K)` trains it for K steps
with the learned optimizer at meta-parameters `theta` (one `lax.scan`) and returns
the mean training loss of those steps: the meta-loss.

Each outer step of `meta_train` asks the estimator (given without its task; PES by
default: Vicol, Metz and Sohl-Dickstein 2021) for a meta-gradient of the meta-loss of
an `UnrolledTask`, then applies the `outer` optax optimizer. Each of PES's (or ES's)
antithetic pairs trains its own task from the family (so 8 pairs make 16 inner
training runs per step); the whole outer step (estimator, every inner run, the outer
update) is one jitted function, compiled once.

Checkpoints (`innerloop.rules._checkpoint`) are written every `checkpoint_every`
steps and at the end. Outer step i draws its randomness from `fold_in(key, i)`, so a
run resumed from a checkpoint takes exactly the steps an uninterrupted run takes, and
ends with bit-identical meta-parameters. Under `jax.distributed` the same call runs in
every process, the particles split across all processes' devices (docs: "Meta-training
across processes"); every process takes part in each checkpoint, process 0 writes it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from innerloop.implicit import ES, PES, TruncatedBPTT, population_sharding
from innerloop.rules._checkpoint import (
    checkpoint_path,
    config_difference,
    describe,
    fingerprint,
    is_key,
    read_checkpoint,
    restore,
    signature,
    write_checkpoint,
)
from innerloop.rules.tasks import train_step

__all__ = ["ESTIMATOR_TYPES", "MetaTrainResult", "UnrolledState", "UnrolledTask",
           "describe_estimator", "meta_loss", "meta_train"]

ESTIMATOR_TYPES = (PES, ES, TruncatedBPTT)
_LOG_LOSS_FLOOR = 1e-5  # inside log(mean loss + floor) of UnrolledTask(log_loss=True)


class MetaTrainResult(NamedTuple):
    """What `meta_train` returns.

    - `meta_params`: the learned optimizer's meta-parameters after `step` steps;
    - `losses`: float array (step,), the meta-loss of every outer step (those before
      a resume included);
    - `step`: outer steps taken in all;
    - `compile_s`: seconds the first outer step of this call took beyond the median
      step: its compilation (about 0 when this process had already compiled the same
      step, and 0 when no step ran);
    - `step_s`: median seconds per outer step in this call (NaN when no step ran);
    - `checkpoint`: the checkpoint file, or None;
    - `config`: the configuration the fingerprint is taken of.
    """

    meta_params: Any
    losses: np.ndarray
    step: int
    compile_s: float
    step_s: float
    checkpoint: str | None
    config: dict


def describe_estimator(estimator) -> dict:
    """A JSON-able description of an estimator's configuration: its class and every
    field but the inner problem and the sharding (which do not change the estimates)."""
    fields = {f.name: getattr(estimator, f.name) for f in dataclasses.fields(estimator)
              if f.name not in ("task", "sharding")}
    return json.loads(json.dumps({"class": type(estimator).__name__, "fields": fields},
                                 default=repr))


# ------------------------------------------------------------ inner problem


class UnrolledState(eqx.Module):
    """One inner training run: the task's key (the task is re-sampled from it, so its
    data stays out of the state), the minibatch key, parameters, optimizer state and
    step."""

    task_key: jax.Array
    data_key: jax.Array
    params: Any
    opt_state: Any
    t: jax.Array


class UnrolledTask(eqx.Module):
    r"""The inner problem of meta-training (the estimators' `init`/`unroll`/`T`).

    `init(key, theta)` samples a task from `family` (or `n_tasks` of them, vmapped)
    and its initial parameters and optimizer state; `unroll(state, theta, K)` trains
    with `lopt.optax(theta)` for K steps in one `lax.scan` and returns the meta-loss

        L = 1/K sum_{t<K} min(ell_t, loss_cap)

    (ell_t the minibatch training loss before step t; NaN and inf count as
    `loss_cap`, so a diverging particle gives a large finite loss), averaged over
    the tasks. With `log_loss=True` the meta-loss is the log of that mean (per task,
    then averaged over the tasks),

        L = log(1/K sum_{t<K} min(ell_t, loss_cap) + 1e-5):

    progress from 0.01 to 0.001 counts as much as from 1 to 0.1, so the late, small
    losses of an episode's later truncations are not drowned out by its first steps
    (what "steps to reach a loss" metrics reward), while within a truncation a loss
    spike still dominates the mean. (The mean of the per-step logs instead rewarded
    rules that dip to 1e-5 and spike back to 1e-2 at the edge of stability: their
    loss at any given step was up to 100x worse than their mean log suggested.)
    `T` is the episode length: the estimators re-sample tasks after it.

    With `n_tasks=None` one task per state: that is what the ES/PES particles want
    (each antithetic pair then trains its own task). The family must have fixed
    shapes (`family.fixed_shapes`).
    """

    lopt: Any
    family: Any = eqx.field(static=True)
    T: int | None = eqx.field(default=200, static=True)
    n_tasks: int | None = eqx.field(default=None, static=True)
    loss_cap: float = eqx.field(default=1e3, static=True)
    log_loss: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        if not getattr(self.family, "fixed_shapes", False):
            raise ValueError(
                f"meta-training needs a family whose tasks share their shapes (one "
                f"width, depth, activation and batch size); got {self.family}")
        if self.n_tasks is not None and (not isinstance(self.n_tasks, int)
                                         or self.n_tasks < 1):
            raise ValueError(f"n_tasks must be None or a positive integer, got "
                             f"{self.n_tasks!r}")

    def _init_one(self, key, theta):
        k_task, k_params, k_data = jax.random.split(key, 3)
        task = self.family.sample(k_task)
        params = task.init(k_params)
        opt_state = self.lopt.optax(theta).init(params)
        return UnrolledState(k_task, k_data, params, opt_state, jnp.zeros((), jnp.int32))

    def init(self, key: jax.Array, theta: Any) -> UnrolledState:
        if self.n_tasks is None:
            return self._init_one(key, theta)
        return jax.vmap(lambda k: self._init_one(k, theta))(
            jax.random.split(key, self.n_tasks))

    def _unroll_one(self, state, theta, K):
        task = self.family.sample(state.task_key)
        opt = self.lopt.optax(theta)

        def body(carry, _):
            params, opt_state, t = carry
            params, opt_state, loss = train_step(
                task, opt, params, opt_state, jax.random.fold_in(state.data_key, t))
            loss = jnp.where(jnp.isfinite(loss), jnp.minimum(loss, self.loss_cap),
                             self.loss_cap)
            return (params, opt_state, t + 1), loss

        (params, opt_state, t), losses = jax.lax.scan(
            body, (state.params, state.opt_state, state.t), None, length=K)
        new = UnrolledState(state.task_key, state.data_key, params, opt_state, t)
        meta_loss = jnp.mean(losses)
        if self.log_loss:
            meta_loss = jnp.log(jnp.maximum(meta_loss, 0.0) + _LOG_LOSS_FLOOR)
        return new, meta_loss

    def unroll(self, state: UnrolledState, theta: Any,
               K: int) -> tuple[UnrolledState, jax.Array]:
        if self.n_tasks is None:
            return self._unroll_one(state, theta, K)
        new, losses = jax.vmap(lambda s: self._unroll_one(s, theta, K))(state)
        return new, jnp.mean(losses)


# ----------------------------------------------------------------- training


def _bind(estimator, problem, auto_shard: bool):
    """The estimator on `problem`, its population split across devices when
    `auto_shard` and it has no sharding of its own."""
    changes = {"task": problem}
    if auto_shard and getattr(estimator, "sharding", "none") is None:
        count, size = jax.device_count(), getattr(estimator, "pairs", None)
        if size is None:
            size = getattr(estimator, "samples", None)
        if count > 1 and size is not None and size % count == 0:
            changes["sharding"] = population_sharding()
    return dataclasses.replace(estimator, **changes)


def meta_train(
    lopt: Any,
    family: Any,
    *,
    estimator: Any = None,
    outer: optax.GradientTransformation | None = None,
    steps: int,
    T: int = 200,
    seed: int = 0,
    meta_params: Any = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 100,
    resume: bool | str = True,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    auto_shard: bool = True,
    log_loss: bool = False,
) -> MetaTrainResult:
    r"""Meta-train a learned optimizer on a task family.

    - `lopt`: `LearnableAdam`, `MLPLOpt`, `RNNMLPLOpt` (anything with `init` and
      `optax`); `family`: a family with fixed shapes (`tasks.MLPFamily`,
      `tasks.QuadraticFamily`), or a tuple of them: outer step i then meta-trains on
      family i mod len(family), each with its own estimator state (its tasks and
      particles) and compiled step, so one meta-training sees several architectures
      (widths, depths) that cannot share a vmapped batch.
    - `estimator`: an `innerloop.implicit` estimator given without its task, which
      `meta_train` binds (an `UnrolledTask` of `lopt` on the family):
      `PES(pairs=8, K=50, sigma=0.01)` (the default), `ES(pairs=8, K=50, sigma=0.01)`
      (truncated antithetic ES; `samples=` for plain Monte Carlo) or
      `TruncatedBPTT(K=50, batch=8)`. Each ES/PES particle (pair) and each TBPTT
      batch member trains its own task; `K` is the inner steps per outer step.
    - `outer`: the optax optimizer of the meta-parameters (default `optax.adam(1e-3)`).
    - `steps`: outer steps in all (a resumed run continues up to `steps`); `T`: inner
      steps per task before it is re-sampled.
    - `meta_params`: starting meta-parameters (default `lopt.init(key)`).
    - `checkpoint_dir`: where `checkpoint.npz` goes, every `checkpoint_every` steps
      and at the end. `resume`: True resumes from a checkpoint there if there is one
      (else starts afresh); "require" insists on one; False refuses to start over an
      existing one. A missing (when required), corrupt or truncated checkpoint, or one
      written with another configuration (learned optimizer, family, the estimator's
      class and fields, T, seed, the outer state's structure), raises ValueError
      naming the file, before anything is written.
    - `callback(step, loss)`: called after every step (after its checkpoint).
    - `log_loss`: meta-train on the log of each truncation's mean training loss
      instead of the mean training loss (`lopt.UnrolledTask(log_loss=True)`).
    - `auto_shard`: when the estimator has no sharding of its own, split ES/PES's
      population across devices when there are several (and they divide it evenly);
      False leaves the estimator as given (a sharding goes in the estimator:
      `PES(..., sharding=population_sharding())`).

    The outer optimizer's hyper-parameters live in closures the fingerprint cannot
    see: resuming with a different learning rate is not detected.
    """
    for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every)):
        least = 0 if name == "steps" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"meta_train: {name} must be an integer >= {least}, got "
                             f"{value!r}")
    estimator = PES(pairs=8, K=50, sigma=0.01) if estimator is None else estimator
    if not isinstance(estimator, ESTIMATOR_TYPES):
        raise ValueError(f"meta_train: estimator must be an estimator object without its "
                         f"task, e.g. PES(pairs=8, K=50, sigma=0.01), ES(...) or "
                         f"TruncatedBPTT(K=50, batch=8); got {estimator!r}")
    if estimator.task is not None:
        raise ValueError(f"meta_train: give the estimator without its task ("
                         f"{type(estimator).__name__}(pairs=..., K=..., ...)); meta_train "
                         f"binds the inner problem itself")
    if resume not in (True, False, "require"):
        raise ValueError(f"meta_train: resume must be True, False or 'require', got "
                         f"{resume!r}")
    outer = optax.adam(1e-3) if outer is None else outer

    # The checkpoint first (cheap, and nothing is built or written if it is unusable).
    path = None if checkpoint_dir is None else checkpoint_path(checkpoint_dir)
    saved = None
    if path is None:
        if resume == "require":
            raise ValueError("resume='require' needs a checkpoint_dir")
    elif os.path.exists(path):
        if resume is False:
            raise ValueError(f"{path}: a checkpoint is already there; resume it "
                             f"(resume=True) or choose another checkpoint_dir")
        saved = read_checkpoint(path)
        if saved[0]["step"] > steps:
            raise ValueError(f"{path}: the checkpoint is at step {saved[0]['step']}, "
                             f"beyond steps={steps}")
    elif resume == "require":
        raise ValueError(f"{path}: no checkpoint to resume")

    several = isinstance(family, (tuple, list))
    families = tuple(family) if several else (family,)
    if not families:
        raise ValueError("family: give a family or a non-empty tuple of families")
    ests = tuple(_bind(estimator, UnrolledTask(lopt, fam, T=T, log_loss=bool(log_loss)),
                       auto_shard) for fam in families)

    k_est, k_meta, k_steps = jax.random.split(jax.random.key(seed), 3)
    theta = lopt.init(k_meta) if meta_params is None else meta_params
    if several:
        est_state = tuple(e.init(k, theta) for e, k in
                          zip(ests, jax.random.split(k_est, len(ests))))
    else:
        est_state = ests[0].init(k_est, theta)
    state = {"meta_params": theta, "outer_state": outer.init(theta),
             "estimator_state": est_state, "key": k_steps}
    state = jax.tree.map(lambda x: x if is_key(x) else _strong(x), state)  # no weak types
    config = {"lopt": describe(lopt),
              "family": [describe(f) for f in families] if several else describe(family),
              "estimator": describe_estimator(estimator), "T": T, "seed": int(seed),
              "log_loss": bool(log_loss),
              "outer_state": signature(state["outer_state"]),
              "meta_params": signature(state["meta_params"]),
              "initial_meta_params": None if meta_params is None else hashlib.sha256(
                  b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(theta))
              ).hexdigest()}
    config = json.loads(json.dumps(config))

    start, losses = 0, np.zeros((0,), np.float32)
    if saved is not None:
        header, arrays = saved
        if header["fingerprint"] != fingerprint(config):
            raise ValueError(f"{path}: the checkpoint was written by another "
                             f"configuration ({config_difference(header['config'], config)})")
        state = restore(path, arrays, state)
        start, losses = int(header["step"]), arrays["losses"]

    compile_s, times = 0.0, []
    history = [losses]
    if start < steps:
        bar = _progress_bar(progress, steps, start)
        try:
            for i in range(start, steps):
                t0 = time.perf_counter()
                part = i % len(ests) if several else None
                state, loss = _outer_step(ests[i % len(ests)], outer, part, state,
                                          jnp.asarray(i, jnp.int32))
                loss = float(loss)  # waits for the step
                times.append(time.perf_counter() - t0)
                history.append(np.asarray([loss], np.float32))
                done = i + 1
                if path is not None and (done % checkpoint_every == 0 or done == steps):
                    write_checkpoint(path, state, config=config, step=done,
                                      losses=np.concatenate(history))
                if bar is not None:
                    bar.set_postfix(meta_loss=f"{loss:.4g}", refresh=False)
                    bar.update(1)
                if callback is not None:
                    callback(done, loss)
        finally:
            if bar is not None:
                bar.close()
    losses = np.concatenate(history)
    later = times[1:] if len(times) > 1 else times
    step_s = float(np.median(later)) if times else float("nan")
    if times:  # the first call compiles (unless this process compiled it already)
        compile_s = max(0.0, times[0] - step_s)
    return MetaTrainResult(state["meta_params"], losses, int(losses.shape[0]), compile_s,
                           step_s, path, config)


def _strong(x):
    """x without a weak type; an array split across processes keeps its layout."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.jit(lambda a: jax.lax.convert_element_type(a, a.dtype),
                       out_shardings=x.sharding)(x)
    return jnp.asarray(np.asarray(x))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _outer_step(est, outer, part, state, i):
    """One outer step: meta-gradient from `est`, update by `outer`. `part`: None, or
    the index of `est`'s state in a tuple of estimator states (several families).
    Cached across `meta_train` calls with equal estimators and the same `outer`."""
    key = jax.random.fold_in(state["key"], i)
    theta = state["meta_params"]
    states = state["estimator_state"]
    g, est_state, metrics = est.grad(key, theta, states if part is None else states[part])
    if part is not None:
        est_state = states[:part] + (est_state,) + states[part + 1:]
    with jax.numpy_dtype_promotion("standard"):  # optax's int32 step count meets floats
        updates, outer_state = outer.update(g, state["outer_state"], theta)
    new = {"meta_params": optax.apply_updates(theta, updates),
           "outer_state": outer_state, "estimator_state": est_state, "key": state["key"]}
    # Same dtypes in and out, never weakly typed: a resumed run (arrays read from disk)
    # must call exactly the program an uninterrupted run calls.
    new = jax.tree.map(lambda a, b: jnp.asarray(a, dtype=b.dtype), new, state)
    return new, metrics["loss"]


def meta_loss(lopt, meta_params, family, key: jax.Array, *, n_tasks: int = 8,
              steps: int = 200) -> jax.Array:
    """The mean training loss of `n_tasks` tasks sampled from `family` with `key`,
    each trained `steps` steps by `lopt.optax(meta_params)` (a deterministic
    evaluation of a learned optimizer; jit it for speed)."""
    problem = UnrolledTask(lopt, family, T=steps, n_tasks=n_tasks)
    return problem.unroll(problem.init(key, meta_params), meta_params, steps)[1]


def _progress_bar(progress: bool, total: int, initial: int):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, initial=initial, desc="meta-train", unit="step")
