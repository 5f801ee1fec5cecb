"""Learned optimizers from the command line: meta-train, then evaluate on held-out tasks.

    python -m innerloop lopt train --lopt mlp --family digits --steps 500 --out runs/mlp
    python -m innerloop lopt train ... --out runs/mlp          # again: resumes the run
    python -m innerloop lopt train --lopt rnn --width 24,32,48 --depth 1,2 \
        --steps 6000 --lr 1e-2 --cosine --meta-loss log --out runs/rnn  # the benchmark's
    python -m innerloop lopt eval --checkpoint runs/mlp --families digits,wine,mnist1d

`train` meta-trains with PES (by default; `--estimator es|tbptt` for the others,
built as `PES(pairs=--tasks, K=--K, sigma=--sigma)`, `ES(pairs=..., ...)` or
`TruncatedBPTT(K=--K, batch=--tasks)`); several `--width`/`--depth` values give
one family per combination, meta-trained in turn (one per outer step). It writes
`<out>/checkpoint.npz` every `--checkpoint-every` outer steps and at the end;
rerunning the same command resumes from it (`--resume require` insists on a
checkpoint, `--resume never` refuses to start over one). `eval` trains tasks sampled
from each family with the learned optimizer and with Adam at 1e-3 for `--steps`
steps and prints, per family, the final training loss (full training set) and test
accuracy of each. A missing, corrupt or mismatched checkpoint is a one-line error
(exit status 2), and nothing is overwritten.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

from innerloop.cli import Parser

COMMANDS = ("train", "eval")
# innerloop.rules.tasks.FAMILIES, spelled out so that building the parser imports no JAX.
FAMILIES = ("digits", "iris", "wine", "breast_cancer", "mnist1d", "quadratic")
LOPT_NAMES = ("mlp", "rnn", "adam")
RESUME = {"auto": True, "require": "require", "never": False}


def _typed(kind, test, what):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _typed(int, lambda v: v >= 1, "a positive integer")
_seed = _typed(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _typed(float, lambda v: 0 < v < float("inf"), "a positive number")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, got {text!r}")
    return values


def _families(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in FAMILIES:
            raise argparse.ArgumentTypeError(
                f"unknown family {name!r}; choose from {','.join(FAMILIES)}")
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of families")
    return list(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `lopt` sub-commands `train` and `eval` and their flags."""
    sub = parser.add_subparsers(dest="lopt_command", metavar="{train,eval}", required=True)
    train = sub.add_parser("train", help="meta-train a learned optimizer (resumable)",
                           description="Meta-train a learned optimizer on a task family.")
    train.add_argument("--lopt", choices=LOPT_NAMES, default="mlp",
                       help="architecture: mlp (MLPLOpt), rnn (RNNMLPLOpt), adam "
                            "(LearnableAdam) (default: mlp)")
    train.add_argument("--hidden", type=_int_list, default=(32, 32),
                       help="hidden sizes of the per-parameter MLP (default: 32,32)")
    train.add_argument("--family", choices=FAMILIES, default="digits",
                       help="task family (default: digits)")
    train.add_argument("--width", type=_int_list, default=(32,),
                       help="hidden width of the MLP tasks; several (24,32,48) give one "
                            "family each (default: 32)")
    train.add_argument("--depth", type=_int_list, default=(1,),
                       help="hidden layers of the MLP tasks; several (1,2) give one "
                            "family each (default: 1)")
    train.add_argument("--meta-loss", choices=("mean", "log"), default="mean",
                       help="meta-objective: each truncation's mean training loss, or its "
                            "log (what benchmarks/learned_optimizer.py uses) "
                            "(default: mean)")
    train.add_argument("--steps", type=_positive_int, default=100,
                       help="outer steps in all (default: 100)")
    train.add_argument("--estimator", choices=("pes", "es", "tbptt"), default="pes",
                       help="meta-gradient estimator (default: pes)")
    train.add_argument("--tasks", type=_positive_int, default=8,
                       help="tasks per outer step: PES/ES antithetic pairs, each on its "
                            "own task, or TBPTT's batch of tasks (default: 8)")
    train.add_argument("--K", type=_positive_int, default=50,
                       help="inner steps per outer step (default: 50)")
    train.add_argument("--T", type=_positive_int, default=200,
                       help="inner steps per task before it is re-sampled (default: 200)")
    train.add_argument("--sigma", type=_positive_float, default=0.01,
                       help="ES/PES perturbation scale (default: 0.01)")
    train.add_argument("--lr", type=_positive_float, default=1e-3,
                       help="Adam learning rate of the meta-parameters (default: 1e-3)")
    train.add_argument("--cosine", action="store_true",
                       help="decay that learning rate to 0 over --steps (cosine)")
    train.add_argument("--seed", type=_seed, default=0, help="seed (default: 0)")
    train.add_argument("--out", required=True, help="run folder (checkpoint.npz goes there)")
    train.add_argument("--checkpoint-every", type=_positive_int, default=10,
                       help="outer steps between checkpoints (default: 10)")
    train.add_argument("--resume", choices=tuple(RESUME), default="auto",
                       help="auto: resume a checkpoint in --out if there is one; require: "
                            "insist on one; never: refuse to start over one (default: auto)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help="evaluate a meta-trained optimizer against Adam",
                        description="Evaluate a learned optimizer on tasks of several "
                                    "families, side by side with Adam at 1e-3.")
    ev.add_argument("--checkpoint", required=True,
                    help="a run folder or its checkpoint.npz")
    ev.add_argument("--families", type=_families, default=None,
                    help="comma-separated families (default: the one it was trained on)")
    ev.add_argument("--tasks", type=_positive_int, default=4,
                    help="tasks per family (default: 4)")
    ev.add_argument("--steps", type=_positive_int, default=200,
                    help="training steps per task (default: 200)")
    ev.add_argument("--seed", type=_seed, default=1000,
                    help="seed of the held-out tasks (default: 1000)")
    ev.add_argument("--json", default=None, help="also write the results to this file")


def build_parser(prog: str = "python -m innerloop lopt") -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (the arguments after `lopt`) and run; return the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad command line (2)
        return 0 if exc.code is None else int(exc.code)
    return run(args)


def run(args) -> int:
    """Run `lopt train` or `lopt eval` for parsed `args`: 0 on success, 2 (after a
    one-line error on stderr) for a missing, corrupt or mismatched checkpoint or
    another bad request."""
    try:
        if args.lopt_command == "train":
            return _train(args)
        return _eval(args)
    except ValueError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"python -m innerloop lopt {args.lopt_command}: error: {message}",
              file=sys.stderr)
        return 2


def _make_lopt(args):
    from innerloop import rules

    if args.lopt == "adam":
        return rules.LearnableAdam()
    cls = rules.MLPLOpt if args.lopt == "mlp" else rules.RNNMLPLOpt
    return cls(hidden=tuple(args.hidden))


@functools.lru_cache(maxsize=None)
def _outer(lr: float, cosine_steps: int | None = None):
    """Adam on the meta-parameters (learning rate cosine-decayed to 0 over
    `cosine_steps` when given); one object per setting, so that a second run in the
    same process reuses the compiled outer step."""
    import optax

    if cosine_steps is None:
        return optax.adam(lr)
    return optax.adam(optax.cosine_decay_schedule(lr, cosine_steps))


def _make_estimator(args):
    """The estimator `--estimator` names, without its task (meta_train binds it)."""
    from innerloop import implicit

    if args.estimator == "pes":
        return implicit.PES(pairs=args.tasks, K=args.K, sigma=args.sigma)
    if args.estimator == "es":
        return implicit.ES(pairs=args.tasks, K=args.K, sigma=args.sigma)
    return implicit.TruncatedBPTT(K=args.K, batch=args.tasks)


def _train(args) -> int:
    from innerloop import rules
    from innerloop.rules import tasks

    lopt = _make_lopt(args)
    if args.family == "quadratic":
        if (args.width, args.depth) != ((32,), (1,)):
            raise ValueError("--width and --depth apply to the MLP families, not to "
                             "quadratic")
        family = tasks.family("quadratic")
    else:
        # Depth outer, width inner: the order of benchmarks/learned_optimizer.py.
        families = tuple(tasks.family(args.family, widths=(w,), depths=(d,))
                         for d in dict.fromkeys(args.depth)
                         for w in dict.fromkeys(args.width))
        family = families[0] if len(families) == 1 else families
    result = rules.meta_train(
        lopt, family, estimator=_make_estimator(args),
        outer=_outer(args.lr, args.steps if args.cosine else None),
        steps=args.steps, T=args.T, seed=args.seed, checkpoint_dir=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=RESUME[args.resume], progress=not args.no_progress,
        log_loss=args.meta_loss == "log")
    losses = result.losses
    tail = losses[-min(10, len(losses)):]
    shapes = f" ({len(family)} shapes in turn)" if isinstance(family, tuple) else ""
    print(f"lopt train: {type(lopt).__name__} on {args.family}{shapes}, {result.step} "
          f"outer steps ({args.tasks} tasks"
          f"{'' if args.estimator == 'tbptt' else ' x 2 particles'} x "
          f"{args.K} inner steps, {args.estimator}); meta-loss "
          f"{losses[0]:.4f} (first) -> {tail.mean():.4f} (mean of the last {len(tail)}); "
          f"compile {result.compile_s:.1f} s, {result.step_s:.3f} s per outer step; "
          f"checkpoint {result.checkpoint}", flush=True)
    return 0


def _eval(args) -> int:
    import equinox as eqx
    import jax
    import numpy as np
    import optax

    from innerloop import rules
    from innerloop.rules import tasks

    ckpt = rules.load_checkpoint(args.checkpoint)
    if args.families is None:  # the family (or families) it was trained on, exactly
        trained = ckpt.family if isinstance(ckpt.family, tuple) else (ckpt.family,)
        families = {}
        for i, fam in enumerate(trained):
            name = getattr(fam, "dataset", "quadratic")
            families[name if len(trained) == 1 else f"{name}[{i}]"] = fam
    else:
        families = {name: tasks.family(name) for name in args.families}
    opt = ckpt.lopt.optax(ckpt.meta_params)
    optimizers = {"lopt": opt, "adam_1e-3": optax.adam(1e-3)}

    @eqx.filter_jit
    def run_one(task, optimizer, key):
        params, losses = tasks.train(task, optimizer, key, args.steps)
        return losses, task.evaluate(params)

    results = {}
    t0 = time.perf_counter()
    print(f"lopt eval: {type(ckpt.lopt).__name__} from {args.checkpoint} (step "
          f"{ckpt.step}); {args.tasks} tasks per family, {args.steps} steps each")
    print(f"{'family':>14} {'optimizer':>10} {'train loss':>11} {'test acc':>9}")
    for f_index, (name, family) in enumerate(families.items()):
        keys = jax.random.split(jax.random.key(args.seed + f_index), args.tasks)
        per = {k: {"train_loss": [], "test_accuracy": []} for k in optimizers}
        for key in keys:
            k_task, k_run = jax.random.split(key)
            task = family.sample(k_task)
            for label, optimizer in optimizers.items():
                _, metrics = run_one(task, optimizer, k_run)
                per[label]["train_loss"].append(float(metrics["train_loss"]))
                per[label]["test_accuracy"].append(
                    float(metrics.get("test_accuracy", float("nan"))))
        results[name] = per
        for label, values in per.items():
            print(f"{name:>14} {label:>10} {np.mean(values['train_loss']):>11.4f} "
                  f"{np.mean(values['test_accuracy']):>9.3f}", flush=True)
    print(f"lopt eval: {time.perf_counter() - t0:.1f} s")
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"checkpoint": os.path.abspath(args.checkpoint), "step": ckpt.step,
                       "steps": args.steps, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
