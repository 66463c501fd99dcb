"""The NLI half: SNLI sentence pairs, their concepts, a part-of-speech tagger, the
sentence-pair classifier (:mod:`.model`).

Importing this package is cheap: NumPy and the engine only (no torch: the classifier imports it
when used; the tagger's weights are read on first use).

Examples:
    >>> from compexp_core.nli import LABELS, sentence_concepts
    >>> LABELS
    ('entailment', 'neutral', 'contradiction')
    >>> sentence_concepts([["A", "dog", "runs"]], [["A", "dog", "sleeps"]], tags=False).names[:2]
    ('pre:tok:dog', 'pre:tok:runs')
"""
from .concepts import sentence_concepts
from .data import LABELS, SNLIPairs, read_snli, simple_tokenize
from .model import (PROBED_LAYER, HypothesisBaseline, NLIConfig, Vocab, accuracy, build_classifier,
                    build_vocab, extract_nli_activations, load_or_train_nli, nli_activations,
                    predict, split_by_premise, train_classifier, train_hypothesis_baseline)
from .tagger import PosTagger, default_tagger, find_tagger_weights, load_tagger_weights

__all__ = ["LABELS", "SNLIPairs", "read_snli", "simple_tokenize", "sentence_concepts", "PosTagger",
           "default_tagger", "find_tagger_weights", "load_tagger_weights",
           "PROBED_LAYER", "Vocab", "build_vocab", "build_classifier", "train_classifier",
           "predict", "accuracy", "extract_nli_activations", "nli_activations",
           "HypothesisBaseline", "train_hypothesis_baseline", "split_by_premise", "NLIConfig",
           "load_or_train_nli"]
