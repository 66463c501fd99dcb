"""The Examples in the public docstrings run as doctests."""
import doctest
import importlib

import pytest

MODULES = ["compexp_core", "compexp_core.search", "compexp_core.engine.beam", "compexp_core.engine.masks",
           "compexp_core.engine.backends", "compexp_core.engine.concepts", "compexp_core.engine.results",
           "compexp_core.engine.units", "compexp_core.engine.formula", "compexp_core.engine.optimal", "compexp_core.results",
           "compexp_core.io", "compexp_core.io._h5", "compexp_core.io.activations", "compexp_core.io.concepts",
           "compexp_core.io.images", "compexp_core.io.info", "compexp_core.io.results", "compexp_core.analysis",
           "compexp_core.world", "compexp_core.nli", "compexp_core.nli.data",
           "compexp_core.nli.concepts", "compexp_core.nli.tagger", "compexp_core.nli.model",
           "compexp_core.nli.demo", "compexp_core.io.tables", "compexp_core.adversarial",
           "compexp_core.io.exports", "compexp_core.distributed", "compexp_core.io.tokens",
           "compexp_core.text", "compexp_core.lm.model", "compexp_core.lm.demo"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0, f"{name} has no examples"
    assert failures == 0
