"""The built-in example: the procedural world's labels, and the real demo's findings."""
import numpy as np
import pytest

import compexp_core as cx
from compexp_core.world import (COLORS, MATERIALS, PARTS, SCENES, SHAPES, concept_names,
                                make_world, task_class_names, write_world_files)


@pytest.fixture(scope="module")
def world():
    return make_world(60, seed=3)


def test_world_is_deterministic(world):
    again = make_world(60, seed=3)
    assert np.array_equal(world.images, again.images)
    assert all(np.array_equal(world.labels[k], again.labels[k]) for k in world.labels)
    assert not np.array_equal(world.images, make_world(60, seed=4).images)


def test_world_labels_are_consistent(world):
    color, shape, part, material = (world.labels[k] for k in ("color", "object", "part",
                                                              "material"))
    # Every shape pixel has a colour and every coloured pixel is a shape.
    assert np.array_equal(color > 0, shape > 0)
    # Parts lie on shapes; every shape pixel next to the background is edge or corner.
    assert not (part[shape == 0] > 0).any()
    inside = shape > 0
    border = inside.copy()
    border[:, 1:-1, 1:-1] = inside[:, 1:-1, 1:-1] & ~(
        inside[:, :-2, 1:-1] & inside[:, 2:, 1:-1] & inside[:, 1:-1, :-2] & inside[:, 1:-1, 2:])
    assert (part[border & (np.arange(64) % 63 != 0)[None, :, None]
                 & (np.arange(64) % 63 != 0)[None, None, :]] > 0).all()
    # The background is all material; label values stay in range.
    assert (material > 0).all() and material.max() <= len(MATERIALS)
    assert color.max() <= len(COLORS) and shape.max() <= len(SHAPES) and part.max() <= len(PARTS)
    assert set(np.unique(world.scene)) <= set(range(len(SCENES)))


def test_world_target_is_the_largest_visible_shape(world):
    names = task_class_names()
    for i in range(len(world)):
        color, shape = world.labels["color"][i], world.labels["object"][i]
        c, s = divmod(int(world.target[i]), len(SHAPES))
        # The target's colour and shape are visible, together, in the image.
        assert ((color == c + 1) & (shape == s + 1)).any(), names[world.target[i]]


def test_world_pixels_match_labels(world):
    # Red pixels are red-ish: the images show what the labels say.
    img = world.images.astype(int)
    red = world.labels["color"] == COLORS.index("red") + 1
    if red.any():
        assert (img[red][:, 0] > img[red][:, 2] + 60).mean() > 0.95


def test_world_files_make_the_concept_set(world, tmp_path):
    write_world_files(world, tmp_path / "images.h5", tmp_path / "concepts.h5")
    cs = cx.load_concepts(tmp_path / "concepts.h5")
    assert list(zip(cs.names, cs.categories)) == concept_names()
    dense = cs.to_dense()
    assert np.array_equal(dense[:, cs.index("red")], world.labels["color"] == 1)
    assert np.array_equal(dense[:, cs.index("corner")], world.labels["part"] == 2)
    assert np.array_equal(dense[:, cs.index("beach")].all(axis=(1, 2)), world.scene == 1)
    meta = cx.io.read_images_metadata(tmp_path / "images.h5")
    assert np.array_equal(meta["labels"], world.target) and meta["label_names"][0] == "red circle"


@pytest.mark.parametrize("n, size", [(0, 64), (3, 16), (True, 64)])
def test_world_rejects_bad_sizes(n, size):
    with pytest.raises(ValueError):
        make_world(n, size=size)


@pytest.mark.slow
def test_full_demo_finds_compositional_units(tmp_path, monkeypatch):
    """The README's demo at its real size: the trained CNN has units whose formula clearly
    beats their best single concept, and they combine a colour with a shape or part."""
    from compexp_core.demo import DemoConfig, run_demo

    monkeypatch.setenv("COMPEXP_CACHE_DIR", str(tmp_path / "cache"))
    lines = []
    summary = run_demo(str(tmp_path / "demo"), DemoConfig(), progress=False, log=lines.append)
    assert summary.accuracy > 0.6
    assert summary.n_units == 96 and summary.n_compositional >= 10
    assert np.all(np.diff(summary.mean_iou_by_length) >= 0) and summary.mean_iou_by_length.size == 10
    assert summary.mean_iou_by_length[2] > 1.3 * summary.mean_iou_by_length[0]
    result = cx.load_results(tmp_path / "demo" / "explanations.h5")
    colour_and_other = [e for e in result if e.formula is not None
                        and set(e.formula.leaves()) & set(COLORS)
                        and set(e.formula.leaves()) & set(SHAPES + PARTS)
                        and e.iou >= 1.2 * e.primitive_iou]
    assert len(colour_and_other) >= 5
    assert summary.report and (tmp_path / "demo" / "report" / "index.html").exists()
