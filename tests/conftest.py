import os
import sys
from pathlib import Path

import pytest

import compexp_core

# The NumPy reference (tests/reference.py) is imported as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


# The devices a kernel or search test runs on: always the CPU; the GPU too when one is usable.
# Without one, the "cuda" variants are collected and skipped (with the reason), not dropped, so
# the report shows what did not run. Use the `device` fixture, or, in Hypothesis tests (where
# a function-scoped fixture would trigger a health check),
# `@pytest.mark.parametrize("device", DEVICES)`.
NO_GPU_REASON = "device='cuda' needs a CUDA build of compexp_core and a visible GPU"
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not compexp_core.cuda_available(),
                                                   reason=NO_GPU_REASON)]),
]


def pytest_sessionstart(session):
    # CI's runs on the CUDA emulator set COMPEXP_REQUIRE_GPU=1: a CUDA module that is missing
    # or fails to load must fail the run, not skip every gpu test quietly.
    if os.environ.get("COMPEXP_REQUIRE_GPU") == "1" and not compexp_core.cuda_available():
        raise pytest.UsageError("COMPEXP_REQUIRE_GPU=1 but compexp_core.cuda_available() is False "
                                f"(backend_info: {compexp_core.backend_info()})")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """The ``device=`` to pass on: "cpu", then "cuda" (gpu marker; skipped without a GPU)."""
    return request.param


def available_simd():
    from compexp_core import _core

    return [s for s in ("scalar", "popcnt", "avx512") if _core.simd_supported(s)]
