"""Torch tensors of every kind as activations and masks: converted when that is exact and cheap
(bfloat16/float8 -> float32, quantized -> dequantized, small sparse -> dense), refused with a
message naming the problem otherwise (meta tensors have no data, huge sparse tensors would
exhaust memory), never a raw torch error."""
import numpy as np
import pytest

import compexp_core as cx
import compexp_core.engine.units as units
from compexp_core.engine.units import compute_thresholds

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)
MASKS = RNG.random((10, 4, 3, 3)) < 0.4
ACTS = RNG.standard_normal((10, 2, 3, 3)).astype(np.float32)


def formulas(result):
    return [(str(e.formula), e.iou) for e in result]


def search(acts=ACTS, masks=MASKS, **kw):
    return cx.search_formulas(acts, masks, max_length=2, beam_size=3, **kw)


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_narrow_float_acts_are_widened_exactly(dtype):
    if not hasattr(torch, dtype):
        pytest.skip(f"this torch has no {dtype}")
    t = torch.from_numpy(ACTS).to(getattr(torch, dtype))
    exact = t.float().numpy()                       # the values the narrow tensor holds
    assert formulas(search(t)) == formulas(search(exact))
    np.testing.assert_array_equal(compute_thresholds(t), compute_thresholds(exact))


def test_bfloat16_acts_that_need_grad():
    t = torch.from_numpy(ACTS).bfloat16().requires_grad_()
    assert formulas(search(t)) == formulas(search(t.detach().float().numpy()))


@pytest.mark.filterwarnings("ignore:.*quantize.*deprecated:UserWarning")
def test_quantized_acts_are_dequantized():
    q = torch.quantize_per_tensor(torch.from_numpy(ACTS), 0.05, 0, torch.qint8)
    assert formulas(search(q)) == formulas(search(q.dequantize().numpy()))


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_small_sparse_acts_are_made_dense(layout):
    acts = np.where(ACTS > 0.5, ACTS, 0).astype(np.float32)
    t = torch.from_numpy(acts)
    if layout == "coo":
        s = t.to_sparse()
    else:                                           # CSR is 2-D: [N, U] activations
        acts = acts.max(axis=(2, 3))
        s = torch.from_numpy(acts).to_sparse_csr()
    assert str(s.layout) != "torch.strided"
    assert formulas(search(s, threshold=0.5)) == formulas(search(acts, threshold=0.5))


def test_small_sparse_masks_are_made_dense():
    s = torch.from_numpy(MASKS).to_sparse()
    assert formulas(search(masks=s)) == formulas(search())


def test_huge_sparse_acts_are_refused_without_allocating():
    # Dense, this would be 100000 x 2 x 1000 x 1000 float32 = 745 GiB; it holds 2 values.
    idx = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 3]])
    t = torch.sparse_coo_tensor(idx, torch.tensor([1.0, 2.0]), (100_000, 2, 1000, 1000),
                                check_invariants=True)
    with pytest.raises(ValueError, match=r"acts is a sparse torch tensor \(torch.sparse_coo\) "
                                         r"of shape \(100000, 2, 1000, 1000\), whose dense form "
                                         r"would take 745 GiB, more than the 1 GiB"):
        search(t)


def test_sparse_limit_applies_to_masks(monkeypatch):
    monkeypatch.setattr(units, "MAX_DENSIFY_BYTES", 100)       # MASKS: 360 bytes dense
    with pytest.raises(ValueError, match=r"masks is a sparse torch tensor .* more than the"):
        search(masks=torch.from_numpy(MASKS).to_sparse())


def test_meta_acts_have_no_data():
    t = torch.empty(10, 2, 3, 3, device="meta")
    with pytest.raises(ValueError, match=r"acts is a torch tensor on the 'meta' device: it has "
                                         r"a shape \(10, 2, 3, 3\) but no data"):
        search(t)
    with pytest.raises(ValueError, match="'meta' device"):
        compute_thresholds(t)


def test_meta_masks_have_no_data():
    t = torch.empty(10, 4, 3, 3, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match=r"masks is a torch tensor on the 'meta' device"):
        search(masks=t)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "int64"])
def test_non_bool_tensor_masks_name_their_dtype(dtype):
    t = torch.from_numpy(MASKS).to(getattr(torch, dtype))
    with pytest.raises(TypeError, match=f"got a torch tensor of dtype torch.{dtype}"):
        search(masks=t)


def test_bool_tensor_masks_still_work():
    assert formulas(search(masks=torch.from_numpy(MASKS))) == formulas(search())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bfloat16_acts():
    t = torch.from_numpy(ACTS).bfloat16().cuda()
    assert formulas(search(t)) == formulas(search(t.cpu().float().numpy()))
