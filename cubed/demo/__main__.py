"""``python -m cubed.demo build PATH``: build the demo DuckDB file and print its row counts."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cubed.demo import build_demo_database, demo_model_dir, demo_row_counts


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m cubed.demo", description="The bundled demo data set.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the demo DuckDB database at PATH (no-op when complete)")
    build.add_argument("path", type=Path)
    commands.add_parser("model-dir", help="print the directory of the demo model")
    args = parser.parse_args(argv)
    if args.command == "model-dir":
        print(demo_model_dir())
        return 0
    try:
        path = build_demo_database(args.path)
        counts = demo_row_counts(path)
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for table, count in counts.items():
        print(f"{table} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
