"""Broden conversion checks sizes before allocating: a grid or a segmentation size beyond
MAX_GRID_CELLS, a decoding step beyond the available memory and a label number beyond int32
are refused with a message naming the value, not a MemoryError (or a machine out of memory).

Each conversion that could allocate runs under an address-space limit (RLIMIT_AS) a little
above what the process already uses, so a regression shows as a MemoryError, not as a test
run that exhausts the machine.
"""
import contextlib
import os

import numpy as np
import pytest
from PIL import Image

import compexp_core.broden as broden
from compexp_core.broden import MAX_GRID_CELLS, MAX_LABEL, convert_broden, read_broden_index
from compexp_core.cli import main
from compexp_core.io import load_concepts

resource = pytest.importorskip("resource")
if not os.path.exists("/proc/self/statm"):
    pytest.skip("needs /proc/self/statm (Linux)", allow_module_level=True)


def address_space_used() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def memory_limit(extra=1 << 30):
    """Limit this process's address space to what it uses now plus ``extra`` bytes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space_used() + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def make_broden(d, *, sh=2, sw=2, labels=(1, 2), scene=3, extra_label_lines=""):
    """A one-image Broden directory: an object PNG holding labels 1 and 2, scene ``scene``."""
    os.makedirs(d / "images", exist_ok=True)
    (d / "index.csv").write_text("image,split,ih,iw,sh,sw,object,scene\n"
                                 f"a.jpg,val,4,4,{sh},{sw},a_object.png,{scene}\n")
    (d / "label.csv").write_text("number,name,category,frequency,coverage,syns\n"
                                 f"{labels[0]},sky,object(1),1,0.5,\n"
                                 f"{labels[1]},tree,object(1),1,0.5,\n"
                                 f"{scene},forest-s,scene(1),1,1.0,\n" + extra_label_lines)
    (d / "category.csv").write_text("name,first,last,count,frequency\n"
                                    "object,1,2,2,1\nscene,3,3,1,1\n")
    seg = np.zeros((2, 2, 3), np.uint8)
    seg[0, :, 0] = 1
    seg[1, :, 0] = 2
    Image.fromarray(seg).save(d / "images" / "a_object.png")
    return d


@pytest.fixture
def tiny(tmp_path):
    return make_broden(tmp_path / "broden")


# ================================================================================ the grid

@pytest.mark.parametrize("grid", [(100000, 100000), (8193, 8192), 100000])
def test_grid_over_the_limit_is_refused(tiny, tmp_path, grid):
    with memory_limit(), pytest.raises(ValueError, match=r"grid \d+x\d+ has [\d,]+ cells per "
                                                          r"image, more than the 67,108,864 "
                                                          r"allowed"):
        convert_broden(tiny, tmp_path / "c.h5", grid=grid, progress=False)
    assert not (tmp_path / "c.h5").exists()


def test_cli_grid_over_the_limit(tiny, tmp_path, capsys):
    with memory_limit():
        assert main(["convert-broden", str(tiny), str(tmp_path / "c.h5"), "--grid",
                     "100000,100000", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compexp convert-broden: error: grid 100000x100000 has "
                          "10,000,000,000 cells per image")


def test_grid_beyond_the_available_memory_is_refused(tiny, tmp_path):
    # 8000x8000 is within MAX_GRID_CELLS, but one image's label map and its decoding take
    # about 0.6 GiB: more than the 300 MiB left under the limit.
    assert 8000 * 8000 <= MAX_GRID_CELLS
    with memory_limit(300 << 20), pytest.raises(
            ValueError, match=r"decoding one image needs about 0.596 GiB \(1 label layer\(s\) "
                              r"on the 8000x8000 grid.*but only 0.\d+ GiB of memory is "
                              r"available; choose a smaller grid"):
        convert_broden(tiny, tmp_path / "c.h5", grid=(8000, 8000), progress=False)
    assert os.listdir(tmp_path) == ["broden"]


def test_available_memory_is_consulted(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(broden, "_available_memory", lambda: 1000)
    with pytest.raises(ValueError, match=r"grid, the largest segmentation 2x2 .* line 2\), but "
                                         r"only 9.31e-07 GiB of memory is available"):
        convert_broden(tiny, tmp_path / "c.h5", grid=(16, 16), progress=False)
    monkeypatch.setattr(broden, "_available_memory", lambda: None)     # unknown: no check
    assert convert_broden(tiny, tmp_path / "c.h5", grid=(16, 16), progress=False).grid == (16, 16)


def test_available_memory_reads_the_address_space_limit():
    free = broden._available_memory()
    assert free is None or free > 0
    with memory_limit(100 << 20):
        assert broden._available_memory() <= 100 << 20


# ================================================================= segmentation sizes

@pytest.mark.parametrize("sh, sw", [(4000000, 4000000), (2000, 40000)])
def test_huge_segmentation_size_in_index_is_refused(tmp_path, capsys, sh, sw):
    d = make_broden(tmp_path / "broden", sh=sh, sw=sw)
    with memory_limit():
        assert main(["convert-broden", str(d), str(tmp_path / "c.h5"), "--no-progress"]) == 2
        # a grid does not help: the PNG itself would be decoded at sh x sw
        with pytest.raises(ValueError, match=f"line 2: image 'a.jpg' has segmentation size "
                                             f"sh x sw = {sh}x{sw} = {sh * sw:,} cells, more "
                                             f"than the 67,108,864 allowed per image"):
            convert_broden(d, tmp_path / "c.h5", grid=(8, 8), progress=False)
    err = capsys.readouterr().err
    assert err.startswith("compexp convert-broden: error: ") and f"{sh}x{sw}" in err
    assert not (tmp_path / "c.h5").exists()


def test_index_size_with_absurdly_many_digits(tmp_path):
    d = make_broden(tmp_path / "broden", sh="9" * 5000)
    with pytest.raises(ValueError, match=r"index.csv', line 2, column 'sh': 999999999999\.\.\. "
                                         r"\(5000 digits\) is too large"):
        read_broden_index(d)


# ================================================================================ labels

@pytest.mark.parametrize("number", [99999999999, 2 ** 31])
def test_label_number_beyond_int32_is_refused(tmp_path, capsys, number):
    d = make_broden(tmp_path / "broden", extra_label_lines=f"{number},huge,scene(1),1,1,\n")
    with memory_limit():
        assert main(["convert-broden", str(d), str(tmp_path / "c.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (f"label.csv', line 5, column 'number': {number} is too large (at most 2147483647: "
            f"label numbers must fit the int32 label maps the engine uses; labels in "
            f"segmentation PNGs are R + 256·G, so below 65536)") in err


def test_category_code_file_numbers_are_bounded(tiny):
    (tiny / "c_object.csv").write_text("code,number,name,frequency,coverage\n"
                                       "1,1,sky,1,1\n2,99999999999,tree,1,1\n")
    with pytest.raises(ValueError, match=r"c_object.csv', line 3, column 'number': 99999999999 "
                                         r"is too large"):
        read_broden_index(tiny)


def test_index_image_level_label_beyond_int32(tmp_path):
    d = make_broden(tmp_path / "broden", scene=3)
    text = (d / "index.csv").read_text().replace(",a_object.png,3", ",a_object.png,3;99999999999")
    (d / "index.csv").write_text(text)
    with pytest.raises(ValueError, match=r"index.csv', line 2, column 'scene': 99999999999 is "
                                         r"too large"):
        read_broden_index(d)


def test_large_image_level_label_numbers_need_no_large_array(tmp_path):
    # Scene label MAX_LABEL: a valid int32 number, only ever image-level. It costs a dict
    # entry, not a 2**31-entry label -> concept array (8 GiB).
    d = make_broden(tmp_path / "broden", scene=MAX_LABEL)
    out = tmp_path / "c.h5"
    with memory_limit():
        summary = convert_broden(d, out, progress=False)
    assert summary.n_concepts == 3
    cs = load_concepts(out)
    assert cs.names == ("sky", "tree", "forest-s")
    assert cs.to_dense()[0, 2].all() and cs.to_dense()[0, 0, 0].all()


def test_pixel_labels_above_255_still_convert(tmp_path):
    d = make_broden(tmp_path / "broden", labels=(1, 513))
    seg = np.zeros((2, 2, 3), np.uint8)
    seg[0, :, 0] = 1
    seg[1, :, 0], seg[1, :, 1] = 1, 2                # 1 + 256 * 2 = 513
    Image.fromarray(seg).save(d / "images" / "a_object.png")
    cs = load_concepts(convert_broden(d, tmp_path / "c.h5", progress=False).output)
    dense = cs.to_dense()
    assert cs.names == ("sky", "forest-s", "tree")           # label numbers 1, 3, 513
    assert dense[0, cs.index("sky")].tolist() == [[True, True], [False, False]]
    assert dense[0, cs.index("tree")].tolist() == [[False, False], [True, True]]


# ============================================================================ image sizes

@pytest.mark.parametrize("size", [100000, (8193, 8192)])
def test_dataset_size_over_the_limit_is_refused(tiny, size):
    with pytest.raises(ValueError, match=r"size \d+x\d+ has [\d,]+ pixels per image, more than "
                                         r"the 67,108,864 allowed"):
        broden.BrodenDataset(tiny, size=size)
    assert broden.BrodenDataset(tiny, size=(8192, 8192)).size == (8192, 8192)


def test_cli_extract_size_over_the_limit(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["extract", "model.pt", str(tiny), "-o", str(tmp_path / "a.h5"), "--layer", "x",
              "--size", "100000,100000"])
    assert exit_.value.code == 2
    assert ("argument --size: --size 100000,100000 has 10,000,000,000 pixels per image, more "
            "than the 67,108,864 allowed") in capsys.readouterr().err
