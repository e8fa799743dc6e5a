"""Reading text out of files: strict UTF-8 (with the fix for other encodings), lines, documents
split at ``<|endoftext|>``, the records of .jsonl and .parquet files, and cuts of a long text
where parallel tokenization may split it. ``corpus`` builds on these; the fine-tuning data
readers use ``read_utf8`` and ``text_lines`` so every file is read alike."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path

from gptsmith.data.tokenizer_protocol import ENDOFTEXT, check_text
from gptsmith.errors import DataError


def read_utf8(path: Path) -> str:
    """The file's text; non-UTF-8 bytes raise a ``DataError`` naming the file and the byte offset."""
    data = path.read_bytes()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # a leading BOM is dropped
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start  # an offset into the file, BOM included
        raise DataError(f"{path} is not UTF-8: byte 0x{data[offset]:02x} at offset {offset} "
                        f"({convert_hint(data)})") from None


def text_lines(text: str) -> list[str]:
    """The lines of ``text``: split at ``"\\n"`` only (a ``"\\r"`` before it goes with it), and a
    final newline ends the last line rather than starting an empty one, as ``str.splitlines``.

    ``splitlines`` also breaks at U+2028, U+2029, U+0085, form feed, vertical tab and
    U+001C..U+001E, which may sit inside one record: JSON writers leave U+2028 unescaped in
    strings (``ensure_ascii=False``), and a text to classify may hold any of them. In a file of
    one record per line only a newline ends a record.
    """
    lines = text.split("\n")
    if lines[-1] == "":  # "" has no lines, and "a\n" one
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def convert_hint(data: bytes) -> str:
    """How to make UTF-8 of a file that starts with ``data``: from UTF-16 if it starts with a UTF-16
    byte-order mark, nothing for a binary file, else from Latin-1 (the usual single-byte case)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "it starts with a UTF-16 byte-order mark: convert it, e.g. `iconv -f utf-16 -t utf-8 IN > OUT`"
    if b"\0" in data[:8192]:  # NUL bytes: a binary file (an archive, weights, an image), not text
        return "it looks like a binary file, not text: pass a text file"
    return "convert the file, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"


def text_documents(path: Path, text: str) -> Iterator[str]:
    """The documents of one text file: the whole text, or its parts between ``<|endoftext|>``."""
    if not text.strip():
        raise DataError(f"corpus file {path} is empty (it has no text to train on)")
    yield from split_at_endoftext(text)


def split_at_endoftext(text: str) -> Iterator[str]:
    """The documents of ``text``: the whole text, or its non-blank parts between ``<|endoftext|>``
    (the shard puts one back between documents)."""
    if ENDOFTEXT not in text:
        yield text
        return
    for doc in text.split(ENDOFTEXT):
        if doc.strip():
            # The line break around a separator goes with it, "\r\n" as much as "\n": a Windows
            # file's documents must not start and end with a stray "\r".
            yield doc.strip("\r\n")


def jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    seen = texts = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{line_no} is not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                    f"of the line ({convert_hint(raw if line_no == 1 else b'')})"
                ) from None
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                message = f"{path}:{line_no}: not valid JSON ({exc}); each line must be one object"
                raise DataError(message) from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}:{line_no}: no field {text_field!r} (found: {keys}; pick the text's "
                                "field with --text-field)")
            text = check_text(record[text_field], f"{path}:{line_no}: field {text_field!r}")
            seen += 1
            if text:  # (whitespace stays: it is text, and shards' checksums depend on it)
                texts += bool(text.strip())
                yield text
    if seen == 0:
        raise DataError(f"corpus file {path} is empty (no JSON lines with a {text_field!r} field)")
    if texts == 0:
        raise DataError(f"corpus file {path} has {seen} line(s) but every {text_field!r} is blank: no text")


def parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading .parquet corpora needs pyarrow: pip install pyarrow") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for non-parquet bytes
        raise DataError(f"{path} is not a readable Parquet file ({exc})") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"{path} has no {text_field!r} column (columns: {', '.join(columns)})")
    if parquet.metadata.num_rows == 0:
        raise DataError(f"corpus file {path} is empty (0 rows)")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text:
                yield check_text(text, f"{path}: column {text_field!r}")


# Cut long texts only at a line break between two non-space characters: right after a "\n" or a
# lone "\r", and inside a "\r\n", between its "\r" and "\n" (GPT-2's pre-tokenizer reads "x\r\nY"
# as "x", "\r", "\n", "Y", but a piece ending in "\r\n" as one "\r\n"). The pre-tokenizer always
# has a boundary there, so encoding the pieces separately gives the very same ids as encoding the
# whole text, and the pieces can be encoded in parallel; a Windows file splits like a Unix one.
_SAFE_CUT = re.compile(r"(?<=\S[\n\r])(?=\S)|(?<=\S\r)(?=\n\S)")


def safe_chunks(text: str, target_chars: int = 1 << 16) -> list[str]:
    """Split ``text`` into pieces of about ``target_chars`` at tokenizer-safe newline boundaries."""
    if len(text) <= target_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start > target_chars:
        match = _SAFE_CUT.search(text, start + target_chars)
        if match is None:
            break
        pieces.append(text[start : match.start()])
        start = match.start()
    pieces.append(text[start:])
    return pieces
