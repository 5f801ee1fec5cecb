r"""Pretrained learned optimizers: meta-parameters shipped as files, read without pickle
and checked by a hash.

A pretrained optimizer is two files in one folder (the package's `rules/pretrained/`
for the shipped ones):

- `<Class>.npz`: the meta-parameters, one float array per leaf, named by its path in
  the pytree (`mlp.0.w`), read with `numpy.load(..., allow_pickle=False)`;
- `<Class>.json`, its card: the class and fields that rebuild the optimizer, the
  SHA-256 of the `.npz`, the dtype and shape of every array, and `info` (what it was
  meta-trained on, for how long, its measured ratios against tuned Adam).

Loading checks, in order: the card exists and names the class asked for; the `.npz`
has the hash the card records (a corrupted or replaced file fails here); its arrays
are exactly those, with the dtypes and shapes, that the rebuilt optimizer's `init`
makes (a file for another architecture fails here).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from innerloop.rules import _checkpoint

__all__ = ["FORMAT", "PRETRAINED_DIR", "array_names", "load_pretrained", "save_pretrained"]

FORMAT = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def _key_name(key) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    raise TypeError(f"unsupported pytree key {key!r}")


def array_names(tree) -> list[str]:
    """The name of each leaf of `tree` (in leaf order): its path joined by dots."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [".".join(_key_name(k) for k in path) for path, _ in paths]


def _spec(tree) -> dict[str, dict]:
    return {name: {"dtype": str(np.dtype(leaf.dtype)), "shape": list(np.shape(leaf))}
            for name, leaf in zip(array_names(tree), jax.tree.leaves(tree))}


def _expected(lopt) -> tuple[Any, dict[str, dict]]:
    """The treedef and array spec that `lopt.init` makes (shapes only, no compute)."""
    shapes = jax.eval_shape(lopt.init, jax.random.key(0))
    return jax.tree.structure(shapes), _spec(shapes)


def _spec_difference(got: dict, want: dict) -> str:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [f"{n} is {got[n]['dtype']}{got[n]['shape']}, expected "
             f"{want[n]['dtype']}{want[n]['shape']}"
             for n in sorted(set(got) & set(want)) if got[n] != want[n]]
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
        ([f"unexpected {', '.join(extra)}"] if extra else []) + wrong
    return "; ".join(parts[:6]) + ("; ..." if len(parts) > 6 else "")


def save_pretrained(directory, lopt, meta_params, info: dict | None = None
                    ) -> tuple[Path, Path]:
    r"""Write a learned optimizer's meta-parameters as a pretrained optimizer that
    `<Class>.pretrained(directory)` loads: `<directory>/<Class>.npz` (the arrays, no
    pickle) and `<directory>/<Class>.json` (the card: class, fields, the `.npz`'s
    SHA-256, the arrays' dtypes and shapes, and `info`, a JSON-able dict for what it
    was meta-trained on and how it measured). Returns the two paths.

    Raises ValueError when `meta_params` is not what `lopt.init` makes (names, dtypes,
    shapes), so a file that could not be loaded back is never written."""
    name = type(lopt).__name__
    treedef, want = _expected(lopt)
    got = _spec(meta_params)
    if jax.tree.structure(meta_params) != treedef or got != want:
        raise ValueError(f"save_pretrained: these meta-parameters are not what {name}'s "
                         f"init makes ({_spec_difference(got, want) or 'tree structure'}); "
                         f"pass the optimizer they were meta-trained for")
    arrays = {n: np.asarray(leaf) for n, leaf in zip(array_names(meta_params),
                                                     jax.tree.leaves(meta_params))}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    card = {"format": FORMAT, "class": name, "fields": _checkpoint.describe(lopt)["fields"],
            "weights": f"{name}.npz", "sha256": hashlib.sha256(data).hexdigest(),
            "arrays": got, "info": json.loads(json.dumps(info or {}))}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights, card_path = directory / f"{name}.npz", directory / f"{name}.json"
    weights.write_bytes(data)
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return weights, card_path


def read_card(cls, directory=None) -> dict:
    """The card `<directory>/<Class>.json` (default: the shipped one), parsed."""
    caller = f"{cls.__name__}.pretrained"
    directory = Path(PRETRAINED_DIR if directory is None else directory)
    path = directory / f"{cls.__name__}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{caller}: no card {path}; the package ships rules/pretrained/"
            f"{cls.__name__}.json (reinstall innerloop), or pass the folder holding "
            f"{cls.__name__}.json and {cls.__name__}.npz (benchmarks/export_pretrained.py "
            f"writes them)")
    try:
        card = json.loads(path.read_text())
        for key in ("format", "class", "fields", "weights", "sha256", "arrays"):
            card[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{caller}: {path} is not a pretrained-optimizer card "
                         f"({type(exc).__name__}: {exc}); reinstall innerloop or "
                         f"re-export it") from None
    if card["format"] != FORMAT:
        raise ValueError(f"{caller}: {path} has card format {card['format']}, this version "
                         f"reads format {FORMAT}; re-export it with this version")
    if card["class"] != cls.__name__:
        raise ValueError(f"{caller}: {path} is the card of a {card['class']}, not a "
                         f"{cls.__name__}; load it with {card['class']}.pretrained")
    return card


def load_pretrained(cls, directory=None):
    """(learned optimizer, meta-parameters) of the pretrained `cls` in `directory`
    (default: the package's `rules/pretrained/`). See the module docstring for the
    checks; every failure names the file and what to do."""
    caller = f"{cls.__name__}.pretrained"
    directory = Path(PRETRAINED_DIR if directory is None else directory)
    card = read_card(cls, directory)
    card_path = directory / f"{cls.__name__}.json"
    try:
        lopt = _checkpoint.rebuild({"class": card["class"], "fields": card["fields"]})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{caller}: {card_path} does not describe a valid {cls.__name__} "
                         f"({exc}); reinstall innerloop or re-export it") from None
    weights = directory / Path(card["weights"]).name
    if not weights.is_file():
        raise FileNotFoundError(f"{caller}: {weights}, the weights {card_path} names, is "
                                f"missing; reinstall innerloop or re-export it")
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["sha256"]:
        raise ValueError(f"{caller}: {weights} is corrupted or not the file its card "
                         f"{card_path} describes (sha256 {digest[:16]}..., the card says "
                         f"{card['sha256'][:16]}...); reinstall innerloop or re-export both "
                         f"files together")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {n: npz[n] for n in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{caller}: {weights} is not a readable .npz ({exc}); reinstall "
                         f"innerloop or re-export it") from None
    treedef, want = _expected(lopt)
    got = {n: {"dtype": str(a.dtype), "shape": list(a.shape)} for n, a in arrays.items()}
    if got != want or card["arrays"] != want:
        diff = _spec_difference(got, want) or ("the card's array list: "
                                               + _spec_difference(card["arrays"], want))
        raise ValueError(f"{caller}: {weights} does not match the {cls.__name__} its "
                         f"card describes ({json.dumps(card['fields'])}): {diff}; the card "
                         f"and the weights must come from the same export")
    names = list(want)  # leaf order of `lopt.init`
    return lopt, jax.tree.unflatten(treedef, [jnp.asarray(arrays[n]) for n in names])
