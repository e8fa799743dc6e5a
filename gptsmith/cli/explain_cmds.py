"""Sub-commands that show how a model works: ``explain`` (a text, step by step), ``plot`` (run curves)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# explain()'s keywords whose messages a user of the command should read as its flags.
EXPLAIN_FLAGS = {"top_k": "--top-k", "max_tokens": "--max-tokens"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``explain`` and ``plot``."""
    from gptsmith.cli.generate_cmds import _add_model_args

    exp = subparsers.add_parser(
        "explain",
        help="watch a model read a text: tokens, embeddings, attention, next token, random vs trained",
        description=(
            "Run TEXT through a model and show each step: (1) the tokens and their ids, beside the simple "
            "word tokenizer's view; (2) the embeddings' shapes, a 2-D PCA map of token vectors and nearest "
            "neighbours; (3) the attention weights of every layer and head; (4) the top next tokens at every "
            "position, the last one at temperatures 0.5, 1 and 2, and the text's loss and perplexity; "
            "(5) the same text scored by a freshly initialised model of the same size. The terminal gets a "
            "compact summary; --html writes a self-contained page with the pictures (opens offline), "
            "--json the numbers behind them."
        ),
        epilog=(
            "examples:\n"
            '  gptsmith explain --checkpoint runs/main "Every effort moves you"\n'
            '  gptsmith explain --model gpt2 --html report.html "The cat sat on the mat"\n'
            '  gptsmith explain --checkpoint runs/main --words king,queen,man,woman --neighbours king '
            '"Hello"\n'
            '  gptsmith explain --checkpoint runs/main --focus 3 --top-k 10 --json numbers.json '
            '"I HAD always"\n'
            "  echo 'Once upon a time' | gptsmith explain --checkpoint runs/main -"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(exp)
    exp.add_argument("text", metavar="TEXT", help="the text to explain ('-' reads stdin)")
    exp.add_argument(
        "--html", type=Path, metavar="OUT.html", help="write the report with its pictures here ('-': stdout)"
    )
    exp.add_argument(
        "--json", type=Path, metavar="OUT.json", help="write the numbers of every picture here ('-': stdout)"
    )
    exp.add_argument(
        "--words", metavar="W1,W2,...", help="draw these words' embeddings instead of the text's tokens"
    )
    exp.add_argument(
        "--neighbours",
        metavar="WORD",
        help="list the nearest neighbours of this word (default: the first --words word, or the last token)",
    )
    exp.add_argument(
        "--focus",
        type=int,
        metavar="N",
        help="break down the attention of token N (default: the last; -1 counts from the end)",
    )
    exp.add_argument(
        "--layer", type=int, default=-1, metavar="L", help="layer drawn with its tokens (default -1: last)"
    )
    exp.add_argument(
        "--top-k", type=int, default=5, metavar="K", help="next-token candidates per position (default 5)"
    )
    exp.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        metavar="N",
        help="explain at most the first N tokens (default 128; also cropped to the context)",
    )
    exp.add_argument("--seed", type=int, default=0, help="seed of the random model of stage 5 (default 0)")
    exp.set_defaults(func=run_explain)

    plot = subparsers.add_parser(
        "plot",
        help="draw training curves of one or more runs (loss vs steps and tokens, learning rate)",
        description=(
            "Redraw the curves of training runs from their metrics.jsonl: train and validation loss "
            "against steps and against tokens seen, and the learning rate. Several runs are overlaid, "
            "each in its own colour, labelled with its directory name (or --label)."
        ),
        epilog=(
            "examples:\n"
            "  gptsmith plot runs/main --out main.png\n"
            "  gptsmith plot runs/lr-1e-3 runs/lr-3e-3 --out compare.png\n"
            "  gptsmith plot runs/a runs/b --label small --label big --out sizes.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (gptsmith train --out)"
    )
    plot.add_argument("--out", type=Path, required=True, metavar="FILE.png",
                      help="the picture to write (.png, .svg or .pdf)")
    plot.add_argument(
        "--label", action="append", default=None, help="a name for each run, in order (repeatable)"
    )
    plot.set_defaults(func=run_plot)


def run_explain(args: argparse.Namespace) -> int:
    from gptsmith.cli.generate_cmds import _in_flag_terms, load_for_generation
    from gptsmith.cli.stdin_text import check_utf8_arg, read_stdin_prompt
    from gptsmith.device import check_seed
    from gptsmith.errors import ConfigError
    from gptsmith.explain.report import explain
    from gptsmith.storage import check_can_be_file

    check_seed(args.seed, "--seed")
    # Not UTF-8 (lone surrogates from argv): refused, as generate does, not explained as U+FFFD.
    for flag, value in (("the text", args.text), ("--words", args.words), ("--neighbours", args.neighbours)):
        check_utf8_arg(flag, value)
    text = read_stdin_prompt() if args.text == "-" else args.text
    if not text:  # white space alone is text to GPT-2 (" " and "\n" are tokens): explain decides
        raise ConfigError('the text is empty: give some text to explain, e.g. "Every effort moves you"')
    words = None
    if args.words is not None:
        words = [w.strip() for w in args.words.split(",")]
        if not all(words):
            raise ConfigError(
                f"--words {args.words!r} has an empty word (separate words with commas: king,queen)"
            )
    outputs = (("--html", args.html), ("--json", args.json))
    to_stdout = [flag for flag, path in outputs if path is not None and str(path) == "-"]
    if len(to_stdout) > 1:
        raise ConfigError("--html - and --json - both ask for standard output: write one of them to a file")
    for flag, path in outputs:
        if path is not None and str(path) != "-":
            check_can_be_file(path, flag, "report" + flag.replace("--", "."))  # before the work
    if args.max_tokens < 1:  # the rest needs the model (top_k vs its vocabulary): checked by explain
        raise ConfigError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    model, tokenizer, _, name = load_for_generation(args)
    with _in_flag_terms(EXPLAIN_FLAGS):  # "--top-k must be ...", as the user typed it, not "top_k"
        report = explain(
            model,
            tokenizer,
            text,
            words=words,
            neighbours_of=args.neighbours,
            focus=args.focus,
            layer=args.layer,
            top_k=args.top_k,
            max_tokens=args.max_tokens,
            seed=args.seed,
            model_name=name,
        )
    if to_stdout:  # standard output holds that document alone, so the other file's line goes to stderr
        sys.stdout.write(report.to_html() if to_stdout == ["--html"] else report.to_json())
    else:
        sys.stdout.write(report.to_text())
    for path, save in ((args.html, report.save_html), (args.json, report.save_json)):
        if path is not None and str(path) != "-":
            print(f"wrote {save(path)}", file=sys.stderr if to_stdout else sys.stdout)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from gptsmith.cli.stdin_text import check_utf8_arg
    from gptsmith.storage import check_can_be_file
    from gptsmith.train.plots import plot_runs

    for label in args.label or []:
        check_utf8_arg("--label", label)
    check_can_be_file(args.out, "--out", "curves.png")
    print(f"wrote {plot_runs(args.runs, args.out, labels=args.label)}")
    return 0
