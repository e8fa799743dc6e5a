"""Text typed or piped on stdin for ``generate -`` and ``chat``, or given in argv (a prompt, a
``--stop``): UTF-8 only, as corpora are.

Undecodable bytes are an error naming the byte, never silently U+FFFD (a corpus in another
encoding is an error too, see ``gptsmith.corpus.read_utf8``).
"""

from __future__ import annotations

import codecs
import sys

from gptsmith.errors import ConfigError

ICONV_HINT = "convert it, e.g. `iconv -f latin1 -t utf-8`"


def read_stdin_prompt(what: str = "the prompt on stdin") -> str:
    """The whole of stdin as a prompt (``generate -``): strict UTF-8, less one trailing newline.
    ``what`` names it in the error for bytes that are not UTF-8 (``classify --file -`` reads its
    texts here too).

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
            raise ConfigError(f"{what} is not UTF-8: {byte} ({ICONV_HINT})") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def keep_undecodable_bytes() -> None:
    """Make ``input()`` hand over a line with non-UTF-8 bytes (as lone surrogates) instead of
    raising ``UnicodeDecodeError`` in the middle of a chat, so ``bad_byte`` can report it."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(encoding="utf-8", errors="surrogateescape")


def _first_bad_byte(text: str) -> str | None:
    """``byte 0xNN at character I`` for the first undecodable byte in ``text``, or None."""
    for index, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":  # how surrogateescape carries an undecodable byte
            return f"byte 0x{ord(char) - 0xDC00:02x} at character {index}"
    return None


def bad_byte(line: str) -> str | None:
    """A one-line complaint about the first non-UTF-8 byte of ``line``, or None if it is clean."""
    byte = _first_bad_byte(line)
    return f"that line is not UTF-8 ({byte}), skipped; {ICONV_HINT}" if byte else None


def check_utf8_arg(what: str, text: str | None) -> None:
    """Refuse text from the command line (a prompt, a --stop) with bytes that are not UTF-8, as stdin
    does: Python hands them over as lone surrogates, which no tokenizer can encode."""
    byte = _first_bad_byte(text or "")
    if byte:
        raise ConfigError(f"{what} is not UTF-8: {byte} ({ICONV_HINT})")
