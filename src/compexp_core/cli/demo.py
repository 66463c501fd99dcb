"""``compexp demo``: the built-in example end to end (see :mod:`compexp_core.demo`)."""
from __future__ import annotations

import argparse
import os
import time

from .args import Subcommand, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="compexp-demo",
                   help="folder for the demo files (default: ./compexp-demo)")
    p.add_argument("--retrain", action="store_true",
                   help="train the CNN again even if cached weights exist")
    # Sizes for quick runs (the tests); not shown in the help.
    p.add_argument("--train-images", type=positive_int, default=5000,
                   help=argparse.SUPPRESS)
    p.add_argument("--eval-images", type=positive_int, default=2000,
                   help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=positive_int, default=6, help=argparse.SUPPRESS)
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo

    config = DemoConfig(train_images=args.train_images, eval_images=args.eval_images,
                        epochs=args.epochs)
    t0 = time.perf_counter()
    print(f"compexp demo: explaining a small CNN trained on a procedural image world "
          f"(files in {os.path.abspath(args.out)})")
    summary = run_demo(args.out, config, retrain=args.retrain, progress=not args.no_progress,
                       report=not args.no_report)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0 if summary.n_units else 1


COMMAND = Subcommand("demo", "run the built-in example end to end: train a small CNN on a "
                             "procedural world, explain its units, write a report",
                     add_arguments, run)
