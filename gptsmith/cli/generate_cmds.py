"""The ``generate`` sub-command (text from a prompt), and the model and decoding flags that ``chat``,
``ask``, ``explain`` and ``serve`` share with it."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptsmith.cli.shell import command_line
from gptsmith.device import DECODE_DTYPES, DEVICE_HELP, device_arg, dtype_arg
from gptsmith.errors import ConfigError, GptsmithError

if TYPE_CHECKING:
    import torch

DTYPE_HELP = "weights dtype: fp32, bf16 or fp16 (float32, bfloat16, float16 work too; default: as saved)"
INT8_HELP = ("; int8: fp32 weights, decoded through int8 copies (CPU only; ~1.8x faster, close to fp32's "
             "tokens)")
# GenerationConfig's fields and the flags that set them, so its messages can name the flags.
FLAG_OF_FIELD = {
    "max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k",
    "top_p": "--top-p", "repetition_penalty": "--repetition-penalty", "seed": "--seed",
    "num_beams": "--num-beams", "length_penalty": "--length-penalty", "stop_sequences": "--stop",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``generate``."""
    gen = subparsers.add_parser(
        "generate",
        help="continue a prompt with a trained or imported model (streams to the terminal)",
        description=(
            "Generate text from a checkpoint (a model directory or a run directory: its latest checkpoint) "
            "or a GPT-2 model by name. An instruction-tuned checkpoint (instruction_template in its "
            "config.json) gets the prompt in its template unless --raw. "
            "Decoding is greedy unless --temperature > 0; the KV cache is on "
            "unless --no-cache. Generation stops at <|endoftext|>, at a --stop text, or after "
            "--max-new-tokens."
        ),
        epilog=(
            "examples:\n"
            '  gptsmith generate --checkpoint runs/main "The module"\n'
            '  gptsmith generate --model gpt2 --temperature 0.8 --top-k 40 --seed 1 "Every effort"\n'
            '  gptsmith generate --checkpoint runs/main --num-beams 4 --json "Question: "\n'
            "  echo 'Once upon a time' | gptsmith generate --checkpoint runs/main -"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(gen, int8=True)
    gen.add_argument(
        "prompt", nargs="?", default="", help="prompt text ('-' reads stdin; empty: <|endoftext|>)"
    )
    _add_decoding_args(gen, max_new_tokens=100, temperature=0.0)
    gen.add_argument(
        "--num-beams", type=int, default=1, help="beam search with this many beams (default 1: off)"
    )
    gen.add_argument(
        "--length-penalty", type=float, default=1.0, help="beam score / length**this (default 1)"
    )
    gen.add_argument("--no-cache", action="store_true", help="recompute the whole context every step (slow)")
    gen.add_argument("--num-samples", type=int, default=1, help="how many continuations (default 1)")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    gen.add_argument("--raw", action="store_true",
                     help="an instruction-tuned model: continue the prompt as given, not in its template")
    gen.set_defaults(func=run_generate)


def _add_model_args(parser: argparse.ArgumentParser, *, int8: bool = False) -> None:
    """--checkpoint/--model, --device and --dtype (with ``int8``: also int8 decoding, for the verbs that
    decode one sequence at a time)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", type=Path, help="model directory, or run directory (its latest checkpoint)"
    )
    source.add_argument(
        "--model", help="GPT-2 by hub name (gpt2, gpt2-medium, ...) or a Hugging Face directory"
    )
    parser.add_argument("--device", default="auto", type=device_arg, help=DEVICE_HELP)
    if int8:
        parser.add_argument("--dtype", type=dtype_arg(DECODE_DTYPES), default=None,
                            metavar="{auto,fp32,bf16,fp16,int8}", help=DTYPE_HELP + INT8_HELP)
    else:
        parser.add_argument(
            "--dtype", type=dtype_arg(), default=None, metavar="{auto,fp32,bf16,fp16}", help=DTYPE_HELP
        )


def _add_decoding_args(parser: argparse.ArgumentParser, *, max_new_tokens: int, temperature: float) -> None:
    parser.add_argument(
        "--max-new-tokens", type=int, default=max_new_tokens, help=f"default {max_new_tokens}"
    )
    parser.add_argument(
        "--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})"
    )
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling: keep this probability mass"
    )
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens (default 1)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible output)")
    parser.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop at this text (repeatable; '\\n' ok)",
    )


def load_for_generation(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, dict[str, Any], str]:
    """(model, tokenizer, checkpoint config, display name) from --checkpoint/--model/--device/--dtype."""
    import torch

    from gptsmith.device import resolve_device, torch_dtype, warn_if_cpu_lacks_bf16
    from gptsmith.model.checkpoint import (
        load_model,
        load_model_dir,
        load_model_tokenizer,
        read_model_config,
        resolve_model_dir,
    )
    from gptsmith.model.fast_linear import bf16_on_fbgemm, use_int8_decoding

    device = resolve_device(args.device)
    int8 = args.dtype == "int8"
    if int8 and device.type != "cpu":
        raise ConfigError(f"--dtype int8 decodes on the CPU only, not on {device.type} "
                          "(use --device cpu, or --dtype bf16 there)")
    dtype = torch.float32 if int8 else torch_dtype(args.dtype)
    model_dir = None
    if args.checkpoint is not None:
        model_dir = resolve_model_dir(args.checkpoint)
        config = read_model_config(model_dir)
        model = load_model_dir(model_dir, device=device, dtype=dtype)
        name = str(args.checkpoint)
    else:
        path = Path(args.model).expanduser()
        model_dir = resolve_model_dir(path) if path.exists() else None
        config = read_model_config(model_dir) if model_dir else {"tokenizer": "gpt2"}
        model = load_model(args.model, device=device, dtype=dtype)
        name = args.model
    tokenizer = load_model_tokenizer(config, model_dir, model.cfg.vocab_size, name)
    if int8:
        use_int8_decoding(model)
    elif not bf16_on_fbgemm():  # there bf16 products run as fp32 ones on fp16-packed weights
        warn_if_cpu_lacks_bf16(next(model.parameters()).dtype, device)
    if isinstance(config.get("classifier"), dict):  # its language-model head was not what it trained
        labels = ", ".join(map(str, config["classifier"].get("labels", [])))
        classify = command_line("gptsmith", "classify", "--checkpoint", Path(name))
        warnings.warn(f"{name} is a classifier ({labels}): this runs the language model inside it, whose "
                      f"text is the base model's at best (`{classify}` gives labels)", stacklevel=2)
    return model, tokenizer, config, name


def _decoding_options(args: argparse.Namespace, **more: Any) -> dict[str, Any]:
    """Keyword options for ``stream_text`` from the flags, checked now (before a slow model load)."""
    from gptsmith.cli.stdin_text import check_utf8_arg
    from gptsmith.generate.config import GenerationConfig

    for stop in args.stop or []:
        check_utf8_arg("--stop", stop)

    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "repetition_penalty": args.repetition_penalty,
        "stop_sequences": [_unescape(s) for s in args.stop or []] or None,
        "seed": args.seed,
        **more,
    }
    with _in_flag_terms():
        GenerationConfig(**options)
    return options


def _flag_terms(message: str, flags: dict[str, str] = FLAG_OF_FIELD) -> str:
    """A library message with ``generate``'s keyword names (or those of ``flags``) as this
    command's flags.

    ``use num_beams=1`` becomes ``use --num-beams 1`` and ``top_k`` becomes ``--top-k``: the
    library speaks Python, a user of the command types flags.
    """
    for field, flag in flags.items():
        message = re.sub(rf"\b{field}=(\w+)", rf"{flag} \1", message)
        message = re.sub(rf"\b{field}\b", flag, message)
    return message


@contextlib.contextmanager
def _in_flag_terms(flags: dict[str, str] = FLAG_OF_FIELD) -> Iterator[None]:
    """Re-raise a decoding option's error (same class) with its message in flag terms."""
    try:
        yield
    except GptsmithError as exc:
        raise type(exc)(_flag_terms(str(exc), flags)) from None


def _warn_of_unused_sampling_flags(args: argparse.Namespace) -> None:
    """--top-k/--top-p filter what is *sampled*; greedy decoding would silently ignore them.

    (With --num-beams they are refused outright, by GenerationConfig.) --length-penalty, likewise,
    shapes beam scores only.
    """
    if getattr(args, "num_beams", 1) == 1 and getattr(args, "length_penalty", 1.0) != 1.0:
        print(f"gptsmith {args.command}: warning: --length-penalty scores beams only, so it has no effect "
              "without --num-beams (add --num-beams 4, say)", file=sys.stderr)
    if args.temperature != 0 or getattr(args, "num_beams", 1) > 1:
        return
    unused = [flag for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p)) if value is not None]
    if unused:
        print(
            f"gptsmith {args.command}: warning: {' and '.join(unused)} shape sampling only and "
            "--temperature 0 decodes greedily, so they have no effect (add --temperature 0.8, say)",
            file=sys.stderr,
        )


def _check_for_model(options: dict[str, Any], model: torch.nn.Module, tokenizer: Any) -> None:
    """The checks that need the model and tokenizer (top_k vs the vocabulary, stop texts), done
    before anything is printed rather than at the first generated token."""
    from gptsmith.generate.config import GenerationConfig
    from gptsmith.generate.stopping import normalise_stops

    with _in_flag_terms():
        GenerationConfig(**options).check_model(model)
        normalise_stops(options.get("stop_sequences"), tokenizer)


def _unescape(text: str) -> str:
    """Let users type --stop '\\n' for a newline (and \\t, \\\\)."""
    return text.replace("\\\\", "\0").replace("\\n", "\n").replace("\\t", "\t").replace("\0", "\\")


def run_generate(args: argparse.Namespace) -> int:
    from gptsmith.generate.generation import stream_text

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.num_samples > 1 and args.temperature == 0:
        how = "beam search" if args.num_beams > 1 else "greedy decoding"
        raise ConfigError(
            f"--num-samples {args.num_samples} with {how} gives identical texts "
            "(sample instead: --temperature 0.8, say, without --num-beams)"
        )
    from gptsmith.cli.stdin_text import check_utf8_arg, read_stdin_prompt
    from gptsmith.device import MAX_SEED, check_seed

    if args.seed is not None:
        check_seed(args.seed, "--seed")
        if args.seed + args.num_samples - 1 > MAX_SEED:  # sample i is seeded with --seed + i
            raise ConfigError(f"--seed {args.seed} with --num-samples {args.num_samples} uses seeds up to "
                              f"{args.seed + args.num_samples - 1}; --seed must be a whole number from 0 to "
                              f"{MAX_SEED} (lower --seed)")

    check_utf8_arg("the prompt", args.prompt)
    prompt = read_stdin_prompt() if args.prompt == "-" else args.prompt
    options = _decoding_options(
        args, num_beams=args.num_beams, length_penalty=args.length_penalty, use_cache=not args.no_cache
    )
    model, tokenizer, config, name = load_for_generation(args)
    options["eos_id"] = tokenizer.eot_id
    if config.get("instruction_template") and not args.raw:  # asked the way it was fine-tuned
        from gptsmith.generate.ask import question_prompt
        from gptsmith.generate.chat import get_template, template_from_config

        template = get_template(template_from_config(config))
        prompt = question_prompt(template, prompt)
        options["stop_sequences"] = (options["stop_sequences"] or []) + list(template.stop_sequences)
    _check_for_model(options, model, tokenizer)
    _warn_of_unused_sampling_flags(args)
    max_new_tokens = options.pop("max_new_tokens")
    samples = []
    interrupt: KeyboardInterrupt | None = None
    for index in range(args.num_samples):
        if args.seed is not None:
            options["seed"] = args.seed + index
        start = time.perf_counter()
        # A prompt too long for the context is reported when the stream is made: say so before the
        # text, not after it on the same terminal line.
        with _warnings_printed():
            stream = stream_text(model, tokenizer, prompt, max_new_tokens, **options)
        if not args.json:
            if args.num_samples > 1:
                print(f"--- sample {index + 1} ---", flush=True)
            print(prompt, end="", flush=True)
        with _warnings_printed():  # any raised while decoding come after the line of text
            pieces = []
            try:
                for piece in stream:
                    pieces.append(piece)
                    if not args.json:
                        print(piece, end="", flush=True)
            except KeyboardInterrupt as exc:
                if not args.json:  # the text so far is on the screen already
                    raise
                interrupt = exc  # --json prints nothing until the end: the samples so far come first
            finally:  # the text's line ends before anything else is said (an error, Ctrl-C)
                if not args.json:
                    print(flush=True)
        seconds = time.perf_counter() - start
        samples.append(
            {
                # interrupted: also the text held back for a possible stop, so it matches token_ids
                "text": stream.text if interrupt else "".join(pieces),
                "seed": options["seed"],
                "token_ids": stream.token_ids,
                "new_tokens": len(stream.token_ids),
                # said here too: Ctrl-C may land between two pieces, outside the stream
                "stop_reason": "interrupted" if interrupt else stream.stop_reason,
                "seconds": round(seconds, 4),
            }
        )
        if interrupt:
            break
    if args.json:
        settings = {k: v for k, v in options.items() if k not in ("eos_id", "seed")}
        settings.update(max_new_tokens=max_new_tokens, seed=args.seed)
        print(json.dumps({"model": name, "prompt": prompt, "settings": settings, "samples": samples}))
    if interrupt:
        raise interrupt  # then `main` says "interrupted" and exits with 130, as without --json
    return 0


@contextlib.contextmanager
def _warnings_printed() -> Iterator[None]:
    """Print the library's warnings raised inside the block as one line each, once it ends.

    Recorded rather than left to ``warnings.showwarning`` so each is said every time (not once per
    process) and at a known place in the output.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        print(f"gptsmith generate: warning: {warning.message}", file=sys.stderr, flush=True)
