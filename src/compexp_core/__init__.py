"""compexp-core: fast compositional explanations of neurons.

Explains each unit of a network with a logical formula over annotated concepts, such as
``((water OR river) AND NOT blue)``, found by beam search and scored by IoU with the unit's
binarised activation mask (Mu & Andreas, "Compositional Explanations of Neurons", NeurIPS
2020). Concept masks are stored block-sparse and candidate formulas are counted by compiled
popcount kernels, so a whole layer on Broden-scale data takes minutes, not hours.

Examples:
    >>> import numpy as np, compexp_core as cx
    >>> masks = np.zeros((8, 3), bool); masks[:4, 0] = True; masks[2:6, 1] = True
    >>> unit = masks[:, 0] & ~masks[:, 1]
    >>> result = cx.search_formulas(unit[:, None], masks, names=["water", "blue", "sky"])
    >>> print(result[0].formula, result[0].iou)
    (water AND NOT blue) 1.0
"""
from .engine.backends import backend_info, cuda_available, cuda_compiled, num_gpus
from .engine.concepts import ConceptSet, ConceptSetBuilder
from .engine.formula import And, Formula, Leaf, Not, Or
from .engine.results import Explanation
from .results import SearchResult, load_results
from .engine.units import compute_thresholds
from .search import METRICS, OPERATORS, search_formulas

__version__ = "0.1.0"

__all__ = [
    "search_formulas", "SearchResult", "Explanation", "load_results",
    "ConceptSet", "ConceptSetBuilder", "Formula", "Leaf", "Not", "And", "Or",
    "compute_thresholds", "OPERATORS", "METRICS",
    "cuda_available", "cuda_compiled", "num_gpus", "backend_info",
    "load_concepts", "save_concepts", "write_concept_sources", "save_activations",
    "open_activations", "load_activations", "describe",
]


def __getattr__(name):
    # HDF5 I/O is imported lazily: h5py is only needed by those who use files.
    if name in ("load_concepts", "save_concepts", "write_concept_sources", "save_activations",
                "open_activations", "load_activations", "describe", "io"):
        import importlib

        if name == "io":
            return importlib.import_module(".io", __name__)
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module 'compexp_core' has no attribute {name!r}")
