"""The ``compexp`` parser: one subparser per subcommand module, and the error handling.

Each subcommand module (:mod:`.search`, :mod:`.info`, :mod:`.demo`, :mod:`.extract`,
:mod:`.convert_broden`, :mod:`.report`, :mod:`.adversarial`, :mod:`.export`) describes itself
in ``COMMAND``, a :class:`~.args.Subcommand` (name, help, ``add_arguments(parser)``,
``run(args) -> int``), and imports the library modules it runs (and so h5py, torch or
Pillow) only inside ``run``: building the parser imports none of them, so ``compexp --help``
stays fast.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .adversarial import COMMAND as ADVERSARIAL
from .convert_broden import COMMAND as CONVERT_BRODEN
from .demo import COMMAND as DEMO
from .export import COMMAND as EXPORT
from .extract import COMMAND as EXTRACT
from .info import COMMAND as INFO
from .report import COMMAND as REPORT
from .search import COMMAND as SEARCH

__all__ = ["build_parser", "main"]

# In the order ``compexp --help`` lists them.
SUBCOMMANDS = (SEARCH, INFO, DEMO, EXTRACT, CONVERT_BRODEN, REPORT, ADVERSARIAL, EXPORT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compexp", description="Explain neurons with logical formulas over concepts.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, RuntimeError, KeyError) as err:
        # Users get the message that names the problem, not a traceback.
        print(f"compexp {args.command}: error: {err}", file=sys.stderr)
        return 2
