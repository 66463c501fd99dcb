"""The compexp command: demo, search and info, run as a user would (in-process and as a program)."""
import subprocess
import sys

import numpy as np
import pytest

import compexp_core as cx
from compexp_core.cli import main
from compexp_core.synthetic import make_planted_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    data = make_planted_dataset(n_samples=200, grid=(16, 16), n_units=6, seed=2)
    cx.save_activations(d / "acts.h5", data.acts)
    cx.save_concepts(d / "concepts.h5", data.concepts)
    return d, data


def test_demo_runs_end_to_end_at_a_small_size(tmp_path, capsys, monkeypatch):
    # The real demo at its full size is tests/test_demo.py's slow test; this one checks the
    # command's wiring quickly.
    monkeypatch.setenv("COMPEXP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--train-images", "200", "--eval-images", "100",
                 "--epochs", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "training the CNN" in text and "mean IoU by maximum formula length" in text
    assert "copy-paste edits" in text or "edits beat their frequency-matched controls" in text
    for name in ("images.h5", "concepts.h5", "acts.h5", "explanations.h5", "by_length.h5",
                 "report/index.html", "report/contributions.html", "adversarial.csv",
                 "contributions.csv"):
        assert (out / name).exists(), name
    assert len(cx.load_results(out / "explanations.h5")) == 96
    # The second run takes the cached weights.
    assert main(["demo", "--out", str(out), "--train-images", "200", "--eval-images", "100",
                 "--epochs", "1", "--no-progress", "--no-report"]) == 0
    assert "loaded the trained CNN" in capsys.readouterr().out


def test_demo_rejects_nonsense_sizes(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    assert "positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("ext", [".h5", ".csv"])
def test_search_writes_results_and_summary(files, capsys, ext):
    d, data = files
    out = d / f"expl{ext}"
    assert main(["search", str(d / "acts.h5"), str(d / "concepts.h5"), "-o", str(out),
                 "--length", "2", "--beam", "3", "--threshold", "0.5", "--units", "0-2,5",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "iou" in text
    result = cx.load_results(out)
    assert result.units == [0, 1, 2, 5]
    direct = cx.search_formulas(data.acts, data.concepts, max_length=2, beam_size=3, threshold=0.5,
                                units=[0, 1, 2, 5])
    assert [str(e.formula) for e in result] == [str(e.formula) for e in direct]


def test_search_reports_errors_without_traceback(files, capsys):
    d, _ = files
    assert main(["search", str(d / "acts.h5"), str(d / "missing.h5"), "-o", str(d / "x.h5")]) == 2
    assert "missing.h5" in capsys.readouterr().err
    assert main(["search", str(d / "acts.h5"), str(d / "concepts.h5"), "-o", str(d / "x.h5"),
                 "--beam", "0", "--no-progress"]) == 2
    assert "beam_size must be >= 1" in capsys.readouterr().err


def test_info_describes_files(files, capsys):
    d, _ = files
    assert main(["info", str(d / "concepts.h5")]) == 0
    out = capsys.readouterr().out
    assert "concepts" in out.lower() and "200" in out
    assert main(["info", str(d / "acts.h5")]) == 0
    assert "activations" in capsys.readouterr().out.lower()


def test_installed_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "compexp_core.cli", "--help"], capture_output=True,
                          text=True, check=True)
    assert "demo" in proc.stdout and "search" in proc.stdout


def test_building_the_parser_imports_no_library_module():
    # `compexp --help` stays fast: the subcommands import what they run only when they run.
    heavy = ("compexp_core.io", "compexp_core.extract", "compexp_core.broden",
             "compexp_core.report", "compexp_core.demo", "compexp_core.analysis")
    code = ("import sys, compexp_core.cli; compexp_core.cli.build_parser(); "
            f"print(sorted(m for m in sys.modules if m in {heavy!r} "
            "or m.split('.')[0] in ('torch', 'h5py', 'PIL', 'pandas')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
