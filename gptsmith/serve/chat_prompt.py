"""Chat messages -> one prompt, with the model's own template (``generate/chat.py`` owns templates).

An instruction-tuned checkpoint names its template in config.json (``instruction_template``); a
base model gets the turns' plain text one after another, as ``gptsmith chat`` gives it. OpenAI's
``system`` messages have no slot in these templates: their text opens the first user message.
"""

from __future__ import annotations

from typing import Any

from gptsmith.generate.chat import Conversation


def render_messages(messages: list[tuple[str, str]], tokenizer: Any, template: str | None
                    ) -> tuple[list[int], list[str]]:
    """(prompt token ids, stop strings) for ``messages`` [(role, content)], the last from the user."""
    system = "\n\n".join(content for role, content in messages if role == "system")
    turns: list[tuple[str, str]] = []
    user: str | None = None
    for role, content in messages:
        if role == "user":
            if user is not None:  # two user messages in a row: the first got no reply
                turns.append((user, ""))
            user = content
        elif role == "assistant":
            turns.append((user or "", content))
            user = None
    if system:
        if turns:
            turns[0] = (f"{system}\n\n{turns[0][0]}", turns[0][1])
        else:
            user = f"{system}\n\n{user}"
    # The whole conversation is kept: a request too long for the context is refused, not trimmed.
    conversation = Conversation(tokenizer, context_length=2**62, reply_room=0, template=template, turns=turns)
    ids = conversation.prompt_ids(user or "").ids
    return ids, list(conversation.stop_sequences)
