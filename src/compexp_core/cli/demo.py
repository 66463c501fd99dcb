"""``compexp demo [vision|nli|lm]``: a built-in example end to end (see
:mod:`compexp_core.demo`, :mod:`compexp_core.nli.demo` and :mod:`compexp_core.lm.demo`)."""
from __future__ import annotations

import argparse
import os
import time

from .args import Subcommand, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("example", nargs="?", default="vision", choices=["vision", "nli", "lm"],
                   help="vision (default): a small CNN on a procedural image world; nli: an "
                        "SNLI sentence-pair classifier (needs the SNLI files: --snli); lm: "
                        "the MLP neurons of a small transformer LM and the features of an SAE "
                        "on its residual stream, trained on text of a procedural grammar")
    p.add_argument("--out", default=None,
                   help="folder for the demo files (default: ./compexp-demo, "
                        "./compexp-demo-nli or ./lm-demo)")
    p.add_argument("--snli", default=None, metavar="DIR",
                   help="nli: the SNLI files (a folder with snli_1.0_dev.tok and .labels, or "
                        "SNLI's .jsonl); default $COMPEXP_SNLI_DIR")
    p.add_argument("--retrain", action="store_true",
                   help="train the model again even if cached weights exist")
    # Sizes for quick runs (the tests); not shown in the help.
    p.add_argument("--train-images", type=positive_int, default=5000,
                   help=argparse.SUPPRESS)
    p.add_argument("--eval-images", type=positive_int, default=2000,
                   help=argparse.SUPPRESS)
    p.add_argument("--pairs", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="lm: a small, fast run (a narrower LM, fewer tokens), for trying it out")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.example == "nli":
        return _run_nli(args)
    if args.example == "lm":
        return _run_lm(args)
    if args.quick:
        raise ValueError("--quick is an option of 'compexp demo lm' only")
    from ..demo import DemoConfig, run_demo

    out = args.out or "compexp-demo"
    config = DemoConfig(train_images=args.train_images, eval_images=args.eval_images,
                        **({} if args.epochs is None else {"epochs": args.epochs}))
    t0 = time.perf_counter()
    print(f"compexp demo: explaining a small CNN trained on a procedural image world "
          f"(files in {os.path.abspath(out)})")
    summary = run_demo(out, config, retrain=args.retrain, progress=not args.no_progress,
                       report=not args.no_report)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0 if summary.n_units else 1


def _run_nli(args: argparse.Namespace) -> int:
    from ..nli.demo import NLIDemoConfig, run_nli_demo, snli_location

    out = args.out or "compexp-demo-nli"
    snli = snli_location(args.snli)          # a clear message when it is nowhere
    overrides = {k: v for k, v in (("pairs", args.pairs), ("epochs", args.epochs))
                 if v is not None}
    config = NLIDemoConfig(**overrides)
    t0 = time.perf_counter()
    print(f"compexp demo nli: explaining an SNLI sentence-pair classifier (data from {snli}; "
          f"files in {os.path.abspath(out)})")
    summary = run_nli_demo(snli, out, config, retrain=args.retrain,
                           progress=not args.no_progress, report=not args.no_report)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0 if summary.n_units else 1


def _run_lm(args: argparse.Namespace) -> int:
    from ..lm.demo import LMDemoConfig, run_lm_demo

    out = args.out or "lm-demo"
    config = LMDemoConfig.quick() if args.quick else LMDemoConfig()
    t0 = time.perf_counter()
    print(f"compexp demo lm: explaining a small transformer LM and an SAE trained on text of a "
          f"procedural grammar (files in {os.path.abspath(out)})")
    summary = run_lm_demo(out, config, retrain=args.retrain, progress=not args.no_progress,
                          report=not args.no_report)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0 if any(f.n_explained for f in summary.families) else 1


COMMAND = Subcommand("demo", "run a built-in example end to end: train a small model (a CNN "
                             "on a procedural world, with 'nli' an SNLI classifier, with 'lm' a "
                             "transformer LM and an SAE), explain its units, write a report",
                     add_arguments, run)
