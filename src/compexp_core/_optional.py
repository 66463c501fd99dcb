"""Optional dependencies: imported where a feature needs them, with a clear error when absent.

The search needs NumPy and the compiled engine only. PyTorch is needed only by the code that
runs models (activation extraction, the built-in example); h5py by file I/O.
"""
from __future__ import annotations

import importlib

_INSTALL = {"torch": 'pip install torch (or pip install "compexp-core[torch]")',
            "ray": 'pip install "compexp-core[ray]"'}


def require(module: str, feature: str):
    """Import ``module`` for ``feature``, or raise ImportError saying how to install it.

    Examples:
        >>> require("math", "arithmetic").sqrt(4.0)
        2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        how = _INSTALL.get(module, f"pip install {module}")
        raise ImportError(f"{feature} needs {module}, which is not installed: {how}") from err
