"""Asking an instruction-tuned model a question: the prompt template, then generation that stops
where the answer ends.

``ask(model, tokenizer, question)`` returns the answer text; ``stream_answer`` yields it as it is
generated (the CLI's ``gptsmith ask``); ``answer_batch`` answers many prompts at once (greedy,
left-padded batches with the KV cache), as fine-tuning does for its test set.

The template is the one ``template=`` names, else the one the model was saved with
(``load_model`` sets ``model.instruction_template`` from config.json), else Alpaca. An answer ends
at ``<|endoftext|>``, at the template's next turn marker (``chat.PromptTemplate.stop_sequences``),
after ``max_new_tokens``, or where the context is full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptsmith.config import check_number
from gptsmith.data.tokenizer import as_tokenizer
from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.generate.chat import Message, PromptTemplate, get_template
from gptsmith.generate.generation import _checked_config, generate, stream_text, text_to_token_ids
from gptsmith.generate.stopping import normalise_stops
from gptsmith.generate.streaming import TextStream

DEFAULT_TEMPLATE = "alpaca"


def model_template(model: torch.nn.Module, template: str | PromptTemplate | None = None) -> PromptTemplate:
    """``template`` if given, else the model's own (``model.instruction_template``), else Alpaca."""
    return get_template(template or getattr(model, "instruction_template", None) or DEFAULT_TEMPLATE)


def question_prompt(template: str | PromptTemplate, question: str, input_text: str = "") -> str:
    """The text a model continues to answer ``question`` (with Alpaca's optional input)."""
    for name, value in (("question", question), ("input_text", input_text)):
        if not isinstance(value, str):
            raise GptsmithError(f"{name} must be a str, got {type(value).__name__}")
    return get_template(template).prompt([Message("user", question, input_text)])


def _with_template_stops(template: PromptTemplate, options: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """``options`` with the template's end-of-turn texts added to the caller's stop sequences, read
    as ``generate`` reads them (one string is one stop, not a stop per letter; one id is one stop)."""
    token_stops, byte_stops = normalise_stops(options.get("stop_sequences"), tokenizer)
    texts = [stop.decode("utf-8") for stop in byte_stops]  # they were str: decoding gives them back
    return {**options, "stop_sequences": [*token_stops, *texts, *template.stop_sequences]}


def stream_answer(
    model: torch.nn.Module,
    tokenizer: Any,
    question: str,
    *,
    input_text: str = "",
    template: str | PromptTemplate | None = None,
    max_new_tokens: int = 256,
    **options: Any,
) -> TextStream:
    """The answer to ``question`` as a stream of text (``stream_text``'s; only the answer, never the
    prompt). ``options`` are ``generate``'s (``temperature``, ``top_k``, ``seed``...); after the
    loop, the stream's ``prompt_ids``, ``token_ids`` and ``stop_reason`` say what happened.

    The answer stops where the context is full (``stream.cfg.max_new_tokens`` then says how many
    tokens it may have, and ``stop_reason`` is ``"context_length"`` if it gets that far): past it
    the question would slide out of the model's view. A question that leaves no room at all, its
    template and input included, raises ``ConfigError``: cropping it would answer another question.
    """
    tokenizer = as_tokenizer(tokenizer)  # a name ("gpt2") works too
    chosen = model_template(model, template)
    options = _with_template_stops(chosen, options, tokenizer)
    _checked_config(model, tokenizer, max_new_tokens=max_new_tokens, **options)  # a bad option first
    prompt = question_prompt(chosen, question, input_text)
    ids = text_to_token_ids(prompt, tokenizer)  # (1, n_prompt), encoded once
    context = model.cfg.context_length
    room = context - ids.shape[1]
    if room < 1:
        parts, fix = ("template and input", "the question or its input") if input_text else ("template", "it")
        raise ConfigError(f"the question takes {ids.shape[1]} tokens with its {parts}, and the model's "
                          f"context is {context}: no room is left for an answer (shorten {fix})")
    capped = room < max_new_tokens
    if capped:
        max_new_tokens = room
    stream = stream_text(model, tokenizer, ids, max_new_tokens, **options)
    if capped:
        stream.budget_reason = "context_length"
    return stream


def ask(
    model: torch.nn.Module,
    tokenizer: Any,
    question: str,
    *,
    input_text: str = "",
    template: str | PromptTemplate | None = None,
    max_new_tokens: int = 256,
    **options: Any,
) -> str:
    """The model's answer to ``question`` (greedy unless ``temperature`` > 0), without the prompt
    or whitespace at either end (``stream_answer`` gives the exact text, as ``gptsmith ask`` prints
    it). ``input_text`` is Alpaca's input field (context for the question)."""
    stream = stream_answer(model, tokenizer, question, input_text=input_text, template=template,
                           max_new_tokens=max_new_tokens, **options)
    return "".join(stream).strip()


@dataclass(frozen=True)
class Answer:
    """One answer of ``answer_batch``: its text, its new token count, and whether it ended by itself
    (end of text or the template's next turn) rather than at ``max_new_tokens``."""

    text: str
    new_tokens: int
    stopped: bool


def answer_batch(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    template: str | PromptTemplate,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
) -> list[Answer]:
    """Greedy answers to ``prompts`` (already rendered with ``template``), ``batch_size`` at a time.

    Each row gets what it would get alone (``generate`` pads prompts on the left and masks the
    padding, and slides the context window once prompt and answer outgrow it). A prompt longer
    than the context keeps its most recent tokens.
    """
    check_number("batch_size", batch_size, whole=True, minimum=1)
    if isinstance(prompts, str) or not all(isinstance(prompt, str) for prompt in prompts):
        got = "one str (it would be read letter by letter)" if isinstance(prompts, str) else \
            f"an item of type {type(next(p for p in prompts if not isinstance(p, str))).__name__}"
        raise GptsmithError(f"answer_batch takes a list of prompt strings, got {got}: pass [prompt]")
    tokenizer = as_tokenizer(tokenizer)  # a name ("gpt2") works too, as in generate and ask
    chosen = get_template(template)
    context = model.cfg.context_length
    answers: list[Answer] = []
    for start in range(0, len(prompts), batch_size):
        # an empty prompt starts from <|endoftext|>, counted as prompt (not as a generated token)
        batch = prompts[start : start + batch_size]
        rows = [tokenizer.encode(p)[-context:] or [tokenizer.eot_id] for p in batch]
        out = generate(model, rows, max_new_tokens, tokenizer=tokenizer,
                       stop_sequences=list(chosen.stop_sequences))
        width = max(len(r) for r in rows)
        for new in out[:, width:].tolist():  # (batch, n_new): stopped rows padded with <|endoftext|>
            while new and new[-1] == tokenizer.eot_id:  # the padding is never a generated token
                new.pop()
            # A row that ran to the limit kept all max_new_tokens; one that stopped kept fewer (its
            # end-of-text token or stop sequence is not returned).
            answers.append(Answer(tokenizer.decode(new).strip(), len(new), len(new) < max_new_tokens))
    return answers
