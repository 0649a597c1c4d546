"""``python -m model_package`` (the ``lora-package`` console script)."""

from __future__ import annotations

import sys

from model_package.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
