import os
import sys
from pathlib import Path

import pytest

# The NumPy reference (tests/reference.py) is imported as a plain module.
sys.path.insert(0, os.path.dirname(__file__))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def available_simd():
    from compexp_core import _core

    return [s for s in ("scalar", "popcnt", "avx512") if _core.simd_supported(s)]
