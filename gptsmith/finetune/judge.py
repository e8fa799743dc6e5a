"""Scoring answers with a judge model over any OpenAI-compatible chat endpoint.

As the book scores its fine-tuned model with Llama 3 through Ollama, ``judge_responses`` sends
each (instruction, input, reference, answer) to a chat model and asks for a score from 0 to 100;
the mean is the figure to compare models by. The endpoint is anything that speaks
``POST /v1/chat/completions`` (Ollama at ``http://localhost:11434``, ``gptsmith serve``, vLLM,
OpenAI itself), reached with the standard library's ``urllib`` (no client dependency).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gptsmith.errors import ConfigError, GptsmithError

JUDGE_PROMPT = (
    "Given the input `{question}` and correct output `{reference}`, score the model response "
    "`{answer}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
)


class JudgeError(GptsmithError):
    """The judge endpoint cannot be reached or does not answer like an OpenAI chat endpoint."""


def chat_completions_url(url: str) -> str:
    """The chat-completions address for a server's base URL (``http://host:port``, ``.../v1``)
    or the full endpoint itself."""
    url = url.strip().rstrip("/")
    if not re.match(r"https?://[^/\s]+", url):
        raise ConfigError(f"judge URL {url!r} is not an http(s) address (e.g. http://localhost:11434)")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def query_judge(
    url: str, model: str, prompt: str, *, timeout: float = 120.0, api_key: str | None = None
) -> str:
    """The judge's reply to one user message (temperature 0)."""
    endpoint = chat_completions_url(url)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "stream": False}
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        raise JudgeError(f"the judge at {endpoint} answered HTTP {exc.code} {exc.reason}: {detail} "
                         f"(is {model!r} a model it serves?)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JudgeError(f"cannot reach the judge at {endpoint}: {reason} (is the server running?)") from None
    try:
        return str(json.loads(payload)["choices"][0]["message"]["content"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
        raise JudgeError(f"the judge at {endpoint} did not answer like an OpenAI chat endpoint: "
                         f"{payload[:120]!r}") from None


def parse_score(reply: str) -> int | None:
    """The first whole number from 0 to 100 in the judge's reply (None when there is none)."""
    for match in re.finditer(r"\d+(?:\.\d+)?", reply):
        value = float(match.group())
        if 0 <= value <= 100:
            return round(value)
    return None


@dataclass
class JudgeReport:
    """Scores in the order of the responses (None: the reply held no score) and their mean."""

    scores: list[int | None]

    @property
    def scored(self) -> int:
        return sum(s is not None for s in self.scores)

    @property
    def mean(self) -> float | None:
        valid = [s for s in self.scores if s is not None]
        return sum(valid) / len(valid) if valid else None


def judge_responses(
    responses: Sequence[dict[str, Any]],
    url: str,
    model: str,
    *,
    timeout: float = 120.0,
    api_key: str | None = None,
    on_score: Callable[[int, int | None], None] | None = None,
) -> JudgeReport:
    """Score each ``{instruction, input, reference, answer}`` with the judge ``model`` at ``url``.

    ``on_score(index, score)`` is called after each (a progress bar). The first unreachable or
    malformed answer raises ``JudgeError``; a reply without a number counts as unscored.
    """
    chat_completions_url(url)  # a bad address fails before the first request
    scores: list[int | None] = []
    for index, item in enumerate(responses):
        question = item["instruction"] + (f"\n\n{item['input']}" if item.get("input") else "")
        prompt = JUDGE_PROMPT.format(question=question, reference=item["reference"], answer=item["answer"])
        score = parse_score(query_judge(url, model, prompt, timeout=timeout, api_key=api_key))
        scores.append(score)
        if on_score is not None:
            on_score(index, score)
    return JudgeReport(scores)
