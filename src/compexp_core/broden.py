"""Placeholder: being written (see the open issue). Replaced by the real module."""


def add_cli_arguments(parser):
    pass


def run_cli(args) -> int:
    raise RuntimeError("not implemented yet")
