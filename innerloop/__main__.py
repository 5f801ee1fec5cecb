"""The command line: `python -m innerloop <command> ...` (also the `innerloop` script).

Commands:

    demo    train a DEQ classifier on digits under every gradient mode and compare
    lopt    learned optimizers: `lopt train ...` (meta-train, resumable) and
            `lopt eval ...` (against Adam)

`python -m innerloop` with no command prints this help and exits with status 2; a
bad command line prints a one-line error and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from innerloop.cli import Parser


def build_parser() -> argparse.ArgumentParser:
    from innerloop import __version__, demo
    from innerloop import _lopt_cli as lopt_cli

    parser = Parser(prog="python -m innerloop",
                     description="innerloop: learn through loops in JAX.")
    parser.add_argument("--version", action="version", version=f"innerloop {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>",
                                     parser_class=Parser)
    sub = commands.add_parser("demo", help="DEQ on digits: every gradient mode compared",
                              description=demo.__doc__.splitlines()[0])
    demo.add_arguments(sub)
    sub.set_defaults(run=demo.run)
    sub = commands.add_parser("lopt", help="learned optimizers: meta-train, evaluate",
                              description=lopt_cli.__doc__.splitlines()[0])
    lopt_cli.add_arguments(sub)
    sub.set_defaults(run=lopt_cli.run)
    # Further commands: add a sub-parser here with `set_defaults(run=...)`, where
    # run(args) -> int.
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line on `argv` (default: `sys.argv[1:]`); return the exit
    status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a bad command line (2)
        return 0 if exc.code is None else int(exc.code)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
