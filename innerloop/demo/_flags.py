"""The demo's command line: flags, parser and `main`."""

from __future__ import annotations

import argparse

from innerloop.cli import Parser
from innerloop.demo._config import (
    CLAIM_ACC,
    CLAIM_STEPS,
    DEFAULT_OUT,
    DEFAULT_STEPS,
    MODES,
    QUICK_MODES,
    SOLVERS,
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _modes(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of modes")
    for name in names:
        if name not in MODES:
            raise argparse.ArgumentTypeError(
                f"unknown mode {name!r}; choose from {','.join(MODES)}")
    return list(dict.fromkeys(names))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags (used by `python -m innerloop demo` and by `main`)."""
    parser.add_argument("--modes", type=_modes, default=None,
                        help=f"comma-separated gradient modes (default: {','.join(MODES)}; "
                             f"with --quick: {','.join(QUICK_MODES)})")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help=f"training steps per mode (default: {DEFAULT_STEPS}; with "
                             f"--quick: {CLAIM_STEPS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"the shortest run that checks the claim: {CLAIM_STEPS} steps "
                             f"of {','.join(QUICK_MODES)}. Any run of at least "
                             f"{CLAIM_STEPS} steps with implicit exits with status 1 "
                             f"unless its test accuracy exceeds {CLAIM_ACC}")
    parser.add_argument("--solver", choices=SOLVERS, default="anderson",
                        help="forward solver (default: anderson)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="seed of the initialisation and the batch order (default: 0)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output folder for demo.png and demo.json "
                             f"(default: ./{DEFAULT_OUT}/)")


def resolve(args) -> argparse.Namespace:
    """`args` with the defaults that depend on --quick filled in."""
    quick = getattr(args, "quick", False)
    modes = args.modes if args.modes is not None else list(QUICK_MODES if quick else MODES)
    steps = args.steps if args.steps is not None else (CLAIM_STEPS if quick else DEFAULT_STEPS)
    return argparse.Namespace(**{**vars(args), "modes": modes, "steps": steps,
                                 "quick": quick})


def build_parser(prog: str = "python -m innerloop demo") -> argparse.ArgumentParser:
    from innerloop import demo

    parser = Parser(prog=prog, description=demo.__doc__.splitlines()[0])
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (the arguments after `demo`) and run the demo.

    Returns the exit status: 0 on success, 1 when the run fails the claim, 2 for a bad
    command line (after a one-line error on stderr)."""
    from innerloop.demo._run import run

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad command line (2)
        return 0 if exc.code is None else int(exc.code)
    return run(args)
