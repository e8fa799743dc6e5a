"""OpenAI's response bodies: whole answers, server-sent-event chunks and usage counts.

``Choices`` gathers the engine's ``Chunk`` s of one request (n choices, maybe several prompts) and
writes them in the shape of ``/v1/completions`` (``kind="text_completion"``) or
``/v1/chat/completions`` (``kind="chat.completion"``), whole or as stream chunks.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from gptsmith.serve.engine import Chunk


class Choices:
    """The choices of one request as they arrive; ``add`` one ``Chunk`` at a time."""

    def __init__(self, kind: str, model: str, n_choices: int, prompt_tokens: int, tokenizer: Any,
                 want_logprobs: bool = False) -> None:
        self.kind = kind  # "text_completion" or "chat.completion"
        self.model = model
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.tokenizer = tokenizer
        self.want_logprobs = want_logprobs
        self.texts = [""] * n_choices
        self.finish = [None] * n_choices  # type: list[str | None]
        self.completion_tokens = [0] * n_choices  # generated, as billed (a stop's tokens included)
        self.kept_tokens = [0] * n_choices  # whose text is in the answer (those logprobs report)
        self.prompt_tokens = prompt_tokens
        self.logprobs: list[list[Chunk]] = [[] for _ in range(n_choices)]
        self.streamed_logprobs = [0] * n_choices  # tokens of each choice whose logprobs were streamed
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.finish)

    def add(self, index: int, chunk: Chunk) -> None:
        """Record what one step gave choice ``index``."""
        self.texts[index] += chunk.text
        self.completion_tokens[index] = chunk.completion_tokens
        self.kept_tokens[index] = chunk.kept_tokens
        if self.want_logprobs and chunk.token_id is not None:
            self.logprobs[index].append(chunk)
        if chunk.finish_reason is not None:
            self.finish[index] = chunk.finish_reason
            if chunk.error:
                self.error = chunk.error

    def usage(self) -> dict[str, int]:
        completion = sum(self.completion_tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def _head(self, chunk: bool = False) -> dict[str, Any]:
        kind = "chat.completion.chunk" if chunk and self.kind == "chat.completion" else self.kind
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self) -> dict[str, Any]:
        """The non-streamed answer, with every choice and the usage."""
        choices = []
        for i, text in enumerate(self.texts):
            reason = _reason(self.finish[i])
            if self.kind == "chat.completion":
                choices.append({"index": i, "message": {"role": "assistant", "content": text},
                                "finish_reason": reason, "logprobs": None})
            else:
                kept = self.logprobs[i][: self.kept_tokens[i]]
                choices.append({"index": i, "text": text, "finish_reason": reason,
                                "logprobs": self._logprobs(kept) if self.want_logprobs else None})
        return {**self._head(), "choices": choices, "usage": self.usage()}

    def event(self, index: int, chunk: Chunk, first: bool) -> str | None:
        """The SSE event for one chunk of choice ``index`` (None when it carries nothing to say).

        The event that finishes the last choice also carries ``usage``: every streamed answer ends
        with its token counts, in a chunk that still has its choice (clients that read
        ``chunk.choices[0]`` of every chunk keep working). OpenAI's own usage-only chunk (no
        choices) follows only when asked for, with ``stream_options: {"include_usage": true}``.
        """
        reason = _reason(chunk.finish_reason)
        # A token's logprobs go out with its text: not while it is held back (it may begin a stop, or
        # ends inside a character), never when a stop cuts it, so the stream reports the tokens the
        # whole answer does.
        shown = self.logprobs[index][self.streamed_logprobs[index] : chunk.shown_tokens]
        self.streamed_logprobs[index] += len(shown)
        if not chunk.text and reason is None and not first and not shown:
            return None
        if self.kind == "chat.completion":
            delta: dict[str, Any] = {"role": "assistant", "content": chunk.text} if first else {}
            if chunk.text and not first:
                delta["content"] = chunk.text
            choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            logprobs = self._logprobs(shown) if self.want_logprobs and shown else None
            choice = {"index": index, "text": chunk.text, "finish_reason": reason, "logprobs": logprobs}
        event = {**self._head(chunk=True), "choices": [choice]}
        if self.done:
            event["usage"] = self.usage()
        return sse(event)

    def usage_event(self) -> str:
        """OpenAI's usage chunk (``stream_options.include_usage``): no choices, the usage."""
        return sse({**self._head(chunk=True), "choices": [], "usage": self.usage()})

    def _logprobs(self, chunks: list[Chunk]) -> dict[str, Any]:
        """OpenAI's completions logprobs: tokens, their log-probabilities, alternatives, and where each
        token starts in the answer's text (in characters: a token inside a character starts with it)."""
        top = [{self.tokenizer.decode([t]): lp for t, lp in (c.top_logprobs or {}).items()} for c in chunks]
        return {"tokens": [self.tokenizer.decode([c.token_id]) for c in chunks],
                "token_logprobs": [c.logprob for c in chunks], "top_logprobs": top,
                "text_offset": [c.text_offset for c in chunks]}


def _reason(reason: str | None) -> str | None:
    """OpenAI knows "stop" and "length". A cancelled or failed choice has none: it did not finish, and
    the app answers an error instead (streamed: an error event after the text so far)."""
    return reason if reason in ("stop", "length") else None


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


DONE = sse("[DONE]")
