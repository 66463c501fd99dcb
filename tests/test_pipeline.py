"""The paper's vision pipeline on a Broden-format directory, through the command line only:
convert-broden -> extract -> search -> report, as a researcher runs it."""
import textwrap

import numpy as np
import pytest

import compexp_core as cx
from compexp_core.cli import main
from test_broden import Broden

MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(4, 5, 3, padding=1))
""")


@pytest.fixture(scope="module")
def broden_dir(tmp_path_factory):
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return Broden(tmp_path_factory.mktemp("broden"), SHARED_DATA)


def test_broden_to_report_from_the_command_line(broden_dir, tmp_path, capsys):
    d = tmp_path
    (d / "net.py").write_text(MODEL)
    assert main(["convert-broden", str(broden_dir.root), str(d / "concepts.h5"),
                 "--no-progress"]) == 0
    assert main(["extract", f"{d / 'net.py'}:build", str(broden_dir.root), "-o",
                 str(d / "acts.h5"), "--layer", "2", "--batch-size", "5", "--device", "cpu",
                 "--no-progress"]) == 0
    meta = cx.io.read_activations_metadata(d / "acts.h5")
    assert meta["shape"] == (12, 5, 8, 8) and meta["layer"] == "2"
    assert "broden" in meta["dataset"]
    assert main(["search", str(d / "acts.h5"), str(d / "concepts.h5"), "-o",
                 str(d / "explanations.h5"), "--quantile", "0.1", "--no-progress"]) == 0
    # The report finds acts and concepts from the paths the search recorded.
    assert main(["report", str(d / "explanations.h5"), "--images", str(broden_dir.root),
                 "-o", str(d / "report"), "--top-images", "3", "--no-progress"]) == 0
    html = (d / "report" / "index.html").read_text()
    result = cx.load_results(d / "explanations.h5")
    for e in result:
        assert f"Unit {e.unit}" in html
        if e.formula is not None:
            assert e.formula.leaves()[0] in html
    assert len(list((d / "report" / "img").glob("u*_*.png"))) == 5 * 3
    capsys.readouterr()


def test_explanations_match_a_direct_search(broden_dir, tmp_path):
    """The CLI's files give the same explanations as the Python API on the same arrays."""
    from compexp_core.broden import BrodenDataset, convert_broden
    from compexp_core.extract import extract_activations, load_model

    (tmp_path / "net.py").write_text(MODEL)
    convert_broden(broden_dir.root, tmp_path / "c.h5", progress=False)
    model = load_model(f"{tmp_path / 'net.py'}:build")
    extract_activations(model, BrodenDataset(broden_dir.root), "0", tmp_path / "a.h5",
                        progress=False)
    acts = cx.load_activations(tmp_path / "a.h5")
    names, _, masks, _ = broden_dir.expected()
    direct = cx.search_formulas(acts, masks, names=names, quantile=0.1)
    from_files = cx.search_formulas(tmp_path / "a.h5", tmp_path / "c.h5", quantile=0.1)
    assert [(str(a.formula), a.iou) for a in direct] == \
        [(str(b.formula), b.iou) for b in from_files]
    assert np.isfinite([e.threshold for e in from_files]).all()
