"""Bad input gets a clear error naming the problem: one test per case."""
import numpy as np
import pytest

import compexp_core as cx

RNG = np.random.default_rng(0)
MASKS = RNG.random((10, 4, 3, 3)) < 0.4
ACTS = RNG.standard_normal((10, 2, 3, 3)).astype(np.float32)


def search(acts=ACTS, masks=MASKS, **kw):
    return cx.search_formulas(acts, masks, **kw)


def test_sample_count_mismatch():
    with pytest.raises(ValueError, match="acts has 9 samples but the concept masks have 10"):
        search(acts=ACTS[:9])


def test_bool_acts_on_another_grid():
    with pytest.raises(ValueError, match="concepts' grid"):
        search(acts=np.zeros((10, 2, 4, 4), bool))


def test_acts_wrong_ndim():
    with pytest.raises(ValueError, match=r"acts must be \[N, U, h, w\] or \[N, U\]"):
        search(acts=np.zeros((10, 2, 3), np.float32))


def test_acts_wrong_dtype():
    with pytest.raises(TypeError, match="acts must hold floats"):
        search(acts=np.zeros((10, 2, 3, 3), np.int64))


def test_masks_wrong_dtype():
    with pytest.raises(TypeError, match="masks must be a ConceptSet.*dtype float64"):
        search(masks=MASKS.astype(float))


def test_masks_wrong_ndim():
    with pytest.raises(ValueError, match=r"masks must be bool \[N, K, H, W\] or \[N, K\]"):
        search(masks=MASKS[:, :, 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_activations(bad):
    acts = ACTS.copy()
    acts[3, 1, 0, 0] = bad
    with pytest.raises(ValueError, match="unit 1 contain NaN or infinite"):
        search(acts=acts)


def test_nonfinite_activations_with_explicit_threshold():
    acts = ACTS.copy()
    acts[3, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="unit 0 contain NaN"):
        search(acts=acts, threshold=0.5)


def test_zero_concepts():
    with pytest.raises(ValueError, match="zero concepts"):
        search(masks=np.zeros((10, 0, 3, 3), bool))


def test_zero_units():
    with pytest.raises(ValueError, match="zero units"):
        search(acts=np.zeros((10, 0, 3, 3), np.float32))


def test_zero_samples():
    with pytest.raises(ValueError, match="zero samples"):
        cx.search_formulas(np.zeros((0, 1), np.float32), np.zeros((0, 2), bool))


def test_names_wrong_length():
    with pytest.raises(ValueError, match="names has 3 entries but there are 4 concepts"):
        search(names=["a", "b", "c"])


def test_names_duplicated():
    with pytest.raises(ValueError, match=r"names must be unique; duplicated: \['a'\]"):
        search(names=["a", "b", "a", "c"])


def test_names_not_strings():
    with pytest.raises(TypeError, match="names must contain strings"):
        search(names=["a", "b", 3, "c"])


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_quantile_outside_unit_interval(q):
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\)"):
        search(quantile=q)


@pytest.mark.parametrize("arg", ["beam_size", "max_length"])
def test_beam_size_and_max_length_below_one(arg):
    with pytest.raises(ValueError, match=f"{arg} must be >= 1, got 0"):
        search(**{arg: 0})


@pytest.mark.parametrize("arg", ["beam_size", "max_length", "candidate_limit"])
def test_integer_parameters_reject_non_integers(arg):
    with pytest.raises(TypeError, match=f"{arg} must be an integer"):
        search(**{arg: 2.5})


def test_candidate_limit_below_one():
    with pytest.raises(ValueError, match="candidate_limit must be >= 1"):
        search(candidate_limit=0)


def test_unknown_operator():
    with pytest.raises(ValueError, match=r"unknown operator\(s\) \['xor'\]"):
        search(ops=("or", "xor"))


def test_empty_operators():
    with pytest.raises(ValueError, match="ops must name at least one operator"):
        search(ops=())


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        search(metric="f1")


@pytest.mark.parametrize("penalty", [0.0, -1.0, np.nan])
def test_bad_complexity_penalty(penalty):
    with pytest.raises(ValueError, match="complexity_penalty must be a finite number > 0"):
        search(complexity_penalty=penalty)


@pytest.mark.parametrize("units", [[0, 2], [-1]])
def test_unit_index_out_of_range(units):
    with pytest.raises(ValueError, match="unit index .* out of range: acts has 2 units"):
        search(units=units)


def test_units_empty():
    with pytest.raises(ValueError, match="units is empty"):
        search(units=[])


def test_threshold_wrong_length():
    with pytest.raises(ValueError, match="threshold has 3 values but acts has 2 units"):
        search(threshold=[0.1, 0.2, 0.3])


def test_unknown_device():
    with pytest.raises(ValueError, match="device must be .cpu., .cuda., .cuda:N. or .auto., got .tpu."):
        search(device="tpu")


def test_cuda_without_cuda_build_says_how_to_fix():
    if cx.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        search(device="cuda")


def test_missing_concepts_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        search(masks=str(tmp_path / "nope.h5"))


def test_missing_activations_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        search(acts=str(tmp_path / "nope.h5"))


def test_corrupt_concepts_file(tmp_path):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    with pytest.raises(ValueError, match="broken.h5"):
        search(masks=str(path))


def test_activations_file_missing_dataset(tmp_path):
    import h5py

    path = tmp_path / "acts.h5"
    with h5py.File(path, "w") as h5:
        h5["activations"] = ACTS
    with pytest.raises(ValueError, match="acts"):
        search(acts=str(path))


def test_names_conflict_with_concept_set():
    cs = cx.ConceptSet.from_dense(MASKS, names=list("abcd"))
    with pytest.raises(ValueError, match="names differ"):
        search(masks=cs, names=list("wxyz"))
    assert len(search(masks=cs, names=list("abcd"))) == 2


def test_errors_leave_the_interpreter_usable():
    # After a failed call the same data searches fine: nothing global was corrupted.
    with pytest.raises(ValueError):
        search(metric="nope")
    assert len(search()) == 2
