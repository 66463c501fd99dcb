"""``compexp search ACTS CONCEPTS -o OUT``: explain the units of an activations file."""
from __future__ import annotations

import argparse
import time

from .args import Subcommand, add_search_options, positive_int, search_kwargs, unit_list


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
    ray = p.add_argument_group("many machines (Ray; pip install \"compexp-core[ray]\")")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="search unit shards on a Ray cluster: ADDRESS (auto, HOST:PORT, "
                          "ray://HOST:PORT), or without one a new local cluster; the "
                          "activations file must be readable at the same path on every node")
    ray.add_argument("--shard-size", type=positive_int, default=None,
                     help="with --ray: units per shard (default 64)")
    ray.add_argument("--shard-dir", default=None,
                     help="with --ray: save finished shards here; a rerun resumes from them")
    ray.add_argument("--workers", type=positive_int, default=None,
                     help="with --ray: number of workers (default: one per node)")


def run(args: argparse.Namespace) -> int:
    from ..search import record_input_files, search_formulas
    from ..io import load_concepts, open_activations
    from ..io.results import check_output_path

    # Before any work: a search whose results cannot be written is not started.
    check_output_path(args.output, inputs=(args.acts, args.concepts))
    executor = _ray_kwargs(args)
    t0 = time.perf_counter()
    concepts = load_concepts(args.concepts)
    acts = open_activations(args.acts)
    # Ranges are checked against the unit count before any index array is built.
    units = None if args.units is None else args.units.resolve(acts.shape[1])
    print(f"concepts: {concepts}")
    print(f"activations: {args.acts} {tuple(acts.shape)} {acts.dtype}")
    result = search_formulas(acts, concepts, quantile=args.quantile, threshold=args.threshold,
                             units=units, progress=not args.no_progress,
                             **search_kwargs(args), **executor)
    elapsed = time.perf_counter() - t0
    # Where the inputs were (so that `compexp report` finds them by default), and what the
    # activations explain.
    record_input_files(result, args.acts, args.concepts)
    result.save(args.output)
    print(result.summary(args.top))
    print(f"{len(result)} units in {elapsed:.2f} s ({1000 * elapsed / len(result):.1f} ms/unit); "
          f"wrote {args.output}")
    return 0


def _ray_kwargs(args: argparse.Namespace) -> dict:
    """search_formulas' executor options from --ray, --shard-size, --shard-dir, --workers."""
    if args.ray is None:
        extra = [o for o, v in (("--shard-size", args.shard_size), ("--shard-dir", args.shard_dir),
                                ("--workers", args.workers)) if v is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} only apply with --ray")
        return {}
    from .._optional import require

    try:
        require("ray", "--ray")
    except ImportError as e:                 # reported like any other bad option
        raise ValueError(str(e)) from None
    return dict(executor="ray", ray_address=None if args.ray == "local" else args.ray,
                shard_size=args.shard_size, shard_dir=args.shard_dir, workers=args.workers)


COMMAND = Subcommand("search", "search formulas for the units of an activations file",
                     add_arguments, run)
