"""``compexp search ACTS CONCEPTS -o OUT``: explain the units of an activations file."""
from __future__ import annotations

import argparse
import os
import time

from .args import Subcommand, add_search_options, search_kwargs, unit_list


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("acts", help="activations HDF5 file (see docs/FORMAT.md)")
    p.add_argument("concepts", help="concepts HDF5 file (see docs/FORMAT.md)")
    p.add_argument("-o", "--output", required=True, help="output file: .h5/.hdf5 or .csv")
    p.add_argument("--quantile", type=float, default=0.005,
                   help="fraction of each unit's activations above its threshold (default 0.005)")
    p.add_argument("--threshold", type=float, default=None,
                   help="one explicit activation threshold for all units (overrides --quantile)")
    p.add_argument("--units", type=unit_list, default=None,
                   help="units to explain, e.g. 0-9,15")
    add_search_options(p)


def run(args: argparse.Namespace) -> int:
    from ..search import search_formulas
    from ..io import load_concepts, open_activations, read_activations_metadata
    from ..io.results import check_output_path

    # Before any work: a search whose results cannot be written is not started.
    check_output_path(args.output, inputs=(args.acts, args.concepts))
    t0 = time.perf_counter()
    concepts = load_concepts(args.concepts)
    acts = open_activations(args.acts)
    # Ranges are checked against the unit count before any index array is built.
    units = None if args.units is None else args.units.resolve(acts.shape[1])
    print(f"concepts: {concepts}")
    print(f"activations: {args.acts} {tuple(acts.shape)} {acts.dtype}")
    result = search_formulas(acts, concepts, quantile=args.quantile, threshold=args.threshold,
                             units=units, progress=not args.no_progress,
                             **search_kwargs(args))
    elapsed = time.perf_counter() - t0
    # Where the inputs were, so that `compexp report` finds them by default.
    result.params["acts_path"] = os.path.abspath(args.acts)
    result.params["concepts_path"] = os.path.abspath(args.concepts)
    meta = read_activations_metadata(args.acts)         # what the activations explain
    result.model, result.layer = meta["model"], meta["layer"]
    result.save(args.output)
    print(result.summary(args.top))
    print(f"{len(result)} units in {elapsed:.2f} s ({1000 * elapsed / len(result):.1f} ms/unit); "
          f"wrote {args.output}")
    return 0


COMMAND = Subcommand("search", "search formulas for the units of an activations file",
                     add_arguments, run)
