"""complexity_penalty: scores are multiplied by penalty ** (length - 1); a penalty whose power
overflows or underflows float64 is refused up front with a message, not an OverflowError
traceback (or silently zero scores) in the middle of the search."""
import numpy as np
import pytest

import compexp_core as cx
from compexp_core.cli import main
from compexp_core.engine.beam import SearchParams

RNG = np.random.default_rng(0)
MASKS = RNG.random((10, 4, 3, 3)) < 0.4
ACTS = RNG.standard_normal((10, 2, 3, 3)).astype(np.float32)


@pytest.mark.parametrize("penalty", [1e300, 1e200, 1e155, 10 ** 200])
def test_huge_penalty_is_refused_with_a_message(penalty):
    with pytest.raises(ValueError, match=r"complexity_penalty .* is too large for max_length 3"
                                         r".* overflows"):
        cx.search_formulas(ACTS, MASKS, max_length=3, complexity_penalty=penalty)


def test_penalty_beyond_the_float_range():
    with pytest.raises(ValueError, match="an integer of 401 digits, beyond the float range"):
        SearchParams(complexity_penalty=10 ** 400)


@pytest.mark.parametrize("penalty", [1e-200, 5e-324])
def test_tiny_penalty_is_refused_with_a_message(penalty):
    with pytest.raises(ValueError, match=r"too small for max_length 3.* underflows to 0"):
        SearchParams(max_length=3, complexity_penalty=penalty)


def test_penalty_limit_depends_on_max_length():
    # Length 1 never multiplies by the penalty; 1e300 ** 1 is still finite.
    assert SearchParams(max_length=1, complexity_penalty=1e300).penalty == 1e300
    assert SearchParams(max_length=2, complexity_penalty=1e300).factor(2) == 1e300
    with pytest.raises(ValueError, match="too large for max_length 3"):
        SearchParams(max_length=3, complexity_penalty=1e300)
    with pytest.raises(ValueError, match="too small for max_length 1000"):
        SearchParams(max_length=1000, complexity_penalty=0.1)


@pytest.mark.parametrize("penalty", [0.5, 0.95, 1.0, 1.25])
def test_ordinary_penalties_still_search(penalty):
    result = cx.search_formulas(ACTS, MASKS, max_length=3, beam_size=3,
                                complexity_penalty=penalty)
    for e in result:
        if e.formula is not None:
            assert e.score == pytest.approx(e.iou * penalty ** (len(e.formula) - 1))


def test_cli_penalty_error_is_a_message(tmp_path, capsys):
    cx.save_activations(tmp_path / "acts.h5", ACTS)
    cx.save_concepts(tmp_path / "concepts.h5", cx.ConceptSet.from_dense(MASKS))
    assert main(["search", str(tmp_path / "acts.h5"), str(tmp_path / "concepts.h5"), "-o",
                 str(tmp_path / "out.h5"), "--penalty", "1e300", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compexp search: error: complexity_penalty 1e+300 is too large")
    assert not (tmp_path / "out.h5").exists()
