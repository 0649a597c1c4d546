"""Alias of ``lora-endpoint serve`` (``lora_endpoint.commands.serve``), kept for the path used before the one CLI."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from a checkout

from lora_endpoint.commands.serve import main

if __name__ == "__main__":
    sys.exit(main())
