"""Tests for compexp_core.broden: Broden-format directories, their conversion and their images.

The fixture builds a small Broden-format directory from 12 real rows of
../shared/data/broden/index_ade20k.csv (their image names, splits, which PNG columns are filled
and how many part layers, their scene numbers), with the sizes shrunk to 16x16 images and
8x8 segmentations, a label.csv consistent with them, and PNGs and images generated here with
random labels. Expected masks are computed here, independently, from the label arrays written.
"""
import csv
import doctest
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import compexp_core.broden as broden
from compexp_core.broden import (
    BrodenDataset,
    convert_broden,
    parse_label_categories,
    read_broden_index,
    read_index_csv,
)
from compexp_core.cli import main
from compexp_core.io import load_concepts

SEG = 8          # segmentation size written in the generated index (sh = sw)
IMG = 16         # image size written in the generated index (ih = iw)

# Pixel-level labels (global numbers >= 256, so the green channel matters). 1513 "door" is an
# object and a part (primary: part, the larger count); "handle" names an object and a part.
COLOR = {1501: "red-c", 1502: "blue-c", 1503: "green-c"}
OBJECT = {1510: "wall", 1511: "floor", 1512: "handle", 1513: "door", 1514: "window"}
PART = {1513: "door", 1520: "handle", 1521: "leg", 1522: "knob"}
MATERIAL = {1530: "wood-m"}                      # listed, but no row has material PNGs
PIXEL_LABELS = {"color": COLOR, "object": OBJECT, "part": PART}
CATEGORY_FIELD = {1513: "object(4);part(9)"}
FREQUENCY = {1514: 1}                            # "window" is rare (min_frequency tests)


def pick_rows(index_csv, n=12):
    """Real rows covering both splits, 0-3 part layers, an empty scene and scene 0."""
    with open(index_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    chosen = []
    seen = set()
    for r in rows:
        key = (r["split"], len(r["part"].split(";")) if r["part"] else 0)
        if key not in seen:
            seen.add(key)
            chosen.append(r)
    for test in (lambda r: r["scene"] == "", lambda r: r["scene"] == "0"):
        if not any(test(r) for r in chosen):
            chosen.append(next(r for r in rows if test(r)))
    for r in rows:
        if len(chosen) >= n:
            break
        if r not in chosen:
            chosen.append(r)
    return chosen


def encode_png(labels, rng):
    """An RGB PNG array encoding label = R + 256 * G (blue is noise, to be ignored)."""
    rgb = np.zeros(labels.shape + (3,), np.uint8)
    rgb[..., 0] = labels & 255
    rgb[..., 1] = labels >> 8
    rgb[..., 2] = rng.integers(0, 256, labels.shape)
    return rgb


class Broden:
    """A generated Broden directory and what it should convert to."""

    def __init__(self, root, shared):
        rng = np.random.default_rng(7)
        self.root = root
        self.rows = pick_rows(shared / "broden" / "index_ade20k.csv")
        with open(shared / "broden" / "ade20k_scenes.json") as fh:
            scene_names = json.load(fh)
        images = root / "images"
        # maps[i][category] = list of [SEG, SEG] label arrays (one per PNG layer)
        self.maps = []
        self.scenes = []                      # per row: list of scene numbers (0 kept)
        self.scene_labels = {}                # scene number -> name
        index_lines = ["image,split,ih,iw,sh,sw,color,object,part,material,scene,texture"]
        for r in self.rows:
            per_cat = {}
            for cat, labels in PIXEL_LABELS.items():
                files = [f for f in r[cat].split(";") if f]
                per_cat[cat] = []
                for f in files:
                    choices = np.array([0] + sorted(labels), np.int64)
                    lab = choices[rng.integers(0, len(choices), (SEG, SEG))]
                    path = images / f
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(encode_png(lab, rng)).save(path)
                    per_cat[cat].append(lab)
            self.maps.append(per_cat)
            scenes = [int(v) for v in r["scene"].split(";") if v]
            self.scenes.append(scenes)
            for v in scenes:
                if v:
                    self.scene_labels.setdefault(v, scene_names[r["image"].split("/")[-1]] + "-s")
            img = rng.integers(0, 256, (IMG, IMG, 3)).astype(np.uint8)
            (images / r["image"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(images / r["image"])
            index_lines.append(",".join([r["image"], r["split"], str(IMG), str(IMG), str(SEG),
                                         str(SEG), r["color"], r["object"], r["part"], "",
                                         r["scene"], ""]))
        (root / "index.csv").write_text("\n".join(index_lines) + "\n")

        # label.csv: label 0 ("-"), pixel labels, the scene numbers of the rows.
        self.labels = {}                      # number -> (name, {category: count})
        for cat, labels in list(PIXEL_LABELS.items()) + [("material", MATERIAL)]:
            for number, name in labels.items():
                self.labels.setdefault(number, (name, {}))[1][cat] = 5
        for number, name in self.scene_labels.items():
            self.labels[number] = (name, {"scene": 1})
        lines = ["number,name,category,frequency,coverage,syns", "0,-,,0,0,"]
        for number in sorted(self.labels):
            name, cats = self.labels[number]
            field = CATEGORY_FIELD.get(number, ";".join(f"{c}({k})" for c, k in cats.items()))
            lines.append(f"{number},{name},{field},{FREQUENCY.get(number, 10)},0.5,{name}")
        (root / "label.csv").write_text("\n".join(lines) + "\n")
        cats = ["color", "object", "part", "material", "scene", "texture"]
        (root / "category.csv").write_text(
            "name,first,last,count,frequency\n"
            + "".join(f"{c},1,2,3,4\n" for c in cats))
        for cat, labels in PIXEL_LABELS.items():
            (root / f"c_{cat}.csv").write_text(
                "code,number,name,frequency,coverage\n"
                + "".join(f"{code},{number},{labels[number]},10,0.5\n"
                          for code, number in enumerate(sorted(labels), start=1)))

    def expected(self, categories=("color", "object", "part", "scene"), split=None,
                 min_frequency=0, upsample=1):
        """Concept names, categories and dense masks [N, K, H, W], computed from the arrays."""
        numbers, cats = [], []
        for number in sorted(self.labels):
            name, field = self.labels[number]
            field = parse_label_categories(CATEGORY_FIELD.get(number, "")) or field
            mine = [c for c in categories if c in field]
            if not mine or FREQUENCY.get(number, 10) < min_frequency:
                continue
            numbers.append(number)
            cats.append(max(mine, key=lambda c: field[c]))
        names = [self.labels[n][0] for n in numbers]
        names = [f"{nm}-{c}" if names.count(nm) > 1 else nm for nm, c in zip(names, cats)]
        keep = [i for i, r in enumerate(self.rows) if split is None or r["split"] == split]
        masks = np.zeros((len(keep), len(numbers), SEG, SEG), bool)
        for q, i in enumerate(keep):
            for j, number in enumerate(numbers):
                for cat in categories:
                    for lab in self.maps[i].get(cat, []):
                        masks[q, j] |= lab == number
                if "scene" in categories and number in self.scenes[i]:
                    masks[q, j] = True
        if upsample > 1:
            masks = masks.repeat(upsample, axis=2).repeat(upsample, axis=3)
        return names, cats, masks, keep


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return Broden(tmp_path_factory.mktemp("broden"), SHARED_DATA)


@pytest.fixture
def broden_copy(generated, tmp_path):
    """A private copy of the generated directory, to break."""
    d = tmp_path / "broden"
    shutil.copytree(generated.root, d)
    return d


def first_png(generated, category="object"):
    return next(f for r in generated.rows for f in r[category].split(";") if f)


# ============================================================================ conversion

def test_fixture_uses_real_rows(generated, shared_data):
    splits = {r["split"] for r in generated.rows}
    layers = {len(r["part"].split(";")) if r["part"] else 0 for r in generated.rows}
    assert splits == {"train", "val"} and layers == {0, 1, 2, 3}
    assert len(generated.rows) == 12
    assert any(s == [0] for s in generated.scenes) and any(s == [] for s in generated.scenes)


def test_convert_matches_dense_masks(generated, tmp_path):
    out = tmp_path / "concepts.h5"
    summary = convert_broden(generated.root, out, progress=False)
    names, cats, masks, _ = generated.expected()
    cs = load_concepts(out)
    assert cs.n_samples == 12 and cs.grid == (SEG, SEG)
    assert list(cs.names) == names and list(cs.categories) == cats
    assert "handle-object" in names and "handle-part" in names         # made unique
    assert cats[names.index("door")] == "part"                         # primary category
    assert "wood-m" not in names and "-" not in names                  # no material data, label 0
    np.testing.assert_array_equal(cs.to_dense(), masks)
    assert summary.n_samples == 12 and summary.grid == (SEG, SEG)
    assert summary.n_concepts == len(names)
    assert dict(summary.categories) == {c: cats.count(c) for c in ("color", "object", "part",
                                                                    "scene")}
    assert dict(summary.label_layers) == {"color": 1, "object": 1, "part": 3}
    assert str(summary).startswith(f"wrote {out}")
    assert sorted(os.listdir(tmp_path)) == ["concepts.h5"]             # no temporaries left


@pytest.mark.parametrize("chunk_samples", [1, 5])
def test_chunked_decoding_gives_the_same_file(generated, tmp_path, chunk_samples):
    out = tmp_path / "c.h5"
    convert_broden(generated.root, out, chunk_samples=chunk_samples, with_index=True,
                   compression="gzip", progress=False)
    np.testing.assert_array_equal(load_concepts(out).to_dense(), generated.expected()[2])


def test_categories_filter(generated, tmp_path):
    out = tmp_path / "c.h5"
    summary = convert_broden(generated.root, out, categories=["object", "scene"],
                             progress=False)
    names, cats, masks, _ = generated.expected(categories=("object", "scene"))
    cs = load_concepts(out)
    assert list(cs.names) == names and list(cs.categories) == cats
    assert "handle" in names and cats[names.index("door")] == "object"
    assert not any(c in ("color", "part") for c in cats)
    np.testing.assert_array_equal(cs.to_dense(), masks)
    assert dict(summary.label_layers) == {"object": 1}
    # A comma-separated string works too; a category without data gives empty masks.
    convert_broden(generated.root, out, categories="material,color", progress=False)
    cs = load_concepts(out)
    assert cs.names[-1] == "wood-m" and cs.sizes[-1] == 0


def test_split_filter_keeps_index_order(generated, tmp_path):
    out = tmp_path / "c.h5"
    summary = convert_broden(generated.root, out, split="val", progress=False)
    names, cats, masks, keep = generated.expected(split="val")
    cs = load_concepts(out)
    assert summary.n_samples == len(keep) == cs.n_samples
    assert list(cs.names) == names
    np.testing.assert_array_equal(cs.to_dense(), masks)
    ds = BrodenDataset(generated.root, split="val")
    assert ds.names == tuple(generated.rows[i]["image"] for i in keep)


def test_grid_resizes_with_nearest_neighbour(generated, tmp_path):
    out = tmp_path / "c.h5"
    summary = convert_broden(generated.root, out, grid=(2 * SEG, 2 * SEG), progress=False)
    cs = load_concepts(out)
    assert cs.grid == summary.grid == (2 * SEG, 2 * SEG)
    np.testing.assert_array_equal(cs.to_dense(), generated.expected(upsample=2)[2])


def test_min_frequency_drops_rare_labels(generated, tmp_path):
    out = tmp_path / "c.h5"
    convert_broden(generated.root, out, min_frequency=2, progress=False)
    names, _, masks, _ = generated.expected(min_frequency=2)
    cs = load_concepts(out)
    assert "window" not in names and list(cs.names) == names
    np.testing.assert_array_equal(cs.to_dense(), masks)


def test_mixed_segmentation_sizes_need_a_grid(broden_copy, tmp_path):
    lines = (broden_copy / "index.csv").read_text().splitlines()
    fields = lines[3].split(",")
    fields[4:6] = ["4", "4"]                            # row 3: a 4x4 segmentation
    for f in ";".join(fields[6:9]).split(";"):
        if f:
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(broden_copy / "images" / f)
    lines[3] = ",".join(fields)
    (broden_copy / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 4: image '.*' has segmentation size 4x4.*"
                                         r"8x8.*grid"):
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)
    convert_broden(broden_copy, tmp_path / "c.h5", grid=(SEG, SEG), progress=False)
    assert load_concepts(tmp_path / "c.h5").grid == (SEG, SEG)


# ============================================================================ metadata

def test_read_broden_index(generated):
    index = read_broden_index(generated.root)
    assert len(index.rows) == 12 and index.rows[0].line == 2
    assert dict(index.column_kinds) == {"color": "pixel", "object": "pixel", "part": "pixel",
                                        "material": None, "scene": "image", "texture": None}
    assert index.categories == ("color", "object", "part", "material", "scene", "texture")
    assert index.labels[1513].categories == {"object": 4, "part": 9}
    assert index.labels[1514].frequency == 1
    assert index.category_codes["part"] == {1: 1513, 2: 1520, 3: 1521, 4: 1522}
    assert index.members("part") == {1513, 1520, 1521, 1522}
    assert len(index.select("val")) == sum(r["split"] == "val" for r in generated.rows)


def test_parse_label_categories():
    assert parse_label_categories("object(12);part(3)") == {"object": 12, "part": 3}
    assert parse_label_categories(" scene (2) ") == {"scene": 2}
    assert parse_label_categories("-") == {}
    with pytest.raises(ValueError, match="object12"):
        parse_label_categories("object12")


def test_real_index_parses(shared_data):
    """The real ADE20k index of Broden parses: sizes, splits, PNG lists and scene numbers."""
    path = shared_data / "broden" / "index_ade20k.csv"
    rows, kinds = read_index_csv(path)
    with open(path, newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert len(rows) == len(raw) == 22210
    assert kinds == {"color": "pixel", "object": "pixel", "part": "pixel", "material": None,
                     "scene": "image", "texture": None}
    assert {(r.ih, r.iw, r.sh, r.sw) for r in rows} == {(224, 224, 112, 112)}
    assert sum(r.split == "val" for r in rows) == sum(r["split"] == "val" for r in raw)
    for r, d in zip(rows[:500], raw[:500]):
        assert r.image == d["image"]
        assert r.pixel.get("part", ()) == tuple(f for f in d["part"].split(";") if f)
        assert r.labels.get("scene", ()) == tuple(int(v) for v in d["scene"].split(";") if v)
    assert max(len(r.pixel.get("part", ())) for r in rows) == 3


# ============================================================================ errors

@pytest.mark.parametrize("name", ["index.csv", "label.csv", "category.csv"])
def test_missing_metadata_file(broden_copy, tmp_path, name):
    (broden_copy / name).unlink()
    with pytest.raises(FileNotFoundError) as err:
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)
    assert err.value.filename == str(broden_copy / name)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="Broden directory"):
        read_broden_index(tmp_path / "nowhere")


def test_missing_png(generated, broden_copy, tmp_path):
    png = broden_copy / "images" / first_png(generated)
    png.unlink()
    with pytest.raises(FileNotFoundError) as err:
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)
    assert err.value.filename == str(png)


def test_corrupt_png_leaves_no_files(generated, broden_copy, tmp_path):
    png = broden_copy / "images" / first_png(generated, "part")
    png.write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG at all")
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.h5").write_bytes(b"previous")
    with pytest.raises(ValueError, match=re.escape(f"'{png}' is not a readable image")):
        convert_broden(broden_copy, out / "c.h5", progress=False)
    assert os.listdir(out) == ["c.h5"] and (out / "c.h5").read_bytes() == b"previous"


def test_truncated_png(generated, broden_copy, tmp_path):
    png = broden_copy / "images" / first_png(generated, "color")
    png.write_bytes(png.read_bytes()[:60])
    with pytest.raises(ValueError, match=re.escape(f"'{png}' is not a readable image")):
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)


def test_png_of_the_wrong_size(generated, broden_copy, tmp_path):
    png = broden_copy / "images" / first_png(generated)
    Image.fromarray(np.zeros((SEG, SEG + 1, 3), np.uint8)).save(png)
    with pytest.raises(ValueError, match=re.escape(f"'{png}' is 8x9") + ".* sh x sw = 8x8"):
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)


def test_grayscale_png_is_refused(generated, broden_copy, tmp_path):
    png = broden_copy / "images" / first_png(generated)
    Image.fromarray(np.zeros((SEG, SEG), np.uint8)).save(png)
    with pytest.raises(ValueError, match=re.escape(f"'{png}' has mode L")):
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)


def test_unknown_label_in_png(generated, broden_copy, tmp_path):
    png = broden_copy / "images" / first_png(generated)
    lab = np.zeros((SEG, SEG), np.int64)
    lab[2, 3] = 1600                                  # not in label.csv
    Image.fromarray(encode_png(lab, np.random.default_rng(0))).save(png)
    message = f"'{png}' holds label 1600 (at pixel y=2, x=3)"
    with pytest.raises(ValueError, match=re.escape(message)):
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)


def test_unknown_scene_label(broden_copy, tmp_path):
    lines = (broden_copy / "index.csv").read_text().splitlines()
    fields = lines[2].split(",")
    fields[10] = "1234"
    lines[2] = ",".join(fields)
    (broden_copy / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"index.csv', line 3, column 'scene': label 1234 is "
                                         r"not listed"):
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)


@pytest.mark.parametrize("file, edit, message", [
    ("index.csv", lambda t: t.replace(",8,8,", ",8,eight,", 1),
     r"index.csv', line 2, column 'sw': expected an integer, found 'eight'"),
    ("index.csv", lambda t: t.replace("image,", "picture,", 1),
     r"index.csv', line 1: missing column 'image'"),
    ("index.csv", lambda t: t + "extra.jpg,train,16,16\n",
     r"index.csv', line 14: expected 12 fields"),
    ("index.csv", lambda t: t.replace(",16,16,8,8,", ",16,16,0,8,", 1),
     r"index.csv', line 2, column 'sh': expected an integer >= 1, found 0"),
    ("label.csv", lambda t: t.replace("1501,", "15x01,"),
     r"label.csv', line \d+, column 'number': expected an integer, found '15x01'"),
    ("label.csv", lambda t: t.replace("category,", "kind,"),
     r"label.csv', line 1: missing column 'category'"),
    ("label.csv", lambda t: t.replace("color(5)", "color[5]"),
     r"label.csv', line \d+, column 'category': .*'color\[5\]'"),
    ("label.csv", lambda t: t.replace(",10,0.5,", ",many,0.5,", 1),
     r"label.csv', line \d+, column 'frequency': expected a number, found 'many'"),
    ("label.csv", lambda t: t + "1501,again,color(1),1,1,\n",
     r"label.csv', line \d+, column 'number': label 1501 is listed twice"),
    ("category.csv", lambda t: t.replace("name,", "title,"),
     r"category.csv', line 1: missing column 'name'"),
    ("c_part.csv", lambda t: t.replace("1,1513", "one,1513"),
     r"c_part.csv', line 2, column 'code': expected an integer, found 'one'"),
])
def test_malformed_csv(broden_copy, tmp_path, file, edit, message):
    p = broden_copy / file
    p.write_text(edit(p.read_text()))
    with pytest.raises(ValueError, match=message):
        convert_broden(broden_copy, tmp_path / "c.h5", progress=False)


def test_column_mixing_files_and_numbers(broden_copy):
    lines = (broden_copy / "index.csv").read_text().splitlines()
    fields = lines[5].split(",")
    fields[10] = "x.png"                               # a file name in the scene column
    lines[5] = ",".join(fields)
    (broden_copy / "index.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 6, column 'scene': found 'x.png', but the "
                                         r"column held label numbers from line \d+"):
        read_broden_index(broden_copy)


def test_bad_arguments(generated, tmp_path):
    out = tmp_path / "c.h5"
    with pytest.raises(ValueError, match=r"'sky' is not a category column .*color, object"):
        convert_broden(generated.root, out, categories=["sky"], progress=False)
    with pytest.raises(ValueError, match=r"split 'test': no row .*'train', 'val'"):
        convert_broden(generated.root, out, split="test", progress=False)
    with pytest.raises(ValueError, match="grid"):
        convert_broden(generated.root, out, grid=(0, 4), progress=False)
    with pytest.raises(TypeError, match="grid"):
        convert_broden(generated.root, out, grid="8x8", progress=False)
    with pytest.raises(ValueError, match="no concepts"):
        convert_broden(generated.root, out, min_frequency=1000, progress=False)
    with pytest.raises(ValueError, match="chunk_samples"):
        convert_broden(generated.root, out, chunk_samples=0, progress=False)
    with pytest.raises(FileNotFoundError, match="output"):
        convert_broden(generated.root, tmp_path / "no" / "c.h5", progress=False)
    assert not out.exists()


# ============================================================================ images

def test_dataset_normalises_like_the_model_needs(generated):
    import torch

    ds = BrodenDataset(generated.root)
    assert len(ds) == 12 and ds.names == tuple(r["image"] for r in generated.rows)
    assert ds.description == f"broden:{generated.root}"
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for i in (0, 11):
        x = ds[i]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        assert tuple(x.shape) == (3, IMG, IMG)
        with Image.open(generated.root / "images" / generated.rows[i]["image"]) as im:
            rgb = np.asarray(im.convert("RGB"))
        expected = ((rgb / 255.0 - mean) / std).transpose(2, 0, 1)
        np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(ds.raw_image(i), rgb)
    np.testing.assert_array_equal(ds[-1].numpy(), ds[11].numpy())
    with pytest.raises(IndexError):
        ds[12]


def test_dataset_resizes_and_batches(generated):
    import torch

    ds = BrodenDataset(generated.root, split="train", size=(6, 10), mean=(0, 0, 0),
                       std=(1, 1, 1))
    assert ds.description.endswith(":train")
    with Image.open(ds.image_path(0)) as im:
        rgb = np.asarray(im.convert("RGB").resize((10, 6), Image.BILINEAR))
    np.testing.assert_allclose(ds[0].numpy(), rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert tuple(batch.shape) == (4, 3, 6, 10)


def test_dataset_errors(generated, broden_copy):
    img = broden_copy / "images" / generated.rows[1]["image"]
    Image.fromarray(np.zeros((IMG, IMG + 2, 3), np.uint8)).save(img, format="JPEG")
    ds = BrodenDataset(broden_copy)
    message = re.escape(f"image '{img}' is 16x18") + ".* ih x iw = 16x16"
    with pytest.raises(ValueError, match=message):
        ds[1]
    img.unlink()
    with pytest.raises(FileNotFoundError) as err:
        ds[1]
    assert err.value.filename == str(img)
    img.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=re.escape(f"'{img}' is not a readable image")):
        ds.raw_image(1)
    with pytest.raises(ValueError, match="std must be positive"):
        BrodenDataset(broden_copy, std=(1, 0, 1))
    with pytest.raises(TypeError, match="size"):
        BrodenDataset(broden_copy, size="big")
    (broden_copy / "index.csv").unlink()
    with pytest.raises(FileNotFoundError):
        BrodenDataset(broden_copy)


# ============================================================================ command line

def test_cli_convert_broden(generated, tmp_path, capsys):
    out = tmp_path / "c.h5"
    assert main(["convert-broden", str(generated.root), str(out), "--categories",
                 "object,scene", "--split", "train", "--grid", "16,16", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "grid 16x16" in text
    names, _, masks, _ = generated.expected(categories=("object", "scene"), split="train",
                                            upsample=2)
    cs = load_concepts(out)
    assert list(cs.names) == names
    np.testing.assert_array_equal(cs.to_dense(), masks)


def test_cli_reports_errors(tmp_path, capsys):
    assert main(["convert-broden", str(tmp_path), str(tmp_path / "c.h5"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compexp convert-broden: error:") and "index.csv" in err
    with pytest.raises(SystemExit):
        main(["convert-broden", str(tmp_path), "c.h5", "--grid", "a,b"])


def test_module_doctests():
    result = doctest.testmod(broden, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
