"""OpenAI's request bodies, checked: every bad field is a 4xx ``APIError`` that names it.

The one place where a client's JSON becomes ``SamplingParams``: ``completion_request`` and
``chat_request`` check types, ranges and the server's caps (``Limits``), and say what to send
instead. Errors take OpenAI's shape (``APIError.body``)::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from gptsmith.device import MAX_SEED, check_seed
from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.serve.engine import SamplingParams

ROLES = ("system", "developer", "user", "assistant")  # developer: OpenAI's newer name for system
MAX_STOPS = 4  # as OpenAI
MAX_LOGPROBS = 5  # as OpenAI's completions


class APIError(GptsmithError):
    """A request the server refuses, with its HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients expect."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """The server's caps on what one request may ask."""

    max_tokens: int  # per choice
    max_prompt_tokens: int
    max_batch: int  # choices of one request (n x prompts) must fit in one batch
    context_length: int


@dataclass(frozen=True)
class CompletionRequest:
    """A checked ``/v1/completions`` or ``/v1/chat/completions`` body (prompts as token ids)."""

    model: str | None
    prompts: list[list[int]]
    params: list[SamplingParams]  # one per choice, in choice order: prompt 0's n choices first
    n: int
    stream: bool
    include_usage: bool = False  # stream_options.include_usage: OpenAI's usage-only last chunk


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (400 if it is not one)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def completion_request(data: dict[str, Any], tokenizer: Any, limits: Limits) -> CompletionRequest:
    """Check a ``/v1/completions`` body; prompts become token ids."""
    prompts = _prompts(data.get("prompt"), tokenizer)
    if data.get("echo"):
        raise APIError(400, "echo is not supported (leave it out or false)", param="echo")
    if _optional(data, "best_of", int, 1, None) not in (None, 1):
        raise APIError(400, "best_of other than 1 is not supported", param="best_of")
    logprobs = _optional(data, "logprobs", int, 0, MAX_LOGPROBS)
    return _request(data, prompts, tokenizer, limits, default_max_tokens=16, logprobs=logprobs)


def chat_request(data: dict[str, Any], tokenizer: Any, limits: Limits, render) -> CompletionRequest:
    """Check a ``/v1/chat/completions`` body; ``render(messages)`` gives (prompt ids, stop strings)."""
    messages = data.get("messages")
    if messages is None:
        raise APIError(400, "messages is required: a list of {role, content} objects", param="messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(400, f"messages[{i}] must be an object with role and content",
                           param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                           param=f"messages[{i}].role")
        checked.append(("system" if role == "developer" else role, _content(message.get("content"), i)))
    if checked[-1][0] != "user":
        raise APIError(400, "the last of messages must come from the user", param="messages")
    if data.get("logprobs"):
        raise APIError(400, "logprobs are not supported for chat completions (use /v1/completions)",
                       param="logprobs")
    # OpenAI's newer name for max_tokens (chat only); errors name the field the client sent
    newer = data.get("max_tokens") is None and data.get("max_completion_tokens") is not None
    ids, stops = render(checked)
    if not ids:  # e.g. one user message with "" or [] as content, and no template around it
        raise APIError(400, "the chat renders to an empty prompt: give the messages some content",
                       param="messages")
    return _request(data, [ids], tokenizer, limits, default_max_tokens=None, logprobs=None,
                    prompt_field="messages", extra_stops=tuple(stops),
                    max_tokens_field="max_completion_tokens" if newer else "max_tokens")


def _request(data: dict[str, Any], prompts: list[list[int]], tokenizer: Any, limits: Limits, *,
             default_max_tokens: int | None, logprobs: int | None, prompt_field: str = "prompt",
             extra_stops: tuple[str, ...] = (), max_tokens_field: str = "max_tokens") -> CompletionRequest:
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, f"model must be a string, got {model!r}", param="model")
    _refuse_unsupported(data)
    for name in ("frequency_penalty", "presence_penalty"):
        if _optional(data, name, float, -2.0, 2.0) not in (None, 0, 0.0):
            raise APIError(400, f"{name} is not supported (leave it out or 0)", param=name)
    temperature = _optional(data, "temperature", float, 0.0, 2.0)
    top_p = _optional(data, "top_p", float, 0.0, 1.0)
    if top_p == 0:  # OpenAI's meaning: a nucleus of only the most likely token, i.e. greedy decoding
        temperature, top_p = 0.0, None
    # Not OpenAI's, but vLLM's and most other servers' (and gptsmith generate's --top-k): 0 or -1 is off.
    top_k = _optional(data, "top_k", int, -1, tokenizer.vocab_size)
    n = _optional(data, "n", int, 1, None) or 1
    if n * len(prompts) > limits.max_batch:
        raise APIError(400, f"n x prompts = {n * len(prompts)} choices; this server makes at most "
                       f"{limits.max_batch} per request (its --max-batch)", param="n")
    seed = _seed(data.get("seed"), n)
    stream = _optional(data, "stream", bool, None, None) or False
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object, e.g. {\"include_usage\": true}",
                       param="stream_options")
    include_usage = _optional(options, "include_usage", bool, None, None) or False
    stops = _stops(data.get("stop"))
    max_tokens = _optional(data, max_tokens_field, int, 1, None)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        cap = (f"the model's context is {limits.context_length} tokens, the prompt's included"
               if limits.max_tokens >= limits.context_length else  # no --max-tokens: the context is the cap
               f"this server allows at most {limits.max_tokens} (its --max-tokens)")
        raise APIError(400, f"{max_tokens_field} is {max_tokens}; {cap}: lower {max_tokens_field}",
                       param=max_tokens_field)
    params = []
    for prompt in prompts:
        room = _check_length(prompt, limits, prompt_field, max_tokens, max_tokens_field)
        wanted = max_tokens or min(default_max_tokens or limits.max_tokens, limits.max_tokens, room)
        for choice in range(n):
            params.append(SamplingParams(
                max_tokens=wanted,
                temperature=1.0 if temperature is None else float(temperature),
                top_p=None if top_p is None or top_p >= 1 else float(top_p),
                top_k=top_k if top_k is not None and top_k > 0 else None,
                stop=stops + extra_stops,
                seed=None if seed is None else seed + choice,  # n choices from one seed differ
                logprobs=logprobs,
            ))
    return CompletionRequest(model, prompts, params, n, stream, include_usage)


# Fields that would change the answer if they were honoured: refused rather than ignored, so a
# client never believes e.g. its logit_bias or JSON mode took effect. (Fields that change nothing
# about the answer, such as user or metadata, are ignored as OpenAI's own server ignores unknowns.)
_UNSUPPORTED = ("logit_bias", "suffix", "tools", "tool_choice", "functions", "function_call")
# Other servers' sampling fields (vLLM's, which clients written for it send) that this one does not
# implement: refused likewise, unless they ask for what happens anyway (the value given here).
_EXTENSIONS = {"repetition_penalty": 1, "min_p": 0, "typical_p": 1, "min_tokens": 0, "ignore_eos": False,
               "stop_token_ids": [], "include_stop_str_in_output": False, "use_beam_search": False}


def _refuse_unsupported(data: dict[str, Any]) -> None:
    for name in _UNSUPPORTED:
        if data.get(name) not in (None, "", {}, [], "none", "auto"):
            raise APIError(400, f"{name} is not supported by this server (leave it out)", param=name)
    for name, neutral in _EXTENSIONS.items():
        value = data.get(name)
        if value is not None and (value != neutral or isinstance(value, bool) != isinstance(neutral, bool)):
            raise APIError(400, f"{name} is not supported by this server (leave it out, or send "
                           f"{json.dumps(neutral)})", param=name)
    response_format = data.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise APIError(400, 'response_format is not supported: only {"type": "text"} (plain text answers)',
                       param="response_format")


def _check_length(prompt: list[int], limits: Limits, field: str, max_tokens: int | None,
                  max_tokens_field: str = "max_tokens") -> int:
    """Tokens left for the answer; 400 when the prompt is over the cap or leaves no room."""
    if len(prompt) > limits.max_prompt_tokens:
        cap = (f"the model's context is {limits.context_length} tokens"
               if limits.max_prompt_tokens >= limits.context_length else
               f"this server takes at most {limits.max_prompt_tokens} (its --max-prompt-tokens)")
        raise APIError(400, f"{field} is {len(prompt)} tokens; {cap}: shorten it", param=field,
                       code="context_length_exceeded")
    room = limits.context_length - len(prompt)
    if room < 1 or (max_tokens is not None and max_tokens > room):
        asked = f" + {max_tokens_field} ({max_tokens})" if max_tokens is not None else ""
        raise APIError(400, f"{field} ({len(prompt)} tokens){asked} exceeds the model's context of "
                       f"{limits.context_length} tokens: shorten the {field} or lower {max_tokens_field}",
                       param=field if max_tokens is None or room < 1 else max_tokens_field,
                       code="context_length_exceeded")
    return room


def _prompts(prompt: Any, tokenizer: Any) -> list[list[int]]:
    """``prompt`` as lists of token ids: a string, a list of strings, a list of ids or of id lists."""
    if prompt is None:
        raise APIError(400, "prompt is required: a string (or a list of strings or token ids)",
                       param="prompt")
    if isinstance(prompt, str):
        prompt = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise APIError(400, "prompt must be a non-empty string, list of strings or list of token ids",
                       param="prompt")
    rows = []
    vocab = tokenizer.vocab_size
    for item in prompt:
        if isinstance(item, str):
            ids = tokenizer.encode(item)
        elif isinstance(item, list) and all(_is_int(t) for t in item):
            bad = [t for t in item if not 0 <= t < vocab]
            if bad:
                raise APIError(400, f"prompt token id {bad[0]} is outside the vocabulary of {vocab}",
                               param="prompt")
            ids = list(item)
        else:
            raise APIError(400, "prompt must be a string, list of strings or list of token ids",
                           param="prompt")
        if not ids:
            raise APIError(400, "prompt is empty: give some text", param="prompt")
        rows.append(ids)
    return rows


def _content(content: Any, i: int) -> str:
    """A message's text: a string, or OpenAI's list of {type: "text", text} parts."""
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(content) and all(isinstance(p, str) for p in parts):
            content = "".join(parts)
    if not isinstance(content, str):
        raise APIError(400, f"messages[{i}].content must be a string or a list of "
                       '{"type": "text", "text": ...} parts', param=f"messages[{i}].content")
    return content


def _seed(value: Any, n: int) -> int | None:
    """``seed`` checked as everywhere in gptsmith (``check_seed``), with room for the n choices' seeds."""
    if value is None:
        return None
    try:
        seed = check_seed(value, "seed")
    except ConfigError as exc:
        raise APIError(400, str(exc), param="seed") from None
    if seed + n - 1 > MAX_SEED:  # choice i is seeded with seed + i
        raise APIError(400, f"seed {seed} with n {n} uses seeds up to {seed + n - 1}; seed must be a whole "
                       f"number from 0 to {MAX_SEED} (lower seed)", param="seed")
    return seed


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise APIError(400, "stop must be a non-empty string or a list of non-empty strings", param="stop")
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop takes at most {MAX_STOPS} strings, got {len(stops)}", param="stop")
    return tuple(stops)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(data: dict[str, Any], name: str, kind: type, low: float | None, high: float | None) -> Any:
    """``data[name]`` if present and not null, checked to be a ``kind`` in [low, high]; else None."""
    value = data.get(name)
    if value is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise APIError(400, f"{name} must be true or false, got {value!r}", param=name)
        return value
    ok = _is_int(value) if kind is int else (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value))
    what = "an integer" if kind is int else "a number"
    span = ""  # :g is exact for the small bounds used here
    if low is not None:
        span = f" from {low:g} to {high:g}" if high is not None else f" >= {low:g}"
    if not ok:
        raise APIError(400, f"{name} must be {what}{span}, got {value!r}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise APIError(400, f"{name} must be {what}{span}, got {value!r}", param=name)
    return value
