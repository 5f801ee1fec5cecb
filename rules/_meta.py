r"""Meta-training learned optimizers: estimator-driven outer loop, atomic checkpoints,
exact resume.

    result = meta_train(MLPLOpt(), MLPFamily("digits"),
                        estimator=PES(pairs=8, K=50, sigma=0.01), T=200, steps=1000,
                        checkpoint_dir="runs/mlp", checkpoint_every=50)
    result.meta_params   # the learned optimizer: MLPLOpt().optax(result.meta_params)

Each outer step asks the estimator (an `innerloop.implicit` estimator given without
its task; PES by default: Vicol, Metz and Sohl-Dickstein 2021) for a meta-gradient of
the meta-loss of `UnrolledTask` (the mean training loss of a K-step truncation),
then applies the `outer` optax optimizer. Each of PES's (or ES's) antithetic pairs
trains its own task from the family (so 8 pairs make 16 inner training runs per
step); the whole outer step (estimator, every inner run, the outer update) is one
jitted function, compiled once.

Checkpoints (`<checkpoint_dir>/checkpoint.npz`, written every `checkpoint_every`
steps and at the end, to a temporary file that then replaces the old one with
`os.replace`, so a kill never leaves a half-written checkpoint) hold the
meta-parameters, the outer optimizer's state, the estimator's state (the particles'
inner runs), the PRNG key, the step, the meta-loss history and the configuration.
Outer step i draws its randomness from `fold_in(key, i)`, so a run resumed from a
checkpoint takes exactly the steps an uninterrupted run takes, and ends with
bit-identical meta-parameters. Nothing is pickled: arrays and a JSON configuration in
an `.npz` file (`numpy.load(..., allow_pickle=False)`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
import zipfile
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from innerloop.implicit import ES, PES, TruncatedBPTT, population_sharding
from innerloop.rules import _lopt
from innerloop.rules import tasks as _tasks

__all__ = ["Checkpoint", "MetaTrainResult", "checkpoint_path", "describe",
           "describe_estimator", "load_checkpoint", "meta_loss", "meta_train", "rebuild"]

ESTIMATOR_TYPES = (PES, ES, TruncatedBPTT)
CHECKPOINT_NAME = "checkpoint.npz"
FORMAT_VERSION = 1
_GROUPS = ("meta_params", "outer_state", "estimator_state", "key")


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


class Checkpoint(NamedTuple):
    """A checkpoint read by `load_checkpoint`: the learned optimizer (rebuilt from the
    configuration), its meta-parameters, the step, the meta-loss history, the family
    (a tuple when it meta-trained on several) and the configuration."""

    lopt: Any
    meta_params: Any
    step: int
    losses: np.ndarray
    family: Any
    config: dict


# ------------------------------------------------------------- configuration


def _fields(obj) -> dict:
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return {"repr": repr(obj)}


def describe(obj) -> dict:
    """A JSON-able description of a learned optimizer or family: its class and fields."""
    return json.loads(json.dumps({"class": type(obj).__name__, "fields": _fields(obj)},
                                 default=repr))


def describe_estimator(estimator) -> dict:
    """A JSON-able description of an estimator's configuration: its class and every
    field but the inner problem and the sharding (which do not change the estimates)."""
    fields = {f.name: getattr(estimator, f.name) for f in dataclasses.fields(estimator)
              if f.name not in ("task", "sharding")}
    return json.loads(json.dumps({"class": type(estimator).__name__, "fields": fields},
                                 default=repr))


_KNOWN = {cls.__name__: cls for cls in (_lopt.LearnableAdam, _lopt.MLPLOpt,
                                         _lopt.RNNMLPLOpt, _tasks.MLPFamily,
                                         _tasks.QuadraticFamily)}


def rebuild(description: dict):
    """The object a `describe` result describes (the classes of this library only)."""
    cls = _KNOWN.get(description.get("class"))
    if cls is None:
        raise ValueError(f"cannot rebuild a {description.get('class')!r}; known: "
                         f"{', '.join(_KNOWN)}")
    tup = lambda v: tuple(tup(x) for x in v) if isinstance(v, list) else v
    return cls(**{k: tup(v) for k, v in description["fields"].items()})


def _signature(tree) -> str:
    leaves, treedef = jax.tree.flatten(tree)
    return str(treedef) + "|" + ";".join(f"{x.dtype}{tuple(np.shape(x))}"
                                         for x in leaves)


def _fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- checkpoints


def _is_key(x) -> bool:
    return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def _flatten(state: dict) -> dict[str, np.ndarray]:
    out = {}
    for group in _GROUPS:
        for i, leaf in enumerate(jax.tree.leaves(state[group])):
            # Typed PRNG keys are stored as their raw key data.
            out[f"{group}.{i:05d}"] = np.asarray(
                jax.random.key_data(leaf) if _is_key(leaf) else leaf)
    return out


def _write_checkpoint(path: str, state: dict, *, config: dict, step: int,
                      losses: np.ndarray) -> None:
    """Write atomically: a temporary file in the same folder, fsync, os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    header = {"format": FORMAT_VERSION, "step": int(step), "fingerprint": _fingerprint(config),
              "config": config}
    arrays = _flatten(state)
    arrays["losses"] = np.asarray(losses, np.float32)
    arrays["__header__"] = np.asarray(json.dumps(header, sort_keys=True))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read every member (so a truncated or corrupted file fails here, on its CRC)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no checkpoint there")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        header = json.loads(str(arrays.pop("__header__")))
        for key in ("format", "step", "fingerprint", "config"):
            header[key]
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile,
            json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: "
                         f"{exc})") from None
    if header["format"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {header['format']}, this version "
                         f"reads format {FORMAT_VERSION}")
    if "losses" not in arrays or arrays["losses"].shape != (header["step"],):
        raise ValueError(f"{path}: corrupt checkpoint (the meta-loss history does not "
                         f"match step {header['step']})")
    return header, arrays


def _restore(path: str, arrays: dict, template: dict, groups=_GROUPS) -> dict:
    out = {}
    for group in groups:
        leaves, treedef = jax.tree.flatten(template[group])
        names = sorted(n for n in arrays if n.startswith(group + "."))
        if len(names) != len(leaves):
            raise ValueError(f"{path}: {group} has {len(names)} arrays, expected "
                             f"{len(leaves)}")
        restored = []
        for name, want in zip(names, leaves):
            got = arrays[name]
            key = _is_key(want)
            want_data = jax.random.key_data(want) if key else want
            if got.shape != np.shape(want_data) or got.dtype != np.dtype(want_data.dtype):
                raise ValueError(f"{path}: {name} is {got.dtype}{list(got.shape)}, expected "
                                 f"{np.dtype(want_data.dtype)}{list(np.shape(want_data))}")
            restored.append(jax.random.wrap_key_data(jnp.asarray(got),
                                                     impl=jax.random.key_impl(want))
                            if key else jnp.asarray(got))
        out[group] = jax.tree.unflatten(treedef, restored)
    return out


def _config_difference(saved: dict, current: dict) -> str:
    diffs = [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    return "; ".join(diffs) if diffs else "fingerprint differs"


def checkpoint_path(checkpoint_dir: str) -> str:
    """The checkpoint file of a run folder."""
    return os.path.join(checkpoint_dir, CHECKPOINT_NAME)


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by `meta_train` (a file, or a run folder): the
    learned optimizer and family rebuilt from its configuration, the meta-parameters,
    the step and the meta-loss history. Raises ValueError (naming the file) when it is
    missing, corrupt or truncated."""
    if os.path.isdir(path):
        path = checkpoint_path(path)
    header, arrays = _read(path)
    config = header["config"]
    try:
        lopt = rebuild(config["lopt"])
        family = (tuple(rebuild(d) for d in config["family"])
                  if isinstance(config["family"], list) else rebuild(config["family"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot rebuild the learned optimizer or family "
                         f"({exc})") from None
    template = {"meta_params": lopt.init(jax.random.key(0))}
    meta_params = _restore(path, arrays, template, groups=("meta_params",))["meta_params"]
    return Checkpoint(lopt, meta_params, int(header["step"]), arrays["losses"], family,
                      config)


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
    lopt,
    family,
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
        saved = _read(path)
        if saved[0]["step"] > steps:
            raise ValueError(f"{path}: the checkpoint is at step {saved[0]['step']}, "
                             f"beyond steps={steps}")
    elif resume == "require":
        raise ValueError(f"{path}: no checkpoint to resume")

    several = isinstance(family, (tuple, list))
    families = tuple(family) if several else (family,)
    if not families:
        raise ValueError("family: give a family or a non-empty tuple of families")
    ests = tuple(_bind(estimator, _lopt.UnrolledTask(lopt, fam, T=T, log_loss=bool(log_loss)),
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
    state = jax.tree.map(lambda x: x if _is_key(x) else jnp.asarray(np.asarray(x)),
                         state)  # no weak types
    config = {"lopt": describe(lopt),
              "family": [describe(f) for f in families] if several else describe(family),
              "estimator": describe_estimator(estimator), "T": T, "seed": int(seed),
              "log_loss": bool(log_loss),
              "outer_state": _signature(state["outer_state"]),
              "meta_params": _signature(state["meta_params"]),
              "initial_meta_params": None if meta_params is None else hashlib.sha256(
                  b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(theta))
              ).hexdigest()}
    config = json.loads(json.dumps(config))

    start, losses = 0, np.zeros((0,), np.float32)
    if saved is not None:
        header, arrays = saved
        if header["fingerprint"] != _fingerprint(config):
            raise ValueError(f"{path}: the checkpoint was written by another "
                             f"configuration ({_config_difference(header['config'], config)})")
        state = _restore(path, arrays, state)
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
                    _write_checkpoint(path, state, config=config, step=done,
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
    problem = _lopt.UnrolledTask(lopt, family, T=steps, n_tasks=n_tasks)
    return problem.unroll(problem.init(key, meta_params), meta_params, steps)[1]


def _progress_bar(progress: bool, total: int, initial: int):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=total, initial=initial, desc="meta-train", unit="step")
