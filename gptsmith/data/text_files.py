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
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start  # an offset into the file, BOM included
        raise DataError(f"{path} is not UTF-8: byte 0x{data[offset]:02x} at offset {offset} "
                        f"({convert_hint(data)})") from None
    check_no_nul(data, str(path))
    return text


def check_no_nul(data: bytes, where: str, of: str = "") -> None:
    """Refuse text holding a NUL byte. It is valid UTF-8, but no text has one: UTF-16 without a
    byte-order mark (``"H\\0e\\0"``) or a binary file would otherwise be read as garbage, silently."""
    offset = data.find(b"\0")
    if offset < 0:
        return
    hint = _utf16_hint(data)
    if hint is None and data[:8192].count(0) < 80:  # a stray NUL or a few in text
        hint = "remove the NUL bytes, e.g. `tr -d '\\000' < IN > OUT`"
    hint = hint or "it looks like a binary file, not text: pass a text file"
    raise DataError(f"{where} is not text: a NUL byte at offset {offset}{of} ({hint})")


def _utf16_hint(data: bytes) -> str | None:
    """The conversion of ``data`` if it looks like UTF-16 without a byte-order mark, else None: UTF-16
    of mostly ASCII text has a NUL in every other byte (the high byte of each character)."""
    sample = data[:8192]
    for start, order in ((1, "utf-16le"), (0, "utf-16be")):
        half = sample[start::2]
        if half.count(0) > 0.6 * len(half) and sample[1 - start::2].count(0) < 0.1 * len(half):
            return (f"it looks like UTF-16 text without a byte-order mark: convert it, e.g. "
                    f"`iconv -f {order} -t utf-8 IN > OUT`")
    return None


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


# The first bytes of compressed files, which are read as text only once decompressed.
_COMPRESSED = {
    b"\x1f\x8b": ("gzip", "gunzip -k FILE.gz"),
    b"BZh": ("bzip2", "bunzip2 -k FILE.bz2"),
    b"\xfd7zXZ\x00": ("xz", "unxz -k FILE.xz"),
    b"\x28\xb5\x2f\xfd": ("zstd", "unzstd FILE.zst"),
    b"PK\x03\x04": ("zip", "unzip FILE.zip"),
}


_C1_BYTES = bytes(range(0x80, 0xA0))  # control codes in Latin-1; curly quotes, dashes, € in Windows-1252


def convert_hint(data: bytes) -> str:
    """How to make UTF-8 of a file that starts with ``data``: from UTF-16 if it starts with a UTF-16
    byte-order mark or looks like UTF-16 without one, nothing for a binary file, nothing but the
    broken bytes for a file that is mostly UTF-8, else from Windows-1252 or Latin-1."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "it starts with a UTF-16 byte-order mark: convert it, e.g. `iconv -f utf-16 -t utf-8 IN > OUT`"
    for magic, (kind, command) in _COMPRESSED.items():
        if data.startswith(magic):
            return f"it is {kind}-compressed: decompress it first, e.g. `{command}`, and pass the text"
    if b"\0" in data[:8192]:  # NUL bytes: UTF-16 text without a byte-order mark, or a binary file
        return _utf16_hint(data) or "it looks like a binary file, not text: pass a text file"
    # (Counted at C speed, on the first MiB: a hint must not take a minute on a 1 GB file.)
    text = data[: 1 << 20].decode("utf-8", errors="replace")
    broken = text.count("\ufffd")
    if len(text) - len(text.encode("ascii", "ignore")) - broken > broken:
        # Converting all of it from a single-byte encoding would garble its UTF-8 characters.
        return ("the rest of it is UTF-8: fix those bytes, or drop every broken one, e.g. "
                "`iconv -f utf-8 -t utf-8 -c IN > OUT`")
    if len(data.translate(None, _C1_BYTES)) < len(data):  # Latin-1's control codes: Windows' quotes, dashes
        return "convert the file, e.g. `iconv -f cp1252 -t utf-8 IN > OUT`"
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
                line = raw.decode("utf-8")
                if line_no == 1:  # a leading byte-order mark is dropped (offsets still count it)
                    line = line.removeprefix("\ufeff")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{line_no} is not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                    f"of the line ({convert_hint(raw)})"
                ) from None
            # The decoded line, not the bytes: json.loads guesses UTF-16/32 from NUL bytes, and read
            # a UTF-16 file's lines as garbage or failed with a traceback.
            check_no_nul(raw, f"{path}:{line_no}", " of the line")
            if not line.strip():  # (a byte-order mark alone)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                message = f"{path}:{line_no}: not valid JSON ({exc}); each line must be one object"
                raise DataError(message) from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(f"{path}:{line_no}: no field {text_field!r} (found: {keys}; pick the text's "
                                "field with --text-field)")
            seen += 1
            if record[text_field] is None:  # a record without text, as an empty or null Parquet cell
                continue
            text = check_text(record[text_field], f"{path}:{line_no}: field {text_field!r}")
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
