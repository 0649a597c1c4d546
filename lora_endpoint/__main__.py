"""``python -m lora_endpoint``: the ``lora-endpoint`` command."""

import sys

from lora_endpoint.cli import main

sys.exit(main())
