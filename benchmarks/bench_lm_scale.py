"""Scale: SAE features over a million tokens, computed on the fly (issue 15, item 6).

A synthetic but realistic workload: a Zipfian token stream over a 5,000-token vocabulary, a
random residual stream (D = 256: each token's embedding, half the previous token's, noise), and
an SAE whose encoder makes sparse features, each tuned to a token, to either of two tokens, or
to a token after a given token (firing rates ~0.01-2 %, like real SAE features). Concepts are
sample-level: ``tok:X`` for the 4,000 most frequent tokens and ``prev:tok:X`` for the 1,000
most frequent (K = 5,000), built block-sparse with ConceptSetBuilder's label maps. The features
(16,384 x 1M float32 = 64 GB) are never stored: ``SAEFeatures`` computes each unit batch from
the residual stream when the search reads it; ``threshold=0`` (a feature fires where > 0).

Correctness first: on a slice (``--check-features`` features x ``--check-tokens`` tokens) the
on-the-fly source must give the search results of the materialised features, bit for bit.
Then the timed search of ``--units`` features over all tokens (default: all F).

    python benchmarks/bench_lm_scale.py                       # 16,384 features, 1M tokens
    python benchmarks/bench_lm_scale.py --units 1024          # a fraction, to extrapolate
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import compexp_core as cx                                          # noqa: E402
from compexp_core.engine.concepts import ConceptSetBuilder         # noqa: E402
from compexp_core.engine.units import SAEFeatures                  # noqa: E402


def token_stream(rng, n: int, vocab: int) -> np.ndarray:
    """Token ids of a Zipfian stream (p ~ 1 / (rank + 2.7)), rank 0 the most frequent."""
    p = 1.0 / (np.arange(vocab) + 2.7)
    return rng.choice(vocab, n, p=p / p.sum()).astype(np.int64)


def residual_stream(rng, tok: np.ndarray, d: int, embed, prev_embed) -> np.ndarray:
    """x_t = E[tok_t] + 0.5 P[tok_{t-1}] + noise, float32, built in blocks (no float64 [N, D])."""
    n = tok.size
    x = np.empty((n, d), np.float32)
    prev = np.concatenate([[0], tok[:-1]])
    step = 1 << 16
    for s in range(0, n, step):
        e = slice(s, min(n, s + step))
        x[e] = embed[tok[e]] + 0.5 * prev_embed[prev[e]]
        noise = rng.standard_normal((e.stop - s, d), dtype=np.float32)
        x[e] += noise * np.float32(0.5 / np.sqrt(d))
    x[0] -= 0.5 * prev_embed[0]                                  # the first token has no previous
    return x


def sae_encoder(rng, f: int, embed, prev_embed, n_tok_concepts: int, n_prev_concepts: int):
    """W_enc [D, F], b_enc [F]: 40 % token features, 30 % either-of-two, 30 % token-after-token."""
    d = embed.shape[1]
    W = np.empty((d, f), np.float32)
    b = np.empty(f, np.float32)
    # Tokens by log-uniform rank (3 .. 3,999): frequent and rare features alike.
    def log_uniform(lo: float, hi: int) -> np.ndarray:
        return np.minimum(hi - 1, np.exp(rng.uniform(np.log(lo), np.log(hi), f))).astype(int)

    a, a2 = log_uniform(3, n_tok_concepts), log_uniform(3, n_tok_concepts)
    c = log_uniform(1, n_prev_concepts)
    kind = np.arange(f) % 10
    for j in range(f):
        if kind[j] < 4:
            W[:, j], b[j] = embed[a[j]], -0.5
        elif kind[j] < 7:
            W[:, j], b[j] = embed[a[j]] + embed[a2[j]], -0.5
        else:
            W[:, j], b[j] = embed[a[j]] + 2.0 * prev_embed[c[j]], -1.5
    return W, b


def token_concepts(tok: np.ndarray, n_tok: int, n_prev: int, vocab: int) -> cx.ConceptSet:
    """tok:X (X < n_tok) and prev:tok:X (X < n_prev), sample-level, from two label layers."""
    n = tok.size
    names = [f"tok:{i}" for i in range(n_tok)] + [f"prev:tok:{i}" for i in range(n_prev)]
    # Label v < vocab: the token v (concept v if v < n_tok); vocab + v: previous token v.
    concept_of_label = np.full(2 * vocab, -1, np.int64)
    concept_of_label[:n_tok] = np.arange(n_tok)
    concept_of_label[vocab:vocab + n_prev] = n_tok + np.arange(n_prev)
    labels = np.empty((n, 2, 1, 1), np.int32)
    labels[:, 0, 0, 0] = tok
    labels[0, 1, 0, 0] = 2 * vocab - 1                              # no previous token
    labels[1:, 1, 0, 0] = vocab + tok[:-1]
    b = ConceptSetBuilder(n, (1, 1), names)
    step = 1 << 17
    for s in range(0, n, step):
        b.add_label_maps(labels[s:s + step], concept_of_label, sample_offset=s)
    return b.build()


def same_results(a, b) -> bool:
    return all((str(x.formula), x.iou, x.threshold, [(str(f), s) for f, s in x.beam])
               == (str(y.formula), y.iou, y.threshold, [(str(f), s) for f, s in y.beam])
               for x, y in zip(a, b)) and len(a) == len(b)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--tok-concepts", type=int, default=4000)
    ap.add_argument("--prev-concepts", type=int, default=1000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--units", type=int, default=None, help="features searched (default: all)")
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--check-tokens", type=int, default=100_000)
    ap.add_argument("--check-features", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    embed = (rng.standard_normal((args.vocab, args.d)) / np.sqrt(args.d)).astype(np.float32)
    prev_embed = (rng.standard_normal((args.vocab, args.d)) / np.sqrt(args.d)).astype(np.float32)
    tok = token_stream(rng, args.tokens, args.vocab)
    resid = residual_stream(rng, tok, args.d, embed, prev_embed)
    W_enc, b_enc = sae_encoder(rng, args.features, embed, prev_embed, args.tok_concepts,
                               args.prev_concepts)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    concepts = token_concepts(tok, args.tok_concepts, args.prev_concepts, args.vocab)
    t_concepts = time.perf_counter() - t0
    print(f"data {t_data:.1f} s; concepts {concepts.n_concepts} built in {t_concepts:.1f} s; "
          f"resid {resid.nbytes / 2 ** 30:.2f} GiB; peak RSS so far {peak_rss_gib():.2f} GiB",
          flush=True)
    opts = dict(threshold=0.0, max_length=args.length, beam_size=args.beam, device="cpu")

    # Correctness: the on-the-fly source against the materialised features, on a slice.
    n_c, f_c = min(args.check_tokens, args.tokens), min(args.check_features, args.features)
    small = SAEFeatures(resid[:n_c], W_enc[:, :f_c], b_enc[:f_c])
    dense = np.asarray(small)
    small_concepts = token_concepts(tok[:n_c], args.tok_concepts, args.prev_concepts, args.vocab)
    got = cx.search_formulas(small, small_concepts, unit_batch_size=16, **opts)
    want = cx.search_formulas(dense, small_concepts, unit_batch_size=16, **opts)
    ok = same_results(list(got), list(want))
    print(f"check ({f_c} features x {n_c} tokens, unit batches of 16): on-the-fly == "
          f"materialised: {ok}", flush=True)
    if not ok:
        sys.exit("the on-the-fly source differs from the materialised features")

    units = args.features if args.units is None else min(args.units, args.features)
    sae = SAEFeatures(resid, W_enc, b_enc)
    rss_before = peak_rss_gib()
    t0 = time.perf_counter()
    result = cx.search_formulas(sae, concepts, units=np.arange(units), **opts)
    wall = time.perf_counter() - t0
    exps = list(result)
    ious = np.array([e.iou for e in exps if e.formula is not None])
    beat = sum(e.formula is not None and e.primitive is not None and e.iou > e.primitive_iou
               for e in exps)
    stats = result.stats if hasattr(result, "stats") else {}
    secs = stats.get("seconds", {}) if isinstance(stats, dict) else {}
    print(f"searched {units} of {args.features} features x {args.tokens} tokens x "
          f"{concepts.n_concepts} concepts, length {args.length}, beam {args.beam}: "
          f"{wall:.1f} s ({1e3 * wall / units:.1f} ms/feature); peak RSS {peak_rss_gib():.2f} GiB "
          f"(before the search {rss_before:.2f} GiB)")
    print("phases s: " + ", ".join(f"{k} {v:.1f}" for k, v in secs.items()))
    print(f"explained {ious.size}/{units}; IoU median {np.median(ious):.3f}, 10-90 % "
          f"{np.quantile(ious, 0.1):.3f}-{np.quantile(ious, 0.9):.3f}; beat best single "
          f"concept: {beat}; examples: " + "; ".join(f"{e.unit}: {e.formula} ({e.iou:.2f})"
                                                     for e in exps[7:10]))
    if units < args.features:
        print(f"extrapolated to {args.features} features: {wall:.1f} s x {args.features} / "
              f"{units} = {wall * args.features / units:.0f} s (linear: each unit batch reads "
              f"the residual stream once and is searched on its own)")


if __name__ == "__main__":
    main()
