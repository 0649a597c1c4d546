"""``lora-endpoint bench``: the benchmarks (``scripts/bench.py`` in a source checkout); ``--help`` lists them."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lora_endpoint.commands.checkout import checkout_main


def main(argv: Sequence[str] | None = None) -> int:
    return checkout_main("bench", "scripts/bench.py", "scripts.bench", list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
