"""A conversation that fits in the model's context: prompt templates and trimming of old turns.

A base (pretrained only) model continues text, so a plain conversation is the turns' text one
after another. An instruction-tuned model was trained on the Alpaca template (Taori et al. 2023)::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Response:
    {response}

and answers best when asked the same way. A checkpoint says it was instruction-tuned with
``"instruction_template": "alpaca"`` in its config.json. In a conversation the preamble comes
once, then every turn as an ``### Instruction:`` / ``### Response:`` pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gptsmith.errors import ConfigError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
TEMPLATES = ("alpaca",)


def format_instruction(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt for ``instruction`` (and optional ``input_text``), up to the response."""
    text = f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}"
    if input_text:
        text += f"\n\n### Input:\n{input_text}"
    return text + "\n\n### Response:\n"


def template_from_config(config: dict[str, Any]) -> str | None:
    """The instruction template a checkpoint's config.json names (None: a plain language model)."""
    name = config.get("instruction_template")
    if name is None:
        return None
    if name not in TEMPLATES:
        raise ConfigError(
            f"checkpoint names instruction_template {name!r}, which gptsmith does not know "
            f"(known: {', '.join(TEMPLATES)})"
        )
    return name


class ConversationPrompt(NamedTuple):
    """What ``Conversation.prompt_ids`` built: the ids, and what had to go to make them fit."""

    ids: list[int]
    dropped_turns: int  # oldest turns forgotten for good
    cropped_tokens: int  # tokens cut from the start because the newest message alone is too long


@dataclass
class Conversation:
    """The turns so far, rendered as one prompt that fits the context with room for the reply.

    ``reply_room`` tokens are kept free for the answer; when the conversation outgrows
    ``context_length - reply_room`` the oldest turns are dropped (and, if the newest message alone
    is too long, its oldest tokens).
    """

    tokenizer: Any
    context_length: int
    reply_room: int
    template: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)  # (user message, model reply)

    @property
    def stop_sequences(self) -> list[str]:
        """Text that ends a reply: the start of a new template section."""
        return ["\n\n### "] if self.template == "alpaca" else []

    def _render(self, user: str, reply: str) -> str:
        if self.template == "alpaca":  # one turn without the preamble, which the whole text starts with
            return format_instruction(user).removeprefix(ALPACA_PREAMBLE + "\n\n") + reply
        return user + reply

    def _text(self, turns: list[tuple[str, str]], message: str) -> str:
        rendered = [self._render(u, r) for u, r in turns] + [self._render(message, "")]
        if self.template == "alpaca":
            return "\n\n".join([ALPACA_PREAMBLE, *rendered])
        return "\n".join(rendered)

    def prompt_ids(self, message: str) -> ConversationPrompt:
        """Token ids of the conversation followed by ``message``, dropping the oldest turns to fit."""
        budget = max(1, self.context_length - self.reply_room)
        dropped = 0
        while True:
            ids = self.tokenizer.encode(self._text(self.turns[dropped:], message))
            if len(ids) <= budget or dropped == len(self.turns):
                break
            dropped += 1
        if dropped:
            self.turns = self.turns[dropped:]
        return ConversationPrompt(ids[-budget:], dropped, max(0, len(ids) - budget))

    def add(self, message: str, reply: str) -> None:
        """Record a finished turn."""
        self.turns.append((message, reply))

    def reset(self) -> None:
        """Forget every turn."""
        self.turns.clear()
