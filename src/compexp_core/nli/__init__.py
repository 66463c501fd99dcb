"""The NLI half: SNLI sentence pairs, their concepts, a part-of-speech tagger.

Importing this package is cheap (NumPy and the engine only; no torch).

Examples:
    >>> from compexp_core.nli import LABELS
    >>> LABELS
    ('entailment', 'neutral', 'contradiction')
"""
from .data import LABELS, SNLIPairs, read_snli, simple_tokenize

__all__ = ["LABELS", "SNLIPairs", "read_snli", "simple_tokenize"]
