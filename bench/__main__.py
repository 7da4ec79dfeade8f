"""``python -m bench NAME [--quick]``: run one benchmark, or ``all``."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

import psutil

BENCHMARKS = {
    "stack": "bench.stack",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (make bench)")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    print(
        f"# machine: {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}"
    )
    for name in names:
        markdown = importlib.import_module(BENCHMARKS[name]).run(quick=args.quick)
        print(f"\n## {name}\n\n{markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
