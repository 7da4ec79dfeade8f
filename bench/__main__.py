"""``python -m bench NAME [--quick] [--rows N] [--part PART]``: run one benchmark, or ``all``.

A benchmark is a module ``bench/NAME.py`` with ``run(quick: bool) -> str`` returning its
results as Markdown; modules whose name starts with ``_`` are helpers.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import platform
import sys
from pathlib import Path

import psutil


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(p.stem for p in here.glob("*.py") if not p.stem.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=[*names, "all"])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (make bench)")
    parser.add_argument("--rows", type=int, help="table size, for the benches that take one")
    parser.add_argument("--part", help="one part only, for the benches that take one (routing)")
    args = parser.parse_args(argv)
    chosen = names if args.name == "all" else [args.name]
    print(
        f"# machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}"
    )
    for name in chosen:
        run = importlib.import_module(f"bench.{name}").run
        parameters = inspect.signature(run).parameters
        extra: dict[str, object] = {}
        if args.rows is not None and "rows" in parameters:
            extra["rows"] = args.rows
        if args.part is not None:
            if "part" not in parameters:
                parser.error(f"--part: {name} has no parts")
            extra["part"] = args.part
        markdown = run(quick=args.quick, **extra)
        print(f"\n## {name}\n\n{markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
