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
    parser.set_defaults(func=lambda args: parser.missing_command())  # no KIND: a usage error


def add_lora_args(parser: argparse.ArgumentParser, rank_help: str) -> None:
    """The LoRA flags, the same in every fine-tune (``gptsmith.finetune.lora.lora_settings`` reads them)."""
    parser.add_argument("--lora-rank", type=int, default=0, help=rank_help)
    parser.add_argument("--lora-alpha", type=float, help="LoRA scaling numerator (default: 2 x rank)")
    parser.add_argument("--lora-dropout", type=float, default=0.0,
                        help="dropout on the adapters' input (default 0)")
    parser.add_argument("--lora-targets", type=lora_targets, default=lora_targets("attention,feed-forward"),
                        help="comma-separated layer groups or name patterns "
                        "(default: attention,feed-forward)")


def lora_targets(text: str) -> tuple[str, ...]:
    """``--lora-targets``: "attention,ff.layers.0" -> ("attention", "ff.layers.0")."""
    return tuple(t.strip() for t in text.split(",") if t.strip())

