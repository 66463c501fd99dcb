"""The NLI half: SNLI sentence pairs, their concepts, a part-of-speech tagger.

Importing this package is cheap: NumPy and the engine only (no torch; the tagger's weights are
read on first use).

Examples:
    >>> from compexp_core.nli import LABELS, sentence_concepts
    >>> LABELS
    ('entailment', 'neutral', 'contradiction')
    >>> sentence_concepts([["A", "dog", "runs"]], [["A", "dog", "sleeps"]], tags=False).names[:2]
    ('pre:tok:dog', 'pre:tok:runs')
"""
from .concepts import sentence_concepts
from .data import LABELS, SNLIPairs, read_snli, simple_tokenize
from .tagger import PosTagger, default_tagger, find_tagger_weights, load_tagger_weights

__all__ = ["LABELS", "SNLIPairs", "read_snli", "simple_tokenize", "sentence_concepts", "PosTagger",
           "default_tagger", "find_tagger_weights", "load_tagger_weights"]
