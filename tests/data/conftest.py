"""Fixtures of the data tests: a private cache, offline, and a small word-level tokenizer."""

from __future__ import annotations

import pytest

from gptsmith.data.tokenizer import SimpleTokenizerV2


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")


@pytest.fixture
def word_tokenizer():
    return SimpleTokenizerV2.from_text("alpha beta gamma delta epsilon zeta eta theta . ,")

