"""Writing files: the mode a new file gets, and why a write failed, in words ("disk full" or the
error, whichever library was writing).

A full disk does not always surface as an ``OSError``: ``torch.save`` raises ``RuntimeError``
and safetensors ``SafetensorError``. ``write_failure_reason`` finds the OS error number behind
any of them, and falls back on the free space left where the file was going.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

# Errors that mean "no room": a full disk, a file-size limit (ulimit -f), a full quota.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
LOW_SPACE_BYTES = 1 << 20  # less free space than this counts as a full disk


def _errno_of(exc: BaseException) -> int | None:
    """The OS error number behind ``exc``, wherever a library put it.

    torch.save raises a RuntimeError whose ``__context__`` is the OSError (when given a file
    object); safetensors raises SafetensorError with only a message, "... (os error 28)".
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        match = re.search(r"\(os error (\d+)\)", str(exc))
        if match:
            return int(match.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def _free_bytes(path: Path) -> int | None:
    """Free space on the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def write_failure_reason(exc: BaseException, path: Path) -> tuple[str, bool]:
    """(reason in words, whether the disk is full) for a failed write under ``path``."""
    code = _errno_of(exc)
    free = _free_bytes(path)
    if code in DISK_FULL_ERRNOS or (free is not None and free < LOW_SPACE_BYTES):
        return "disk full" + (f" ({os.strerror(code)})" if code else ""), True
    if code:
        return os.strerror(code), False
    return (str(exc).splitlines() or [type(exc).__name__])[0], False


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``).

    Elsewhere it is read the only portable way, by setting it and putting it back, which other
    threads creating files at that instant could notice.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
