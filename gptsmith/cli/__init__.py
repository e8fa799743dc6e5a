"""The ``gptsmith`` command: one verb per workflow.

Each verb lives in a small module of this package that knows how to ``register`` its parser;
the library below raises and returns values, and only this package prints, draws progress bars
and decides where files go.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from gptsmith import __version__
from gptsmith.errors import GptsmithError

# Modules that each add one or more sub-commands (in the order `--help` lists them).
COMMAND_MODULES = ["data_cmds", "model_cmds", "train_cmds", "generate_cmds", "bench_cmds"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="gptsmith",
        description="Build, train, load and run GPT-2-class language models from scratch.",
    )
    parser.add_argument("--version", action="version", version=f"gptsmith {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"gptsmith.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gptsmith`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"gptsmith {args.command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning  # one line, not the library's file and line number
    try:
        return int(args.func(args) or 0)
    except GptsmithError as exc:
        print(f"gptsmith {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gptsmith {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `gptsmith info gpt2-small | head`): stop quietly, like Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
