"""The ``compexp`` command line: ``search``, ``info``, ``demo``, ``extract``, ``convert-broden``
and ``report``.

:mod:`.main` assembles the parser and turns errors into ``compexp <command>: error: ...`` with
exit status 2; :mod:`.args` holds the argument types and options the subcommands share; each
subcommand has its own module. The library modules know nothing of the command line.
"""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
