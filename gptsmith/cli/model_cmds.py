"""Sub-commands about models themselves: ``info`` (sizes and memory) and ``convert`` (GPT-2 weights)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from gptsmith.config import parse_assignments
from gptsmith.device import dtype_arg
from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.model.config import PRESETS, GPTConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info`` and ``convert``."""
    info = subparsers.add_parser(
        "info",
        help="parameter count, layer table and memory needs of a preset or checkpoint",
        description=(
            "Show a model's parameter count (output head tied and untied), its layers, and the memory "
            "that training it needs (weights, gradients, AdamW's two moments) at fp32 and bf16. Nothing "
            "is allocated, so even gpt2-xl takes no memory and a few seconds (mostly importing torch)."
        ),
        epilog=(
            "examples:\n"
            "  gptsmith info gpt2-small\n"
            "  gptsmith info gpt2-small --set qkv_bias=false --set context_length=256\n"
            "  gptsmith info runs/tiny-verdict     # a run directory: its latest checkpoint\n"
            "  gptsmith info ~/hf/gpt2             # a Hugging Face GPT-2 directory"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    info.add_argument(
        "model",
        metavar="MODEL_OR_CHECKPOINT",
        help=f"a preset ({', '.join(PRESETS)}), a model/run directory, or a Hugging Face GPT-2 directory",
    )
    info.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="overrides",
                      help="change a field of a preset (repeatable): vocab_size, context_length, emb_dim, "
                      "n_heads, n_layers, drop_rate, qkv_bias, tie_weights")
    info.add_argument("--batch-size", type=int, default=8,
                      help="sequences per step, for the estimate of a training step's memory (default 8)")
    info.add_argument("--context-length", type=int, default=None,
                      help="tokens per sequence for that estimate (default: the model's context)")
    info.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")
    info.set_defaults(func=run_info)

    convert = subparsers.add_parser(
        "convert",
        help="convert GPT-2 weights between Hugging Face format and gptsmith checkpoints",
        description=(
            "Convert a model to gptsmith's checkpoint format (config.json + model.safetensors) or to a "
            "Hugging Face GPT-2 directory that transformers.GPT2LMHeadModel.from_pretrained() loads. "
            "SOURCE may be a gptsmith model or run directory, a Hugging Face GPT-2 directory "
            "(model.safetensors or pytorch_model.bin, whole or in the shards an index.json names; its "
            "tokenizer files, if any, must be GPT-2's), or a hub name such as gpt2 or gpt2-medium "
            "(downloaded into the Hugging Face cache; needs the network once)."
        ),
        epilog=(
            "examples:\n"
            "  gptsmith convert gpt2 --to gptsmith --out models/gpt2-small\n"
            "  gptsmith convert ~/hf/gpt2-medium --to gptsmith --out models/gpt2-medium\n"
            "  gptsmith convert runs/tiny-verdict --to hf --out exported/tiny"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("source", metavar="SOURCE", help="checkpoint directory, run directory or hub name")
    convert.add_argument(
        "--to", required=True, choices=["gptsmith", "hf"], help="output format: gptsmith checkpoint or hf"
    )
    convert.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    convert.add_argument(
        "--dtype", type=dtype_arg(), default=None, metavar="{auto,fp32,bf16,fp16}",
        help="store weights in this dtype (float32, bfloat16, float16 work too; default: as loaded)"
    )
    convert.add_argument("--force", action="store_true", help="write into --out even if it holds files")
    convert.set_defaults(func=run_convert)


def _describe_source(name: str, overrides: dict | None = None) -> tuple[GPTConfig, str, dict]:
    """(config, one-line description, extra checkpoint keys) for a preset name or checkpoint path.

    A checkpoint's weights are checked against its config (shapes from the safetensors header,
    and the file's length), so a broken checkpoint is reported here too, not only when loaded.
    """
    if name in PRESETS:
        if overrides:
            changed = " ".join(f"{k}={v}" for k, v in overrides.items())
            return GPTConfig.from_preset(name, **overrides), f"{name} (preset, with {changed})", {}
        return PRESETS[name], f"{name} (preset)", {}
    if overrides:
        raise ConfigError("--set changes a preset; a checkpoint's sizes are fixed by its weights")
    path = Path(name).expanduser()
    if not path.exists():
        hint = " (the 124M GPT-2 preset is gpt2-small)" if name == "gpt2" else ""
        raise ConfigError(
            f"{name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing checkpoint path{hint}"
        )
    from gptsmith.model.checkpoint import (
        check_weights_file,
        config_from_checkpoint,
        read_model_config,
        resolve_model_dir,
    )
    from gptsmith.model.weights import check_state_shapes, safetensors_shapes

    model_dir = resolve_model_dir(path)
    config = read_model_config(model_dir)
    cfg = config_from_checkpoint(model_dir)
    if config["format"] != "hf-gpt2":
        weights = check_weights_file(model_dir)
        check_state_shapes(cfg, safetensors_shapes(weights), source=str(weights))
    else:
        from gptsmith.model.hf_gpt2 import check_hf_weights

        check_hf_weights(model_dir, cfg)  # names mapped as an import maps them; truncation caught
    kind = "Hugging Face GPT-2 directory" if config["format"] == "hf-gpt2" else "gptsmith checkpoint"
    if isinstance(config.get("classifier"), dict):  # `gptsmith classify` reads it, not generate
        kind = f"gptsmith classifier of {', '.join(map(str, config['classifier'].get('labels', [])))}"
    reserved = {"format", "format_version", "model", "hf_config"}
    extra = {k: v for k, v in config.items() if k not in reserved}
    return cfg, f"{model_dir} ({kind})", extra


def _mib(n_bytes: int) -> str:
    """A size for the memory table, short enough for its columns even for huge --set sizes."""
    if n_bytes >= 2**40:
        return f"{n_bytes / 2**40:,.2f} TiB"
    return f"{n_bytes / 2**30:,.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:,.1f} MiB"


def _train_step(args: argparse.Namespace, cfg: GPTConfig) -> dict:
    """--batch-size, --context-length (checked) and the estimated peak bytes of one training step."""
    from gptsmith.model.memory import train_step_memory

    context = cfg.context_length if args.context_length is None else args.context_length
    for flag, value in (("--batch-size", args.batch_size), ("--context-length", context)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if context > cfg.context_length:
        raise ConfigError(f"--context-length {context} is longer than the model's context of "
                          f"{cfg.context_length} (lower it, or --set context_length={context} on a preset)")
    return {"batch_size": args.batch_size, "context_length": context,
            **train_step_memory(cfg, args.batch_size, context)}


def run_info(args: argparse.Namespace) -> int:
    from gptsmith.model.gpt import summarize
    from gptsmith.model.memory import available_memory, gib

    cfg, description, extra = _describe_source(args.model, parse_assignments(args.overrides))
    step = _train_step(args, cfg)
    summary = summarize(cfg)
    memory = {"fp32": summary.memory_bytes(4), "bf16": summary.memory_bytes(2)}
    if args.json:
        print(
            json.dumps(
                {
                    "model": description,
                    "config": cfg.to_dict(),
                    "params_tied": summary.params_tied,
                    "params_untied": summary.params_untied,
                    "params": summary.params,
                    "layers": [{"name": n, "shape": s, "params": p} for n, s, p in summary.layers],
                    "memory_bytes": memory,
                    "train_step": step,
                    "checkpoint": extra,
                },
                indent=2,
            )
        )
        return 0

    tied_note, untied_note = ("  <- this model", "") if cfg.tie_weights else ("", "  <- this model")
    lines = [
        f"model:      {description}",
        "config:     " + " ".join(f"{k}={v}" for k, v in cfg.to_dict().items()),
    ]
    if extra:
        shown = (f"{k}={v}" for k, v in extra.items() if not isinstance(v, dict))
        lines.append("checkpoint: " + " ".join(shown))
    lines += [
        f"parameters: {summary.params_tied:>15,} with the output head tied to tok_emb{tied_note}",
        f"            {summary.params_untied:>15,} with a separate output head{untied_note}",
        "",
    ]
    name_width = max(len(n) for n, _, _ in summary.layers) + 2
    shape_width = max(16, *(len(s) + 2 for _, s, _ in summary.layers))  # wide enough for any --set
    count_width = max(14, *(len(f"{n:,}") + 2 for _, _, n in summary.layers))
    lines.append(f"{'layer':<{name_width}}{'shape':<{shape_width}}{'parameters':>{count_width}}")
    block_total = 0
    for name, shape, n in summary.layers:
        lines.append(f"{name:<{name_width}}{shape:<{shape_width}}{n:>{count_width},}")
        if name.startswith("trf_blocks."):
            block_total += n
    lines.append(
        f"(trf_blocks.[...] rows are one block: {block_total:,} parameters, "
        f"x {cfg.n_layers} blocks = {block_total * cfg.n_layers:,})"
    )
    lines += ["", f"memory for training ({summary.params:,} parameters, AdamW keeps 2 values per parameter):"]
    lines.append(f"{'':<6}{'weights':>13}{'gradients':>13}{'AdamW states':>14}{'total':>13}")
    for precision, sizes in memory.items():
        lines.append(
            f"{precision:<6}{_mib(sizes['weights']):>13}{_mib(sizes['gradients']):>13}"
            f"{_mib(sizes['adamw_states']):>14}{_mib(sizes['total']):>13}"
        )
    lines.append(
        "(activations come on top and grow with batch size x context length. bf16 autocast keeps "
        "weights, gradients and AdamW states in fp32: budget the fp32 row; the bf16 row is pure bf16.)"
    )
    available = available_memory("cpu")
    lines += ["", f"one training step at batch {step['batch_size']:,} x context {step['context_length']:,}: "
              f"about {gib(step['total'])} (weights and AdamW {gib(step['weights_and_optimizer'])}, "
              f"activations {gib(step['activations'])}, logits {gib(step['logits'])})",
              f"(a conservative estimate for a CPU; on a GPU the logits need 5/3 as much. `gptsmith train` "
              f"checks it before it starts; this machine has "
              f"{gib(available) if available is not None else 'an unknown amount'} available. Lower it with "
              "--batch-size or --context-length)"]
    print("\n".join(lines))
    return 0


def _refuse_own_files(out: Path, source: Path) -> None:
    """``convert`` never writes over the model it reads, nor into a training run's own folders,
    even with --force: a run whose weights changed format can no longer resume."""
    from gptsmith.model.checkpoint import resolve_model_dir

    target = out.expanduser().resolve()
    sources = set()
    if source.exists():
        sources = {source.resolve()}
        with contextlib.suppress(GptsmithError):
            sources.add(resolve_model_dir(source).resolve())
    if target in sources:
        raise GptsmithError(f"--out {out} is the model being converted: choose another folder")
    in_run = (target / "run.json").is_file() or (target.parent.name == "checkpoints"
                                                 and (target.parent.parent / "run.json").is_file())
    if in_run:
        raise GptsmithError(f"--out {out} belongs to a training run (its checkpoints must stay resumable): "
                            "choose another folder")


def run_convert(args: argparse.Namespace) -> int:
    from gptsmith.data.tokenizer import load_tokenizer
    from gptsmith.device import torch_dtype
    from gptsmith.model.checkpoint import load_model, read_model_config, resolve_model_dir, save_model
    from gptsmith.model.hf_gpt2 import export_hf
    from gptsmith.storage import atomic_write_bytes, check_can_be_directory

    out: Path = args.out
    source_path = Path(args.source).expanduser()
    _refuse_own_files(out, source_path)  # first: --force would not help
    check_can_be_directory(out, "--out")  # before the (slow) model load
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise GptsmithError(f"--out {out} is not empty (pass --force to write into it anyway)")
    model = load_model(args.source, dtype=torch_dtype(args.dtype))
    source_config = read_model_config(source_path) if source_path.exists() else {}
    tokenizer = source_config.get("tokenizer", "gpt2")
    if tokenizer != "gpt2":  # carry a word-level vocabulary over (GPT-2's BPE is found by name)
        tokenizer = load_tokenizer(tokenizer, resolve_model_dir(source_path))
    # What the source's config.json says beyond the weights (the instruction template that ask and
    # chat prompt with, a classifier's labels, the fine-tune's record) goes with the model.
    carried = {k: v for k, v in source_config.items() if k not in _NOT_CARRIED}
    notes = []  # (on lines of their own after the summary, not spliced into it)
    if args.to == "hf":
        export_hf(model, out)
        kind = "Hugging Face GPT-2 directory (load it with GPT2LMHeadModel.from_pretrained)"
        if tokenizer != "gpt2":
            notes.append(f"note: its tokenizer {tokenizer.name!r} has no Hugging Face equivalent: the ids of "
                         "a Hugging Face tokenizer will not match the model's")
        notes += _not_exported(carried)
    else:
        head = _classifier_head(carried, source_path)
        if head is not None:  # before config.json, which then names a head that is there
            atomic_write_bytes(out / head.name, head.read_bytes())
        save_model(model, out, tokenizer=tokenizer, extra={**carried, "converted_from": str(args.source)})
        kind = "gptsmith checkpoint"
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(f"wrote {out} as a {kind}: {model.num_parameters():,} parameters, {dtype}")
    for note in notes:
        print(note, file=sys.stderr)
    return 0


# Keys of a source's config.json that the new config.json writes itself (or that describe only the
# source: a Hugging Face config translated on reading, what it was converted from).
_NOT_CARRIED = {"format", "format_version", "model", "tokenizer", "dtype", "hf_config", "converted_from"}


def _classifier_head(carried: dict, source: Path) -> Path | None:
    """The head file of a classifier source (None for a language model), checked to be there."""
    from gptsmith.finetune.classifier import head_file
    from gptsmith.model.checkpoint import resolve_model_dir

    section = carried.get("classifier")
    return head_file(section, resolve_model_dir(source)) if isinstance(section, dict) else None


def _not_exported(carried: dict) -> list[str]:
    """Notes on what a Hugging Face GPT-2 directory has no place for."""
    notes = []
    if isinstance(carried.get("classifier"), dict):
        notes.append("note: the classifier's head and labels have no place in a Hugging Face GPT-2 "
                     "directory: only its language model was exported (classify with the gptsmith one)")
    if carried.get("instruction_template"):
        notes.append(f"note: the model was instruction-tuned with the {carried['instruction_template']!r} "
                     "template, which a Hugging Face directory does not record: prompt it in that template")
    return notes
