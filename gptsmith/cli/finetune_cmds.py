"""``gptsmith finetune KIND``: one sub-command per kind of fine-tuning.

Each kind lives in its own module (listed in ``FINETUNE_MODULES``) with a
``register_finetune(subparsers)`` function that adds its parser under ``finetune``.
"""

from __future__ import annotations

import argparse
import importlib

# Modules that each add one `gptsmith finetune KIND` (in the order `--help` lists them).
FINETUNE_MODULES: list[str] = ["classify_cmds", "instruct_cmds"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained model for a task",
        description="Fine-tune a pretrained model (--checkpoint DIR or --model NAME_OR_DIR) for a task; "
        "the result is a model directory that every command loads with --checkpoint.",
    )
    kinds = parser.add_subparsers(dest="finetune_command", metavar="KIND")
    for name in FINETUNE_MODULES:
        importlib.import_module(f"gptsmith.cli.{name}").register_finetune(kinds)
    parser.set_defaults(func=lambda args: parser.print_help() or 0)
