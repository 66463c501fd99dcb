"""The built-in LM example (compexp_core.lm.model, compexp_core.lm.demo, ``compexp demo lm``):
its grammar and tokenizer, the trained LM and SAE in quick mode, the cache, and an end-to-end
quick run whose headline numbers must agree with the files it wrote."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

import compexp_core as cx  # noqa: E402
from compexp_core.lm.model import (PAD, UNK, WORD_START, LMConfig, build_tokenizer,  # noqa: E402
                                   encode_documents, generate_documents, load_or_train,
                                   sae_quality)

# ------------------------------------------------------------------------------ grammar

def test_grammar_is_deterministic_and_seeded():
    assert generate_documents(50, seed=4) == generate_documents(50, seed=4)
    assert generate_documents(50, seed=4) != generate_documents(50, seed=5)
    assert generate_documents(0) == []


def test_grammar_has_the_structure_worth_explaining():
    text = " ".join(generate_documents(400, seed=0))
    for piece in (" not ", " never ", "No ", "If ", ", then ", '"', "?", " elephant", "Alice"):
        assert piece in text, piece
    assert any(ch.isdigit() for ch in text)
    docs = generate_documents(200, seed=1)
    assert all(d[0].isupper() or d[0].isdigit() for d in docs)
    assert all(d[-1] in ".!?" for d in docs)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_grammar_rejects_a_bad_count(bad):
    with pytest.raises(ValueError, match="n must be"):
        generate_documents(bad)


# ------------------------------------------------------------------------------ tokenizer

def test_tokenizer_round_trips_the_grammar_and_knows_every_token():
    tok = build_tokenizer()
    docs = generate_documents(500, seed=2)
    for d in docs:
        pieces = tok.encode(d)
        assert tok.decode(pieces) == d
        assert UNK not in [tok.vocab[i] for i in tok.ids(pieces)] and \
            tok.id_of[UNK] not in tok.ids(pieces)
    assert tok.encode(docs[0]) == build_tokenizer().encode(docs[0])


def test_tokenizer_marks_word_starts_and_splits_rare_words():
    tok = build_tokenizer()
    assert tok.encode("The cat saw a giraffe.") == ["The", "Ġcat", "Ġsaw", "Ġa", "Ġgir", "affe",
                                                    "."]
    # plural: stem and the continuation piece "s"; numbers: one digit per token
    assert tok.encode("If 42 dogs") == ["If", "Ġ4", "2", "Ġdog", "s"]
    # tok: differs from word: the capitalised start and the marked token are different tokens
    assert tok.encode("The the")[0] != tok.encode("The the")[1]
    # unknown words fall back to characters, unknown characters to <unk> ids
    assert tok.encode(" zebra") == ["Ġz", "e", "b", "r", "a"]
    assert tok.ids(tok.encode("é")) == [tok.id_of[UNK]]
    assert tok.id_of[PAD] == 0


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters=WORD_START), max_size=40))
def test_tokenizer_round_trips_any_text(text):
    tok = build_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_rejects_bad_text():
    tok = build_tokenizer()
    with pytest.raises(TypeError, match="text must be a string"):
        tok.encode(b"cat")
    with pytest.raises(ValueError, match="character 3"):
        tok.encode("the" + WORD_START)


def test_encode_documents_cuts_to_the_context():
    pieces, ids = encode_documents(build_tokenizer(), ["If the cat sleeps, then a dog runs."], 4)
    assert pieces == [["If", "Ġthe", "Ġcat", "Ġsleeps"]] and len(ids[0]) == 4


# ------------------------------------------------------------------------------ LM and SAE

# The tests of the trained model share one quick training (about 25 s of CPU, more on a busy
# machine): they are marked slow.
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick example's LM and SAE, trained once into a private cache."""
    from compexp_core.lm.demo import LMDemoConfig

    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPEXP_CACHE_DIR", str(cache))
    config = LMDemoConfig.quick()
    lines = []
    trained = load_or_train(config.model, log=lines.append)
    yield config, trained, lines
    mp.undo()


@pytest.mark.slow
def test_quick_lm_beats_the_unigram_and_bigram_baselines(quick):
    _, trained, lines = quick
    ev = trained.evaluation
    assert not trained.cached and any("training the LM" in s for s in lines)
    assert ev.tokens > 1000
    assert ev.unigram_loss > ev.bigram_loss            # the baselines are what they say
    assert ev.loss < ev.unigram_loss - 1.0 and ev.accuracy > ev.unigram_accuracy + 0.1
    assert ev.loss < ev.bigram_loss and ev.accuracy > ev.bigram_accuracy


@pytest.mark.slow
def test_quick_sae_reconstructs_and_is_sparse(quick):
    from compexp_core.lm.model import RESIDUAL_LAYER, _corpora, residual_activations

    config, trained, _ = quick
    q = trained.sae_quality
    assert q["variance_explained"] > 0.7
    assert q["l0"] < 0.3 * config.model.sae_features
    assert q["dead_fraction"] < 0.5
    # the recorded numbers are those of the held-out residual stream
    test_ids = _corpora(config.model, trained.tokenizer)[1]
    resid = residual_activations(trained.model, test_ids, RESIDUAL_LAYER,
                                 trained.tokenizer.id_of[PAD])
    again = sae_quality(trained.sae, resid)
    assert again["variance_explained"] == pytest.approx(q["variance_explained"], abs=1e-6)
    with pytest.raises(ValueError, match="width"):
        trained.sae.encode(__import__("torch").zeros(2, config.model.d_model + 1))


def test_cached_model_is_loaded_and_a_corrupt_cache_retrained(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from compexp_core.lm.model import cache_path

    monkeypatch.setenv("COMPEXP_CACHE_DIR", str(tmp_path))
    tiny = LMConfig(d_model=16, n_heads=2, d_mlp=16, n_ctx=64, train_documents=60, steps=3,
                    sae_features=16, sae_steps=3)
    first = load_or_train(tiny, log=lambda s: None)
    lines = []
    second = load_or_train(tiny, log=lines.append)
    assert second.cached and not first.cached and "loaded" in lines[0]
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert second.evaluation == first.evaluation
    with open(cache_path(tiny), "wb") as fh:
        fh.write(b"not a checkpoint")
    lines = []
    third = load_or_train(tiny, log=lines.append)
    assert not third.cached and "unreadable" in lines[0]
    assert load_or_train(tiny, log=lambda s: None).cached        # the cache was replaced


@pytest.mark.parametrize("kwargs, match", [
    ({"d_model": 30, "n_heads": 4}, "multiple of n_heads"),
    ({"n_layers": 1}, "n_layers must be >= 2"),
    ({"steps": 0}, "steps must be an integer"),
    ({"sae_l1": float("nan")}, "sae_l1"),
])
def test_lm_config_rejects_nonsense(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LMConfig(**kwargs)


# ------------------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_quick_demo_writes_consistent_files(quick, tmp_path):
    from compexp_core.analysis import mean_iou_by_length
    from compexp_core.io import load_activations
    from compexp_core.io.tokens import read_tokens
    from compexp_core.lm.demo import beats_best_single, clearly_beats_best_single, run_lm_demo

    config, trained, _ = quick
    out = tmp_path / "lm-demo"
    lines = []
    summary = run_lm_demo(str(out), config, progress=False, log=lines.append)
    assert any("loaded the trained LM" in s for s in lines)          # the fixture's cache
    for name in ("mlp_acts", "sae_acts", "concepts", "mlp_explanations", "sae_explanations"):
        assert (out / f"{name}.h5").exists(), name
    assert (out / "report" / "mlp" / "index.html").exists()
    assert (out / "report" / "sae" / "index.html").exists()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_tokens"] == summary.n_tokens
    tokens = read_tokens(str(out / "mlp_acts.h5"))
    assert len(tokens) == summary.n_tokens
    assert tokens.text[0] and tokens.doc.max() == config.probe_documents - 1

    sizes = {"mlp": config.model.d_mlp, "sae": config.model.sae_features}
    for fam, fam_saved in zip(summary.families, saved["families"]):
        acts = load_activations(str(out / f"{fam.name}_acts.h5"))
        assert acts.shape == (summary.n_tokens, sizes[fam.name])
        result = cx.load_results(str(out / f"{fam.name}_explanations.h5"))
        assert len(result) == fam.n_units == sizes[fam.name]
        explained = [e for e in result if e.formula is not None]
        assert fam.n_explained == len(explained) == fam_saved["n_explained"]
        assert fam.n_beating_single == sum(map(beats_best_single, result)) \
            == fam_saved["n_beating_single"]
        assert fam.n_clearly_beating == sum(map(clearly_beats_best_single, result))
        assert fam.n_clearly_beating <= fam.n_beating_single <= fam.n_explained
        counts = [int((acts[:, e.unit].astype(np.float64) > e.threshold).sum()) for e in result]
        assert fam.median_firing == np.median(counts) == fam_saved["median_firing"]
        curve = mean_iou_by_length(result)
        assert curve.size == config.max_length
        np.testing.assert_allclose(fam.mean_iou_by_length, curve)
        np.testing.assert_allclose(fam_saved["mean_iou_by_length"], curve)
        assert np.all(np.diff(curve) >= 0)
        assert all(len(e.formula) <= config.max_length for e in explained)
        for unit, formula, iou, single, single_iou, firing in fam.examples:
            e = result.by_unit(unit)
            assert str(e.formula) == formula and iou == pytest.approx(e.iou, abs=1e-4)
            assert str(e.primitive) == single and single_iou >= 0
            assert firing == int((acts[:, unit].astype(np.float64) > e.threshold).sum()) > 0
        # the headline lines print these numbers
        assert any(f"{fam.n_beating_single} beat their best single concept" in s
                   for s in lines)
    # the firing rules are the documented ones
    mlp = cx.load_results(str(out / "mlp_explanations.h5"))
    assert mlp.params["quantile"] == config.neuron_quantile
    sae = cx.load_results(str(out / "sae_explanations.h5"))
    assert all(e.threshold == config.sae_threshold for e in sae if e.threshold is not None)


@pytest.mark.slow
def test_cli_demo_lm_quick(quick, tmp_path, capsys):
    from compexp_core.cli.main import main

    out = tmp_path / "cli"
    assert main(["demo", "lm", "--quick", "--out", str(out), "--no-progress",
                 "--no-report"]) == 0
    text = capsys.readouterr().out
    assert "compexp demo lm" in text and "MLP neurons" in text and "SAE features" in text
    assert (out / "summary.json").exists() and not (out / "report").exists()
    assert main(["demo", "--quick", "--out", str(tmp_path / "v")]) == 2     # lm only


def test_demo_config_rejects_nonsense():
    from compexp_core.lm.demo import LMDemoConfig, run_lm_demo

    with pytest.raises(ValueError, match="neuron_quantile"):
        LMDemoConfig(neuron_quantile=0)
    with pytest.raises(ValueError, match="probe_documents"):
        LMDemoConfig(probe_documents=0)
    with pytest.raises(TypeError, match="LMDemoConfig"):
        run_lm_demo("x", config={"quick": True})
