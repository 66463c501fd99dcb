"""Language models: token-level activations of their neurons and of SAE features.

:func:`extract_token_activations` (:mod:`.extract`) writes ``[N_tokens, U]`` activations with
the per-token metadata (:class:`~compexp_core.io.tokens.TokenTable`) that token concepts and
token reports read; :func:`sae_features` searches an SAELens SAE's features over a stored
residual stream without materialising them. Importing this package is cheap: torch, TransformerLens and SAELens are
imported only when used.

Examples:
    >>> from compexp_core.lm import extract_token_activations
    >>> extract_token_activations.__name__
    'extract_token_activations'
"""
from .extract import extract_token_activations, sae_features

__all__ = ["extract_token_activations", "sae_features"]
