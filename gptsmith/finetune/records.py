"""JSON records for fine-tuning data: one JSON array of objects, or JSONL (one object per line).

Both the classification data (``class_data``) and the instruction data (``instruct_data``) read
their JSON files here, so a file that does not parse gets the same error, naming its line and
column, whichever command reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptsmith.data.text_files import text_lines
from gptsmith.errors import DataError


def json_objects(text: str, path: str | Path) -> Iterator[tuple[Any, int | None]]:
    """(object, line number) for each record of ``text``: a JSON array if it starts with ``[``
    (line numbers ``None``), else JSONL (blank lines skipped). A JSONL record ends at a newline
    only, not at the other breaks ``str.splitlines`` knows (a U+2028 in a string stays in it)."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise DataError(f"{path}: invalid JSON at {where}: {exc.msg}") from None
        yield from ((obj, None) for obj in data)
        return
    for number, line in enumerate(text_lines(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: invalid JSON at line {number}, column {exc.colno}: {exc.msg} "
                "(a JSONL file holds one JSON object per line; a JSON array starts with '[')"
            ) from None
        yield obj, number
