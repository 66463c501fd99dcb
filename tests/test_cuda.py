"""The CUDA backend: bit-identical to the CPU kernels, and clear errors without a GPU.

Tests marked ``gpu`` need a CUDA build and a visible GPU and are skipped otherwise; the others
check what a machine without a GPU must do (the module imports, no GPU is reported, and
``device="cuda"`` raises a RuntimeError that says why).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compexp_core as cx
from compexp_core import ConceptSet, _core
from compexp_core.engine import backends
from compexp_core.engine.backends import ExtensionWork, get_backend
from compexp_core.engine.masks import MaskSet

requires_gpu = pytest.mark.skipif(not cx.cuda_available(), reason="needs a CUDA build and a GPU")
gpu = [pytest.mark.gpu, requires_gpu]

CPU = get_backend("cpu")


def on(device, cs, method, *args):
    """Run one backend method on ``device`` for concept set ``cs``; masks come back to the host."""
    be = get_backend(device)
    index = be.prepare(cs)
    out = getattr(be, method)(index, *args)
    return be.to_host(index, out) if method == "materialize" else out


ALL_OPS = [_core.OP_LEAF, _core.OP_COPY, _core.OP_OR, _core.OP_AND, _core.OP_AND_NOT, _core.OP_OR_NOT]


# ---------------------------------------------------------------------------- without a GPU
def test_cuda_module_imports_when_built():
    if not cx.cuda_compiled():
        pytest.skip("this build has no CUDA backend (no nvcc at build time)")
    from compexp_core import _cuda

    assert isinstance(_cuda.device_count(), int)
    assert hasattr(_cuda, "DeviceConceptIndex")
    assert cx.backend_info()["cuda_compiled"] is True


def test_no_gpu_means_zero_devices_and_cpu_for_auto():
    if cx.cuda_available():
        pytest.skip("a GPU is present")
    assert cx.num_gpus() == 0
    if cx.cuda_compiled():
        from compexp_core import _cuda

        assert _cuda.device_count() == 0          # no driver or no device: 0, no exception
    assert get_backend("auto").name == "cpu"


def test_device_cuda_without_gpu_raises_and_says_how_to_fix():
    if cx.cuda_available():
        pytest.skip("a GPU is present")
    masks = np.zeros((8, 2), bool)
    masks[:4, 0] = True
    cs = ConceptSet.from_dense(masks)
    with pytest.raises(RuntimeError, match="device='cuda'.*device='cpu'"):
        cx.search_formulas(masks[:, :1], cs, device="cuda")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        get_backend("cuda")
    with pytest.raises(RuntimeError, match="device='cuda:3'"):
        get_backend("cuda:3")
    # "auto" quietly runs on the CPU.
    assert on("auto", cs, "primitive_counts", MaskSet.from_dense(masks.T[:1])).tolist() == [[4, 0]]
    if cx.cuda_compiled():
        from compexp_core import _cuda

        a = cs.arrays
        with pytest.raises(RuntimeError, match="no CUDA device"):
            _cuda.DeviceConceptIndex(cs.n_cells, cs.n_concepts, a.block_ptr, a.entry_concept,
                                     a.entry_words, a.full_ptr, a.full_concept)


# ---------------------------------------------------------------------------- on a GPU
def random_concepts(rng, n, k, h, w):
    density = rng.random(k) ** 3
    dense = rng.random((n, k, h, w)) < density[None, :, None, None]
    if k > 1:
        dense[:, 0] = True          # a full concept (full blocks)
        dense[:, 1] = False         # an empty concept
    if k > 2:
        dense[::2, 2] = True        # whole samples, as scenes
    return dense


def random_masks(rng, m, n_cells):
    dense = rng.random((m, n_cells)) < rng.random((m, 1)) ** 2
    if m > 1:
        dense[1] = False            # an empty mask
    return MaskSet.from_dense(dense)


def assert_same_masks(got, expected):
    for a, b, what in zip(got.arrays(), expected.arrays(), ("ptr", "block", "words")):
        assert a.dtype == b.dtype, what
        np.testing.assert_array_equal(a, b, err_msg=what)


def expected_work(cs, formulas):
    """(formula blocks, partial entries, full entries) under the formulas' stored blocks."""
    blocks = formulas.block
    return ExtensionWork(int(blocks.size), int(np.diff(cs.arrays.block_ptr)[blocks].sum()),
                         int(np.diff(cs.arrays.full_ptr)[blocks].sum()))


def check_all_kernels(cs, rng, n_units=5, n_formulas=9):
    P = cs.n_cells
    units = random_masks(rng, n_units, P)
    formulas = random_masks(rng, n_formulas, P)
    # Grouped by unit as the driver passes them, plus a few out of order.
    unit_of = np.sort(rng.integers(0, n_units, n_formulas))
    unit_of[-1] = 0
    np.testing.assert_array_equal(on("cuda", cs, "primitive_counts", units),
                                  on("cpu", cs, "primitive_counts", units))
    f_gpu, g_gpu, work_gpu = on("cuda", cs, "extension_counts", formulas, unit_of, units)
    f_cpu, g_cpu, work_cpu = on("cpu", cs, "extension_counts", formulas, unit_of, units)
    assert f_gpu.dtype == np.int64 and g_gpu.dtype == np.int64
    np.testing.assert_array_equal(f_gpu, f_cpu)
    np.testing.assert_array_equal(g_gpu, g_cpu)
    assert work_gpu == work_cpu == expected_work(cs, formulas)
    assert all(type(x) is int for x in (work_gpu.formula_blocks, work_gpu.partial_entries,
                                         work_gpu.full_entries))
    n_out = 3 * len(ALL_OPS)
    op = np.repeat(np.array(ALL_OPS, np.int32), 3)
    src = rng.integers(0, n_formulas, n_out)
    concept = rng.integers(0, cs.n_concepts, n_out).astype(np.int32)
    assert_same_masks(on("cuda", cs, "materialize", formulas, src, op, concept),
                      on("cpu", cs, "materialize", formulas, src, op, concept))


shapes = st.tuples(st.integers(1, 40), st.integers(1, 9), st.integers(1, 13), st.integers(1, 13))


@pytest.mark.gpu
@requires_gpu
@settings(max_examples=80, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_gpu_kernels_equal_cpu_on_random_inputs(shape, seed):
    rng = np.random.default_rng(seed)
    cs = ConceptSet.from_dense(random_concepts(rng, *shape))
    check_all_kernels(cs, rng)


@pytest.mark.gpu
@requires_gpu
def test_gpu_long_masks_span_several_chunks():
    # 300 samples of 24x24 = 172,800 cells = 338 blocks: masks longer than one 256-block chunk.
    rng = np.random.default_rng(1)
    cs = ConceptSet.from_dense(random_concepts(rng, 300, 6, 24, 24))
    check_all_kernels(cs, rng, n_units=3, n_formulas=4)


@pytest.mark.gpu
@requires_gpu
def test_gpu_many_concepts_use_global_accumulators():
    # K * 8 bytes beyond any GPU's shared memory per block (227 KiB on H100): the kernel adds
    # to global memory directly.
    rng = np.random.default_rng(2)
    cs = ConceptSet.from_dense(rng.random((3, 40000, 4, 4)) < 0.1)
    check_all_kernels(cs, rng, n_units=2, n_formulas=3)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("n_concepts", [6144, 6145, 29056, 29057])
def test_gpu_concept_counts_around_the_shared_memory_limits(n_concepts):
    # The counts kernel keeps one 8-byte accumulator per concept in shared memory: up to 48 KiB
    # (K <= 6144) without asking, beyond that only after raising the kernel's opt-in limit
    # (cudaFuncSetAttribute), up to the device's opt-in maximum (227 KiB = 29,056 concepts on
    # H100/H200 and under cudaemu); past it the kernel adds to global memory directly.
    rng = np.random.default_rng(n_concepts)
    dense = rng.random((2, n_concepts, 4, 4)) < 0.05
    dense[:, -1] = True             # the last concept: full blocks at the top of the range
    dense[0, -2] = True
    cs = ConceptSet.from_dense(dense)
    check_all_kernels(cs, rng, n_units=2, n_formulas=3)


@pytest.mark.gpu
@requires_gpu
def test_gpu_materialize_many_outputs():
    # More outputs than one 256-thread block of the output-pointer kernel, and many slots per
    # output (several grid blocks in the flag and write passes), every operator interleaved.
    rng = np.random.default_rng(9)
    cs = ConceptSet.from_dense(random_concepts(rng, 12, 7, 8, 9))
    formulas = random_masks(rng, 6, cs.n_cells)
    n_out = 700
    op = rng.choice(np.array(ALL_OPS, np.int32), n_out)
    src = rng.integers(0, 6, n_out)
    concept = rng.integers(0, cs.n_concepts, n_out).astype(np.int32)
    assert_same_masks(on("cuda", cs, "materialize", formulas, src, op, concept),
                      on("cpu", cs, "materialize", formulas, src, op, concept))


@pytest.mark.gpu
@requires_gpu
def test_gpu_index_without_stored_blocks():
    # Every concept empty: the index stores no block, so its concept-major view is empty. It
    # was refused on upload ("the index needs its concept-major view": the empty arrays'
    # pointers were taken for missing ones).
    cs = ConceptSet.from_dense(np.zeros((3, 2, 4, 5), bool))
    assert cs.n_stored_blocks == (0, 0)
    rng = np.random.default_rng(8)
    check_all_kernels(cs, rng, n_units=2, n_formulas=3)
    assert get_backend("cuda").prepare(cs).n_concepts == 2


@pytest.mark.gpu
@requires_gpu
def test_gpu_empty_inputs():
    rng = np.random.default_rng(3)
    cs = ConceptSet.from_dense(random_concepts(rng, 5, 4, 3, 3))
    none = MaskSet.empty(0)
    assert on("cuda", cs, "primitive_counts", none).shape == (0, 4)
    f, g, work = on("cuda", cs, "extension_counts", none, np.zeros(0, np.int64), MaskSet.empty(2))
    assert f.shape == g.shape == (0, 4) and work.formula_blocks == 0
    blank = MaskSet.empty(3)                     # masks without any block
    np.testing.assert_array_equal(on("cuda", cs, "primitive_counts", blank), np.zeros((3, 4), np.int64))
    args = (blank, [0, 1, 2], [_core.OP_AND, _core.OP_COPY, _core.OP_OR_NOT], [0, 0, 1])
    assert_same_masks(on("cuda", cs, "materialize", *args), on("cpu", cs, "materialize", *args))
    args = (none, [], [], [])
    assert_same_masks(on("cuda", cs, "materialize", *args), on("cpu", cs, "materialize", *args))


@pytest.mark.gpu
@requires_gpu
def test_gpu_bad_arguments_are_value_errors():
    rng = np.random.default_rng(4)
    cs = ConceptSet.from_dense(random_concepts(rng, 5, 4, 3, 3))
    fm = random_masks(rng, 2, cs.n_cells)
    with pytest.raises(ValueError, match="unknown operator code"):
        on("cuda", cs, "materialize", fm, [0], [9], [0])
    with pytest.raises(ValueError, match="concept index out of range"):
        on("cuda", cs, "materialize", fm, [0], [_core.OP_OR], [4])
    with pytest.raises(ValueError, match="source formula index out of range"):
        on("cuda", cs, "materialize", fm, [2], [_core.OP_OR], [0])
    with pytest.raises(ValueError, match="unit_of index out of range"):
        on("cuda", cs, "extension_counts", fm, [0, 5], fm)
    with pytest.raises(ValueError, match="block id out of range"):
        bad = MaskSet(np.array([0, 1]), np.array([10**6]), np.zeros((1, 8), np.uint64))
        on("cuda", cs, "primitive_counts", bad)


@pytest.mark.gpu
@requires_gpu
def test_gpu_errors_carry_the_cuda_text_and_are_not_sticky():
    # 2^20 blocks, one full concept everywhere; OR NOT over 2^15 outputs needs 2^35 candidate
    # slots of 8 + 8 bytes on the device (512 GiB): the allocation fails with CUDA's own message.
    n_blocks = 1 << 20
    cs = ConceptSet(1, (1, n_blocks * _core.BLOCK_CELLS), ["everything"],
                    np.zeros(n_blocks + 1, np.int64), np.zeros(0, np.int32), np.zeros((0, 8), np.uint64),
                    np.arange(n_blocks + 1, dtype=np.int64), np.zeros(n_blocks, np.int32))
    fm = MaskSet.empty(1)
    n = 1 << 15
    with pytest.raises(RuntimeError, match="CUDA error .*(out of memory|cudaErrorMemoryAllocation)"):
        on("cuda", cs, "materialize", fm, np.zeros(n, np.int64), np.full(n, _core.OP_OR_NOT, np.int32),
           np.zeros(n, np.int32))
    # The index still works after the failure.
    out = on("cuda", cs, "materialize", fm, [0], [_core.OP_LEAF], [0])
    assert out.nnz == n_blocks and (out.words == np.uint64(2**64 - 1)).all()


@pytest.mark.gpu
@requires_gpu
def test_gpu_device_masks_handles():
    rng = np.random.default_rng(6)
    cs = ConceptSet.from_dense(random_concepts(rng, 20, 5, 7, 9))
    units = random_masks(rng, 3, cs.n_cells)
    formulas = random_masks(rng, 4, cs.n_cells)
    be = get_backend("cuda")
    gpu = be.prepare(cs)
    assert be.prepare(cs) is gpu                  # uploaded once per concept set
    du, df = gpu.upload(units.arrays()), gpu.upload(formulas.arrays())
    assert (du.n_masks, df.n_masks) == (3, 4)
    assert (df.nnz, df.device) == (formulas.nnz, gpu.device)
    assert df.nbytes == 8 * (5 + formulas.nnz) + formulas.words.nbytes
    # A handle is not a tuple: nothing copies device data back implicitly, only to_host().
    with pytest.raises(TypeError):
        len(df)
    with pytest.raises(TypeError):
        df[1]
    assert_same_masks(be.to_host(gpu, df), formulas)
    unit_of = np.array([0, 0, 1, 2])
    np.testing.assert_array_equal(be.primitive_counts(gpu, du), on("cpu", cs, "primitive_counts", units))
    f, g, work = be.extension_counts(gpu, df, unit_of, du)
    f_cpu, g_cpu, work_cpu = on("cpu", cs, "extension_counts", formulas, unit_of, units)
    np.testing.assert_array_equal(f, f_cpu)
    np.testing.assert_array_equal(g, g_cpu)
    assert work == work_cpu == expected_work(cs, formulas)
    src, op, con = [0, 1, 2, 3], [_core.OP_OR, _core.OP_COPY, _core.OP_AND_NOT, _core.OP_OR_NOT], [1, 0, 2, 3]
    kept = be.materialize(gpu, df, src, op, con)
    assert_same_masks(be.to_host(gpu, kept), on("cpu", cs, "materialize", formulas, src, op, con))
    other = be.prepare(ConceptSet.from_dense(random_concepts(rng, 2, 2, 2, 2)))
    with pytest.raises(ValueError, match="another concept index"):
        be.primitive_counts(other, du)
    # Another index of the same shape (same block count) is another index too.
    twin = be.prepare(ConceptSet.from_dense(random_concepts(rng, 20, 5, 7, 9)))
    with pytest.raises(ValueError, match="another concept index"):
        be.primitive_counts(twin, du)
    with pytest.raises(ValueError, match="another concept index"):
        be.to_host(twin, df)


def _same_results(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.unit, str(x.formula), x.iou, x.score, str(x.primitive), x.primitive_iou) == \
               (y.unit, str(y.formula), y.iou, y.score, str(y.primitive), y.primitive_iou)
        assert [(str(f), s) for f, s in x.beam] == [(str(f), s) for f, s in y.beam]
        assert [(str(f), m) for f, m in x.by_length] == [(str(f), m) for f, m in y.by_length]


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("params", [
    dict(max_length=3, beam_size=5),
    dict(max_length=4, beam_size=3, ops=("or", "and", "and_not", "or_not")),
    dict(max_length=3, beam_size=4, allow_repeats=True, metric="precision"),
    dict(max_length=2, beam_size=10, candidate_limit=3, complexity_penalty=0.9),
])
def test_gpu_search_equals_cpu(params):
    rng = np.random.default_rng(5)
    dense = random_concepts(rng, 30, 7, 9, 11)
    cs = ConceptSet.from_dense(dense)
    acts = rng.random((30, 6, 3, 4)).astype(np.float32)
    cpu = cx.search_formulas(acts, cs, device="cpu", unit_batch_size=4, **params)
    gpu_res = cx.search_formulas(acts, cs, device="cuda", unit_batch_size=4, **params)
    assert gpu_res.params["device"] == "cuda:0"
    _same_results(gpu_res, cpu)
    # "auto" takes the GPU only once the GPU path is validated (backends.AUTO_USES_GPU).
    expected_auto = "cuda:0" if backends.AUTO_USES_GPU else "cpu"
    assert cx.search_formulas(acts, cs, device="auto", **params).params["device"] == expected_auto
