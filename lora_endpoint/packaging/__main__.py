"""``python -m lora_endpoint.packaging``: ``lora-endpoint package`` (also the ``lora-package`` console script)."""

from __future__ import annotations

import sys

from lora_endpoint.packaging.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
