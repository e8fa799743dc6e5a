"""``gptsmith finetune classify`` (fine-tune a classifier) and ``gptsmith classify`` (use one)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gptsmith.cli.finetune_cmds import add_lora_args
from gptsmith.cli.shell import command_line
from gptsmith.cli.train_progress import say
from gptsmith.device import DEVICE_HELP, TRAIN_DTYPES, check_seed, device_arg, dtype_arg
from gptsmith.errors import ConfigError, DataError

FINETUNE_EPILOG = """\
examples:
  gptsmith finetune classify --checkpoint runs/main --data ../shared/data/sms_spam/SMSSpamCollection.tsv \\
      --no-header --label-column 0 --text-column 1 --balance --trainable all --lr 1e-3 --epochs 3 \\
      --out models/spam
  gptsmith finetune classify --model gpt2 --data reviews.csv --lora-rank 8 --lr 2e-3 --out models/reviews
  gptsmith classify --checkpoint models/spam "You won a free cruise, call now" "See you at 6?"

Data: CSV, TSV, JSONL or a JSON array with a text and a label column (any number of classes;
labels are strings, stored with the model). Without --val-data/--test-data the file is split 70/10/20.
The output is a model directory (config.json with the labels and the head, model.safetensors,
classifier.safetensors) plus metrics.jsonl and training.png; with --save-adapter-only, only the
LoRA adapter and the head, which load on top of the base model.
"""


def _column(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def register_finetune(kinds: argparse._SubParsersAction) -> None:
    """Add ``classify`` under ``gptsmith finetune``."""
    p = kinds.add_parser(
        "classify", help="fine-tune a classifier of short texts (e.g. spam or not)",
        description="Fine-tune a pretrained GPT to sort texts into classes: a new head on the last real "
        "token of each text. The test accuracy and a confusion matrix are printed at the end.",
        epilog=FINETUNE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="base model: a model or run directory")
    source.add_argument("--model", help="base model: a name (gpt2, gpt2-medium, ...) or a directory")
    p.add_argument("--data", required=True, help="CSV, TSV, JSONL or JSON-array file of labelled texts")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier fine-tune's output in --out")
    p.add_argument("--text-column", type=_column, default="text",
                   help="text column: a header name, or a 0-based number with --no-header (default: text)")
    p.add_argument("--label-column", type=_column, default="label",
                   help="label column: a header name, or a 0-based number with --no-header (default: label)")
    p.add_argument("--no-header", dest="header", action="store_false",
                   help="the first line is data; give columns by number")
    p.add_argument("--val-data", help="validation file (default: split from --data)")
    p.add_argument("--test-data", help="test file (default: split from --data)")
    p.add_argument("--split", default="70/10/20",
                   help="train/validation/test shares of --data (default: 70/10/20)")
    p.add_argument("--balance", action="store_true", help="down-sample every class to the smallest one")
    p.add_argument("--trainable",
                   help="head, last-blocks:N (with the final norm) or all (default: last-blocks:1)")
    add_lora_args(p, "train LoRA adapters of this rank (and the head) instead of --trainable")
    p.add_argument("--save-adapter-only", action="store_true",
                   help="save only the LoRA adapter and the head (default: the merged model)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training set (default: 5)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=8, help="texts per step (default: 8)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default: 5e-5)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default: 0.1)")
    p.add_argument("--max-length", type=int, help="truncate texts to this many tokens (default: the context)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="steps between evaluations (default: after each epoch)")
    p.add_argument("--seed", type=int, default=123, help="seed of the split, the head and the order")
    p.add_argument("--device", default="auto", type=device_arg, help=DEVICE_HELP)
    p.add_argument("--dtype", default="auto", type=dtype_arg(TRAIN_DTYPES), metavar="{auto,bf16,fp32}",
                   help="auto = bf16 autocast where faster (bfloat16 and float32 work too)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_finetune_classify)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``classify`` (predict with a fine-tuned classifier)."""
    p = subparsers.add_parser(
        "classify", help="label texts with a fine-tuned classifier",
        description="Print the label and its probability for each text, one line per text:\n"
        "label<TAB>probability<TAB>text, where a newline, carriage return, tab or backslash in a\n"
        "label or text is written \\n, \\r, \\t, \\\\ (any other control character or Unicode line\n"
        "break \\xNN or \\uNNNN, as in a Python string), so every line splits in three.\n"
        "--json prints one JSON object per text instead.",
        epilog='example:\n  gptsmith classify --checkpoint models/spam "You won a prize!" "Lunch at 1?"',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="classifier directory (or its LoRA adapter directory)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--file", help="file with one text per line, blank lines skipped ('-' = standard input)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument("--device", default="auto", type=device_arg, help=DEVICE_HELP)
    p.set_defaults(func=run_classify)


class _Progress:
    """Prints the run's notes and evaluations, and draws a progress bar on stderr."""

    def __init__(self, show_bar: bool) -> None:
        self.show_bar = show_bar
        self.bar = None

    def on_start(self, info: dict[str, Any]) -> None:
        from gptsmith.finetune.class_eval import escape_text  # (a label's line break stays on its line)

        for note in info["notes"]:
            say(f"note: {note}")
        sizes = info["sizes"]
        classes = ", ".join(f"{escape_text(label)} ({n})" for label, n in info["counts"].items())
        say(f"data: {sizes['train']} train, {sizes['validation']} validation, {sizes['test']} test "
                 f"texts; classes: {classes} in train")
        lora = info["lora"]
        how = f"LoRA rank {lora['rank']} alpha {lora['alpha']:g} on {', '.join(lora['targets'])}" \
            if lora else ""
        say(f"base: {info['base']} on {info['device']} ({info['dtype']}); {info['parameters']}"
                 + (f"; {how}" if how else ""))
        if self.show_bar:
            from gptsmith.cli.progress import Progress

            self.bar = Progress(info["max_steps"], unit="step")

    def on_step(self, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(info["step"], f"loss {info['loss']:.3f}")

    def on_eval(self, info: dict[str, Any]) -> None:
        val = ""
        if info["val_loss"] is not None:
            val = f" | val loss {info['val_loss']:.3f} acc {100 * info['val_accuracy']:.1f}%"
        say(f"epoch {info['epoch']} step {info['step']:>5} | train loss {info['train_loss']:.3f} "
                 f"acc {100 * info['train_accuracy']:.1f}%{val}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_finetune_classify(args: argparse.Namespace) -> int:
    from gptsmith.finetune.class_eval import format_confusion
    from gptsmith.finetune.classify import ClassifyCallbacks, finetune_classifier

    class Printer(_Progress, ClassifyCallbacks):
        pass

    check_seed(args.seed, "--seed")  # named as the flag, before any loading
    printer = Printer(show_bar=not args.no_progress)
    try:
        result = finetune_classifier(
            args.data, checkpoint=args.checkpoint, model=args.model, out=args.out, val_data=args.val_data,
            test_data=args.test_data, overwrite=args.overwrite, callbacks=printer,
            text_column=args.text_column, label_column=args.label_column, header=args.header,
            split=args.split, balance=args.balance, trainable=args.trainable, lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, lora_targets=args.lora_targets,
            save_adapter_only=args.save_adapter_only, epochs=args.epochs, max_steps=args.max_steps,
            batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            max_length=args.max_length, eval_every=args.eval_every, seed=args.seed, device=args.device,
            dtype=args.dtype)
    finally:
        printer.close()
    if result.test is not None:
        print(f"test accuracy {100 * result.test.accuracy:.1f}% (n={result.test.n})")
        print(format_confusion(result.test.confusion, result.labels))
    else:
        print("test accuracy: no test texts (the split left none)")
    what = "LoRA adapter" if args.save_adapter_only else "classifier"
    try_it = command_line("gptsmith", "classify", "--checkpoint", result.out, "some text")
    print(f"saved the {what} to {result.out}; try: {try_it}")
    return 0


def _read_texts(args: argparse.Namespace) -> list[str]:
    from gptsmith.cli.stdin_text import check_utf8_arg, read_stdin_prompt
    from gptsmith.data.text_files import read_utf8, text_lines

    texts = list(args.texts)
    for number, text in enumerate(texts, start=1):
        check_utf8_arg(f"text {number} of the arguments", text)
        if not text.strip():
            raise ConfigError(f"text {number} of the arguments is empty: there is nothing to classify")
    if args.file is not None:
        # One text per line, ended by a newline only: a U+2028 or form feed stays inside its text.
        if args.file == "-":
            lines = text_lines(read_stdin_prompt("--file - (standard input)"))
        else:
            path = Path(args.file).expanduser()
            if path.is_dir():
                raise DataError(f"--file {path} is a directory; give a text file (one text per line)")
            if not path.is_file():
                raise DataError(f"--file {path} not found (one text per line)")
            lines = text_lines(read_utf8(path))  # a leading BOM dropped; other bytes: offset and byte
        kept = [line for line in lines if line.strip()]
        if not kept and not texts:
            where = "standard input" if args.file == "-" else args.file
            why = "only blank lines" if lines else "it is empty"
            raise DataError(f"--file {where} holds no texts ({why}; put one text per line)")
        if len(kept) < len(lines):
            skipped = len(lines) - len(kept)
            print(f"note: skipped {skipped} blank line(s) of --file {args.file}", file=sys.stderr)
        texts.extend(kept)
    if not texts:
        raise ConfigError("no texts to classify: give them as arguments or with --file FILE")
    return texts


def run_classify(args: argparse.Namespace) -> int:
    from gptsmith.finetune.class_eval import escape_text
    from gptsmith.finetune.class_model import encode_texts
    from gptsmith.finetune.classifier import Classifier

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    texts = _read_texts(args)
    classifier = Classifier.load(args.checkpoint, device=args.device)
    labels, probabilities = classifier.predict(texts, batch_size=args.batch_size)
    longest = classifier.max_length
    cut = encode_texts(texts, classifier.tokenizer, longest).truncated
    if cut:  # as the fine-tune did: the classifier reads a text's first max_length tokens only
        print(f"note: {cut} text(s) longer than the classifier's {longest} tokens were classified by their "
              f"first {longest} tokens", file=sys.stderr)
    for text, label, probability in zip(texts, labels, probabilities, strict=True):
        if args.json:
            print(json.dumps({"text": text, "label": label, "probability": round(probability, 6)}))
        else:
            # one line of three tab-separated fields, whatever the text holds: its line breaks,
            # tabs and backslashes escaped (\n, \t, \\), as its label's
            print(f"{escape_text(label)}\t{probability:.3f}\t{escape_text(text)}")
    return 0
