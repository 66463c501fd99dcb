"""The compiled kernels against plain NumPy: builders, counts, materialisation, every SIMD path."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compexp_core import ConceptSet, ConceptSetBuilder, _core
from compexp_core.engine.backends import ExtensionWork, get_backend
from compexp_core.engine.masks import MaskSet
from conftest import DEVICES, available_simd

SIMDS = available_simd()


def random_dense(rng, n, k, h, w):
    density = rng.random(k) ** 3
    dense = rng.random((n, k, h, w)) < density[None, :, None, None]
    if k > 1:
        dense[:, 0] = True          # a full concept
        dense[:, 1] = False         # an empty concept
    if k > 2:
        dense[::2, 2] = True        # whole samples, as scenes
    return dense


def flat(dense):
    n, k, h, w = dense.shape
    return dense.transpose(1, 0, 2, 3).reshape(k, n * h * w)


shapes = st.tuples(st.integers(1, 40), st.integers(1, 7), st.integers(1, 13), st.integers(1, 13))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_counts_match_numpy(shape, seed, device):
    rng = np.random.default_rng(seed)
    n, k, h, w = shape
    dense = random_dense(rng, n, k, h, w)
    cs = ConceptSet.from_dense(dense)
    D = flat(dense)
    P = D.shape[1]
    assert (cs.sizes == D.sum(1)).all()
    U = rng.random((4, P)) < rng.random((4, 1))
    U[0] = False                                      # a unit that never fires
    F = rng.random((6, P)) < rng.random((6, 1))
    F[1] = False
    unit_of = rng.integers(0, 4, 6)
    um, fm = MaskSet.from_dense(U), MaskSet.from_dense(F)
    for simd in SIMDS:
        be = get_backend(device, simd=simd)
        index = be.prepare(cs)
        prim = be.primitive_counts(index, um)
        assert prim.dtype == np.int64
        np.testing.assert_array_equal(prim, (U[:, None] & D[None]).sum(2))
        f, g, work = be.extension_counts(index, fm, unit_of, um)
        np.testing.assert_array_equal(f, (F[:, None] & D[None]).sum(2))
        np.testing.assert_array_equal(g, (F[:, None] & D[None] & U[unit_of][:, None]).sum(2))
        assert work == expected_work(cs, fm)


def expected_work(cs, formulas):
    """(formula blocks, partial entries, full entries) the extension kernel walks: per stored
    block b of each formula, 1, the partial and the full concept blocks stored in b."""
    blocks = formulas.block
    return ExtensionWork(int(blocks.size), int(np.diff(cs.arrays.block_ptr)[blocks].sum()),
                         int(np.diff(cs.arrays.full_ptr)[blocks].sum()))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_materialize_every_operator(shape, seed, device):
    rng = np.random.default_rng(seed)
    n, k, h, w = shape
    dense = random_dense(rng, n, k, h, w)
    cs = ConceptSet.from_dense(dense)
    D = flat(dense)
    P = D.shape[1]
    F = rng.random((3, P)) < 0.4
    fm = MaskSet.from_dense(F)
    ops = {_core.OP_OR: np.logical_or, _core.OP_AND: np.logical_and,
           _core.OP_AND_NOT: lambda a, b: a & ~b, _core.OP_OR_NOT: lambda a, b: a | ~b}
    src, op, con = [], [], []
    for code in [_core.OP_LEAF, _core.OP_COPY, *ops]:
        for j in range(k):
            src.append(int(rng.integers(0, 3)))
            op.append(code)
            con.append(j)
    be = get_backend(device)
    index = be.prepare(cs)
    out = be.to_host(index, be.materialize(index, fm, src, op, con))
    got = out.to_dense(P)
    for i in range(len(src)):
        if op[i] == _core.OP_LEAF:
            expected = D[con[i]]
        elif op[i] == _core.OP_COPY:
            expected = F[src[i]]
        else:
            expected = ops[op[i]](F[src[i]], D[con[i]])
        np.testing.assert_array_equal(got[i], expected)
    # Only non-empty blocks are stored, and padding bits stay zero (also for OR NOT).
    assert (out.words.any(axis=1)).all()
    assert out.popcounts().tolist() == got.sum(1).tolist()


def test_block_boundaries_and_full_blocks():
    # 3 samples of 16x32 = 512 cells: each sample is exactly one block.
    labels = np.zeros((3, 2), bool)
    labels[:, 0] = True
    labels[1, 1] = True
    cs = ConceptSet.from_sample_labels(labels, grid=(16, 32))
    partial, full = cs.n_stored_blocks
    assert (partial, full) == (0, 4)
    # 5 cells per sample: blocks straddle samples; adjacent samples merge into full blocks.
    cs = ConceptSet.from_sample_labels(np.ones((300, 1), bool), grid=(1, 5))
    assert cs.sizes.tolist() == [1500]
    assert cs.n_stored_blocks == (1, 2)   # 1500 = 2*512 + 476: the last block is partial


def test_label_maps_builder_matches_dense():
    rng = np.random.default_rng(3)
    n, h, w = 9, 6, 7
    maps = rng.integers(0, 8, size=(n, 3, h, w))
    concept_of_label = np.array([-1, 0, 1, 2, 3, -1, 0, 4])  # two labels share concept 0
    cs = ConceptSet.from_label_maps(maps, concept_of_label, names=list("abcde"))
    expected = np.stack([(concept_of_label[maps] == j).any(axis=1) for j in range(5)], axis=1)
    np.testing.assert_array_equal(cs.to_dense(), expected)


def test_builder_chunks_and_sources_combine():
    rng = np.random.default_rng(4)
    n, h, w = 23, 5, 9
    dense = rng.random((n, 3, h, w)) < 0.2
    scenes = rng.random((n, 2)) < 0.5
    b = ConceptSetBuilder(n, (h, w), ["a", "b", "c", "s0", "s1"])
    for s in range(0, n, 4):                   # chunks of samples, in any order
        b.add_dense(dense[s:s + 4], ["a", "b", "c"], sample_offset=s)
    b.add_sample_labels(scenes[10:], [3, 4], sample_offset=10)
    b.add_sample_labels(scenes[:10], [3, 4])
    cs = b.build()
    expected = np.concatenate([dense, np.broadcast_to(scenes[:, :, None, None], (n, 2, h, w))], 1)
    np.testing.assert_array_equal(cs.to_dense(), expected)
    with pytest.raises(RuntimeError):
        b.build()


def test_builder_rejects_bad_labels():
    b = ConceptSetBuilder(2, (2, 2), ["a"])
    with pytest.raises(ValueError, match="label value 5"):
        b.add_label_maps(np.full((2, 1, 2, 2), 5), [-1, 0])
    with pytest.raises(ValueError, match="sample range"):
        b.add_dense(np.ones((2, 1, 2, 2), bool), [0], sample_offset=1)


def test_mask_set_helpers_round_trip():
    rng = np.random.default_rng(5)
    dense = rng.random((5, 1500)) < 0.01
    m = MaskSet.from_dense(dense)
    np.testing.assert_array_equal(m.to_dense(1500), dense)
    np.testing.assert_array_equal(m.popcounts(), dense.sum(1))
    for i in range(5):
        np.testing.assert_array_equal(m.cells(i), np.flatnonzero(dense[i]))


def test_kernels_reject_malformed_mask_sets():
    cs = ConceptSet.from_dense(np.ones((2, 1, 4, 4), bool))
    m = MaskSet.from_dense(np.ones((1, 32), bool))
    cpu = get_backend("cpu")
    index = cpu.prepare(cs)
    with pytest.raises(ValueError, match="block id out of range"):
        cpu.primitive_counts(index, MaskSet(m.ptr, m.block + 5, m.words))
    with pytest.raises(ValueError, match="ptr does not span"):
        cpu.primitive_counts(index, MaskSet(m.ptr + 1, m.block, m.words))
    with pytest.raises(ValueError, match="unit_of"):
        cpu.extension_counts(index, m, [3], m)
    with pytest.raises(ValueError, match="simd"):
        get_backend("cpu", simd="sse9")
    # A pointer past the end followed by a smaller one: refused before any block is read
    # (the block loop used to walk ptr[0]..ptr[1] past the end of block).
    with pytest.raises(ValueError, match="ptr is not non-decreasing"):
        cpu.primitive_counts(index, MaskSet(np.array([0, 2, 1]), m.block, m.words))


def _index(n_cells, entry_concept, entry_words, full_concept, blocks_of_entries=None):
    """A one- or two-block concept set from raw block-major arrays (all in block 0 unless
    blocks_of_entries says otherwise)."""
    n_blocks = -(-n_cells // _core.BLOCK_CELLS)
    be = np.zeros(len(entry_concept), np.int64) if blocks_of_entries is None else np.array(blocks_of_entries)
    block_ptr = np.concatenate([[0], np.cumsum(np.bincount(be, minlength=n_blocks))])
    full_ptr = np.zeros(n_blocks + 1, np.int64)
    full_ptr[1:] = len(full_concept)
    return ConceptSet(1, (1, n_cells), ["a", "b"], block_ptr, np.array(entry_concept, np.int32),
                      np.array(entry_words, np.uint64).reshape(-1, 8), full_ptr,
                      np.array(full_concept, np.int32))


def test_concept_index_rejects_malformed_arrays():
    one = [1] + [0] * 7
    assert _index(512, [0, 1], [one, one], []).sizes.tolist() == [1, 1]
    with pytest.raises(ValueError, match="partial concepts of a block must be strictly increasing"):
        _index(512, [1, 0], [one, one], [])
    with pytest.raises(ValueError, match="partial concepts of a block must be strictly increasing"):
        _index(512, [0, 0], [one, one], [])
    with pytest.raises(ValueError, match="full concepts of a block must be strictly increasing"):
        _index(512, [], [], [1, 1])
    with pytest.raises(ValueError, match="both partial and full"):
        _index(512, [1], [one], [0, 1])
    # Cells past P (the padding of the last block) are never set.
    with pytest.raises(ValueError, match="full concept block lies past the last cell"):
        _index(100, [], [], [0])
    with pytest.raises(ValueError, match="bits past the last cell"):
        _index(100, [0], [[0, 1 << 36] + [0] * 6], [])
    assert _index(100, [0], [[0, 1 << 35] + [0] * 6], []).sizes.tolist() == [1, 0]


def test_concept_set_refuses_index_arrays_that_a_cast_would_change():
    one = [1] + [0] * 7
    ptr = np.array([0, 1], np.int64)

    def make(block_ptr=ptr, entry_concept=np.array([1], np.int32), full_ptr=np.zeros(2, np.int64),
             full_concept=np.zeros(0, np.int32), entry_words=np.array([one], np.uint64)):
        return ConceptSet(1, (1, 512), ["a", "b"], block_ptr, entry_concept, entry_words,
                          full_ptr, full_concept)

    assert make().sizes.tolist() == [0, 1]
    # Concept ids held as int64 that wrap into a valid id when cast to int32.
    with pytest.raises(ValueError, match=r"entry_concept\[0\] = 4294967297 does not fit in int32"):
        make(entry_concept=np.array([2**32 + 1], np.int64))
    with pytest.raises(ValueError, match=r"full_concept\[0\] = -4294967296 does not fit in int32"):
        make(entry_concept=np.zeros(0, np.int32), block_ptr=np.zeros(2, np.int64),
             full_ptr=np.array([0, 1]), full_concept=np.array([-2**32], np.int64))
    # In range, any integer dtype is fine (the values are unchanged).
    assert make(entry_concept=np.array([1], np.int64), block_ptr=ptr.astype(np.uint64),
                full_ptr=np.zeros(2, np.uint8)).sizes.tolist() == [0, 1]
    # Pointers as uint64 beyond int64, or as floats (truncated by a cast), are refused.
    with pytest.raises(ValueError, match=r"block_ptr\[1\] = 18446744073709551615 does not fit in int64"):
        make(block_ptr=np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(TypeError, match="block_ptr must be an integer array .* got dtype float64"):
        make(block_ptr=np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="full_ptr must be an integer array .* got dtype float32"):
        make(full_ptr=np.array([0, 0.5], np.float32))
    with pytest.raises(TypeError, match="entry_concept must be an integer array"):
        make(entry_concept=np.array([True]))
    # Words are bit patterns: int64 is taken bit for bit, a negative narrower word is refused.
    top = make(entry_words=np.array([[-(2**63)] + [0] * 7], np.int64))
    assert top.sizes.tolist() == [0, 1] and top.arrays.entry_words[0, 0] == 2**63
    with pytest.raises(ValueError, match=r"entry_words\[\(0, 0\)\] = -1 does not fit in uint64"):
        make(entry_words=np.array([[-1] + [0] * 7], np.int32))
    # Negative counts (a pointer that decreases), named with the block.
    with pytest.raises(ValueError, match=r"block_ptr\[0\] = 0 > block_ptr\[1\] = -1 \(a negative "
                                         r"entry count for block 0\)"):
        ConceptSet(1, (1, 1024), ["a", "b"], np.array([0, -1, 1]), np.array([1], np.int32),
                   np.array([one], np.uint64), np.zeros(3, np.int64), np.zeros(0, np.int32))
    with pytest.raises(ValueError, match=r"full_ptr\[1\] = 2 > full_ptr\[2\] = 1 \(a negative "
                                         r"full-block count for block 1\)"):
        ConceptSet(1, (1, 1024), ["a", "b"], np.zeros(3, np.int64), np.zeros(0, np.int32),
                   np.zeros((0, 8), np.uint64), np.array([0, 2, 1]), np.array([0], np.int32))


def test_core_concept_index_takes_only_the_layout_dtypes():
    # The compiled index refuses arrays that pybind11 would otherwise cast silently.
    one = np.array([[1] + [0] * 7], np.uint64)
    args = dict(n_cells=512, n_concepts=2, block_ptr=np.array([0, 1], np.int64),
                entry_concept=np.array([1], np.int32), entry_words=one,
                full_ptr=np.zeros(2, np.int64), full_concept=np.zeros(0, np.int32))
    assert _core.ConceptIndex(**args).concept_sizes().tolist() == [0, 1]
    for name, bad, msg in [
        ("block_ptr", np.array([0, 1], np.uint64), "block_ptr must be a NumPy int64 array, got dtype uint64"),
        ("block_ptr", np.array([0.0, 1.0]), "block_ptr must be a NumPy int64 array, got dtype float64"),
        ("full_ptr", [0, 0], "full_ptr must be a NumPy int64 array, got list"),
        ("entry_concept", np.array([2**32 + 1], np.int64), "entry_concept must be a NumPy int32 array, got dtype int64"),
        ("full_concept", np.zeros(0, np.uint32), "full_concept must be a NumPy int32 array, got dtype uint32"),
        ("entry_words", one.astype(np.int64), "entry_words must be a NumPy uint64 array, got dtype int64"),
    ]:
        with pytest.raises(TypeError, match=msg):
            _core.ConceptIndex(**{**args, name: bad})


def test_simd_paths_agree_at_scale(device):
    # Many entries per block, so the SIMD loops run long; the scalar path is the oracle.
    rng = np.random.default_rng(6)
    maps = rng.integers(0, 60, size=(200, 2, 16, 16))
    cs = ConceptSet.from_label_maps(maps, np.arange(-1, 59), names=[f"c{i}" for i in range(59)])
    U = MaskSet.from_dense(rng.random((8, cs.n_cells)) < 0.3)
    scalar = get_backend("cpu", simd="scalar")
    ref = scalar.primitive_counts(scalar.prepare(cs), U)
    f0, g0, w0 = scalar.extension_counts(scalar.prepare(cs), U, np.arange(8)[::-1].copy(), U)
    assert w0 == expected_work(cs, U)
    for simd in SIMDS if device == "cpu" else SIMDS[:1]:      # the GPU has no simd choice
        be = get_backend(device, simd=simd)
        index = be.prepare(cs)
        np.testing.assert_array_equal(be.primitive_counts(index, U), ref)
        f, g, w = be.extension_counts(index, U, np.arange(8)[::-1].copy(), U)
        assert w == w0
        np.testing.assert_array_equal(f, f0)
        np.testing.assert_array_equal(g, g0)
        assert w == w0


def test_wide_unsigned_labels_do_not_wrap():
    b = ConceptSetBuilder(1, (1, 2), ["a"])
    with pytest.raises(ValueError, match="32-bit"):
        b.add_label_maps(np.array([[[[1, 2**31 + 1]]]], np.uint32), [-1, 0])
    b.add_label_maps(np.array([[[[1, 0]]]], np.uint64), [-1, 0])
    assert b.build().sizes.tolist() == [1]


def test_materialize_formulas_equals_evaluate():
    from compexp_core import Formula
    from compexp_core.engine.driver import materialize_formulas

    rng = np.random.default_rng(7)
    dense = rng.random((20, 4, 5, 6)) < 0.4
    cs = ConceptSet.from_dense(dense, names=["a", "b", "c", "d"])
    formulas = [Formula.parse(t) for t in ("a", "(a OR b)", "((a AND NOT c) OR NOT d)", "(((b AND c) OR a) AND d)")]
    got = materialize_formulas(cs, formulas).to_dense(cs.n_cells)
    for row, f in zip(got, formulas):
        np.testing.assert_array_equal(row, f.evaluate(cs).ravel())
    with pytest.raises(ValueError, match="left-deep"):
        materialize_formulas(cs, [Formula.parse("(a AND (b OR c))")])
