"""The language model of the built-in LM example: a grammar, a tokenizer, a tiny transformer
and a sparse autoencoder, all small enough to train on a laptop CPU in a couple of minutes.

* :func:`generate_documents`: a procedural English-like grammar shipped with the package (no
  data needed). Sentences have determiners, colour and size adjectives, animal and object
  nouns (plurals in ``-s``, a few rare nouns), names, verbs with agreement, negation
  (``not``, ``never``, ``no``), conditionals (``If ... , then ...``), numbers, questions,
  quotes, capitalised sentence starts and punctuation.
* :class:`Tokenizer` (:func:`build_tokenizer`): deterministic, GPT-2 style: a token preceded
  by a space carries the word-start marker ``"Ġ"``; common words are one token, plurals are
  the stem plus the piece ``"s"``, rare words split into fixed subword pieces, digits are one
  token each, anything else falls back to single characters. ``decode(encode(text)) == text``.
* :func:`build_lm` / :func:`train_lm`: a causal transformer in plain PyTorch (pre-LayerNorm,
  GELU MLPs). Its MLP neurons are the GELU module ``blocks.<i>.mlp.act``; the residual stream
  after block i is the output of ``blocks.<i>``, so a forward hook by module path reaches both.
* :func:`build_sae` / :func:`train_sae`: a sparse autoencoder (ReLU encoder, decoder with
  unit-norm columns, L1 penalty on the features) trained on one layer's residual stream.
* :func:`load_or_train` with :class:`LMConfig`: both trained once and cached like the other
  examples' weights (:func:`compexp_core.demo.cache_dir`); a corrupt cache is retrained.

torch is imported inside the functions only: the grammar and the tokenizer do not need it.

Examples:
    >>> docs = generate_documents(3, seed=1)
    >>> tok = build_tokenizer()
    >>> all(tok.decode(tok.encode(d)) == d for d in docs)
    True
    >>> tok.encode("The elephants saw 12 cats.")
    ['The', 'Ġele', 'phant', 's', 'Ġsaw', 'Ġ1', '2', 'Ġcat', 's', '.']
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .._optional import require

__all__ = ["generate_documents", "Tokenizer", "build_tokenizer", "LMConfig", "build_lm",
           "train_lm", "evaluate_lm", "LMEvaluation", "build_sae", "train_sae", "sae_quality",
           "residual_activations", "load_or_train", "cache_path", "TrainedLM", "encode_documents",
           "MLP_LAYER", "RESIDUAL_LAYER", "PAD", "UNK", "WORD_START"]

PAD, UNK = "<pad>", "<unk>"
WORD_START = "Ġ"                  # GPT-2's marker of a token that follows a space
MLP_LAYER = "blocks.1.mlp.act"    # the MLP neurons the example explains (post-GELU)
RESIDUAL_LAYER = "blocks.0"       # the residual stream the SAE is trained on (after block 0)

# ------------------------------------------------------------------------------ the grammar

COLOURS = ("red", "blue", "green", "yellow", "black", "white")
SIZES = ("big", "small", "tiny", "huge", "old", "young")
ANIMALS = ("cat", "dog", "bird", "horse", "fox", "cow", "fish", "mouse")
OBJECTS = ("box", "ball", "car", "cup", "book", "hat", "key", "tree")
RARE_NOUNS = ("elephant", "giraffe", "umbrella", "penguin", "kangaroo", "telescope")
NAMES = ("Alice", "Bob", "Maria", "Tom", "Anna", "Bartholomew")
# verb: (third person singular, base, past)
TRANSITIVE = (("sees", "see", "saw"), ("likes", "like", "liked"), ("chases", "chase", "chased"),
              ("holds", "hold", "held"), ("finds", "find", "found"), ("wants", "want", "wanted"))
INTRANSITIVE = (("sleeps", "sleep", "slept"), ("runs", "run", "ran"), ("jumps", "jump", "jumped"),
                ("sings", "sing", "sang"))
# Irregular plurals are whole words (no "s" piece).
PLURALS = {"mouse": "mice", "fish": "fish", "box": "boxes"}
# Subword pieces of the rare words (the first piece carries the word-start marker).
SPLITS = {"elephant": ("ele", "phant"), "giraffe": ("gir", "affe"),
          "umbrella": ("um", "brella"), "penguin": ("pen", "guin"),
          "kangaroo": ("kang", "ar", "oo"), "telescope": ("tele", "scope"),
          "Bartholomew": ("Bar", "thol", "omew")}


def _plural(noun: str) -> str:
    return PLURALS.get(noun, noun + "s")


class _Grammar:
    """Sentence generator; every choice comes from one NumPy generator (deterministic)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def noun(self) -> str:
        r = self.rng.random()
        return self.pick(RARE_NOUNS if r < 0.1 else ANIMALS if r < 0.6 else OBJECTS)

    def adjectives(self) -> list:
        out = []
        if self.chance(0.3):
            out.append(self.pick(SIZES))
        if self.chance(0.4):
            out.append(self.pick(COLOURS))
        return out

    def noun_phrase(self, negative_ok: bool = True):
        """(words, plural)"""
        r = self.rng.random()
        if r < 0.15:
            return [self.pick(NAMES)], False
        if r < 0.27:       # a number and a plural noun
            n = int(self.rng.integers(2, 100))
            return [str(n), *self.adjectives(), _plural(self.noun())], True
        if r < 0.35 and negative_ok:
            plural = self.chance(0.4)
            noun = self.noun()
            return ["no", *self.adjectives(), _plural(noun) if plural else noun], plural
        plural = self.chance(0.3)
        det = self.pick(("the", "some", "these", "many") if plural
                        else ("the", "a", "every", "this", "that"))
        noun = self.noun()
        words = [det, *self.adjectives(), _plural(noun) if plural else noun]
        if det == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return words, plural

    def verb_phrase(self, plural: bool, negated_subject: bool) -> list:
        r = self.rng.random()
        negate = not negated_subject and self.chance(0.3)
        past = self.chance(0.25)
        if r < 0.3:      # copula and an adjective
            adj = self.pick(COLOURS + SIZES)
            be = ("were" if plural else "was") if past else ("are" if plural else "is")
            return [be, "not", adj] if negate else [be, adj]
        verb = self.pick(INTRANSITIVE if r < 0.5 else TRANSITIVE)
        if negate:
            if self.chance(0.5):
                words = ["never", verb[2] if past else verb[1 if plural else 0]]
            else:
                words = ["did" if past else "do" if plural else "does", "not", verb[1]]
        else:
            words = [verb[2] if past else verb[1 if plural else 0]]
        if verb in TRANSITIVE:
            words += self.noun_phrase(negative_ok=False)[0]
        return words

    def clause(self) -> list:
        subject, plural = self.noun_phrase()
        return subject + self.verb_phrase(plural, subject[0] == "no")

    def sentence(self) -> list:
        """Word and punctuation tokens of one sentence (not yet capitalised)."""
        r = self.rng.random()
        if r < 0.2:
            return ["if", *self.clause(), ",", "then", *self.clause(), "."]
        if r < 0.3:
            name = self.pick(NAMES)
            return [name, self.pick(("says", "said")), ",", '"', *self.clause(), '"', "."]
        if r < 0.4:
            subject, plural = self.noun_phrase(negative_ok=False)
            aux = "do" if plural else "does"
            verb = self.pick(INTRANSITIVE + TRANSITIVE)
            words = [aux, *subject, verb[1]]
            if verb in TRANSITIVE:
                words += self.noun_phrase(negative_ok=False)[0]
            return words + ["?"]
        return [*self.clause(), "!" if self.chance(0.1) else "."]


_NO_SPACE_BEFORE = {".", ",", "!", "?"}


def _join(words: list) -> str:
    """Sentence text: a space between words, none before , . ! ? and inside quotes."""
    out = ""
    open_quote = False
    for i, w in enumerate(words):
        glue = i > 0 and w not in _NO_SPACE_BEFORE
        if w == '"':
            glue = glue and not open_quote      # a closing quote sticks to the word before
            open_quote = not open_quote
        elif i > 0 and words[i - 1] == '"' and open_quote:
            glue = False                        # nor after an opening quote
        out += (" " if glue else "") + w
    return out


def generate_documents(n: int, *, seed: int = 0, max_sentences: int = 3) -> list:
    """``n`` documents of the grammar: each 1..``max_sentences`` sentences, capitalised.

    Args:
        n: number of documents (>= 0).
        seed: the generator's seed (same seed, same documents).
        max_sentences: most sentences per document (>= 1).

    Returns:
        A list of ``n`` strings.

    Examples:
        >>> generate_documents(2, seed=0) == generate_documents(2, seed=0)
        True
        >>> generate_documents(1, seed=3, max_sentences=1)[0][0].isupper()
        True
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(max_sentences, bool) or not isinstance(max_sentences, (int, np.integer)) \
            or max_sentences < 1:
        raise ValueError(f"max_sentences must be an integer >= 1, got {max_sentences!r}")
    g = _Grammar(np.random.default_rng(seed))
    docs = []
    for _ in range(n):
        sentences = []
        for _ in range(int(g.rng.integers(1, max_sentences + 1))):
            words = g.sentence()
            first = 1 if words[0] == '"' else 0
            words[first] = words[first][:1].upper() + words[first][1:]
            sentences.append(_join(words))
        docs.append(" ".join(sentences))
    return docs


# ------------------------------------------------------------------------------ tokenizer

# One pre-token: optional space, then a word, a single digit, or one other character.
_PRETOKEN = re.compile(r" ?(?:[A-Za-z]+|[0-9]|[^ A-Za-z0-9])")


class Tokenizer:
    """A deterministic word-level tokenizer with subword pieces (see the module docstring).

    Args:
        vocab: the token strings, id = position; must contain ``"<pad>"`` and ``"<unk>"``.
        splits: word -> its subword pieces (rare words).

    Examples:
        >>> tok = build_tokenizer()
        >>> pieces = tok.encode("If Bartholomew sees a zebra")
        >>> pieces
        ['If', 'ĠBar', 'thol', 'omew', 'Ġsees', 'Ġa', 'Ġz', 'e', 'b', 'r', 'a']
        >>> tok.decode(pieces)
        'If Bartholomew sees a zebra'
        >>> tok.ids(["Ġsees", "ñ"])[1] == tok.id_of[UNK]
        True
    """

    def __init__(self, vocab: Sequence[str], splits: Optional[dict] = None) -> None:
        vocab = list(vocab)
        if len(set(vocab)) != len(vocab):
            raise ValueError("the vocabulary has repeated tokens")
        for special in (PAD, UNK):
            if special not in vocab:
                raise ValueError(f"the vocabulary must contain {special!r}")
        self.vocab = vocab
        self.id_of = {t: i for i, t in enumerate(vocab)}
        self.splits = dict(splits or {})

    def __len__(self) -> int:
        return len(self.vocab)

    def _pieces(self, word: str, space: bool) -> list:
        mark = WORD_START if space else ""
        if mark + word in self.id_of:
            return [mark + word]
        if word in self.splits:
            first, *rest = self.splits[word]
            return [mark + first, *rest]
        stem = word[:-1]
        if len(word) > 1 and word.endswith("s") and (mark + stem in self.id_of
                                                      or stem in self.splits):
            return self._pieces(stem, space) + ["s"]        # a plural: the stem, then "s"
        return [mark + word[0], *word[1:]]           # characters, the first marked

    def encode(self, text: str) -> list:
        """The token strings of ``text`` (a space before a token becomes ``"Ġ"``)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        if WORD_START in text:
            raise ValueError(f"text contains {WORD_START!r} at character "
                             f"{text.index(WORD_START)}: the tokenizer reserves it for the "
                             f"word-start marker")
        pieces, end = [], 0
        for m in _PRETOKEN.finditer(text):
            if m.start() != end:       # only other whitespace (tabs, newlines, double spaces)
                pieces += list(text[end:m.start()])
            s = m.group()
            space = s.startswith(" ")
            pieces += self._pieces(s[1:] if space else s, space)
            end = m.end()
        pieces += list(text[end:])
        return pieces

    def ids(self, pieces: Sequence[str]) -> list:
        """Vocabulary ids of token strings (``<unk>`` for those not in the vocabulary)."""
        unk = self.id_of[UNK]
        return [self.id_of.get(p, unk) for p in pieces]

    def decode(self, pieces: Sequence[str]) -> str:
        """The text of token strings (the inverse of :meth:`encode`)."""
        return "".join(" " + p[1:] if p.startswith(WORD_START) else p for p in pieces)


@functools.lru_cache(maxsize=1)
def build_tokenizer() -> Tokenizer:
    """The example's tokenizer: every word of the grammar, with and without the word-start
    marker and capitalised, the subword pieces, digits, punctuation and single letters."""
    words = {"the", "a", "an", "every", "this", "that", "some", "these", "many", "no", "not",
             "never", "if", "then", "is", "are", "was", "were", "do", "does", "did", "says", "said",
             *COLOURS, *SIZES, *ANIMALS, *OBJECTS, *PLURALS.values(), *NAMES,
             *(v for verb in TRANSITIVE + INTRANSITIVE for v in verb)}
    words -= set(SPLITS)
    vocab = [PAD, UNK]
    for w in sorted(words):
        for form in (w, w[:1].upper() + w[1:]):
            vocab += [form, WORD_START + form]
    for first, *rest in SPLITS.values():
        for form in (first, first[:1].upper() + first[1:]):
            vocab += [form, WORD_START + form]
        vocab += rest
    chars = [chr(c) for c in range(33, 127)]          # printable ASCII, space excluded
    vocab += [WORD_START + c for c in chars] + chars + ["s", " "]
    seen = set()
    return Tokenizer([t for t in vocab if not (t in seen or seen.add(t))], SPLITS)


def encode_documents(tokenizer: Tokenizer, documents: Sequence[str], n_ctx: int):
    """Token strings and ids of each document, cut to its first ``n_ctx`` tokens.

    Returns:
        (pieces, ids): two lists of lists.
    """
    pieces = [tokenizer.encode(d)[:n_ctx] for d in documents]
    return pieces, [tokenizer.ids(p) for p in pieces]


# ------------------------------------------------------------------------------ the models

@dataclass(frozen=True)
class LMConfig:
    """Sizes and training settings of the example's language model and SAE.

    The defaults train both in about two minutes on two CPU cores.

    Attributes:
        n_layers, d_model, n_heads, d_mlp, n_ctx: the transformer (``d_mlp`` MLP neurons per
            layer; documents are cut to ``n_ctx`` tokens).
        train_documents: documents of the training corpus (a fresh grammar sample).
        steps, batch_size, learning_rate: LM training (AdamW, cosine decay).
        sae_features, sae_steps, sae_l1, sae_learning_rate: the SAE on ``RESIDUAL_LAYER``.
        seed: seeds the corpus, the initialisation and the batches.

    Examples:
        >>> LMConfig().key() == LMConfig().key(), LMConfig().key() == LMConfig(steps=5).key()
        (True, False)
        >>> LMConfig(d_model=30, n_heads=4)
        Traceback (most recent call last):
        ...
        ValueError: d_model (30) must be a multiple of n_heads (4)
    """
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    n_ctx: int = 64
    train_documents: int = 10000
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    sae_features: int = 512
    sae_steps: int = 1500
    sae_l1: float = 1.0
    sae_learning_rate: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "train_documents",
                     "steps", "batch_size", "sae_features", "sae_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads "
                             f"({self.n_heads})")
        if self.n_layers < 2:
            raise ValueError(f"n_layers must be >= 2 (the example probes {MLP_LAYER}), got "
                             f"{self.n_layers}")
        for name in ("learning_rate", "sae_l1", "sae_learning_rate"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def key(self) -> str:
        """Cache key of the trained weights: everything that changes them."""
        text = json.dumps({**asdict(self), "version": _MODEL_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_MODEL_VERSION = 2      # bumped whenever the grammar or the tokenizer changes


@functools.lru_cache(maxsize=1)
def _modules():
    """The torch module classes (defined on first use, so that torch loads only when needed)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Attention(nn.Module):
        def __init__(self, d_model: int, n_heads: int):
            super().__init__()
            self.n_heads = n_heads
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.out = nn.Linear(d_model, d_model)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads) \
                .permute(2, 0, 3, 1, 4)
            # Causal attention; right padding never reaches a valid token (it comes after).
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(b, t, d))

    class MLP(nn.Module):
        def __init__(self, d_model: int, d_mlp: int):
            super().__init__()
            self.fc_in = nn.Linear(d_model, d_mlp)
            self.act = nn.GELU()          # its output: the MLP neurons (hook "blocks.i.mlp.act")
            self.fc_out = nn.Linear(d_mlp, d_model)

        def forward(self, x):
            return self.fc_out(self.act(self.fc_in(x)))

    class Block(nn.Module):
        def __init__(self, config: LMConfig):
            super().__init__()
            self.ln1 = nn.LayerNorm(config.d_model)
            self.attn = Attention(config.d_model, config.n_heads)
            self.ln2 = nn.LayerNorm(config.d_model)
            self.mlp = MLP(config.d_model, config.d_mlp)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))      # the residual stream after this block

    class TinyLM(nn.Module):
        """Token ids ``[batch, tokens]`` -> next-token logits ``[batch, tokens, vocab]``."""

        def __init__(self, config: LMConfig, vocab_size: int):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, config.d_model)
            self.pos_embed = nn.Embedding(config.n_ctx, config.d_model)
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
            self.ln_final = nn.LayerNorm(config.d_model)
            self.unembed = nn.Linear(config.d_model, vocab_size)
            self.n_ctx = config.n_ctx

        def forward(self, ids):
            if ids.shape[1] > self.n_ctx:
                raise ValueError(f"the model reads at most {self.n_ctx} tokens, got "
                                 f"{ids.shape[1]}")
            x = self.embed(ids) + self.pos_embed(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.unembed(self.ln_final(x))

    class SparseAutoencoder(nn.Module):
        """``encode``: ``[n, d_in]`` -> features ``[n, F]`` (ReLU); ``decode`` back. The
        decoder's rows (one per feature) are kept at unit norm, so a feature's activation is
        the size of its contribution and the L1 penalty cannot be dodged by scaling."""

        def __init__(self, d_in: int, n_features: int):
            super().__init__()
            self.d_in = d_in
            self.W_enc = nn.Parameter(torch.empty(d_in, n_features))
            self.b_enc = nn.Parameter(torch.zeros(n_features))
            self.W_dec = nn.Parameter(torch.empty(n_features, d_in))
            self.b_dec = nn.Parameter(torch.zeros(d_in))
            # Inputs are multiplied by this before encoding (and outputs divided by it), so
            # that the L1 coefficient means the same whatever the layer's scale.
            self.register_buffer("input_scale", torch.ones(()))
            nn.init.kaiming_uniform_(self.W_dec)
            with torch.no_grad():
                self.normalize_decoder()
                self.W_enc.copy_(self.W_dec.T)

        @torch.no_grad()
        def normalize_decoder(self):
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

        def encode(self, x):
            if x.shape[-1] != self.d_in:
                raise ValueError(f"the SAE reads vectors of width {self.d_in}, got "
                                 f"{x.shape[-1]}")
            return torch.relu((x * self.input_scale - self.b_dec) @ self.W_enc + self.b_enc)

        def decode(self, f):
            return (f @ self.W_dec + self.b_dec) / self.input_scale

        def forward(self, x):
            f = self.encode(x)
            return self.decode(f), f

    return TinyLM, SparseAutoencoder


def build_lm(config: LMConfig, vocab_size: int):
    """A freshly initialised (seeded by the caller) :class:`TinyLM`.

    Examples:
        >>> import torch
        >>> lm = build_lm(LMConfig(d_model=16, n_heads=2, d_mlp=32, n_ctx=8), vocab_size=10)
        >>> lm(torch.zeros(3, 5, dtype=torch.long)).shape
        torch.Size([3, 5, 10])
    """
    require("torch", "the LM example")
    return _modules()[0](config, vocab_size)


def build_sae(d_in: int, n_features: int):
    """A freshly initialised sparse autoencoder (``.encode`` maps ``[n, d_in]`` to
    ``[n, n_features]``).

    Examples:
        >>> import torch
        >>> sae = build_sae(8, 32)
        >>> sae.encode(torch.randn(5, 8)).shape, bool((sae.encode(torch.randn(5, 8)) >= 0).all())
        (torch.Size([5, 32]), True)
    """
    require("torch", "the LM example")
    return _modules()[1](d_in, n_features)


def _padded(ids: Sequence[Sequence[int]], pad: int):
    """(ids [B, T] int64, valid [B, T] bool) of token-id lists, right-padded."""
    import torch

    t = max(len(r) for r in ids)
    out = torch.full((len(ids), t), pad, dtype=torch.long)
    for i, r in enumerate(ids):
        out[i, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out, out != pad


def train_lm(config: LMConfig, tokenizer: Tokenizer, train_ids: Sequence[Sequence[int]],
             log: Callable[[str], None] = print):
    """Train the LM on ``train_ids`` (token-id lists) by next-token cross-entropy.

    Returns:
        The model, in eval mode.
    """
    import torch
    from torch.nn import functional as F

    torch.manual_seed(config.seed)
    model = build_lm(config, len(tokenizer))
    pad = tokenizer.id_of[PAD]
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.learning_rate,
                                                total_steps=config.steps, pct_start=0.1)
    gen = np.random.default_rng(config.seed)
    model.train()
    t0 = time.perf_counter()
    for step in range(config.steps):
        batch = gen.integers(len(train_ids), size=config.batch_size)
        ids, valid = _padded([train_ids[i] for i in batch], pad)
        logits = model(ids[:, :-1])
        target = ids[:, 1:].masked_fill(~valid[:, 1:], -100)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                               ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, config.steps // 5) == 0:
            log(f"  LM step {step + 1}/{config.steps}: loss {loss.item():.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return model


@dataclass
class LMEvaluation:
    """Next-token prediction on held-out documents: the LM against n-gram baselines fitted on
    the training corpus (cross-entropy in nats per predicted token; accuracy of the top
    guess)."""
    tokens: int
    loss: float
    accuracy: float
    unigram_loss: float
    unigram_accuracy: float
    bigram_loss: float
    bigram_accuracy: float


def evaluate_lm(model, tokenizer: Tokenizer, train_ids: Sequence[Sequence[int]],
                test_ids: Sequence[Sequence[int]], batch_size: int = 256) -> LMEvaluation:
    """The LM's held-out loss and accuracy, and those of add-one unigram and bigram models
    counted on ``train_ids``."""
    import torch
    from torch.nn import functional as F

    v = len(tokenizer)
    uni = np.ones(v)
    bi = np.ones((v, v))
    for r in train_ids:
        np.add.at(uni, r, 1)
        np.add.at(bi, (r[:-1], r[1:]), 1)
    log_uni = np.log(uni / uni.sum())
    log_bi = np.log(bi / bi.sum(axis=1, keepdims=True))
    prev = np.concatenate([r[:-1] for r in test_ids if len(r) > 1])
    nxt = np.concatenate([r[1:] for r in test_ids if len(r) > 1])
    pad = tokenizer.id_of[PAD]
    total = correct = 0.0
    with torch.no_grad():
        for s in range(0, len(test_ids), batch_size):
            ids, valid = _padded(test_ids[s:s + batch_size], pad)
            logits = model(ids[:, :-1])
            keep = valid[:, 1:]
            total += float(F.cross_entropy(logits[keep], ids[:, 1:][keep], reduction="sum"))
            correct += float((logits[keep].argmax(-1) == ids[:, 1:][keep]).sum())
    n = nxt.size
    return LMEvaluation(tokens=int(n), loss=total / n, accuracy=correct / n,
                        unigram_loss=float(-log_uni[nxt].mean()),
                        unigram_accuracy=float((nxt == uni.argmax()).mean()),
                        bigram_loss=float(-log_bi[prev, nxt].mean()),
                        bigram_accuracy=float((bi[prev].argmax(1) == nxt).mean()))


def residual_activations(model, ids: Sequence[Sequence[int]], layer: str, pad: int,
                         batch_size: int = 256) -> np.ndarray:
    """The output of module ``layer`` at every valid (non-padding) token, in document order:
    float32 ``[N_tokens, width]``. (The demo's extraction goes through
    :mod:`compexp_core.lm.extract`; this is the SAE's training data.)"""
    import torch

    module = model.get_submodule(layer)
    out = []

    def hook(_m, _i, o):
        out.append(o)

    handle = module.register_forward_hook(hook)
    rows = []
    try:
        with torch.no_grad():
            for s in range(0, len(ids), batch_size):
                batch, valid = _padded(ids[s:s + batch_size], pad)
                out.clear()
                model(batch)
                rows.append(out[0][valid].float().numpy())
    finally:
        handle.remove()
    return np.concatenate(rows)


def train_sae(config: LMConfig, acts: np.ndarray, log: Callable[[str], None] = print):
    """Train the SAE on ``acts`` ``[n, d]`` (minimise squared error + ``sae_l1`` x the L1 norm
    of the features, decoder rows renormalised after each step).

    Returns:
        The SAE, in eval mode.
    """
    import torch

    torch.manual_seed(config.seed + 1)
    x = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))
    sae = build_sae(x.shape[1], config.sae_features)
    with torch.no_grad():
        # Scaled inputs have a mean squared norm of d_in (about 1 per dimension).
        sae.input_scale.fill_((x.shape[1] / float(x.pow(2).sum(1).mean())) ** 0.5)
        sae.b_dec.copy_(x.median(dim=0).values * sae.input_scale)
    opt = torch.optim.Adam(sae.parameters(), lr=config.sae_learning_rate)
    gen = torch.Generator().manual_seed(config.seed + 1)
    batch = 1024
    sae.train()
    t0 = time.perf_counter()
    for step in range(config.sae_steps):
        xb = x[torch.randint(x.shape[0], (batch,), generator=gen)]
        recon, f = sae(xb)
        mse = ((recon - xb) * sae.input_scale).pow(2).sum(-1).mean()
        l1 = f.sum(-1).mean()
        loss = mse + config.sae_l1 * l1
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize_decoder()
        if (step + 1) % max(1, config.sae_steps // 4) == 0:
            log(f"  SAE step {step + 1}/{config.sae_steps}: squared error {mse.item():.3f}, "
                f"L0 {float((f > 0).float().sum(-1).mean()):.1f} "
                f"({time.perf_counter() - t0:.0f} s)")
    sae.eval()
    return sae


def sae_quality(sae, acts: np.ndarray) -> dict:
    """How well ``sae`` reconstructs ``acts`` ``[n, d]``: ``variance_explained`` (1 - squared
    error / total variance), ``l0`` (mean active features per token), ``dead_fraction``
    (features active on no row)."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))
        recon, f = sae(x)
        err = float((recon - x).pow(2).sum())
        var = float((x - x.mean(0)).pow(2).sum())
        active = f > 0
    return {"variance_explained": 1.0 - err / var, "l0": float(active.sum(1).float().mean()),
            "dead_fraction": float((~active.any(0)).float().mean())}


# ------------------------------------------------------------------------------ the cache

@contextmanager
def _torch_threads(n: int):
    """Run torch on ``n`` threads: the example's matrices are so small that more threads
    mostly wait for each other (10x slower measured on a busy 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)



@dataclass
class TrainedLM:
    """The trained LM, its SAE, the tokenizer and what training measured."""
    model: object
    sae: object
    tokenizer: Tokenizer
    config: LMConfig
    evaluation: LMEvaluation
    sae_quality: dict
    cached: bool


def _corpora(config: LMConfig, tokenizer: Tokenizer):
    train_docs = generate_documents(config.train_documents, seed=config.seed + 10)
    test_docs = generate_documents(max(100, config.train_documents // 10), seed=config.seed + 11)
    return (encode_documents(tokenizer, train_docs, config.n_ctx)[1],
            encode_documents(tokenizer, test_docs, config.n_ctx)[1])


def cache_path(config: LMConfig) -> str:
    """The file :func:`load_or_train` caches ``config``'s LM and SAE in (in
    :func:`compexp_core.demo.cache_dir`).

    Examples:
        >>> cache_path(LMConfig()).endswith(f"demo-lm-{LMConfig().key()}.pt")
        True
    """
    from ..demo import cache_dir

    return os.path.join(cache_dir(), f"demo-lm-{config.key()}.pt")


def load_or_train(config: LMConfig = LMConfig(), *, retrain: bool = False,
                  log: Callable[[str], None] = print) -> TrainedLM:
    """The trained LM and SAE: from the cache (:func:`compexp_core.demo.cache_dir`) when
    there, else trained on a fresh grammar corpus and cached.

    A cached file that cannot be loaded (truncated, garbage, other sizes) is not fatal:
    ``log`` says why and both are trained again; the file is written atomically.

    Args:
        config: an :class:`LMConfig`.
        retrain: train even when a cached file exists.
        log: where progress lines go.

    Returns:
        A :class:`TrainedLM` (models in eval mode).
    """
    torch = require("torch", "the LM example")
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
    tokenizer = build_tokenizer()
    path = cache_path(config)
    if not retrain and os.path.exists(path):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = build_lm(config, len(tokenizer))
            model.load_state_dict(state["lm"])
            sae = build_sae(config.d_model, config.sae_features)
            sae.load_state_dict(state["sae"])
            evaluation = LMEvaluation(**state["evaluation"])
            quality = dict(state["sae_quality"])
            model.eval()
            sae.eval()
            log(f"loaded the trained LM and SAE from {path}")
            return TrainedLM(model, sae, tokenizer, config, evaluation, quality, True)
        except Exception as err:   # noqa: BLE001 - any unreadable cache means: train again
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            log(f"the cached weights {path} are unreadable ({type(err).__name__}"
                f"{': ' + reason[:200] if reason else ''}); training again and replacing "
                f"the file")
    with _torch_threads(1):
        return _train_and_cache(config, tokenizer, path, log)


def _train_and_cache(config: LMConfig, tokenizer: Tokenizer, path: str, log) -> TrainedLM:
    import torch

    from ..demo import _save_atomically

    train_ids, test_ids = _corpora(config, tokenizer)
    log(f"training the LM ({config.n_layers} layers, d_model {config.d_model}, "
        f"{config.d_mlp} MLP neurons per layer) on {sum(map(len, train_ids))} tokens of "
        f"{len(train_ids)} grammar documents ({config.steps} steps, CPU)")
    model = train_lm(config, tokenizer, train_ids, log=log)
    evaluation = evaluate_lm(model, tokenizer, train_ids, test_ids)
    resid = residual_activations(model, train_ids[:max(1, len(train_ids) // 2)], RESIDUAL_LAYER,
                                 tokenizer.id_of[PAD])
    log(f"training the SAE ({config.sae_features} features) on the residual stream after "
        f"{RESIDUAL_LAYER} at {resid.shape[0]} tokens ({config.sae_steps} steps)")
    sae = train_sae(config, resid, log=log)
    quality = sae_quality(sae, residual_activations(model, test_ids, RESIDUAL_LAYER,
                                                    tokenizer.id_of[PAD]))
    state = {"lm": model.state_dict(), "sae": sae.state_dict(),
             "evaluation": asdict(evaluation), "sae_quality": quality}
    try:
        _save_atomically(torch, state, path)
    except OSError as err:
        log(f"could not cache the weights in {path} ({err}); they will be trained again next "
            f"time")
    else:
        log(f"cached the LM and SAE in {path}")
    return TrainedLM(model, sae, tokenizer, config, evaluation, quality, False)
