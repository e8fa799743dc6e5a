"""The ``chat`` sub-command: an interactive loop that keeps the conversation in the model's context."""

from __future__ import annotations

import argparse
import sys

from gptsmith.cli.generate_cmds import (
    _add_decoding_args,
    _add_model_args,
    _check_for_model,
    _decoding_options,
    _warn_of_unused_sampling_flags,
    load_for_generation,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``chat``."""
    chat = subparsers.add_parser(
        "chat",
        help="talk to a model interactively (/reset, /exit, Ctrl-D)",
        description=(
            "An interactive loop that keeps the conversation in the model's context, dropping the oldest "
            'turns when it fills. A checkpoint whose config.json names an "instruction_template" '
            "(instruction-tuned: alpaca or chatml) is asked in that template; any other model just "
            "continues the text. Type /reset to start over, /exit or Ctrl-D to leave."
        ),
        epilog="example:\n  gptsmith chat --checkpoint runs/instruct --temperature 0.7",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(chat, int8=True)
    _add_decoding_args(chat, max_new_tokens=200, temperature=0.7)
    chat.set_defaults(func=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    from gptsmith.cli.stdin_text import bad_byte, keep_undecodable_bytes
    from gptsmith.device import MAX_SEED
    from gptsmith.generate.chat import Conversation, template_from_config
    from gptsmith.generate.generation import stream_text

    options = _decoding_options(args)
    model, tokenizer, config, name = load_for_generation(args)
    _check_for_model(options, model, tokenizer)
    _warn_of_unused_sampling_flags(args)
    max_new_tokens = options.pop("max_new_tokens")
    template = template_from_config(config)
    reply_room = min(max_new_tokens, model.cfg.context_length // 2)
    conversation = Conversation(tokenizer, model.cfg.context_length, reply_room, template)
    options["eos_id"] = tokenizer.eot_id
    options["stop_sequences"] = (options["stop_sequences"] or []) + conversation.stop_sequences or None
    seed = options.pop("seed")
    interactive = sys.stdin.isatty()
    keep_undecodable_bytes()
    mode = f"instruction template {template}" if template else "plain continuation"
    print(f"chatting with {name} ({mode}); /reset starts over, /exit or Ctrl-D leaves", file=sys.stderr)
    turn = 0
    while True:
        try:
            message = input("> " if interactive else "")
        except EOFError:
            print(file=sys.stderr)
            return 0
        message = message.removesuffix("\r")  # a line of a CRLF file: its end, not part of the message
        command = message.strip()
        if not command:
            continue
        problem = bad_byte(message)
        if problem:  # one bad line need not end the conversation
            print(f"gptsmith chat: warning: {problem}", file=sys.stderr)
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            conversation.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        if command.startswith("/") and " " not in command:
            print(f"unknown command {command} (commands: /reset, /exit)", file=sys.stderr)
            continue
        ids, dropped, cropped = conversation.prompt_ids(message)
        if dropped:
            print(f"(context full: dropped the {dropped} oldest turn(s))", file=sys.stderr)
        if cropped:
            print(f"(message too long for the context of {model.cfg.context_length} tokens with room for "
                  f"the reply: the model sees only its last part, {cropped} token(s) cut)", file=sys.stderr)
        pieces = []
        # The reply ends where the context is full, as ask's does: past it the window would slide
        # and the model lose the start of the conversation (its template's header included).
        room = min(max_new_tokens, model.cfg.context_length - len(ids))
        stream = None
        try:
            # Turn i samples with --seed + i, wrapping past the largest seed: a conversation has no
            # set length, so --seed 4294967295 must not end it at the second message.
            turn_seed = None if seed is None else (seed + turn) % (MAX_SEED + 1)
            stream = stream_text(model, tokenizer, ids, room, seed=turn_seed, **options)
            for piece in stream:
                pieces.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [interrupted]", end="", file=sys.stderr)
        print(flush=True)
        if stream is not None and room < max_new_tokens and stream.stop_reason == "max_new_tokens":
            print(f"(reply cut after {room} tokens: the context of {model.cfg.context_length} is full; "
                  "/reset starts over with all of it)", file=sys.stderr)
        conversation.add(message, "".join(pieces).rstrip())
        turn += 1
