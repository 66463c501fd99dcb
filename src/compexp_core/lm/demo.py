"""The built-in LM example: explain the MLP neurons of a small transformer and the features of
a sparse autoencoder on its residual stream, token by token.

``compexp demo lm`` needs no data and no download:

1. generate text from the procedural grammar of :mod:`compexp_core.lm.model` and train a
   2-layer transformer LM on it on the CPU, then an SAE on the residual stream after its
   first block (both cached after the first run); report the LM's held-out next-token loss
   and accuracy against unigram and bigram models;
2. generate fresh probe documents and extract, token by token
   (:func:`compexp_core.lm.extract.extract_token_activations`), the MLP neurons of the second
   block (post-GELU, ``blocks.1.mlp.act``) and the SAE's features;
3. build the token concepts (:func:`compexp_core.text.token_concepts`: ``tok:``, ``word:``,
   ``prev:tok:``, ``next:tok:``, character classes, position buckets, and ``tag:`` when the
   tagger is installed);
4. search formulas at length 3 (beam 5). A neuron fires on the ``neuron_quantile`` (2%) of
   tokens where it is most active (about the share of one mid-frequency token of this
   vocabulary); an SAE feature fires wherever it is active (> 0), its own sparse code;
5. report how many units beat their best single concept, examples, and the mean IoU by
   maximum length 1..3; write the results and the token report.

The findings are the trained model's own; nothing is tuned to make them look good.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from .._optional import require
from .model import MLP_LAYER, PAD, RESIDUAL_LAYER, LMConfig, _torch_threads

__all__ = ["LMDemoConfig", "LMDemoSummary", "UnitFamilySummary", "run_lm_demo",
           "beats_best_single", "clearly_beats_best_single"]


@dataclass(frozen=True)
class LMDemoConfig:
    """Settings of the LM example. The defaults take a few minutes on 2 cores;
    :meth:`quick` is a small run for tests.

    Attributes:
        model: the LM and SAE (:class:`~compexp_core.lm.model.LMConfig`).
        probe_documents: fresh grammar documents whose tokens are probed.
        max_length, beam_size: the search.
        neuron_quantile: share of tokens on which each MLP neuron fires.
        sae_threshold: an SAE feature fires where its activation is above this (0: active).
        top_tokens, top_words, neighbours: sizes of the token-concept families.
        seed: seeds the probe documents (the model has its own in ``model``).

    Examples:
        >>> LMDemoConfig().max_length, LMDemoConfig().neuron_quantile
        (3, 0.02)
        >>> LMDemoConfig.quick().probe_documents < LMDemoConfig().probe_documents
        True
        >>> LMDemoConfig(neuron_quantile=1.5)
        Traceback (most recent call last):
        ...
        ValueError: neuron_quantile must be in (0, 1), got 1.5
    """
    model: LMConfig = LMConfig()
    probe_documents: int = 1500
    max_length: int = 3
    beam_size: int = 5
    neuron_quantile: float = 0.02
    sae_threshold: float = 0.0
    top_tokens: int = 300
    top_words: int = 300
    neighbours: int = 100
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.model, LMConfig):
            raise TypeError(f"model must be an LMConfig, got {type(self.model).__name__}")
        for name in ("probe_documents", "max_length", "beam_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.neuron_quantile, (int, float))
                and 0 < self.neuron_quantile < 1):
            raise ValueError(f"neuron_quantile must be in (0, 1), got {self.neuron_quantile!r}")
        if not (isinstance(self.sae_threshold, (int, float)) and np.isfinite(self.sae_threshold)):
            raise ValueError(f"sae_threshold must be a finite number, got "
                             f"{self.sae_threshold!r}")

    @classmethod
    def quick(cls, **overrides) -> "LMDemoConfig":
        """A small run (well under a minute on 2 cores): a narrower LM, fewer steps, fewer
        probe tokens."""
        model = LMConfig(d_model=32, n_heads=4, d_mlp=64, train_documents=2000, steps=200,
                         learning_rate=1e-2, sae_features=128, sae_steps=300)
        return cls(**{"model": model, "probe_documents": 300, **overrides})


@dataclass
class UnitFamilySummary:
    """What the search found for one family of units (MLP neurons or SAE features)."""
    name: str
    layer: str
    n_units: int
    n_explained: int              # units with a formula (some concept overlaps them)
    n_beating_single: int         # formula IoU > best single concept's IoU
    n_clearly_beating: int        # at least 1.2x and 0.05 higher
    mean_iou: float               # over explained units, at max_length
    mean_iou_by_length: list      # lengths 1..max_length
    median_firing: float          # tokens a unit fires on, median over units
    examples: list                # (unit, formula, iou, best single, its iou, tokens it fires
    #                               on), the largest IoU gains over the best single concept
    results_path: str
    acts_path: str


@dataclass
class LMDemoSummary:
    """What the LM example found and where it wrote it (also ``summary.json``)."""
    out_dir: str
    report: Optional[str]         # the MLP neurons' page (it links to the SAE features' page)
    n_tokens: int
    n_concepts: int
    lm: dict                      # LMEvaluation fields
    sae: dict                     # variance_explained, l0, dead_fraction
    families: list = field(default_factory=list)     # UnitFamilySummary per family
    seconds: dict = field(default_factory=dict)


def beats_best_single(e) -> bool:
    """The explanation's formula has a higher IoU than the unit's best single concept."""
    return e.formula is not None and e.iou > e.primitive_iou


def clearly_beats_best_single(e) -> bool:
    """The formula beats the best single concept by 20% and by 0.05 IoU (the vision example's
    rule)."""
    return e.formula is not None and e.iou >= 1.2 * e.primitive_iou and \
        e.iou - e.primitive_iou >= 0.05


def _firing_counts(acts_path: str, result) -> dict:
    """unit -> tokens on which it fires (activation > its threshold, as the search had it)."""
    from ..io import load_activations

    acts = load_activations(acts_path)          # [N_tokens, U]: tens of MB at the demo's size
    return {e.unit: int((acts[:, e.unit].astype(np.float64) > e.threshold).sum())
            for e in result if e.threshold is not None}


def _family_summary(name: str, layer: str, result, paths, examples: int = 8):
    from ..analysis import mean_iou_by_length

    explained = [e for e in result if e.formula is not None]
    curve = mean_iou_by_length(result).tolist() if explained else []
    by_gain = sorted(explained, key=lambda e: (-(e.iou - e.primitive_iou), e.unit))[:examples]
    firing = _firing_counts(paths[1], result)
    return UnitFamilySummary(
        name=name, layer=layer, n_units=len(result), n_explained=len(explained),
        n_beating_single=sum(beats_best_single(e) for e in result),
        n_clearly_beating=sum(clearly_beats_best_single(e) for e in result),
        mean_iou=float(np.mean([e.iou for e in explained])) if explained else 0.0,
        mean_iou_by_length=curve,
        examples=[(e.unit, str(e.formula), round(e.iou, 4), str(e.primitive),
                   round(e.primitive_iou, 4), firing[e.unit]) for e in by_gain],
        median_firing=float(np.median(list(firing.values()))) if firing else 0.0,
        results_path=paths[0], acts_path=paths[1])


def run_lm_demo(out_dir: str = "lm-demo", config: LMDemoConfig = LMDemoConfig(), *,
                retrain: bool = False, progress: bool = True, report: bool = True,
                log: Callable[[str], None] = print) -> LMDemoSummary:
    """Run the LM example end to end and write its files into ``out_dir``.

    Files: ``mlp_acts.h5`` and ``sae_acts.h5`` (token activations with their token table),
    ``concepts.h5`` (the token concepts), ``mlp_explanations.h5`` and
    ``sae_explanations.h5`` (the results), ``summary.json`` (the headline numbers) and, with
    ``report``, ``report/mlp/index.html`` and ``report/sae/index.html`` (token unit cards).

    Args:
        out_dir: folder for the files (created if needed).
        config: an :class:`LMDemoConfig`.
        retrain: train the LM and SAE even when cached weights exist.
        progress: progress bars.
        report: write the token reports.
        log: where progress lines go.

    Returns:
        An :class:`LMDemoSummary`.

    Raises:
        TypeError: ``config`` is not an :class:`LMDemoConfig`.
        ImportError: torch is not installed.
    """
    require("torch", "the LM example (training its transformer)")
    if not isinstance(config, LMDemoConfig):
        raise TypeError(f"config must be an LMDemoConfig, got {type(config).__name__}")
    with _torch_threads(1):
        return _run(out_dir, config, retrain, progress, report, log)


def _run(out_dir, config, retrain, progress, report, log) -> LMDemoSummary:
    from ..io import save_concepts
    from ..io.tokens import TokenTable
    from ..nli.tagger import find_tagger_weights
    from ..search import search_formulas
    from ..text import token_concepts
    from .extract import extract_token_activations
    from .model import encode_documents, generate_documents, load_or_train

    seconds = {}
    os.makedirs(out_dir, exist_ok=True)
    path = {name: os.path.join(out_dir, f"{name}.h5")
            for name in ("mlp_acts", "sae_acts", "concepts", "mlp_explanations",
                         "sae_explanations")}

    t = time.perf_counter()
    trained = load_or_train(config.model, retrain=retrain, log=log)
    ev, sq = trained.evaluation, trained.sae_quality
    log(f"LM on {ev.tokens} held-out tokens: loss {ev.loss:.3f} nats, next-token accuracy "
        f"{ev.accuracy:.1%} (unigram: {ev.unigram_loss:.3f}, {ev.unigram_accuracy:.1%}; "
        f"bigram: {ev.bigram_loss:.3f}, {ev.bigram_accuracy:.1%})")
    log(f"SAE on {RESIDUAL_LAYER}: {sq['variance_explained']:.1%} of the variance explained, "
        f"{sq['l0']:.1f} of {config.model.sae_features} features active per token, "
        f"{sq['dead_fraction']:.1%} never active")
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    tokenizer = trained.tokenizer
    docs = generate_documents(config.probe_documents, seed=config.seed + 20)
    pieces, ids = encode_documents(tokenizer, docs, config.model.n_ctx)
    tokens = TokenTable.from_documents(pieces, ids)
    model_name = f"compexp demo LM ({config.model.key()})"
    dataset_name = (f"procedural grammar, {len(docs)} documents, {len(tokens)} tokens, seed "
                    f"{config.seed + 20}")
    common = dict(texts=pieces, batch_size=64, progress=progress, model_name=model_name,
                  dataset_name=dataset_name, pad_id=tokenizer.id_of[PAD])
    extract_token_activations(trained.model, ids, MLP_LAYER, path["mlp_acts"], **common)
    def sae_encoder(x):         # its name goes into the file: layer "blocks.0 -> sae_encoder"
        return trained.sae.encode(x)

    extract_token_activations(trained.model, ids, RESIDUAL_LAYER, path["sae_acts"],
                              sae=sae_encoder, **common)
    seconds["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    concepts = token_concepts(tokens, top_tokens=config.top_tokens, top_words=config.top_words,
                              neighbours=config.neighbours,
                              tags=find_tagger_weights() is not None)
    save_concepts(path["concepts"], concepts)
    seconds["concepts"] = time.perf_counter() - t
    log(f"probe: {len(tokens)} tokens of {len(docs)} fresh documents; {concepts.n_concepts} "
        f"token concepts")

    families = []
    results = {}
    t = time.perf_counter()
    for name, layer, options in (
            ("mlp", MLP_LAYER, {"quantile": config.neuron_quantile}),
            ("sae", f"{RESIDUAL_LAYER} -> sae_encoder", {"threshold": config.sae_threshold})):
        acts_path = path[f"{name}_acts"]
        result = search_formulas(acts_path, concepts, max_length=config.max_length,
                                 beam_size=config.beam_size, progress=progress, **options)
        result.params.update(acts_path=os.path.abspath(acts_path),
                             concepts_path=os.path.abspath(path["concepts"]))
        result.save(path[f"{name}_explanations"])
        results[name] = result
        families.append(_family_summary(name, layer, result,
                                        (path[f"{name}_explanations"], acts_path)))
    seconds["search"] = time.perf_counter() - t

    index = None
    if report:
        from ..report.tokens import write_token_report

        t = time.perf_counter()
        titles = {"mlp": f"MLP neurons of {MLP_LAYER}", "sae": f"SAE features on {RESIDUAL_LAYER}"}
        for name, title in titles.items():
            other = "sae" if name == "mlp" else "mlp"     # each page links to the other
            page = write_token_report(results[name], os.path.join(out_dir, "report", name),
                                      tokens=tokens, acts=path[f"{name}_acts"],
                                      concepts=concepts, title=f"compexp demo lm: {title}",
                                      progress=progress,
                                      links=[(f"../{other}/index.html", titles[other])])
            index = index or page
        seconds["report"] = time.perf_counter() - t

    summary = LMDemoSummary(out_dir=out_dir, report=index, n_tokens=len(tokens),
                            n_concepts=concepts.n_concepts, lm=asdict(ev), sae=dict(sq),
                            families=families, seconds=seconds)
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump({**asdict(summary), "config": asdict(config)}, fh, indent=1)
    _log_headline(summary, config, log)
    return summary


def _log_headline(summary: LMDemoSummary, config: LMDemoConfig, log) -> None:
    for fam in summary.families:
        what = ("MLP neurons" if fam.name == "mlp" else "SAE features")
        rule = (f"firing on the top {config.neuron_quantile:.0%} of tokens" if fam.name == "mlp"
                else f"firing where > {config.sae_threshold:g}")
        log("")
        log(f"{what} ({fam.layer}, {rule}): {fam.n_explained} of {fam.n_units} explained; "
            f"{fam.n_beating_single} beat their best single concept, "
            f"{fam.n_clearly_beating} clearly (IoU at least 1.2x and 0.05 higher); a median "
            f"unit fires on {fam.median_firing:g} of {summary.n_tokens} tokens")
        log("  mean IoU by maximum formula length: " +
            ", ".join(f"{i + 1}: {v:.3f}" for i, v in enumerate(fam.mean_iou_by_length)))
        log(f"  {'unit':>4}  {'iou':>5}  {'formula':<52} {'best single':<22} {'iou':>5} "
            f"{'fires on':>8}")
        for unit, formula, iou, single, single_iou, n in fam.examples[:5]:
            log(f"  {unit:>4}  {iou:5.3f}  {formula:<52} {single:<22} {single_iou:5.3f} "
                f"{n:>8}")
    if summary.report:
        log(f"reports: {summary.report} (MLP neurons) and "
            f"{os.path.join(os.path.dirname(os.path.dirname(summary.report)), 'sae', 'index.html')}"
            f" (SAE features)")
