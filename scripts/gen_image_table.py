"""Regenerate cdk/components/lmi_image_table.json from the image config bundled in ``sagemaker-core``.

    .venv/bin/pip install --no-deps sagemaker-core   # ~1.4 MB; only its JSON is read, nothing is imported
    .venv/bin/python -m scripts.gen_image_table [--version 0.38.0] [--config PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path

from cdk.components.images import PINNED_VERSION, TABLE_PATH, table_from_config

CONFIG_IN_PACKAGE = "sagemaker/core/image_uri_config/djl-lmi.json"


def bundled_config_path() -> Path | None:
    """Where the installed ``sagemaker-core`` keeps ``djl-lmi.json``, without importing the package."""
    try:
        dist = importlib.metadata.distribution("sagemaker-core")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(CONFIG_IN_PACKAGE)))
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Write the table; exit 1 when no config can be found."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default=PINNED_VERSION)
    parser.add_argument("--config", type=Path, default=None, help="a djl-lmi.json to read instead")
    parser.add_argument("--out", type=Path, default=TABLE_PATH)
    args = parser.parse_args(argv)
    config_path = args.config or bundled_config_path()
    if config_path is None:
        print("sagemaker-core is not installed: pip install --no-deps sagemaker-core", file=sys.stderr)
        return 1
    table = table_from_config(json.loads(config_path.read_text(encoding="utf-8")), args.version)
    args.out.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {table['repository']}:{table['tag']} in {len(table['registries'])} regions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
