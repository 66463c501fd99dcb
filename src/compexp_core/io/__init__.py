"""HDF5 input and output: activations, concepts, images and results files.

compexp-core reads and writes four kinds of HDF5 file, told apart by the root attribute
``format`` and documented field by field in ``docs/FORMAT.md``:

* an **activations file** (``format = "compexp-activations"``, :mod:`.activations`) holding
  one dataset ``acts`` of shape ``[N, U, h, w]`` (feature maps) or ``[N, U]`` (one value per
  unit and sample), float16/32/64 or bool, chunked along samples so that it can be read a
  batch of samples at a time;
* a **concepts file** (``format = "compexp-concepts"``, :mod:`.concepts`) holding the K
  concept names and categories, and either the *sources* of the concept masks (integer label
  maps per category, sample-level labels, dense boolean masks), or the already built
  block-sparse *index* of a :class:`~compexp_core.engine.concepts.ConceptSet`, or both (the
  index is then used as is);
* an **images file** (``format = "compexp-images"``, :mod:`.images`): the inputs a model is
  run on;
* a **results file** (``format = "compexp-results"``, :mod:`.results`, also as CSV): what a
  search found, written by :meth:`compexp_core.results.SearchResult.save`.

:func:`describe` (:mod:`.info`) summarises any of them. One policy (:mod:`._h5`) governs every
file: large datasets are written and read in chunks of samples, so no function here needs a
whole label-map or activation tensor in memory (except :func:`load_activations`, meant for
small files); every file is written to a temporary file next to the target, flushed to disk
and renamed into place only when complete, so a failed write never leaves a half-written file
behind and never damages the previous file at that path.

Errors are reported the same way by every reader:

* a missing file raises :class:`FileNotFoundError` naming the path;
* a file HDF5 cannot open (a text file, a truncated file) raises :class:`ValueError` saying it
  is not a readable HDF5 file;
* a wrong ``format`` attribute, a missing dataset or attribute, or shapes and values that do
  not fit together raise :class:`ValueError` naming the file and the dataset involved.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from compexp_core.engine.concepts import ConceptSet
    >>> d = tempfile.mkdtemp()
    >>> save_activations(os.path.join(d, "acts.h5"), np.ones((4, 3, 2, 2), np.float32),
    ...                  layer="layer4")
    >>> open_activations(os.path.join(d, "acts.h5")).shape
    (4, 3, 2, 2)
    >>> cs = ConceptSet.from_dense(np.eye(4, dtype=bool)[:, :, None, None], names=list("abcd"))
    >>> save_concepts(os.path.join(d, "concepts.h5"), cs)
    >>> load_concepts(os.path.join(d, "concepts.h5")).names
    ('a', 'b', 'c', 'd')
"""
from ._h5 import (ACTIVATIONS_FORMAT, CONCEPTS_FORMAT, FORMAT_VERSION, IMAGES_FORMAT,
                  RESULTS_FORMAT)
from .activations import (load_activations, open_activations, read_activations_metadata,
                          rechunk_activations, save_activations)
from .concepts import load_concepts, save_concepts, write_concept_sources
from .images import open_images, read_images_metadata, save_images
from .info import describe

__all__ = [
    "ACTIVATIONS_FORMAT",
    "CONCEPTS_FORMAT",
    "RESULTS_FORMAT",
    "FORMAT_VERSION",
    "save_activations",
    "open_activations",
    "load_activations",
    "read_activations_metadata",
    "rechunk_activations",
    "write_concept_sources",
    "save_concepts",
    "load_concepts",
    "describe",
    "IMAGES_FORMAT",
    "save_images",
    "open_images",
    "read_images_metadata",
]
