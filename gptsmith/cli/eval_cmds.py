"""Sub-command ``gptsmith eval``: the loss and perplexity of a checkpoint (or an untrained preset)
on the train and validation splits of a corpus."""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

from gptsmith.cli.train_configs import read_run_info, run_corpus
from gptsmith.config import check_fraction
from gptsmith.device import DEVICE_HELP, device_arg
from gptsmith.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser(
        "eval", help="loss and perplexity per split of a checkpoint",
        description="Score a checkpoint (or an untrained preset) on the train and validation splits of a "
        "corpus: the mean next-token loss over fixed batches, and its perplexity exp(loss).")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="model or run directory")
    source.add_argument("--preset", help="score an untrained model of this preset (about ln(vocab_size))")
    e.add_argument("--data", help="corpus (default: the run's training data, else builtin)")
    e.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default: 8)")
    e.add_argument("--context-length", type=int,
                   help="tokens per window (default: the model's; with --preset at most 256)")
    e.add_argument("--max-batches", type=int, default=50, help="batches per split (default 50)")
    e.add_argument("--val-fraction", type=float, help="default: the run's, else 0.1")
    e.add_argument("--text-field", help="the .jsonl field / .parquet column of the text (default: the run's, "
                   "else text)")
    e.add_argument("--device", default="auto", type=device_arg, help=DEVICE_HELP)
    e.add_argument("--seed", type=int, default=123,
                   help="seed of the untrained weights with --preset (default: 123)")
    e.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """``gptsmith eval``: loss and perplexity of a checkpoint (or an untrained preset) per split."""
    import torch

    from gptsmith.data.corpus import RECORD_KINDS, resolve_corpus
    from gptsmith.data.tokenizer import load_tokenizer
    from gptsmith.data.windows import count_windows
    from gptsmith.device import check_seed, resolve_device, set_seed, tune_cpu_allocator
    from gptsmith.errors import DataError, NonFiniteError
    from gptsmith.model.checkpoint import load_model_dir, read_model_config, resolve_model_dir
    from gptsmith.model.gpt import GPTConfig, GPTModel
    from gptsmith.model.memory import check_eval_memory
    from gptsmith.train.batches import FixedBatches
    from gptsmith.train.evaluation import calc_loss_loader, perplexity
    from gptsmith.train.run import prepare_splits

    for flag_name, value in (("--batch-size", args.batch_size), ("--max-batches", args.max_batches),
                             ("--context-length", args.context_length)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag_name} must be >= 1, got {value}")
    if args.val_fraction is not None:
        check_fraction("--val-fraction", args.val_fraction)
    check_seed(args.seed, "--seed")
    device = resolve_device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # the logits of every batch are big buffers: avoid re-faulting them
    run_info: dict = {}
    if args.checkpoint:
        model_dir = resolve_model_dir(args.checkpoint)
        tokenizer = load_tokenizer(read_model_config(model_dir).get("tokenizer", "gpt2"), model_dir)
        for candidate in (Path(args.checkpoint), model_dir.parent.parent):
            if (candidate / "run.json").is_file():
                run_info = read_run_info(candidate)
                break
        model = load_model_dir(model_dir, device=device)
        label = str(model_dir)
    else:
        set_seed(args.seed)
        cfg = GPTConfig.from_preset(args.preset)
        # Untrained, the model needs only the positions it is scored on: 256 unless asked for more.
        context_length = args.context_length or min(cfg.context_length, 256)
        if context_length > cfg.context_length:
            raise ConfigError(f"--context-length {context_length} exceeds the {args.preset} preset's "
                              f"{cfg.context_length}")
        cfg = GPTConfig.from_preset(args.preset, context_length=context_length)
        tokenizer, model = load_tokenizer("gpt2"), GPTModel(cfg).to(device).eval()
        label = f"untrained {args.preset}"
    run_train_cfg = run_info.get("train", {})
    data = args.data or (run_corpus(run_info) if run_info else "builtin")
    val_fraction = args.val_fraction
    if val_fraction is None:
        val_fraction = run_train_cfg.get("val_fraction", 0.1)
    text_field = args.text_field or run_train_cfg.get("text_field", "text")
    if args.text_field is None and args.data and resolve_corpus(data).kind not in RECORD_KINDS:
        text_field = "text"  # the run's field is for its records: plain text has none (no warning)
    train_tokens, val_tokens, _ = prepare_splits(data, tokenizer, val_fraction, text_field=text_field)
    context_length = args.context_length or model.cfg.context_length
    if context_length > model.cfg.context_length:
        raise ConfigError(f"--context-length {context_length} exceeds the model's {model.cfg.context_length}")
    print(f"model: {label} ({model.num_parameters() / 1e6:.1f}M parameters); data: {data}")
    _note_unknown_words(tokenizer, data, train_tokens, val_tokens)
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        n_windows = count_windows(len(tokens), context_length, context_length)
        if n_windows == 0:
            more = f"raise --val-fraction, now {val_fraction}, or " if split == "val" else ""
            raise DataError(f"the {split} split of {data} has {len(tokens)} tokens, fewer than one window of "
                            f"{context_length} + 1 ({more}lower --context-length)")
        check_eval_memory(model.cfg, min(args.batch_size, n_windows), context_length, device)
        batches = FixedBatches(tokens, context_length, min(args.batch_size, n_windows), args.max_batches)
        with torch.no_grad():
            loss = calc_loss_loader(batches, model, device)
        if not math.isfinite(loss):  # never a `nan` printed with exit status 0
            raise NonFiniteError(f"{label} gives a non-finite loss ({loss}) on the {split} split: its "
                                 "weights are broken, e.g. a checkpoint of a run that diverged (evaluate an "
                                 "earlier checkpoint of the run)")
        n_batches = f"{len(batches)} batch{'es' if len(batches) != 1 else ''}"
        print(f"{split:>5}: loss {loss:.4f}  perplexity {perplexity(loss):,.2f}  "
              f"({n_batches} of {batches.batch_size}x{context_length} tokens)")
    print(f"(an untrained model scores about ln(vocab_size) = ln({model.cfg.vocab_size}) = "
          f"{math.log(model.cfg.vocab_size):.2f})")
    return 0


def _note_unknown_words(tokenizer: object, data: str, *splits: object) -> None:
    """Say how much of ``data`` a word-level tokenizer read as ``<|unk|>``: words its vocabulary lacks
    (text it was not learnt from) all become that one easy token, which flatters the loss."""
    import numpy as np

    unk_id = getattr(tokenizer, "unk_id", None)
    n_tokens = sum(len(part) for part in splits)
    if unk_id is None or not n_tokens:
        return
    share = sum(int(np.count_nonzero(np.asarray(part) == unk_id)) for part in splits) / n_tokens
    if share >= 0.01:
        warnings.warn(f"{100 * share:.0f}% of the tokens of {data} are <|unk|> (words the model's "
                      "vocabulary lacks): predicting <|unk|> counts as right, so the loss looks better "
                      "than the model is", stacklevel=2)
