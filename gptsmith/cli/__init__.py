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
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from gptsmith.errors import GptsmithError
from gptsmith.version import __version__

# Modules that each add one or more sub-commands (in the order `--help` lists them).
COMMAND_MODULES = [
    "data_cmds", "model_cmds", "train_cmds", "eval_cmds", "generate_cmds", "chat_cmds", "finetune_cmds",
    "classify_cmds", "instruct_cmds", "explain_cmds", "serve_cmds", "bench_cmds",
]

# A failed file operation, in words, by the name of the innermost function that ran it (pathlib's,
# os's and shutil's Python-level names); anything else "cannot access" the path.
OS_OPERATIONS = {
    "mkdir": "cannot create directory", "makedirs": "cannot create directory", "touch": "cannot create file",
    "open": "cannot open", "write_text": "cannot write", "write_bytes": "cannot write",
    "read_text": "cannot read", "read_bytes": "cannot read", "unlink": "cannot remove",
    "rmdir": "cannot remove", "rename": "cannot move", "replace": "cannot move", "iterdir": "cannot list",
    "atomic_path": "cannot write",  # gptsmith.storage: every file gptsmith writes goes through it
}


# Where CommandParser notes, in the namespace, the parser of the (sub-)command that was typed.
_PARSER = "_gptsmith_parser"


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, like every other gptsmith error.

    argparse prints the whole usage block, over several lines, before its message; here it is
    ``gptsmith VERB: error: MESSAGE (see gptsmith VERB --help)``, exit status 2, and ``--help``
    still prints the full help. ``add_subparsers`` makes every sub-command's parser of its
    parent's class, so each verb (``finetune classify`` too) gets this.
    """

    def error(self, message: str) -> NoReturn:
        one_line = " ".join(line.strip() for line in message.splitlines())
        self.exit(2, f"{self.prog}: error: {one_line} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        # The innermost parser returns first, so the parser noted is that of the verb as typed.
        if not hasattr(namespace, _PARSER):
            setattr(namespace, _PARSER, self)
        return namespace, extras

    def missing_command(self) -> NoReturn:
        """A verb typed without its sub-command (``gptsmith``, ``gptsmith finetune``): a usage error,
        so the help (the commands to choose from) goes to stderr and the status is 2, not 0, so a
        script that lost its verb fails; ``--help`` still prints it to stdout with status 0."""
        self.print_help(sys.stderr)
        self.exit(2)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: Any = None) -> argparse.Namespace:
        # argparse says "unrecognized arguments" from the top-level parser, as `gptsmith: error`;
        # the verb's own parser says it instead, so the message names the command and its --help.
        namespace, extras = self.parse_known_args(args, namespace)
        parser = vars(namespace).pop(_PARSER, self)
        if extras:
            # `--data notes/*.txt` unquoted: the shell passes every file, and all but one are left over.
            glob = ("; they are files: did the shell expand a glob? quote it, e.g. 'notes/*.txt', or pass "
                    "their folder" if all(os.path.exists(extra) for extra in extras) else "")
            parser.error(f"unrecognized arguments: {' '.join(extras)}{glob}")
        return namespace


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = CommandParser(
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
        parser.missing_command()

    # The command as typed: `finetune classify`, not only `finetune`, in every message.
    command = " ".join(filter(None, (args.command, getattr(args, "finetune_command", None))))

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"gptsmith {command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show_warning  # one line, not the library's file and line number
    try:
        return int(args.func(args) or 0)
    except GptsmithError as exc:
        print(f"gptsmith {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gptsmith {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `gptsmith info gpt2-small | head`): stop quietly, like Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:
        # A path the user gave that cannot be used (a file where a directory must go, a read-only or
        # missing place): the user's to fix, so one line, not a traceback. Only OSError: any other
        # exception is a bug in gptsmith and keeps its traceback.
        print(f"gptsmith {command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


def describe_os_error(exc: OSError) -> str:
    """What failed, on which path, and the system's reason, in one line.

    E.g. ``cannot create directory: notes.txt/shard (Not a directory)``.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:  # not about a path (a network error, say): the error says it all
        return reason
    frames = traceback.extract_tb(exc.__traceback__)
    operation = OS_OPERATIONS.get(frames[-1].name, "cannot access") if frames else "cannot access"
    path = str(exc.filename) if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{operation}: {path} ({reason})"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
