"""The report of units explained on tokens (language-model neurons, SAE features):
:func:`write_token_report`.

Token-level activations are ``[N_tokens, U]``, one cell per token, and each row is described by
a :class:`~compexp_core.io.tokens.TokenTable` (document, position, id, text). The folder it
writes is that of the other reports::

    out_dir/index.html              the page: summary, legend, plots, sort/filter controls, cards
    out_dir/img/iou_hist.png        histogram of the units' IoUs
    out_dir/img/iou_by_length.png   mean IoU against the maximum formula length

Each card shows the unit's formula, its IoU, the best single concept and its IoU, the threshold
and how many tokens the unit fires on, how many tokens the formula holds on, and the unit's top
activating contexts: the ``top_contexts`` tokens with the highest activation (ties in row
order), each with up to ``window`` tokens either side from its own document. In a context, the
top token itself is outlined, the tokens where the unit fires (activation above its threshold:
the cells the search scored) are filled orange, and the tokens where the formula holds (its
mask, evaluated by the engine over all concepts, not guessed from the concepts' names) are
underlined in cyan: the colours of the images report's masks. A token's activation is its
tooltip.

Token text is shown as the tokenizer spells it, made readable: the word-start markers ``Ġ``
(byte-level BPE) and ``▁`` (SentencePiece) become spaces, line breaks ``Ċ`` / ``\\n`` become
``↵``. Tokens are joined as they are when the table's tokens carry their spaces (a subword
tokenizer), and with a space between them when none does (a table of words).

Filtering: a card's categories are its formula's concepts' categories from the
:class:`~compexp_core.ConceptSet`, or, for a concept without one, the family in its name
(:func:`token_categories`: ``tok``, ``word``, ``prev:tok``, ``is``, ``pos`` ...). Sorting,
filtering, the address state and ``data-ready`` are those of every report's page
(:mod:`compexp_core.report`).

Size and memory: activations are read a batch of units at a time (all tokens of a few units,
at most 256 MB, read 64 MB at a time), so a file with millions of tokens and thousands of units
is never read whole; a file chunked by units (``layout="units"``) reads fastest. A card holds
about 5 kB of HTML with the defaults. Measured on this project's shared 2-core machine: 256
units over 1,000,000 tokens (an activations file in the default layout, its token table read
from it) in 24 s, a page of 1.4 MB.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

from ..engine.driver import materialize_formulas
from ..inputs import activations_input
from ..io.tokens import TokenTable, read_tokens
from .build import formula_categories
from .inputs import (as_concepts, as_result, check_units, file_attr, input_label, is_path,
                     length_means, provenance, recorded_path, select_units)
from .page import (_e, card_shell, facts_list, formula_text, metric_label, page, summary_line,
                   unit_facts, write_html)
from .plots import report_plots

__all__ = ["write_token_report", "token_categories", "display_token"]

PathLike = Union[str, "os.PathLike[str]"]

_BATCH_BYTES = 256 << 20        # activations held at once: all tokens of a batch of units
_READ_BYTES = 64 << 20          # activations read at once: a block of rows of those units
_SPACE_MARKERS = ("Ġ", "▁")     # word-start markers: byte-level BPE, SentencePiece
_DISPLAY = str.maketrans({"Ġ": " ", "▁": " ", "Ċ": "↵", "\n": "↵", "\r": "↵", "ĉ": "⇥",
                          "\t": "⇥"})


def write_token_report(result, out_dir: PathLike, *, tokens=None, acts=None, concepts=None,
                       top_contexts: int = 8, window: int = 5,
                       units: Optional[Sequence[int]] = None, title: Optional[str] = None,
                       lengths=None, progress: bool = False,
                       links: Sequence[tuple[str, str]] = ()) -> str:
    """Write an HTML report of units explained on tokens: one card per unit (see the module's
    documentation for what a card shows).

    Args:
        result: a :class:`~compexp_core.SearchResult` or the path of a results file.
        out_dir: the folder to write (created if needed): ``index.html`` and ``img/*.png``.
        tokens: the :class:`~compexp_core.io.tokens.TokenTable` of the activations' rows, or
            the path of a file with a ``tokens`` group; default: the ``tokens`` group of the
            activations file.
        acts: the activations the search used, ``[N_tokens, U]``: a path, array, tensor or
            h5py dataset; default: the activations file the result records.
        concepts: the :class:`~compexp_core.ConceptSet` the search used (grid 1 x 1), or its
            path; default: the concepts file the result records.
        top_contexts: top activating tokens shown per unit (>= 0).
        window: tokens shown on each side of a top token, within its document (>= 0).
        units: the units (activation indices) to report, all in the result (default: every
            unit of ``result``).
        title: the page title (default: "Compositional explanations of token units", with the
            layer when the activations file records it).
        lengths: the result whose per-length IoUs make the mean-IoU-against-length plot
            (default: ``result``).
        progress: show a progress bar over the units.
        links: (href, text) of other pages to link from the page (such as an index of layers).

    Returns:
        The absolute path of ``index.html``.

    Raises:
        ValueError: (before anything is written) the token table, activations and concepts
            disagree on N; no token table is given and the activations file has none; a unit
            out of range or not in the result; NaN activations; a formula names a concept
            missing from the concepts; concepts not on a 1 x 1 grid; the result records no
            activations or concepts file when none is given.
        TypeError: an argument of the wrong kind.
        FileNotFoundError: an input path does not exist.

    Examples:
        >>> import pathlib, tempfile
        >>> import numpy as np, compexp_core as cx
        >>> from compexp_core.io.tokens import TokenTable
        >>> tokens = TokenTable.from_documents([["The", " cat", " sat"], ["A", " dog", " ran"]])
        >>> masks = np.array([[0, 1], [1, 0], [0, 0], [0, 1], [0, 0], [0, 0]], bool)
        >>> concepts = cx.ConceptSet.from_dense(masks, names=["tok: cat", "is:start"])
        >>> acts = masks[:, :1].astype(np.float32)              # a unit firing on " cat"
        >>> result = cx.search_formulas(acts, concepts, threshold=0.5, max_length=2)
        >>> path = write_token_report(result, tempfile.mkdtemp(), tokens=tokens, acts=acts,
        ...                           concepts=concepts, top_contexts=1, window=1)
        >>> text = pathlib.Path(path).read_text(encoding="utf-8")
        >>> '<span class="tok u f top" title="1"> cat</span>' in text
        True
    """
    source_label = os.fspath(result) if is_path(result) else "the result"
    result = as_result(result, "result")
    if acts is None:
        acts = recorded_path(result, "acts", source_label, "pass acts=")
    if concepts is None:
        concepts = recorded_path(result, "concepts", source_label, "pass concepts=")
    labels = {"acts": input_label(acts, "acts"), "concepts": input_label(concepts, "concepts")}
    explicit_lengths = lengths is not None
    lengths = result if lengths is None else as_result(lengths, "lengths")
    top_contexts = _count(top_contexts, "top_contexts")
    window = _count(window, "window")
    concepts = as_concepts(concepts)
    if concepts.grid != (1, 1):
        raise ValueError(f"{labels['concepts']} has a {concepts.grid} grid per sample; a token "
                         f"report needs one cell per token (grid (1, 1))")
    units = select_units(result, units)
    if tokens is not None and not isinstance(tokens, TokenTable) and not is_path(tokens):
        raise TypeError(f"tokens must be a TokenTable or the path of a file with a tokens "
                        f"group, got {type(tokens).__name__}")

    opened = is_path(acts)
    source = activations_input(acts)
    try:
        n, n_units = _check_acts(source, labels["acts"])
        tokens = _token_table(tokens, acts, source, labels["acts"])
        if len(tokens) != n:
            raise ValueError(f"the token table has {len(tokens)} tokens but {labels['acts']} "
                             f"has N={n} rows: they must describe the same tokens, in order")
        if concepts.n_samples != n:
            raise ValueError(f"{labels['acts']} has N={n} tokens but {labels['concepts']} has "
                             f"N={concepts.n_samples}: they must describe the same tokens")
        explanations = [result.by_unit(u) for u in units]
        check_units(units, explanations, n_units, concepts, labels)
        means = length_means(lengths, explicit_lengths)
        layer = file_attr(source, "layer")
        origin = provenance(source)
        metric = metric_label(result.params)
        kinds = token_categories(concepts)
        # Everything that can be checked up front is: compute the cards, then write.
        cards, category_set = _cards(source, tokens, concepts, units, explanations, kinds,
                                     metric, top_contexts, window, labels["acts"], progress)
    finally:
        if opened:
            source.file.close()

    out_dir = os.fspath(out_dir)
    img_dir = os.path.join(out_dir, "img")
    os.makedirs(img_dir, exist_ok=True)
    ious = np.array([e.iou for e in explanations])
    plots = report_plots(ious, means, metric, img_dir, n_length_units=len(lengths),
                         same_result=lengths is result)
    subtitle = [summary_line(explanations, metric, result.params),
                f"{n} tokens in {int(np.unique(tokens.doc).size)} documents. Contexts: the "
                f"{top_contexts} tokens with the highest activation of each unit, each with up "
                f"to {window} tokens either side in its document (caption: document, position "
                f"and activation of the top token)."]
    if origin:
        subtitle.insert(0, origin)
    if title is None:
        title = "Compositional explanations of token units" + (f" of {layer}" if layer else "")
    order = sorted(range(len(units)), key=lambda i: (-explanations[i].iou, units[i]))
    text = page(title, subtitle, plots, sorted(category_set), [cards[i] for i in order],
                len(units), legend="legend_tokens.html", extra_css="tokens.css", links=links)
    index = os.path.join(out_dir, "index.html")
    write_html(index, text)
    return os.path.abspath(index)


def token_categories(concepts) -> dict[str, str]:
    """Each concept's category: its own, else the family in its name: the first field
    (``tok:the`` -> ``tok``, ``is:digit`` -> ``is``), or the first two after ``prev`` /
    ``next`` (``prev:tok:if`` -> ``prev:tok``); none ("") for a name without ``:``.

    Args:
        concepts: a :class:`~compexp_core.ConceptSet` (its names and categories).

    Returns:
        concept name -> category.

    Examples:
        >>> import numpy as np, compexp_core as cx
        >>> cs = cx.ConceptSet.from_dense(np.ones((2, 4), bool),
        ...                               names=["tok::", "prev:tok:if", "dog", "word:a"],
        ...                               categories=["", "", "", "lexical"])
        >>> token_categories(cs)
        {'tok::': 'tok', 'prev:tok:if': 'prev:tok', 'dog': '', 'word:a': 'lexical'}
    """
    out = {}
    for name, category in zip(concepts.names, concepts.categories):
        if not category:
            fields = name.split(":")
            if len(fields) >= 3 and fields[0] in ("prev", "next"):
                category = ":".join(fields[:2])
            elif len(fields) >= 2:
                category = fields[0]
        out[name] = category
    return out


def display_token(text: str) -> str:
    """A token as the page shows it, HTML-escaped: word-start markers ``Ġ`` / ``▁`` as spaces,
    line breaks as ``↵``, tabs as ``⇥``.

    Args:
        text: the token as the tokenizer spells it.

    Returns:
        Escaped HTML text.

    Examples:
        >>> [display_token(t) for t in ("Ġthe", "▁<b>", 'a&"b', "Ċ")]
        [' the', ' &lt;b&gt;', 'a&amp;&quot;b', '↵']
    """
    return _e(text.translate(_DISPLAY))


# ------------------------------------------------------------------------------ checks

def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_acts(source, label: str) -> tuple[int, int]:
    """(N, U) of token activations, which must be a non-empty numeric ``[N_tokens, U]``."""
    if len(source.shape) != 2:
        raise ValueError(f"{label} must be [N_tokens, U] (one activation per token), got shape "
                         f"{tuple(source.shape)}")
    if np.dtype(source.dtype).kind not in "biuf":
        raise TypeError(f"{label} must hold numbers, got dtype {source.dtype}")
    n, u = (int(s) for s in source.shape)
    if n == 0 or u == 0:
        raise ValueError(f"{label} is empty (shape {(n, u)})")
    return n, u


def _token_table(tokens, acts, source, label: str) -> TokenTable:
    """The token table given, read from the file given, or read from the activations' file."""
    if isinstance(tokens, TokenTable):
        return tokens
    if tokens is not None:
        path = os.fspath(tokens)
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokens file does not exist: {path}")
        table = read_tokens(path)
        if table is None:
            raise ValueError(f"tokens '{path}' has no tokens group (a token table): give the "
                             f"activations file of a token-level extraction, or a TokenTable")
        return table
    table = None
    if is_path(acts):
        table = read_tokens(acts)
    elif getattr(source, "file", None) is not None:
        table = read_tokens(source.file)
    if table is None:
        raise ValueError(f"{label} has no tokens group: pass tokens= (a TokenTable, or a file "
                         f"with a tokens group) to say which token each row is")
    return table


# ------------------------------------------------------------------------------ computing

def _column_batches(source, units: Sequence[int], n: int):
    """Yield (positions in ``units``, values ``[b, N]``): all tokens' activations of a batch
    of units (about ``_BATCH_BYTES``), read a block of rows at a time (about ``_READ_BYTES``),
    each unit's values contiguous."""
    itemsize = np.dtype(source.dtype).itemsize
    per_batch = max(1, _BATCH_BYTES // (n * itemsize))
    ids = np.asarray(units, np.int64)
    order = np.argsort(ids, kind="stable")
    for start in range(0, order.size, per_batch):
        pos = order[start:start + per_batch]
        cols = ids[pos]
        lo, hi = int(cols.min()), int(cols.max()) + 1
        step = max(1, _READ_BYTES // ((hi - lo) * itemsize))
        values = np.empty((pos.size, n), source.dtype)
        for s in range(0, n, step):
            block = np.asarray(source[s:s + step, lo:hi])
            values[:, s:s + block.shape[0]] = block[:, cols - lo].T
        yield pos, values


def _top_rows(column: np.ndarray, k: int) -> np.ndarray:
    """The rows of the ``k`` highest values, highest first, ties in row order (as
    :func:`compexp_core.analysis.top_activating_samples` orders them), in O(N)."""
    n = column.size
    k = min(k, n)
    if k == 0:
        return np.zeros(0, np.int64)
    kth = np.partition(column, n - k)[n - k]
    candidates = np.flatnonzero(column >= kth)
    ranked = candidates[np.lexsort((candidates, -column[candidates].astype(np.float64)))]
    return ranked[:k].astype(np.int64)


def _cards(source, tokens: TokenTable, concepts, units, explanations, kinds, metric: str,
           top_contexts: int, window: int, label: str, progress: bool):
    """Each unit's card (in the order of ``units``) and the categories of all formulas."""
    n = len(tokens)
    spaced = any(t[:1] in _SPACE_MARKERS or t[:1].isspace() for t in tokens.text)
    cards: list[str] = [""] * len(units)
    category_set: set[str] = set()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(units), desc="report", unit="unit")
    for pos, values in _column_batches(source, units, n):
        with_formula = [int(p) for p in pos if explanations[p].formula is not None]
        masks = materialize_formulas(concepts, [explanations[p].formula for p in with_formula])
        holds = {p: masks.cells(j) for j, p in enumerate(with_formula)}   # sorted token rows
        for j, p in enumerate(pos):
            p = int(p)
            e, u = explanations[p], units[p]
            column = values[j]
            if column.dtype.kind == "f":
                nan = np.isnan(column)
                if nan.any():
                    raise ValueError(f"{label} has NaN activations ({int(nan.sum())} of unit "
                                     f"{u}), first at token row {int(np.argmax(nan))}")
            # The search's unit mask: boolean activations as they are, others compared in
            # float64 with the threshold.
            if column.dtype == bool:
                fires, column = column, column.astype(np.float32)
            elif e.threshold is None:
                fires = column != 0
            else:
                fires = column.astype(np.float64) > e.threshold
            categories = formula_categories(e.formula, kinds)
            category_set.update(categories)
            cards[p] = _card(e, categories, metric, column, fires, holds.get(p),
                             _top_rows(column, top_contexts), tokens, window, spaced)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return cards, category_set


# ------------------------------------------------------------------------------ HTML

def _context(row: int, column: np.ndarray, fires: np.ndarray, holds: Optional[np.ndarray],
             tokens: TokenTable, window: int, spaced: bool) -> str:
    """One top activating token ``row`` in its context, as an ``<li>``."""
    doc = tokens.doc
    lo = int(np.searchsorted(doc, doc[row], side="left"))
    hi = int(np.searchsorted(doc, doc[row], side="right"))
    a, b = max(lo, row - window), min(hi, row + window + 1)
    rows = np.arange(a, b)
    in_formula = (np.zeros(rows.size, bool) if holds is None
                  else np.isin(rows, holds, assume_unique=True))
    parts = ['<span class="more">\u2026</span>'] if a > lo else []
    for r, f in zip(rows.tolist(), in_formula.tolist()):
        classes = "tok" + (" u" if fires[r] else "") + (" f" if f else "") + \
            (" top" if r == row else "")
        parts.append(f'<span class="{classes}" title="{column[r]:.3g}">'
                     f'{display_token(tokens.text[r])}</span>')
    if b < hi:
        parts.append('<span class="more">\u2026</span>')
    line = ("" if spaced else " ").join(parts)
    return (f'<li data-row="{row}"><p class="ctx">{line}</p><p class="meta">doc '
            f'{int(doc[row])} \u00b7 position {int(tokens.position[row])} \u00b7 '
            f'{column[row]:.3g}</p></li>')


def _card(e, categories, metric: str, column: np.ndarray, fires: np.ndarray,
          holds: Optional[np.ndarray], top: np.ndarray, tokens: TokenTable, window: int,
          spaced: bool) -> str:
    """The card of explanation ``e`` of a unit whose activations are ``column`` [N]."""
    n = column.size
    facts = unit_facts(e, categories, metric,
                       fires=f" (fires on {int(np.count_nonzero(fires))} of {n} tokens)")
    if holds is not None:
        facts.append(("formula holds on", f"{holds.size} of {n} tokens"))
    body = [f'<p class="formula">{formula_text(e)}</p>', facts_list(facts)]
    if top.size:
        body.append(f'<h3>Top {top.size} activating tokens</h3><ol class="contexts">' +
                    "".join(_context(int(r), column, fires, holds, tokens, window, spaced)
                            for r in top) + "</ol>")
    return card_shell(e, categories, metric, "".join(body))
