"""Text typed or piped on stdin for ``generate -`` and ``chat``: UTF-8 only, as corpora are.

Undecodable bytes are an error naming the byte, never silently U+FFFD (a corpus in another
encoding is an error too, see ``gptsmith.corpus.read_utf8``).
"""

from __future__ import annotations

import codecs
import sys

from gptsmith.errors import ConfigError

ICONV_HINT = "convert it, e.g. `iconv -f latin1 -t utf-8`"


def read_stdin_prompt() -> str:
    """The whole of stdin as a prompt (``generate -``): strict UTF-8, less one trailing newline.

    ``echo 'Once upon a time' | gptsmith generate ... -`` means the text without the newline that
    echo adds, as a shell's ``$(...)`` takes it; only one is removed, so a prompt that really ends
    in a blank line keeps it. A leading byte-order mark is dropped.
    """
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream with no bytes beneath it (io.StringIO): already decoded
        text = sys.stdin.read()
    else:
        data = raw.read()
        bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
        try:
            text = data[bom:].decode("utf-8")
        except UnicodeDecodeError as exc:
            offset = bom + exc.start
            byte = f"byte 0x{data[offset]:02x} at offset {offset}"
            raise ConfigError(f"the prompt on stdin is not UTF-8: {byte} ({ICONV_HINT})") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def keep_undecodable_bytes() -> None:
    """Make ``input()`` hand over a line with non-UTF-8 bytes (as lone surrogates) instead of
    raising ``UnicodeDecodeError`` in the middle of a chat, so ``bad_byte`` can report it."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8", errors="surrogateescape")


def bad_byte(line: str) -> str | None:
    """A one-line complaint about the first non-UTF-8 byte of ``line``, or None if it is clean."""
    for index, char in enumerate(line):
        if "\udc80" <= char <= "\udcff":  # how surrogateescape carries an undecodable byte
            byte = f"byte 0x{ord(char) - 0xDC00:02x} at character {index}"
            return f"that line is not UTF-8 ({byte}), skipped; {ICONV_HINT}"
    return None
