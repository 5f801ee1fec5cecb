r"""Task families for learned optimizers: small classifiers on real data, noisy quadratics.

A *task* is an immutable `equinox.Module` with

- `init(key) -> params`: fresh parameters;
- `loss(params, batch) -> scalar`: the training loss on one minibatch;
- `batch(key) -> batch`: one minibatch, drawn with `jax.random` from arrays held on
  the task (so sampling works inside `jit`, `vmap` and `lax.scan`), and
  `batches(key, n)`: n of them stacked;
- `evaluate(params) -> dict`: full-data metrics (`train_loss`, `test_loss`, and for
  classifiers `train_accuracy`, `test_accuracy`); classifiers also have
  `accuracy(params, split="test")`.

A *family* is a frozen dataclass whose `sample(key) -> task` is deterministic in the
key. What a family varies comes in two kinds:

- *static* choices (hidden widths, depth, activation, batch size): they change array
  shapes or the program, so they are drawn eagerly from the key (a family with more
  than one choice cannot be sampled under `jit`/`vmap`; `family.fixed_shapes` says
  whether it can);
- *array* choices (the initial scale, the subset of the training data a task sees,
  the curvature and noise of a quadratic): drawn with `jax.random`, so a fixed-shape
  family can be sampled inside `jit` and `vmap`, and the tasks of a vmapped
  meta-batch share their shapes.

So the meta-training family fixes the architecture (`MLPFamily("digits",
widths=(32,))`) and varies the initial scale, the data subset and the seeds, while
held-out families may vary anything.

Datasets (no downloads): scikit-learn's `digits`, `iris`, `wine`, `breast_cancer`,
and `mnist1d` from the mnist1d package's generator (`make_dataset(get_dataset_args())`,
4000 train / 1000 test signals of length 40). Features are standardised with the
training set's mean and standard deviation; the scikit-learn sets use a fixed
stratified 80/20 split.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

# The Gaussian two-armed bandit of "Learning not to learn" (a reinforcement-learning task).
from innerloop.rules._bandit import GaussianBandit as GaussianBandit
from innerloop.rules._bandit import bandit_grid as bandit_grid

__all__ = ["DATASETS", "FAMILIES", "MLPFamily", "MLPTask", "QuadraticFamily", "cross_entropy",
           "QuadraticTask", "family", "load_dataset", "train", "train_step",
           "GaussianBandit", "bandit_grid"]

DATASETS = ("digits", "iris", "wine", "breast_cancer", "mnist1d")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
}
SPLIT_SEED = 0


# -------------------------------------------------------------------- data


@functools.lru_cache(maxsize=None)
def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) for one of `DATASETS`: float32 features
    standardised with the training statistics, int32 labels. Cached per process;
    treat the arrays as read-only."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        # The generator, never the loader (which downloads).
        data = make_dataset(get_dataset_args())
        x_tr, y_tr, x_te, y_te = data["x"], data["y"], data["x_test"], data["y_test"]
    else:
        import sklearn.datasets
        from sklearn.model_selection import train_test_split

        data = getattr(sklearn.datasets, f"load_{name}")()
        x_tr, x_te, y_tr, y_te = train_test_split(
            data.data, data.target, test_size=0.2, stratify=data.target,
            random_state=SPLIT_SEED)
    x_tr, x_te = np.asarray(x_tr, np.float64), np.asarray(x_te, np.float64)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std = np.where(std > 1e-8, std, 1.0)  # constant pixels of digits
    out = ((x_tr - mean) / std).astype(np.float32), np.asarray(y_tr, np.int32), \
        ((x_te - mean) / std).astype(np.float32), np.asarray(y_te, np.int32)
    for a in out:
        a.setflags(write=False)
    return out


def _choose(key: jax.Array, choices: tuple, what: str) -> Any:
    """Pick one of `choices` with `key`, eagerly (the choice decides shapes)."""
    if len(choices) == 1:
        return choices[0]
    try:
        index = int(jax.random.randint(key, (), 0, len(choices)))
    except (jax.errors.ConcretizationTypeError, TypeError):  # a tracer: jit or vmap
        raise ValueError(
            f"this family draws its {what} from {len(choices)} choices, which changes "
            f"array shapes, so it cannot be sampled under jit or vmap; use a family "
            f"with a single {what} there (held-out families may vary it)") from None
    return choices[index]


def _log_uniform(key: jax.Array, bounds: tuple[float, float],
                 shape: tuple[int, ...] = ()) -> jax.Array:
    lo, hi = bounds
    return jnp.exp(jax.random.uniform(key, shape, jnp.float32, math.log(lo), math.log(hi)))


# -------------------------------------------------------------- MLP tasks


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Softmax cross-entropy logsumexp(l) - l_y, accurate down to the smallest
    normal float: computed as

        (l_max - l_y) + log1p(sum_{j != argmax} exp(l_j - l_max)),

    where the usual logsumexp form rounds every loss below ~eps (6e-8 in float32)
    to exactly 0. Near-perfect classifiers (wine, breast_cancer) reach such losses
    within a few hundred steps, and comparing optimizers there (how many steps to
    reach a loss) needs the actual values, not a floor shared by all of them.
    Same gradient as the usual form (softmax(l) - onehot(y))."""
    top = jnp.argmax(logits, axis=-1)
    l_max = jnp.take_along_axis(logits, top[..., None], axis=-1)
    l_y = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    rest = jnp.where(jax.nn.one_hot(top, logits.shape[-1], dtype=bool), 0.0,
                     jnp.exp(logits - l_max))
    return (l_max[..., 0] - l_y) + jnp.log1p(jnp.sum(rest, axis=-1))


class MLPTask(eqx.Module):
    r"""Softmax classifier h_{l+1} = act(W_l h_l + b_l), logits = W_L h_L + b_L.

    Weights start as W_l ~ N(0, s^2 / fan_in) with s = `init_scale`, biases at 0;
    the loss is the mean cross-entropy of a minibatch of `batch_size` examples drawn
    with replacement from the training set (or from `subset`, indices into it).
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    init_scale: jax.Array
    subset: jax.Array | None
    hidden: tuple[int, ...] = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    n_classes: int = eqx.field(static=True)

    def init(self, key: jax.Array) -> list[dict[str, jax.Array]]:
        sizes = (self.x_train.shape[-1], *self.hidden, self.n_classes)
        params = []
        for k, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1),
                                        zip(sizes[:-1], sizes[1:])):
            w = jax.random.normal(k, (fan_in, fan_out), jnp.float32)
            params.append({"w": w * (self.init_scale / math.sqrt(fan_in)),
                           "b": jnp.zeros((fan_out,), jnp.float32)})
        return params

    def apply(self, params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
        """Logits for inputs x of shape (..., features)."""
        act = ACTIVATIONS[self.activation]
        for layer in params[:-1]:
            x = act(x @ layer["w"] + layer["b"])
        return x @ params[-1]["w"] + params[-1]["b"]

    def loss(self, params: list[dict[str, jax.Array]],
             batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        return cross_entropy(self.apply(params, x), y).mean()

    def batch(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        pool = self.x_train.shape[0] if self.subset is None else self.subset.shape[0]
        idx = jax.random.randint(key, (self.batch_size,), 0, pool)
        if self.subset is not None:
            idx = self.subset[idx]
        return self.x_train[idx], self.y_train[idx]

    def batches(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        return jax.vmap(self.batch)(jax.random.split(key, n))

    def _split(self, split: str) -> tuple[jax.Array, jax.Array]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def accuracy(self, params: list[dict[str, jax.Array]], split: str = "test") -> jax.Array:
        x, y = self._split(split)
        return jnp.mean(jnp.argmax(self.apply(params, x), -1).astype(y.dtype) == y)

    def evaluate(self, params: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
        out = {}
        for split in ("train", "test"):
            out[f"{split}_loss"] = self.loss(params, self._split(split))
            out[f"{split}_accuracy"] = self.accuracy(params, split)
        return out


@dataclasses.dataclass(frozen=True)
class MLPFamily:
    """MLP classifiers on one dataset.

    - `widths`, `depths`, `activations`, `batch_sizes`: the static choices (hidden
      layers are `(width,) * depth`); each drawn uniformly from the key.
    - `init_scale`: (lo, hi), the multiplier s of the initialisation, log-uniform.
    - `subset`: None (every task sees the whole training set) or a fraction in (0, 1]:
      each task trains on its own random subset of that size.
    """

    dataset: str = "digits"
    widths: tuple[int, ...] = (32,)
    depths: tuple[int, ...] = (1,)
    activations: tuple[str, ...] = ("relu",)
    batch_sizes: tuple[int, ...] = (128,)
    init_scale: tuple[float, float] = (0.5, 2.0)
    subset: float | None = None

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose from "
                             f"{', '.join(DATASETS)}")
        for name in ("widths", "depths", "activations", "batch_sizes", "init_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for a in self.activations:
            if a not in ACTIVATIONS:
                raise ValueError(f"unknown activation {a!r}; choose from "
                                 f"{', '.join(ACTIVATIONS)}")
        if any(int(v) < 1 for v in self.widths + self.depths + self.batch_sizes):
            raise ValueError("widths, depths and batch_sizes must be positive integers")
        lo, hi = self.init_scale
        if not 0 < lo <= hi:
            raise ValueError(f"init_scale must be (lo, hi) with 0 < lo <= hi, got "
                             f"{self.init_scale}")
        if self.subset is not None and not 0 < self.subset <= 1:
            raise ValueError(f"subset must be None or a fraction in (0, 1], got "
                             f"{self.subset}")

    @property
    def fixed_shapes(self) -> bool:
        """Whether every task has the same shapes (so `sample` works under jit/vmap)."""
        return all(len(c) == 1 for c in (self.widths, self.depths, self.activations,
                                         self.batch_sizes))

    def sample(self, key: jax.Array) -> MLPTask:
        k_w, k_d, k_a, k_b, k_s, k_sub = jax.random.split(key, 6)
        width = _choose(k_w, self.widths, "width")
        depth = _choose(k_d, self.depths, "depth")
        activation = _choose(k_a, self.activations, "activation")
        batch_size = _choose(k_b, self.batch_sizes, "batch size")
        x_tr, y_tr, x_te, y_te = load_dataset(self.dataset)
        subset = None
        if self.subset is not None:
            size = max(1, round(self.subset * x_tr.shape[0]))
            subset = jax.random.permutation(k_sub, x_tr.shape[0])[:size]
        return MLPTask(
            x_train=jnp.asarray(x_tr), y_train=jnp.asarray(y_tr),
            x_test=jnp.asarray(x_te), y_test=jnp.asarray(y_te),
            init_scale=_log_uniform(k_s, self.init_scale), subset=subset,
            hidden=(int(width),) * int(depth), activation=activation,
            batch_size=int(batch_size), n_classes=int(max(y_tr.max(), y_te.max()) + 1))


# -------------------------------------------------------- noisy quadratics


class QuadraticTask(eqx.Module):
    r"""Noisy quadratic: L(x, n) = 1/(2d) sum_i h_i (x_i - c_i - n_i)^2 with
    n ~ N(0, noise^2 I) drawn per minibatch (so the gradient is noisy), curvatures
    h_i > 0 and centre c; x starts at N(0, s^2 I)."""

    curvature: jax.Array
    centre: jax.Array
    noise: jax.Array
    init_scale: jax.Array

    def init(self, key: jax.Array) -> jax.Array:
        return self.init_scale * jax.random.normal(key, self.centre.shape, jnp.float32)

    def loss(self, params: jax.Array, batch: jax.Array) -> jax.Array:
        return 0.5 * jnp.mean(self.curvature * (params - self.centre - batch) ** 2)

    def batch(self, key: jax.Array) -> jax.Array:
        return self.noise * jax.random.normal(key, self.centre.shape, jnp.float32)

    def batches(self, key: jax.Array, n: int) -> jax.Array:
        return jax.vmap(self.batch)(jax.random.split(key, n))

    def evaluate(self, params: jax.Array) -> dict[str, jax.Array]:
        clean = self.loss(params, jnp.zeros_like(self.centre))
        return {"train_loss": clean, "test_loss": clean}


@dataclasses.dataclass(frozen=True)
class QuadraticFamily:
    """Noisy quadratics in `dim` dimensions: curvatures log-uniform in `curvature`,
    centre ~ N(0, I), gradient noise scale log-uniform in `noise` (0 for none),
    initial scale log-uniform in `init_scale`. Every task has the same shapes."""

    dim: int = 10
    curvature: tuple[float, float] = (0.1, 10.0)
    noise: tuple[float, float] = (0.01, 0.1)
    init_scale: tuple[float, float] = (0.5, 2.0)

    def __post_init__(self):
        if int(self.dim) < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim}")
        for name in ("curvature", "noise", "init_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi if name == "noise" else 0 < lo <= hi):
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got "
                                 f"{getattr(self, name)}")

    fixed_shapes = True

    def sample(self, key: jax.Array) -> QuadraticTask:
        k_h, k_c, k_n, k_s = jax.random.split(key, 4)
        lo, hi = self.noise
        noise = jnp.zeros((), jnp.float32) if hi == 0 else \
            _log_uniform(k_n, (max(lo, 1e-12), hi))
        return QuadraticTask(
            curvature=_log_uniform(k_h, self.curvature, (self.dim,)),
            centre=jax.random.normal(k_c, (self.dim,), jnp.float32),
            noise=noise, init_scale=_log_uniform(k_s, self.init_scale))


# ----------------------------------------------------------- constructors


def family(name: str, **overrides: Any) -> MLPFamily | QuadraticFamily:
    """A family by name: one of `DATASETS` (an `MLPFamily` on it) or `"quadratic"`;
    keyword arguments override the defaults (e.g. `widths=(16, 32, 64)`)."""
    if name == "quadratic":
        return QuadraticFamily(**overrides)
    if name in DATASETS:
        overrides.setdefault("batch_sizes", (32,) if name == "iris" else (128,))
        return MLPFamily(dataset=name, **overrides)
    raise ValueError(f"unknown family {name!r}; choose from "
                     f"{', '.join(DATASETS + ('quadratic',))}")


FAMILIES = DATASETS + ("quadratic",)


# --------------------------------------------------------------- training


def train(task: Any, optimizer: optax.GradientTransformation, key: jax.Array,
          steps: int) -> tuple[Any, jax.Array]:
    """Train `task` for `steps` steps with an optax `optimizer` from `task.init(key)`.

    Returns `(params, losses)`, `losses[t]` the minibatch loss before update t. An
    optimizer that takes optax's extra arguments (`optax.GradientTransformationExtraArgs`:
    learned optimizers, `optax.contrib.reduce_on_plateau`, `optax.lbfgs`) gets the
    minibatch loss as `value=`, its gradient as `grad=` and the minibatch loss
    function as `value_fn=` (see `train_step`).
    The whole run is one `lax.scan`; wrap in `jax.jit` (or `eqx.filter_jit` with the
    task as an argument) to compile it once."""
    k_init, k_data = jax.random.split(key)
    params = task.init(k_init)
    opt_state = optimizer.init(params)

    def body(carry, t):
        params, opt_state = carry
        params, opt_state, loss = train_step(task, optimizer, params, opt_state,
                                             jax.random.fold_in(k_data, t))
        return (params, opt_state), loss

    (params, _), losses = jax.lax.scan(body, (params, opt_state), jnp.arange(steps))
    return params, losses


def train_step(task: Any, optimizer: optax.GradientTransformation, params: Any,
               opt_state: Any, key: jax.Array) -> tuple[Any, Any, jax.Array]:
    """One step: minibatch `task.batch(key)`, gradient, optimizer update. Returns
    `(params, opt_state, loss)`.

    An `optax.GradientTransformationExtraArgs` gets optax's extra arguments, as
    `innerloop.argmin` passes them: `value=` the minibatch loss (what learned
    optimizers and `reduce_on_plateau` read), `grad=` its gradient and `value_fn=`
    the loss on this minibatch (what `optax.lbfgs`'s line search reads)."""
    batch = task.batch(key)
    loss, grads = jax.value_and_grad(task.loss)(params, batch)
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        updates, opt_state = optimizer.update(
            grads, opt_state, params, value=loss, grad=grads,
            value_fn=lambda p: task.loss(p, batch))
    else:
        updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
