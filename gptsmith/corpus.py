"""Corpora: where training text comes from (filled in below)."""

from __future__ import annotations


def builtin_documents() -> list[str]:
    """The built-in corpus: CPython's own documentation topics (``pydoc_data.topics``), one per document."""
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics)]
