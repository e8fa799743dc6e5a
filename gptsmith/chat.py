"""A conversation that fits in the model's context: prompt templates and trimming of old turns.

A base (pretrained only) model continues text, so a plain conversation is the turns' text one
after another. An instruction-tuned model was trained on the Alpaca template (Taori et al. 2023)::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Response:
    {response}

and answers best when asked the same way. A checkpoint says it was instruction-tuned with
``"instruction_template": "alpaca"`` in its config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
        if self.template == "alpaca":
            return format_instruction(user) + reply
        return user + reply

    def _separator(self) -> str:
        return "\n\n" if self.template == "alpaca" else "\n"

    def prompt_ids(self, message: str) -> tuple[list[int], int]:
        """Token ids of the conversation followed by ``message``, and how many old turns were dropped."""
        budget = max(1, self.context_length - self.reply_room)
        new_turn = self._render(message, "")
        dropped = 0
        while True:
            kept = self.turns[dropped:]
            text = self._separator().join([self._render(u, r) for u, r in kept] + [new_turn])
            ids = self.tokenizer.encode(text)
            if len(ids) <= budget or dropped == len(self.turns):
                break
            dropped += 1
        if dropped:
            self.turns = self.turns[dropped:]
        return ids[-budget:], dropped

    def add(self, message: str, reply: str) -> None:
        """Record a finished turn."""
        self.turns.append((message, reply))

    def reset(self) -> None:
        """Forget every turn."""
        self.turns.clear()
