"""Prompt templates, and a conversation that fits in the model's context.

A base (pretrained only) model continues text, so a plain conversation is the turns' text one
after another. An instruction-tuned model was trained on one template and answers best when asked
the same way; its config.json names it (``"instruction_template": "alpaca"``), and fine-tuning
(``gptsmith.finetune``), ``ask``, ``chat``, ``generate`` and serving all render messages through
the one ``PromptTemplate`` here, so training and asking can never disagree.

- ``alpaca`` (Taori et al. 2023; the book's chapter 7)::

      Below is an instruction that describes a task. Write a response that appropriately
      completes the request.            (one line)

      ### Instruction:
      {instruction}

      ### Input:
      {input}          (only when there is one)

      ### Response:
      {response}

  The preamble (or a system message in its place) comes once; every further turn is another
  ``### Instruction:`` / ``### Response:`` pair after a blank line. A reply ends at
  ``<|endoftext|>`` or where the model starts a new ``\\n\\n### `` section.
- ``chatml`` (OpenAI's Chat Markup Language)::

      <|im_start|>system
      {system}<|im_end|>
      <|im_start|>user
      {instruction}

      {input}<|im_end|>
      <|im_start|>assistant
      {response}<|im_end|>

  The markers are plain text to GPT-2's tokenizer (a few tokens each). A reply ends at
  ``<|endoftext|>``, ``<|im_end|>`` or ``<|im_start|>``.

``PromptTemplate.segments`` renders a whole conversation as pieces marked *trained* (an
assistant's words and the marker that closes them: what instruction tuning learns) or not;
``PromptTemplate.prompt`` renders the turns so far followed by the assistant's header, which is
what the model is asked to continue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gptsmith.errors import ConfigError

ROLES = ("system", "user", "assistant")
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class Message:
    """One turn: ``role`` is system, user or assistant; ``input`` is Alpaca's input field (user turns)."""

    role: str
    content: str
    input: str = ""


class Segment(NamedTuple):
    """A piece of rendered text; ``trained``: an assistant's words, which instruction tuning learns."""

    text: str
    trained: bool


@dataclass(frozen=True)
class PromptTemplate:
    """How messages become text: what opens and closes each role's turn, and what ends a reply."""

    name: str
    opens: dict[str, str]  # role -> text before its content
    closes: dict[str, str]  # role -> text after its content (the assistant's is trained)
    input_prefix: str  # between a user message and its Alpaca input
    turn_gap: str  # after an assistant turn that is followed by more
    stop_sequences: tuple[str, ...]  # text that ends a reply (besides <|endoftext|>)
    default_system: str | None = None  # the system text when the messages have none

    def segments(self, messages: Sequence[Message]) -> list[Segment]:
        """``messages`` rendered in order; adjacent untrained pieces are joined."""
        pieces: list[Segment] = []
        if self.default_system is not None and (not messages or messages[0].role != "system"):
            pieces.append(Segment(self._render(Message("system", self.default_system)), False))
        for index, message in enumerate(messages):
            if message.role not in ROLES:
                raise ConfigError(f"message role {message.role!r} is not one of {', '.join(ROLES)}")
            if message.role == "assistant":
                pieces.append(Segment(self.opens["assistant"], False))
                pieces.append(Segment(message.content + self.closes["assistant"], True))
                if index < len(messages) - 1:
                    pieces.append(Segment(self.turn_gap, False))
            else:
                pieces.append(Segment(self._render(message), False))
        joined: list[Segment] = []
        for piece in pieces:
            if joined and not piece.trained and not joined[-1].trained:
                joined[-1] = Segment(joined[-1].text + piece.text, False)
            elif piece.text:
                joined.append(piece)
        return joined

    def prompt(self, messages: Sequence[Message]) -> str:
        """The text the model continues to answer the last (user) message: the turns, then the
        assistant's header."""
        return "".join(s.text for s in self.segments(messages)) + self.opens["assistant"]

    def _render(self, message: Message) -> str:
        content = message.content
        if message.input:
            content += self.input_prefix + message.input
        return self.opens[message.role] + content + self.closes[message.role]


TEMPLATES: dict[str, PromptTemplate] = {
    "alpaca": PromptTemplate(
        name="alpaca",
        opens={"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"},
        closes={"system": "\n\n", "user": "\n\n", "assistant": ""},
        input_prefix="\n\n### Input:\n",
        turn_gap="\n\n",
        stop_sequences=("\n\n### ",),
        default_system=ALPACA_PREAMBLE,
    ),
    "chatml": PromptTemplate(
        name="chatml",
        opens={"system": "<|im_start|>system\n", "user": "<|im_start|>user\n",
               "assistant": "<|im_start|>assistant\n"},
        closes={"system": "<|im_end|>\n", "user": "<|im_end|>\n", "assistant": "<|im_end|>"},
        input_prefix="\n\n",
        turn_gap="\n",
        stop_sequences=("<|im_end|>", "<|im_start|>"),
    ),
}


def get_template(name: str | PromptTemplate) -> PromptTemplate:
    """The template called ``name`` (a ``PromptTemplate`` is returned as it is)."""
    if isinstance(name, PromptTemplate):
        return name
    template = TEMPLATES.get(str(name).lower())
    if template is None:
        raise ConfigError(f"unknown prompt template {name!r} (known: {', '.join(TEMPLATES)})")
    return template


def format_instruction(
    instruction: str, input_text: str = "", template: str | PromptTemplate = "alpaca"
) -> str:
    """The prompt for ``instruction`` (and optional ``input_text``), up to the response."""
    return get_template(template).prompt([Message("user", instruction, input_text)])


def template_from_config(config: dict[str, Any]) -> str | None:
    """The instruction template a checkpoint's config.json names (None: a plain language model)."""
    name = config.get("instruction_template")
    if name is None:
        return None
    if str(name).lower() not in TEMPLATES:  # as get_template reads names: "Alpaca" is "alpaca"
        raise ConfigError(
            f"checkpoint names instruction_template {name!r}, which gptsmith does not know "
            f"(known: {', '.join(TEMPLATES)})"
        )
    return str(name).lower()


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
    is too long, its oldest tokens). ``template`` (a name) renders the turns; None: plain text.
    """

    tokenizer: Any
    context_length: int
    reply_room: int
    template: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)  # (user message, model reply)

    @property
    def stop_sequences(self) -> list[str]:
        """Text that ends a reply: the start of a new template section."""
        return list(get_template(self.template).stop_sequences) if self.template else []

    def _text(self, turns: list[tuple[str, str]], message: str) -> str:
        if self.template is None:
            return "\n".join([u + r for u, r in turns] + [message])
        messages = [m for u, r in turns for m in (Message("user", u), Message("assistant", r))]
        return get_template(self.template).prompt([*messages, Message("user", message)])

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
