"""``--units``: parsed lazily (a range is kept as its two ends), absurd selections refused when
the option is parsed, indices checked against the activations' unit count with a message, never
a list of a trillion integers (MemoryError).

Commands that could allocate run under an address-space limit (RLIMIT_AS) a little above what
the process uses, so a regression shows as a MemoryError instead of exhausting the machine."""
import argparse
import contextlib
import os

import numpy as np
import pytest

import compexp_core as cx
from compexp_core.cli import main
from compexp_core.cli.args import MAX_UNITS, UnitSelection, unit_list
from compexp_core.synthetic import make_planted_dataset

resource = pytest.importorskip("resource")


@contextlib.contextmanager
def memory_limit(extra=1 << 30):
    """Limit this process's address space to what it uses now plus ``extra`` bytes."""
    if not os.path.exists("/proc/self/statm"):
        yield
        return
    with open("/proc/self/statm") as fh:
        used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = used + extra if hard == resource.RLIM_INFINITY else min(used + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("units")
    data = make_planted_dataset(n_samples=100, grid=(8, 8), n_units=6, seed=2)
    cx.save_activations(d / "acts.h5", data.acts)
    cx.save_concepts(d / "concepts.h5", data.concepts)
    return d


def search(files, tmp_path, units):
    return main(["search", str(files / "acts.h5"), str(files / "concepts.h5"), "-o",
                 str(tmp_path / "out.h5"), "--length", "2", "--beam", "2", "--threshold", "0.5",
                 "--units", units, "--no-progress"])


# ============================================================================ parsing

@pytest.mark.parametrize("text", ["0-999999999999", "0-16777216", "0-9000000,9000001-18000000"])
def test_absurd_range_is_refused_when_parsed(text):
    with memory_limit(), pytest.raises(argparse.ArgumentTypeError,
                                       match=rf"--units {text} names [\d,]+ units, more than "
                                             rf"the 16,777,216 one selection may name"):
        unit_list(text)


def test_cli_absurd_range_is_a_usage_error(files, tmp_path, capsys):
    with memory_limit(), pytest.raises(SystemExit) as exit_:
        search(files, tmp_path, "0-999999999999")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --units: --units 0-999999999999 names 1,000,000,000,000 units" in err
    assert not (tmp_path / "out.h5").exists()


def test_report_absurd_range_is_a_usage_error(tmp_path, capsys):
    with memory_limit(), pytest.raises(SystemExit):
        main(["report", str(tmp_path / "r.h5"), "--units", "0-999999999999"])
    assert "names 1,000,000,000,000 units" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("5-2", r"the range 5-2 runs backwards \(write 2-5\)"),
    ("9" * 40, r"9{20}\.\.\. is not a unit index \(too large\)"),
    ("-3", r"takes indices and ranges like 0-9,15"),
    ("a-b", r"takes indices and ranges like 0-9,15"),
    ("²", r"takes indices and ranges like 0-9,15"),
    (" , ", r"--units is empty"),
])
def test_malformed_units(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        unit_list(text)


def test_the_limit_itself_parses_without_materialising():
    with memory_limit(64 << 20):                 # 16M Python ints would need ~600 MiB
        units = unit_list(f"0-{MAX_UNITS - 1}")
        assert len(units) == MAX_UNITS and units.max() == MAX_UNITS - 1
        assert units[123456] == 123456 and units[-1] == MAX_UNITS - 1
        with pytest.raises(ValueError, match=r"names unit 16777215, but the activations have "
                                             r"96 units \(0-95\)"):
            units.resolve(96)


def test_selection_behaves_like_the_list_it_names():
    units = unit_list("0-2, 5,9-10,3")
    assert isinstance(units, UnitSelection)
    assert list(units) == [0, 1, 2, 5, 9, 10, 3] and units == [0, 1, 2, 5, 9, 10, 3]
    assert len(units) == 7 and units[3] == 5 and units[-1] == 3 and units[1:3] == [1, 2]
    assert 9 in units and 4 not in units
    np.testing.assert_array_equal(np.asarray(units), [0, 1, 2, 5, 9, 10, 3])
    assert np.asarray(units).dtype == np.int64
    np.testing.assert_array_equal(units.resolve(11), [0, 1, 2, 5, 9, 10, 3])
    with pytest.raises(IndexError):
        units[7]


# ============================================================================ searching

def test_units_beyond_the_activations_are_a_message(files, tmp_path, capsys):
    with memory_limit():
        assert search(files, tmp_path, "0-3,99") == 2
    assert "--units 0-3,99 names unit 99, but the activations have 6 units" in capsys.readouterr().err


def test_units_in_range_still_search(files, tmp_path):
    assert search(files, tmp_path, "1-2,5") == 0
    assert cx.load_results(tmp_path / "out.h5").units == [1, 2, 5]
