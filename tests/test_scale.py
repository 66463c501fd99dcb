"""The concept index at the reference scale (Broden ADE20k: 22,210 images of 112x112 cells,
~1,200 concepts) builds chunk by chunk in bounded memory, never as dense masks (42 GB)."""
import resource

import numpy as np
import pytest

from compexp_core import ConceptSetBuilder


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@pytest.mark.slow
def test_reference_scale_index_builds_in_bounded_memory(shared_data):
    with open(shared_data / "broden" / "index_ade20k.csv") as fh:
        n_images = sum(1 for _ in fh) - 1
    assert n_images == 22210
    n_objects, n_colors, n_scenes = 580, 11, 600
    names = [f"o{j}" for j in range(n_objects)] + [f"c{j}" for j in range(n_colors)] + \
        [f"s{j}" for j in range(n_scenes)]
    rng = np.random.default_rng(0)
    before = peak_rss_gib()
    b = ConceptSetBuilder(n_images, (112, 112), names)
    mapping = np.concatenate([[-1], np.arange(n_objects + n_colors)])
    chunk = 1024
    for s in range(0, n_images, chunk):
        m = min(chunk, n_images - s)
        maps = np.zeros((m, 2, 112, 112), np.int32)
        # ~10 rectangular segments per image, Zipf-like object labels, one color per segment.
        for _ in range(10):
            y, x = rng.integers(0, 80, 2)
            hh, ww = rng.integers(8, 56, 2)
            maps[:, 0, y:y + hh, x:x + ww] = (rng.zipf(1.3, m) % n_objects + 1)[:, None, None]
            maps[:, 1, y:y + hh, x:x + ww] = (rng.integers(0, n_colors, m) + n_objects + 1)[:, None, None]
        b.add_label_maps(maps, mapping, sample_offset=s)
    scenes = np.zeros((n_images, n_scenes), bool)
    scenes[np.arange(n_images), rng.integers(0, n_scenes, n_images)] = True
    b.add_sample_labels(scenes, list(range(n_objects + n_colors, len(names))))
    cs = b.build()
    assert cs.n_cells == 22210 * 112 * 112 and cs.n_concepts == 1191
    assert int(cs.sizes[n_objects + n_colors:].sum()) == cs.n_cells   # one scene per image
    assert cs.nbytes < 1 << 30                                           # well under 1 GiB
    assert peak_rss_gib() - before < 3.0                                 # "a few GB" at most
