"""``python -m benchmarks NAME [ARGS...]``: run one benchmark; ``--list`` shows them all."""

from __future__ import annotations

import sys

from benchmarks.harness import list_benchmarks, run_benchmark


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``benchmarks/NAME.py``'s ``main(argv)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "--list"}:
        print("usage: python -m benchmarks NAME [--repeats N] [--warmup N] [...]\n\nbenchmarks:")
        for name, summary in list_benchmarks():
            print(f"  {name:<16} {summary}")
        return 0
    return run_benchmark(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
