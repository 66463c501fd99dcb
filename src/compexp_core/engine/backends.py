"""Backend selection: which compiled engine runs a search.

The CPU backend (``compexp_core._core``) is always built. The CUDA backend is a separate
module (``compexp_core._cuda``), imported only when asked for, so importing the package never
loads CUDA libraries. Hardware is probed once and cached.
"""
from __future__ import annotations

import functools
import importlib

from .. import _core

__all__ = ["cuda_available", "cuda_compiled", "num_gpus", "resolve_device", "backend_info"]

DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=None)
def _cuda_module():
    try:
        return importlib.import_module("compexp_core._cuda")
    except ImportError:
        return None


def cuda_compiled() -> bool:
    """Whether this build contains the CUDA backend."""
    return _cuda_module() is not None


@functools.lru_cache(maxsize=None)
def num_gpus() -> int:
    """Number of CUDA devices the CUDA backend can use (0 without a CUDA build)."""
    mod = _cuda_module()
    if mod is None:
        return 0
    try:
        return int(mod.device_count())
    except Exception:  # a driver problem means no usable GPU, not a crash
        return 0


def cuda_available() -> bool:
    """Whether ``device="cuda"`` can run: a CUDA build and at least one GPU."""
    return num_gpus() > 0


# The CUDA kernels compile and are reviewed, but have not yet run on a GPU (no GPU was lent
# to the session that wrote them). Until the GPU tests and compute-sanitizer have passed on a
# GPU, "auto" stays on the CPU and the GPU is used only when asked for by name.
AUTO_USES_GPU = False


def resolve_device(device: str) -> str:
    """Map ``"auto"``, ``"cpu"`` or ``"cuda"`` to the backend that will run (``"auto"``: the
    CPU for now, see ``AUTO_USES_GPU``; ``"cuda"``: the GPU, when :func:`cuda_available`).

    Raises:
        ValueError: an unknown device name.
        RuntimeError: ``"cuda"`` without a CUDA build or without a GPU, saying how to fix it.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if AUTO_USES_GPU and cuda_available() else "cpu"
    if device == "cuda":
        if not cuda_compiled():
            raise RuntimeError(
                "device='cuda' was requested but this build of compexp_core has no CUDA backend. "
                "Reinstall on a machine with the CUDA toolkit (nvcc on PATH) so that CMake builds "
                "compexp_core._cuda, or use device='cpu'.")
        if not cuda_available():
            raise RuntimeError("device='cuda' was requested but no CUDA GPU is visible "
                               "(check CUDA_VISIBLE_DEVICES and the driver), or use device='cpu'.")
        return "cuda"
    return "cpu"


def cuda_module():
    """The compiled CUDA module ``compexp_core._cuda``; RuntimeError (as for
    ``device="cuda"``) when it cannot be used."""
    resolve_device("cuda")
    return _cuda_module()


def backend_info() -> dict:
    """What this installation can run: CPU kernel flavour, threads, CUDA build and GPUs."""
    return {"cpu_simd": _core.best_simd(), "cpu_threads": _core.default_threads(),
            "cuda_compiled": cuda_compiled(), "num_gpus": num_gpus()}
