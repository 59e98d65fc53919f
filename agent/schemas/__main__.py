"""``python -m agent.schemas [--check]``: regenerate the JSON Schema files, or check they are current."""

from __future__ import annotations

import argparse
import sys

from agent.schemas import SCHEMA_DIR, stale, write


def main(argv: list[str] | None = None) -> int:
    """Write the schema files (exit 0), or with --check exit 1 when any is stale."""
    parser = argparse.ArgumentParser(prog="python -m agent.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed files are stale")
    args = parser.parse_args(argv)
    if args.check:
        names = stale()
        for name in names:
            sys.stderr.write(f"stale: {SCHEMA_DIR / name} (run python -m agent.schemas)\n")
        return 1 if names else 0
    for path in write():
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
