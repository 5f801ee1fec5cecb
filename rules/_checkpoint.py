r"""The checkpoint format of meta-training: atomic writes, strict reads, rebuilding.

A checkpoint (`<checkpoint_dir>/checkpoint.npz`) holds the meta-parameters, the outer
optimizer's state, the estimator's state (the particles' inner runs), the PRNG key,
the step, the meta-loss history and the configuration (as JSON, with its SHA-256
fingerprint). It is written to a temporary file in the same folder, fsynced, and
moved over the old one with `os.replace`, so a kill never leaves a half-written
checkpoint. Nothing is pickled: arrays and a JSON header in an `.npz` file, read with
`numpy.load(..., allow_pickle=False)`; every member is read (so a truncated or
corrupted file fails on its CRC), and each array must have the shape and dtype the
current configuration expects. Typed PRNG keys are stored as their key data.

Across processes (after `jax.distributed.initialize`) every process calls the writer:
arrays sharded across processes are gathered, process 0 alone writes the file, and
all wait for it; every process reads the file (a filesystem they share) and takes its
own shards of each array, laid out as the current run lays it out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from innerloop.rules import _lopt
from innerloop.rules import tasks as _tasks

__all__ = ["CHECKPOINT_NAME", "FORMAT_VERSION", "Checkpoint", "checkpoint_path",
           "config_difference", "describe", "fingerprint", "is_key", "load_checkpoint",
           "read_checkpoint", "rebuild", "restore", "signature", "write_checkpoint"]

CHECKPOINT_NAME = "checkpoint.npz"
FORMAT_VERSION = 1
_GROUPS = ("meta_params", "outer_state", "estimator_state", "key")


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


def signature(tree) -> str:
    leaves, treedef = jax.tree.flatten(tree)
    return str(treedef) + "|" + ";".join(f"{x.dtype}{tuple(np.shape(x))}"
                                         for x in leaves)


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- checkpoints


def is_key(x) -> bool:
    return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def _spans_processes(x) -> bool:
    """Whether x is an array split across processes (no process holds all of it)."""
    return (isinstance(x, jax.Array) and not x.is_fully_addressable
            and not x.is_fully_replicated)


def _host(x) -> np.ndarray:
    """The whole of x as a NumPy array (a collective when x spans processes)."""
    if _spans_processes(x):
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _flatten(state: dict) -> dict[str, np.ndarray]:
    out = {}
    for group in _GROUPS:
        for i, leaf in enumerate(jax.tree.leaves(state[group])):
            # Typed PRNG keys are stored as their raw key data.
            out[f"{group}.{i:05d}"] = _host(
                jax.random.key_data(leaf) if is_key(leaf) else leaf)
    return out


def write_checkpoint(path: str, state: dict, *, config: dict, step: int,
                      losses: np.ndarray) -> None:
    """Write atomically: a temporary file in the same folder, fsync, os.replace. With
    several processes every process calls it; process 0 writes, then all wait."""
    arrays = _flatten(state)  # first: with several processes, gathering is collective
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            _write(path, arrays, config=config, step=step, losses=losses)
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"innerloop checkpoint {path} {step}")
        return
    _write(path, arrays, config=config, step=step, losses=losses)


def _write(path: str, arrays: dict, *, config: dict, step: int, losses: np.ndarray) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    header = {"format": FORMAT_VERSION, "step": int(step), "fingerprint": fingerprint(config),
              "config": config}
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


def read_checkpoint(path: str) -> tuple[dict, dict[str, np.ndarray]]:
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


def restore(path: str, arrays: dict, template: dict, groups=_GROUPS) -> dict:
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
            key = is_key(want)
            want_data = jax.random.key_data(want) if key else want
            if got.shape != np.shape(want_data) or got.dtype != np.dtype(want_data.dtype):
                raise ValueError(f"{path}: {name} is {got.dtype}{list(got.shape)}, expected "
                                 f"{np.dtype(want_data.dtype)}{list(np.shape(want_data))}")
            if _spans_processes(want_data):  # this process's shards, laid out as before
                got = jax.make_array_from_callback(got.shape, want_data.sharding,
                                                   lambda index, got=got: got[index])
            restored.append(jax.random.wrap_key_data(jnp.asarray(got),
                                                     impl=jax.random.key_impl(want))
                            if key else jnp.asarray(got))
        out[group] = jax.tree.unflatten(treedef, restored)
    return out


def config_difference(saved: dict, current: dict) -> str:
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
    header, arrays = read_checkpoint(path)
    config = header["config"]
    try:
        lopt = rebuild(config["lopt"])
        family = (tuple(rebuild(d) for d in config["family"])
                  if isinstance(config["family"], list) else rebuild(config["family"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot rebuild the learned optimizer or family "
                         f"({exc})") from None
    template = {"meta_params": lopt.init(jax.random.key(0))}
    meta_params = restore(path, arrays, template, groups=("meta_params",))["meta_params"]
    return Checkpoint(lopt, meta_params, int(header["step"]), arrays["losses"], family,
                      config)
