"""``compexp info FILE``: describe an activations, concepts or results file."""
from __future__ import annotations

import argparse

from .args import Subcommand


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")


def run(args: argparse.Namespace) -> int:
    from ..io import describe

    print(describe(args.file))
    return 0


COMMAND = Subcommand("info", "describe an activations, concepts or results file",
                     add_arguments, run)
