"""Dense concept masks in GPU memory: the concept index built on the GPU (csrc/cuda/builder.cu)
equals the CPU builder's array for array, and searches from it equal the CPU's.

The GPU arrays are the module's own test buffers (``_cuda._TestDeviceBuffer``, cudaMalloc)
behind a minimal ``__cuda_array_interface__``, as torch CUDA tensors and CuPy arrays expose it.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compexp_core as cx
from compexp_core import ConceptSet
from compexp_core.engine.backends import get_backend
from compexp_core.engine.concepts import DeviceConceptSet
from compexp_core.engine.masks import MaskSet
from compexp_core.inputs import concepts_input

requires_gpu = pytest.mark.skipif(not cx.cuda_available(), reason="needs a CUDA build and a GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]

ARRAYS = ("block_ptr", "entry_concept", "entry_words", "full_ptr", "full_concept")


class FakeCudaMasks:
    """Masks copied to device memory behind __cuda_array_interface__ (version 3).

    layout "c": C order; "nhwk": stored [N, H, W, K] and exposed [N, K, H, W] through strides
    (a non-contiguous array). ``device`` is the ordinal it claims; ``get`` copies it back (as
    CuPy's ``.get()``)."""

    def __init__(self, host, layout="c", device=0, typestr=None):
        from compexp_core import _cuda

        host = np.asarray(host)
        self.host = host
        if layout == "nhwk":
            stored = np.ascontiguousarray(np.moveaxis(host, 1, -1))
            s = stored.strides                      # bytes of [N, H, W, K]
            strides = (s[0], s[3], s[1], s[2])
        else:
            stored = np.ascontiguousarray(host)
            strides = None
        self.buf = _cuda._TestDeviceBuffer(stored, 0)
        self.device = device
        self._cai = {"shape": host.shape, "typestr": typestr or host.dtype.str,
                     "data": (self.buf.ptr, False), "strides": strides, "version": 3}

    @property
    def __cuda_array_interface__(self):
        return self._cai

    def get(self):
        return self.host.copy()


def device_set(masks, **kw) -> DeviceConceptSet:
    cs = concepts_input(FakeCudaMasks(masks, **kw), backend=get_backend("cuda"))
    assert isinstance(cs, DeviceConceptSet)
    return cs


def assert_same_index(dev: DeviceConceptSet, host: ConceptSet):
    """The device-built set equals the CPU-built one array for array (and in its metadata)."""
    back = dev.to_host()
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(back.arrays, name), getattr(host.arrays, name), err_msg=name)
        assert getattr(back.arrays, name).dtype == getattr(host.arrays, name).dtype
    np.testing.assert_array_equal(dev.sizes, host.sizes)
    assert dev.sizes.dtype == np.int64
    assert dev.n_stored_blocks == host.n_stored_blocks
    assert (dev.n_samples, dev.grid, dev.names, dev.n_blocks, dev.n_cells) == \
        (host.n_samples, host.grid, host.names, host.n_blocks, host.n_cells)


def assert_same_kernels(dev: DeviceConceptSet, host: ConceptSet, rng):
    """Counts and materialisation with the device-built index equal the CPU's: this reads the
    concept-major view the device builder wrote (materialisation walks it)."""
    cuda, cpu = get_backend("cuda"), get_backend("cpu")
    di, hi = cuda.prepare(dev), cpu.prepare(host)
    assert di is dev.device_index                       # no upload: the index built on the GPU
    units = MaskSet.from_dense(rng.random((3, host.n_cells)) < 0.4)
    np.testing.assert_array_equal(cuda.primitive_counts(di, units), cpu.primitive_counts(hi, units))
    k = host.n_concepts
    leaves = np.arange(k, dtype=np.int32)
    src, op = np.zeros(k, np.int64), np.zeros(k, np.int32)          # LEAF of every concept
    d_leaf = cuda.to_host(di, cuda.materialize(di, MaskSet.empty(0), src, op, leaves))
    h_leaf = cpu.materialize(hi, MaskSet.empty(0), src, op, leaves)
    for x, y in zip(d_leaf.arrays(), h_leaf.arrays()):
        np.testing.assert_array_equal(x, y)
    unit_of = np.arange(k) % 3
    f_d, g_d, w_d = cuda.extension_counts(di, h_leaf, unit_of, units)
    f_h, g_h, w_h = cpu.extension_counts(hi, h_leaf, unit_of, units)
    np.testing.assert_array_equal(f_d, f_h)
    np.testing.assert_array_equal(g_d, g_h)
    assert w_d == w_h


# ---------------------------------------------------------------------------- the index
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 6),
       grid=st.sampled_from([(1, 1), (3, 5), (16, 32), (23, 23), (32, 32), (7, 1)]),
       density=st.sampled_from([0.0, 0.05, 0.5, 0.97, 1.0]), layout=st.sampled_from(["c", "nhwk"]),
       as_uint8=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_device_index_equals_cpu_index(n, k, grid, density, layout, as_uint8, seed):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, k, *grid)) < density
    masks[:, rng.integers(k)] = False                          # an all-empty concept
    if grid != (1, 1):
        masks[:, rng.integers(k)] = True                       # full blocks (and a ragged end)
    host = ConceptSet.from_dense(masks)
    arg = masks.astype(np.uint8) if as_uint8 else masks
    dev = device_set(arg[:, :, 0, 0] if grid == (1, 1) else arg, layout=layout if grid != (1, 1) else "c")
    assert_same_index(dev, ConceptSet.from_dense(masks[:, :, 0, 0]) if grid == (1, 1) else host)
    assert_same_kernels(dev, host if grid != (1, 1) else ConceptSet.from_dense(masks[:, :, 0, 0]), rng)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (4, 2, 16, 16), (3, 2, 10, 10), (1, 2, 1, 512),
                                   (1, 2, 1, 511), (1, 2, 1, 513), (1030, 3)])
def test_full_blocks_and_ragged_last_block(shape):
    """Concepts covering every cell: full blocks where a block lies inside the data, a partial
    entry in a padded last block (bits past the last cell stay zero); an empty concept."""
    masks = np.zeros(shape, bool)
    masks[:, 0] = True
    masks[:, 1].flat[::7] = True
    dev = device_set(masks)
    host = ConceptSet.from_dense(masks)
    assert_same_index(dev, host)
    assert_same_kernels(dev, host, np.random.default_rng(0))
    if shape[0] * int(np.prod(shape[2:])) % 512 == 0:
        assert dev.n_stored_blocks[1] > 0


def test_every_concept_empty():
    masks = np.zeros((5, 3, 4, 4), bool)
    dev = device_set(masks)
    assert dev.n_stored_blocks == (0, 0)
    assert dev.sizes.tolist() == [0, 0, 0]
    assert_same_index(dev, ConceptSet.from_dense(masks))
    assert_same_kernels(dev, ConceptSet.from_dense(masks), np.random.default_rng(1))


def test_many_concepts_take_the_shared_memory_optin_path():
    """K = 7000: 56 KB of per-concept accumulators, past the 48 KiB default, so the counting
    kernels opt in to more shared memory; the search from the device-built index equals the
    CPU's."""
    rng = np.random.default_rng(3)
    n, k = 64, 7000
    masks = rng.random((n, k)) < 0.1
    masks[:, 0] = masks[:, 1] | masks[:, 2]
    acts = np.stack([masks[:, 1] | masks[:, 5], masks[:, 7] & ~masks[:, 9]], axis=1)
    dev = device_set(masks)
    assert_same_index(dev, ConceptSet.from_dense(masks))
    r_gpu = cx.search_formulas(acts, FakeCudaMasks(masks), device="cuda", max_length=2, beam_size=3)
    r_cpu = cx.search_formulas(acts, masks, device="cpu", max_length=2, beam_size=3)
    assert [str(e.formula) for e in r_gpu] == [str(e.formula) for e in r_cpu]
    assert [e.iou for e in r_gpu] == [e.iou for e in r_cpu]


# ---------------------------------------------------------------------------- the search
@pytest.mark.parametrize("layout", ["c", "nhwk"])
def test_search_from_gpu_masks_equals_cpu(layout):
    rng = np.random.default_rng(7)
    masks = rng.random((12, 5, 9, 9)) < 0.3
    masks[:, 4] = True
    acts = rng.standard_normal((12, 3, 4, 4)).astype(np.float32)
    kw = dict(names=list("abcde"), max_length=3, beam_size=4, ops=("or", "and", "and_not", "or_not"))
    r_gpu = cx.search_formulas(acts, FakeCudaMasks(masks, layout=layout), device="cuda", **kw)
    r_cpu = cx.search_formulas(acts, masks, device="cpu", **kw)
    assert r_gpu.params["device"] == "cuda:0" and r_cpu.params["device"] == "cpu"
    for a, b in zip(r_gpu, r_cpu):
        assert (str(a.formula), a.iou, a.threshold) == (str(b.formula), b.iou, b.threshold)
        assert [(str(f), s) for f, s in a.by_length] == [(str(f), s) for f, s in b.by_length]
    # The CPU backend copies GPU masks to the host (.get()) and gives the same result.
    r_host = cx.search_formulas(acts, FakeCudaMasks(masks, layout=layout), device="cpu", **kw)
    assert r_host.params["device"] == "cpu"
    assert [str(e.formula) for e in r_host] == [str(e.formula) for e in r_cpu]


def test_device_set_on_the_cpu_backend_and_in_host_consumers():
    """A set built on the GPU still works where host data is needed: the CPU backend and host
    consumers copy it back once (to_host, cached)."""
    rng = np.random.default_rng(2)
    masks = rng.random((6, 3, 5, 5)) < 0.4
    dev = device_set(masks)
    acts = masks[:, :2] | masks[:, 2:3]
    r = cx.search_formulas(acts, dev, device="cpu", max_length=2)
    assert r.params["device"] == "cpu"
    assert [str(e.formula) for e in r] == [str(e.formula) for e in cx.search_formulas(acts, masks, device="cpu",
                                                                                      max_length=2)]
    assert dev.to_host() is dev.to_host()
    assert isinstance(concepts_input(dev), ConceptSet)                  # no backend: host set
    np.testing.assert_array_equal(dev.to_host().to_dense(), masks)
    assert dev.index("c2") == 2 and len(dev) == 3 and dev.mask_shape == (6, 5, 5)
    assert "DeviceConceptSet" in repr(dev) and dev.nbytes > 0


# ---------------------------------------------------------------------------- bad input
def test_bad_gpu_masks_raise_clear_errors():
    be = get_backend("cuda")
    m = np.zeros((4, 2, 3, 3), bool)
    with pytest.raises(TypeError, match="masks on the GPU must be bool.*float32"):
        concepts_input(FakeCudaMasks(m.astype(np.float32)), backend=be)
    with pytest.raises(ValueError, match=r"must be bool \[N, K, H, W\] or \[N, K\], got shape \(4, 2, 3\)"):
        concepts_input(FakeCudaMasks(m[:, :, 0]), backend=be)
    with pytest.raises(ValueError, match="zero concepts"):
        concepts_input(FakeCudaMasks(np.zeros((4, 0), bool)), backend=be)
    bad = m.astype(np.uint8)
    bad[1, 1, 2, 2] = 2
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        concepts_input(FakeCudaMasks(bad), backend=be)
    with pytest.raises(ValueError, match="masks lives on cuda:1 but the search runs on cuda:0"):
        concepts_input(FakeCudaMasks(m, device=1), backend=be)
    f = FakeCudaMasks(m)
    f._cai = {**f._cai, "strides": (18, -9, 3, 1)}
    with pytest.raises(ValueError, match="strides"):
        concepts_input(f, backend=be)
    with pytest.raises(ValueError, match="names has 1 entries"):
        concepts_input(FakeCudaMasks(m), names=["a"], backend=be)
    # The module's own checks, below the Python ones.
    from compexp_core import _cuda

    with pytest.raises(ValueError, match="must be bool"):
        _cuda.DeviceConceptIndex.from_dense(f.buf.ptr, "float32", (4, 2, 3, 3), None)
    with pytest.raises(ValueError, match="no empty axis"):
        _cuda.DeviceConceptIndex.from_dense(f.buf.ptr, "bool", (4, 0, 3, 3), None)
    with pytest.raises(ValueError, match="null data pointer"):
        _cuda.DeviceConceptIndex.from_dense(0, "bool", (4, 2, 3, 3), None)
    with pytest.raises(ValueError, match="does not exist"):
        _cuda.DeviceConceptIndex.from_dense(f.buf.ptr, "bool", (4, 2, 3, 3), None, device=5)


def test_device_set_on_another_gpu_is_refused():
    dev = device_set(np.ones((2, 1), bool))
    dev.device = 1                                     # as if it had been built on cuda:1
    with pytest.raises(ValueError, match=r"the concept set \(built on a GPU\) lives on cuda:1"):
        get_backend("cuda").prepare(dev)
