"""``python -m compexp_core.cli``: the ``compexp`` command."""
import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
