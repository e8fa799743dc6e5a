"""Sub-command ``bench``: run one of the side-by-side benchmarks in ``benchmarks/``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from gptsmith.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench``."""
    bench = subparsers.add_parser(
        "bench",
        help="run a benchmark against the reference implementations (same as python -m benchmarks)",
        description=(
            "Run benchmarks/NAME.py: gptsmith and the references (llms-from-scratch, transformers, tiktoken; "
            "install them with `make bench`) alternate in the same run; the report gives medians, ranges "
            "and ratios. Arguments after NAME go to the benchmark (try NAME --help)."
        ),
    )
    bench.add_argument("name", nargs="?", metavar="NAME", help="benchmark to run (omit or --list to list)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options passed on to the benchmark")
    bench.set_defaults(func=run_bench)


def _import_harness():
    """``benchmarks.harness``, also from an editable install run outside the checkout."""
    try:
        return importlib.import_module("benchmarks.harness")
    except ImportError:
        repo_root = Path(__file__).resolve().parents[2]
        if not (repo_root / "benchmarks" / "harness.py").is_file():
            raise ConfigError(
                "the benchmarks/ folder is not available; run `gptsmith bench` from a gptsmith checkout"
            ) from None
        sys.path.insert(0, str(repo_root))
        return importlib.import_module("benchmarks.harness")


def run_bench(args: argparse.Namespace) -> int:
    """Forward to the benchmark's ``main(argv)``."""
    harness = _import_harness()
    known = [name for name, _ in harness.list_benchmarks()]
    if args.list or not args.name:
        for name, summary in harness.list_benchmarks():
            print(f"{name:<16} {summary}")
        return 0
    if args.name not in known:
        raise ConfigError(f"unknown benchmark {args.name!r} (known: {', '.join(known) or 'none yet'})")
    return harness.run_benchmark(args.name, list(args.args))
