"""Command-line helpers shared by `python -m innerloop` and the experiment scripts in
`benchmarks/`: an argparse parser whose errors are one line."""

from __future__ import annotations

import argparse


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (exit status 2, as argparse)."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
