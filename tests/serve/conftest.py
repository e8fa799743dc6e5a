"""Serving tests run tiny models: one torch thread is faster for them than two on a busy machine."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every serving test on one torch thread (see the fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def server():
    """A server on a free loopback port with a tiny byte-level model (``server.model.delay`` slows it)."""
    from serving_helpers import API_KEY, serving_model

    from gptsmith.serve.app import ServerSettings
    from gptsmith.serve.server import ServerThread

    model, tokenizer = serving_model()
    settings = ServerSettings(model_name="tiny", api_key=API_KEY, max_batch=4, max_tokens=200,
                              max_body_bytes=4096)
    with ServerThread(model, tokenizer, settings) as running:
        running.model, running.tokenizer = model, tokenizer
        yield running


@pytest.fixture
def fast(server):
    """The shared server at full speed (a test that slows it down is undone afterwards)."""
    server.model.delay = 0.0
    yield server
    server.model.delay = 0.0
