"""``lora-endpoint demo``: the whole pipeline offline on a tiny model (``scripts/demo.py``, what ``make demo``
runs), from a source checkout."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lora_endpoint.commands.checkout import checkout_main


def main(argv: Sequence[str] | None = None) -> int:
    return checkout_main("demo", "scripts/demo.py", "scripts.demo", list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
