"""``gptsmith finetune instruct`` (instruction fine-tuning) and ``gptsmith ask`` (answer one question)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gptsmith.cli.finetune_cmds import add_lora_args
from gptsmith.cli.generate_cmds import _add_decoding_args, _add_model_args
from gptsmith.cli.shell import command_line
from gptsmith.cli.train_progress import plural, say
from gptsmith.device import DEVICE_HELP, TRAIN_DTYPES, check_seed, device_arg, dtype_arg
from gptsmith.errors import ConfigError

RESPONSES_FILE = "test_responses.json"

INSTRUCT_EPILOG = """\
examples:
  gptsmith finetune instruct --checkpoint runs/base --data instruction-data.json --out runs/instruct
  gptsmith finetune instruct --model gpt2-medium --data alpaca.jsonl --mask-prompt --lora-rank 16 \\
      --out runs/lora
  gptsmith finetune instruct --checkpoint runs/base --data chats.jsonl --template chatml --out runs/chat \\
      --judge-url http://localhost:11434 --judge-model llama3
  gptsmith ask --checkpoint runs/instruct "What is the capital of France?"

--data: Alpaca JSON or JSONL ({"instruction", "input" (optional), "output"}) or chat JSONL
({"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}, loss on assistant turns).
Without --val-data it is split 85/5/10 into train/validation/test in file order (the book's split);
with it, the last 10% of --data is the test set. After training, the test instructions are answered
into OUT/test_responses.json and the test-reference loss is printed before and after. OUT is a model
directory whose config.json records the template, so generate, chat and ask use it without flags.
"""


def register_finetune(kinds: argparse._SubParsersAction) -> None:
    """Add ``finetune instruct``."""
    p = kinds.add_parser(
        "instruct",
        help="teach a pretrained model to follow instructions (Alpaca or chat data)",
        description="Instruction fine-tuning (the book's chapter 7): Alpaca/chat records rendered with a "
        "prompt template, padded batches whose padding the loss ignores, one end-of-text target so the "
        "model learns to stop; validation loss and a sample answer at each evaluation; test answers and "
        "the test-reference loss before and after.",
        epilog=INSTRUCT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="base model directory, or run directory (its latest)")
    source.add_argument("--model", help="base model by name (gpt2, gpt2-medium, ...) or a model directory")
    p.add_argument("--data", type=Path, required=True, help="Alpaca JSON/JSONL or chat JSONL file")
    p.add_argument("--val-data", type=Path, help="validation records (default: 5%% of --data)")
    p.add_argument("--out", type=Path, required=True, help="output model directory (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the fine-tuned model already in --out (only its model and test files)")
    p.add_argument("--template", default="alpaca", help="prompt template: alpaca (default) or chatml")
    p.add_argument("--mask-prompt", action="store_true",
                   help="loss on the response only (chat records: always on assistant turns only)")
    add_lora_args(p, "train LoRA adapters of this rank instead of every weight (merged when saved)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training records (default 2)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="records per step (default 8)")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default 5e-5)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1)")
    p.add_argument("--max-length", type=int,
                   help="longest example in tokens; longer ones are truncated (default: the model's context)")
    p.add_argument("--eval-every", type=int, default=50,
                   help="steps between evaluations with a sample answer (default 50; 0: at the end)")
    p.add_argument("--eval-batches", type=int, default=5,
                   help="validation batches per evaluation (default 5)")
    p.add_argument("--answer-tokens", type=int, default=256,
                   help="most new tokens per test answer (default 256)")
    p.add_argument("--seed", type=int, default=123, help="seed for shuffling and dropout (default 123)")
    p.add_argument("--device", default="auto", type=device_arg, help=DEVICE_HELP)
    p.add_argument("--dtype", type=dtype_arg(TRAIN_DTYPES), default="auto", metavar="{auto,bf16,fp32}",
                   help="auto: bf16 autocast where the device runs it faster (default; bfloat16 and "
                   "float32 work too)")
    p.add_argument("--tokenizer", help="tokenizer the data is encoded with (default and only choice: the "
                   "base model's)")
    p.add_argument("--judge-url", help="OpenAI-compatible server that scores the test answers 0-100 "
                   "(e.g. http://localhost:11434 for Ollama)")
    p.add_argument("--judge-model", help="the judge's model name (e.g. llama3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    p.set_defaults(func=run_instruct)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ask``."""
    p = subparsers.add_parser(
        "ask",
        help="ask an instruction-tuned model one question (prints only the answer)",
        description="Format QUESTION with the model's prompt template (its config.json's "
        "instruction_template; Alpaca when it has none) and stream the answer, which stops at end of "
        "text or where the model starts a new turn.",
        epilog='examples:\n  gptsmith ask --checkpoint runs/instruct "What is the capital of France?"\n'
        '  gptsmith ask --checkpoint runs/instruct --input "He go to school." "Correct the grammar."\n'
        "  echo 'Name a primary colour.' | gptsmith ask --checkpoint runs/instruct --json -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(p, int8=True)
    p.add_argument("question", help="the question or instruction ('-' reads stdin)")
    p.add_argument("--input", default="", help="Alpaca's input field: text the instruction is about")
    p.add_argument("--template", help="prompt template (default: the model's, else alpaca)")
    p.add_argument("--json", action="store_true", help="print one JSON object: answer, token counts, timings")
    _add_decoding_args(p, max_new_tokens=256, temperature=0.0)
    p.set_defaults(func=run_ask)


# --- ask -----------------------------------------------------------------------------------------


def run_ask(args: argparse.Namespace) -> int:
    from gptsmith.cli.generate_cmds import (
        _check_for_model,
        _decoding_options,
        _warn_of_unused_sampling_flags,
        load_for_generation,
    )
    from gptsmith.cli.stdin_text import check_utf8_arg, read_stdin_prompt
    from gptsmith.generate.ask import model_template, stream_answer
    from gptsmith.generate.chat import get_template

    # argv bytes that are not UTF-8 arrive as lone surrogates, which the tokenizer would turn into
    # U+FFFD without a word: refused, as generate refuses them in its prompt.
    check_utf8_arg("the question", args.question)
    check_utf8_arg("--input", args.input)
    question = read_stdin_prompt() if args.question == "-" else args.question
    if not question.strip():
        raise ConfigError("the question is empty (give it as an argument, or '-' to read stdin)")
    if args.template:
        get_template(args.template)  # an unknown name fails before the model loads
    options = _decoding_options(args)
    model, tokenizer, config, name = load_for_generation(args)
    _check_for_model(options, model, tokenizer)
    _warn_of_unused_sampling_flags(args)  # --top-k/--top-p under greedy decoding: as generate and chat say
    template = model_template(model, args.template or config.get("instruction_template"))
    max_new_tokens = options.pop("max_new_tokens")
    start = time.perf_counter()
    stream = stream_answer(model, tokenizer, question, input_text=args.input, template=template,
                           max_new_tokens=max_new_tokens, **options)
    if stream.cfg.max_new_tokens < max_new_tokens:  # stream_answer stops where the context is full
        print(f"note: the context leaves {stream.cfg.max_new_tokens} tokens after the question; the answer "
              f"stops there (not at --max-new-tokens {max_new_tokens})", file=sys.stderr)
    pieces, first_token_s = [], None
    interrupt: KeyboardInterrupt | None = None
    try:
        for piece in stream:
            first_token_s = first_token_s or time.perf_counter() - start
            pieces.append(piece)
            if not args.json:
                print(piece, end="", flush=True)
    except KeyboardInterrupt as exc:
        if not args.json:  # the answer so far is on the screen: end its line before "interrupted"
            print(flush=True)
            raise
        interrupt = exc  # --json prints the answer so far first, as generate --json does
    seconds = time.perf_counter() - start
    if not args.json:
        print(flush=True)
        return 0
    print(json.dumps({
        "model": name, "template": template.name, "question": question, "input": args.input,
        # interrupted: also the text held back for a possible stop, so it matches the token count
        "answer": stream.text if interrupt else "".join(pieces),
        "stop_reason": "interrupted" if interrupt else stream.stop_reason,  # as printed without --json
        "prompt_tokens": len(stream.prompt_ids), "answer_tokens": len(stream.token_ids),
        "seconds": round(seconds, 4), "first_token_seconds": round(first_token_s or seconds, 4),
        "tokens_per_s": round(len(stream.token_ids) / seconds, 2) if seconds > 0 else None,
    }))
    if interrupt:
        raise interrupt  # then `main` says "interrupted" and exits with 130
    return 0


# --- finetune instruct ---------------------------------------------------------------------------


class InstructProgress:
    """A progress bar over the steps; evaluations and sample answers printed above it."""

    # Implements the hooks of gptsmith.train.callbacks.TrainCallbacks that instruction tuning calls.

    def __init__(self, show_bar: bool) -> None:
        self.show_bar = show_bar
        self.bar = None

    def on_start(self, info: dict) -> None:
        from gptsmith.cli.progress import Progress

        say(f"fine-tuning {info['trainable']:,} of {info['parameters']:,} parameters on {info['device']} "
            f"({info['dtype']}); {info['train_examples']} training and {info['val_examples']} validation "
            f"records, {plural(info['steps_per_epoch'], 'step')} per epoch, "
            f"{plural(info['max_steps'], 'step')}")
        if info["truncated"]:
            length = info["max_length"]
            limit = (f"the model's context ({length} tokens)" if length >= info["context_length"]
                     else f"--max-length {length}")
            say(f"warning: {info['truncated']} example(s) longer than {limit} were truncated (their end, "
                "and end-of-text, are not learnt)")
        if self.show_bar:
            self.bar = Progress(info["max_steps"], unit="step")

    def on_step(self, info: dict) -> None:
        if self.bar is not None:
            self.bar.update(info["step"], f"epoch {info['epoch']} loss {info['loss']:.3f} "
                                          f"{info['examples_per_s']:.1f} examples/s")
        elif info["step"] % 10 == 0:
            say(f"step {info['step']:>5} | loss {info['loss']:.3f} | {info['examples_per_s']:.1f} examples/s")

    def on_eval(self, info: dict) -> None:
        say(f"step {info['step']:>5} | train loss {info['train_loss']:.3f} | val loss {info['val_loss']:.3f}")

    def on_sample(self, step: int, text: str) -> None:
        say(f"sample answer: {text!r}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _load_base(args: argparse.Namespace) -> tuple[Any, Any, dict, str]:
    """(model, tokenizer, its config, name) for --checkpoint/--model, with the tokenizer checked."""
    from gptsmith.data.tokenizer import get_tokenizer
    from gptsmith.finetune.instruct_data import check_tokenizer_matches
    from gptsmith.model.checkpoint import (
        load_model,
        load_model_tokenizer,
        read_model_config,
        resolve_model_dir,
    )

    if args.checkpoint is not None:
        model_dir, name = resolve_model_dir(args.checkpoint), str(args.checkpoint)
    else:
        path = Path(args.model).expanduser()
        model_dir, name = (resolve_model_dir(path) if path.exists() else None), args.model
    config = read_model_config(model_dir) if model_dir else {"tokenizer": "gpt2"}
    own = config.get("tokenizer") or "gpt2"
    if args.tokenizer and args.tokenizer.lower() != own.lower():
        check_tokenizer_matches(own, get_tokenizer(args.tokenizer), source=name)
    model = load_model(model_dir or args.model)
    # checked against the model as every command's is: ids it has no embedding for are refused here
    tokenizer = load_model_tokenizer(config, model_dir, model.cfg.vocab_size, name)
    return model, tokenizer, config, name


def _read_records(args: argparse.Namespace) -> tuple[list, list, list]:
    from gptsmith.finetune.instruct_data import load_instruction_file, split_records, split_train_test

    records = load_instruction_file(args.data)
    if args.val_data is None:
        return split_records(records)
    train, test = split_train_test(records)
    return train, load_instruction_file(args.val_data), test


def run_instruct(args: argparse.Namespace) -> int:
    from gptsmith.finetune.base import check_output_dir
    from gptsmith.finetune.instruct import InstructConfig, answer_records, check_base
    from gptsmith.model.checkpoint import save_model
    from gptsmith.storage import atomic_write_json, replacing_directory

    check_seed(args.seed, "--seed")  # named as the flag, before any loading
    cfg = InstructConfig(template=args.template, mask_prompt=args.mask_prompt, epochs=args.epochs,
                         max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                         eval_batches=args.eval_batches, max_length=args.max_length, seed=args.seed,
                         device=args.device, dtype=args.dtype,
                         eval_every=args.eval_every, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                         lora_dropout=args.lora_dropout, lora_targets=args.lora_targets)
    cfg.template = cfg.template.lower()
    cfg.check()
    if bool(args.judge_url) != bool(args.judge_model):
        raise ConfigError("--judge-url and --judge-model go together (e.g. --judge-url "
                          "http://localhost:11434 --judge-model llama3)")
    if args.judge_url:
        from gptsmith.finetune.judge import chat_completions_url

        chat_completions_url(args.judge_url)
    if args.answer_tokens < 1:
        raise ConfigError(f"--answer-tokens must be at least 1, got {args.answer_tokens}")
    check_output_dir(args.out, overwrite=args.overwrite)
    train, val, test = _read_records(args)
    model, tokenizer, _, name = _load_base(args)
    say(f"{name}: {len(train)} train / {len(val)} validation / {len(test)} test records, "
        f"template {cfg.template}{', loss on responses only' if cfg.mask_prompt else ''}")
    cfg.length_for(model)
    check_base(model, tokenizer, train, cfg.template, max_length=cfg.max_length, name=name)
    # Data, base and settings are good: the model is saved into a new folder beside --out (made now,
    # so a place that cannot be written fails before training) that replaces --out only once it is
    # complete, so a failed or interrupted run keeps an earlier output, or the base it started from.
    with replacing_directory(args.out) as write_dir:
        result, before, after = _train(args, cfg, model, tokenizer, (train, val, test))
        info = {"kind": "instruct", "base": name, "data": str(args.data), "template": cfg.template,
                "mask_prompt": cfg.mask_prompt, "lora_rank": cfg.lora_rank, "epochs": cfg.epochs,
                "steps": result.steps, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
                "test_loss_before": before, "test_loss_after": after, "truncated": result.truncated}
        save_model(model, write_dir, tokenizer=tokenizer,
                   extra={"instruction_template": cfg.template, "finetune": info})
    say(f"saved the fine-tuned model to {args.out}")
    responses = answer_records(model, tokenizer, test, cfg.template, max_new_tokens=args.answer_tokens)
    stopped = sum(r["stopped"] for r in responses)
    say(f"test answers: {stopped} of {len(responses)} ({100 * stopped / len(responses):.1f}%) ended by "
        f"themselves within {args.answer_tokens} tokens")
    report = {"model": str(args.out), "template": cfg.template, "test_loss_before": before,
              "test_loss_after": after, "stopped": stopped, "responses": responses}
    atomic_write_json(args.out / RESPONSES_FILE, report)
    if args.judge_url:
        _judge(args, report)
    ask = command_line("gptsmith", "ask", "--checkpoint", args.out)
    say(f'wrote {args.out / RESPONSES_FILE}; ask it: {ask} "..."')  # "...": the question is the user's
    return 0


def _train(args: argparse.Namespace, cfg: Any, model: Any, tokenizer: Any,
           records: tuple[list, list, list]) -> tuple[Any, float, float]:
    """Fine-tune ``model`` in place (LoRA merged); (result, test-reference loss before, after)."""
    from gptsmith.finetune.base import check_finite_loss
    from gptsmith.finetune.instruct import finetune_instruct, response_loss

    train, val, test = records
    before = response_loss(model, tokenizer, test, cfg.template, max_length=cfg.max_length)
    check_finite_loss("test-reference loss", before, step=0, lr=cfg.lr)
    say(f"test-reference loss before fine-tuning: {before:.3f}")
    progress = InstructProgress(show_bar=not args.no_progress)
    try:
        result = finetune_instruct(model, tokenizer, train, val, cfg, callbacks=progress)
    finally:
        progress.close()
    if cfg.lora_rank:
        from gptsmith.finetune.lora import merge_lora

        merge_lora(model)
    after = response_loss(model, tokenizer, test, cfg.template, max_length=cfg.max_length)
    check_finite_loss("test-reference loss", after, step=result.steps, lr=cfg.lr)
    say(f"test-reference loss after fine-tuning: {after:.3f} (before {before:.3f}, "
        f"change {after - before:+.3f})")
    return result, before, after


def _judge(args: argparse.Namespace, report: dict) -> None:
    from gptsmith.cli.progress import Progress
    from gptsmith.finetune.judge import judge_responses
    from gptsmith.storage import atomic_write_json

    responses = report["responses"]
    bar = None if args.no_progress else Progress(len(responses), unit="answer", desc="judging")
    judged = 0

    def on_score(index: int, score: float | None) -> None:
        nonlocal judged
        judged += 1
        if bar is not None:
            bar.update(judged)

    try:
        scores = judge_responses(responses, args.judge_url, args.judge_model, on_score=on_score)
    finally:
        if bar is not None:
            bar.close()
    for item, score in zip(responses, scores.scores, strict=True):
        item["score"] = score
    report.update(judge_model=args.judge_model, judge_mean=scores.mean, judge_scored=scores.scored)
    atomic_write_json(args.out / RESPONSES_FILE, report)
    mean = "n/a" if scores.mean is None else f"{scores.mean:.1f}"
    say(f"judge {args.judge_model}: mean score {mean} / 100 over {scores.scored} of {len(responses)} answers")
