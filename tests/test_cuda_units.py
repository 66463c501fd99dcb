"""Thresholds and unit masks on the GPU, and activations that stay in device memory.

The device arrays here are the module's own test buffers (``_cuda._TestDeviceBuffer``, memory
from cudaMalloc) behind a minimal ``__cuda_array_interface__``: what torch CUDA tensors and CuPy
arrays expose, without either library. Everything is compared bit for bit with the CPU path.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compexp_core as cx
from compexp_core.engine.backends import get_backend
from compexp_core.engine.masks import MaskSet
from compexp_core.engine.units import DeviceActivations, as_activations, compute_thresholds, unit_masks

requires_gpu = pytest.mark.skipif(not cx.cuda_available(), reason="needs a CUDA build and a GPU")
pytestmark = [pytest.mark.gpu, requires_gpu]


class FakeCudaArray:
    """A device copy of a host array, exposing __cuda_array_interface__ (version 3)."""

    def __init__(self, host, strides=None, device=0, typestr=None):
        from compexp_core import _cuda

        host = np.ascontiguousarray(host)
        self.buf = _cuda._TestDeviceBuffer(host, 0)
        self.shape = host.shape
        self.device = device          # the ordinal it claims (tests of a mismatch use another)
        self._cai = {"shape": host.shape, "typestr": typestr or host.dtype.str,
                     "data": (self.buf.ptr, False), "strides": strides, "version": 3}

    @property
    def __cuda_array_interface__(self):
        return self._cai


def cpu_masks(acts, ids, grid, t):
    m = unit_masks(acts, ids, grid, t)
    return m.arrays(), m.popcounts()


def gpu_masks(acts, ids, grid, t, n_concepts=2):
    """(host arrays, popcounts) of the GPU's unit masks of ``acts`` (a host array, copied to the
    device first), and its thresholds."""
    n = acts.shape[0]
    cs = cx.ConceptSet.from_dense(np.zeros((n, n_concepts, *grid), bool))
    be = get_backend("cuda")
    index = be.prepare(cs)
    dev = DeviceActivations(FakeCudaArray(acts))
    dm, pop = be.unit_masks(index, dev, ids, grid, t)
    return be.to_host(index, dm).arrays(), pop


def assert_same_masks(a, b):
    """(mask arrays (ptr, block, words), popcounts) pairs, equal bit for bit."""
    for x, y in zip(a[0], b[0]):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[1], b[1])


def device_thresholds(acts, q, ids):
    n = acts.shape[0]
    cs = cx.ConceptSet.from_dense(np.zeros((n, 1, 1, 1), bool))
    be = get_backend("cuda")
    return be.thresholds(be.prepare(cs), DeviceActivations(FakeCudaArray(acts)), q, ids)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), u=st.integers(1, 3), hw=st.sampled_from([(7, 7), (1, 1), (3, 5), (9, 4), (4, 4)]),
       grid=st.sampled_from([(14, 14), (7, 7), (1, 1), (5, 9), (2, 3), (3, 2)]),
       q=st.sampled_from([0.005, 0.1, 0.5, 0.9]), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([np.float32, np.float64]), kind=st.sampled_from(["normal", "ties", "constant"]))
def test_gpu_thresholds_and_masks_equal_cpu(n, u, hw, grid, q, seed, dtype, kind):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n, u, *hw)).astype(dtype)
    if kind == "ties":
        acts = np.round(acts * 2)
    elif kind == "constant":
        acts[:] = dtype(0.75)
    ids = np.arange(u)
    t_cpu = compute_thresholds(acts, q)
    t_gpu = device_thresholds(acts, q, ids)
    np.testing.assert_array_equal(t_gpu.view(np.uint64), t_cpu.view(np.uint64))   # bit for bit
    assert_same_masks(gpu_masks(acts, ids, grid, t_cpu), cpu_masks(acts, ids, grid, t_cpu))


@pytest.mark.parametrize("hw, grid", [((7, 7), (112, 112)), ((12, 9), (5, 8)), ((20, 4), (3, 4)),
                                      ((4, 20), (4, 3)), ((1, 1), (6, 6)), ((5, 5), (5, 5)),
                                      ((6, 6), (1, 1)), ((3, 3), (3, 7)), ((8, 3), (2, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_resize_grids_incl_downsampling(hw, grid, dtype):
    # Upsampling, downsampling (vertical pass first when the height shrinks much more), one
    # axis only, 1x1 in and out, the same size.
    rng = np.random.default_rng(hash((hw, grid)) % 2**32)
    n = 2 if grid == (112, 112) else 4
    acts = rng.standard_normal((n, 2, *hw)).astype(dtype)
    ids = np.array([0, 1])
    t = compute_thresholds(acts, 0.2)
    assert_same_masks(gpu_masks(acts, ids, grid, t), cpu_masks(acts, ids, grid, t))


def test_gpu_masks_of_a_unit_subset_and_float64_extremes():
    rng = np.random.default_rng(5)
    for acts in (1 + rng.random((6, 4, 4, 4)) * 1e-9, rng.random((6, 4, 4, 4)) * 1e300):
        ids = np.array([1, 3])
        t = compute_thresholds(acts, 0.1, ids)
        np.testing.assert_array_equal(device_thresholds(acts, 0.1, ids), t)
        assert_same_masks(gpu_masks(acts, ids, (8, 8), t), cpu_masks(acts, ids, (8, 8), t))


def test_gpu_sample_level_values():
    rng = np.random.default_rng(6)
    acts = rng.standard_normal((40, 3))
    ids = np.arange(3)
    t = compute_thresholds(acts, 0.25)
    np.testing.assert_array_equal(device_thresholds(acts, 0.25, ids), t)
    assert_same_masks(gpu_masks(acts, ids, (2, 3), t), cpu_masks(acts, ids, (2, 3), t))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_gpu_thresholds_refuse_non_finite(bad):
    acts = np.ones((3, 3, 2, 2), np.float32)
    acts[1, 2, 0, 1] = bad
    with pytest.raises(ValueError, match="unit 2 contain NaN or infinite"):
        device_thresholds(acts, 0.1, np.arange(3))


def test_search_with_device_acts_equals_cpu_search():
    rng = np.random.default_rng(7)
    n, grid = 12, (6, 6)
    acts = rng.standard_normal((n, 3, 3, 3)).astype(np.float32)
    masks = rng.random((n, 5, *grid)) < 0.3
    want = cx.search_formulas(acts, masks, max_length=2, beam_size=3, quantile=0.1)
    got = cx.search_formulas(FakeCudaArray(acts), masks, max_length=2, beam_size=3, quantile=0.1,
                             device="cuda:0")
    assert got.params["device"] == "cuda:0"
    for a, b in zip(got, want):
        assert (str(a.formula), a.iou, a.threshold) == (str(b.formula), b.iou, b.threshold)


def test_search_with_strided_device_acts():
    # A non-contiguous view (every other unit) through the interface's strides.
    rng = np.random.default_rng(8)
    full = rng.standard_normal((10, 4, 3, 3))
    masks = rng.random((10, 3, 4, 4)) < 0.4
    arr = FakeCudaArray(full)
    arr._cai = dict(arr._cai, shape=(10, 2, 3, 3), strides=(4 * 9 * 8, 2 * 9 * 8, 3 * 8, 8))
    want = cx.search_formulas(full[:, ::2], masks, max_length=2, beam_size=2, quantile=0.2)
    got = cx.search_formulas(arr, masks, max_length=2, beam_size=2, quantile=0.2, device="cuda")
    for a, b in zip(got, want):
        assert (str(a.formula), a.iou) == (str(b.formula), b.iou)


def test_device_acts_errors_are_clear():
    acts = np.zeros((4, 2, 2, 2), np.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        DeviceActivations(FakeCudaArray(acts))
    arr = FakeCudaArray(np.zeros((4, 2, 2, 2), np.float32))
    arr._cai = dict(arr._cai, strides=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="multiples of the item size"):
        DeviceActivations(arr)
    arr = FakeCudaArray(np.zeros((4, 2, 2, 2), np.float32), device=3)
    masks = np.zeros((4, 2, 2, 2), bool)
    with pytest.raises(ValueError, match="cuda:3"):
        cx.search_formulas(arr, masks, device="cuda:0")
    # On the CPU a GPU array that is not CuPy is refused, with the way out.
    with pytest.raises(TypeError, match="device='cuda'"):
        as_activations(FakeCudaArray(np.zeros((4, 2), np.float32)))


def test_device_acts_are_not_copied_to_the_host(monkeypatch):
    # The host path (engine.units.unit_masks / compute_thresholds) is never called.
    import compexp_core.engine.backends as b

    def boom(*a, **k):
        raise AssertionError("host path used for device activations")

    monkeypatch.setattr(b, "unit_masks", boom)
    monkeypatch.setattr(b, "compute_thresholds", boom)
    rng = np.random.default_rng(9)
    acts = rng.standard_normal((6, 2, 2, 2))
    masks = rng.random((6, 3, 4, 4)) < 0.5
    res = cx.search_formulas(FakeCudaArray(acts), masks, max_length=2, beam_size=2, device="cuda")
    assert len(res) == 2


def test_device_acts_wait_for_the_producer_stream():
    # __cuda_array_interface__ v3 "stream": 1 (the legacy default stream) is waited for.
    rng = np.random.default_rng(10)
    acts = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    masks = rng.random((6, 3, 4, 4)) < 0.4
    arr = FakeCudaArray(acts)
    arr._cai = dict(arr._cai, stream=1)
    assert DeviceActivations(arr).stream == 1
    want = cx.search_formulas(acts, masks, max_length=2, beam_size=2)
    got = cx.search_formulas(arr, masks, max_length=2, beam_size=2, device="cuda")
    assert [(str(e.formula), e.iou) for e in got] == [(str(e.formula), e.iou) for e in want]
    arr._cai = dict(arr._cai, stream=0)
    with pytest.raises(ValueError, match="stream"):
        DeviceActivations(arr)
