"""Helpers for the serving tests: a model that can be slowed down, raw HTTP, a server-sent event reader."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import torch
from generation_helpers import ByteTokenizer, tiny_model
from torch import nn

API_KEY = "test-key"


class SlowModel(nn.Module):
    """Wraps a model and sleeps ``delay`` seconds per forward pass, so a test can act mid-answer.

    ``banned`` token ids get logit -inf (e.g. ``<|endoftext|>``, so a sampled answer runs to its
    ``max_tokens``).
    """

    def __init__(self, model: nn.Module, delay: float = 0.0) -> None:
        super().__init__()
        self.inner = model
        self.cfg = model.cfg
        self.delay = delay
        self.banned: list[int] = []

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        logits = self.inner(*args, **kwargs)
        if self.banned:
            logits[..., self.banned] = float("-inf")
        return logits


def serving_model() -> tuple[SlowModel, ByteTokenizer]:
    """A tiny byte-level model (vocab 257 = bytes + <|endoftext|>, context 256) and its tokenizer."""
    return SlowModel(tiny_model(vocab_size=257, context_length=256)), ByteTokenizer()


def request(url: str, method: str, path: str, body: Any = None, *, key: str | None = API_KEY,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request (a non-JSON answer comes as {"text": body}).

    ``body`` bytes are sent as they are, anything else as JSON.
    """
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    sent = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=sent, headers=all_headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.getheader("content-type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, {"text": data.decode()}


def exchange(url: str, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, raw body) of one request, for tests of the headers."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {name.lower(): value for name, value in response.getheaders()}, data


def wait_until(predicate, timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
