"""Writing files: atomically (the one place every module writes files through), with the mode a
new file gets, and why a write failed, in words ("disk full" or the error, whichever library was
writing).

A full disk does not always surface as an ``OSError``: ``torch.save`` raises ``RuntimeError``
and safetensors ``SafetensorError``. ``write_failure_reason`` finds the OS error number behind
any of them, and falls back on the free space left where the file was going.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gptsmith.errors import ConfigError, StorageError

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


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else the nearest of its parents that does (``exists()`` is
    False below a file, so that file is the answer there)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int | None:
    """Free space on the file system holding ``path`` (or its nearest existing parent)."""
    path = _nearest_existing(Path(path).absolute())
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


def as_path(value: object, what: str) -> Path:
    """``value`` (a ``str`` or ``os.PathLike``) as a ``Path``, ``~`` expanded; anything else (None, a
    number) is a one-line ``ConfigError`` naming ``what``, not ``os.fspath``'s TypeError."""
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"{what} must be a path (a str or pathlib.Path), got {type(value).__name__}")
    return Path(value).expanduser()


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


def check_can_be_directory(path: str | Path, what: str) -> None:
    """Raise ``StorageError`` when ``path`` cannot be or become a directory: it, or the nearest of
    its parents that exists, is a file.

    Said up front, in words, instead of mkdir's FileExistsError or NotADirectoryError once the
    work is done. ``what`` names the path in the message, e.g. "--out".
    """
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.exists() or existing.is_dir():
        return
    if existing == path:
        raise StorageError(f"{what} {path} is a file, not a directory (choose a directory)")
    raise StorageError(f"{what} {path} cannot be a directory: {existing} is a file (choose another path)")


def check_can_be_file(path: str | Path, what: str, example: str = "output") -> None:
    """Raise ``StorageError`` when ``path`` cannot be written as a file: it is a directory, or the
    nearest of its parents that exists is a file. Checked before the work, like
    ``check_can_be_directory``; ``what`` names the path in the message, e.g. "--html"."""
    path = Path(path)
    if path.is_dir():
        raise StorageError(f"{what} {path} is a directory; give a file name, e.g. {path / example}")
    check_can_be_directory(path.parent, f"{what} {path}: its folder")


def check_writable(path: str | Path, what: str) -> None:
    """Raise ``StorageError`` when ``path``, or the nearest of its parents that exists, is a folder
    that cannot be written (a read-only file system, no permission): said before the work, not at
    the save. ``what`` names the path in the message, e.g. "--out"."""
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir() or os.access(existing, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):  # no statvfs (Windows)
        read_only = False
    reason = "on a read-only file system" if read_only else "not writable (permission denied)"
    where = f"{what} {path} is" if existing == path else f"{what} {path} cannot be created: {existing} is"
    raise StorageError(f"{where} {reason}; choose a folder you can write to")


@contextmanager
def write_errors(path: str | Path, again: str, *, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn a failed write of ``path`` into a ``StorageError`` that names it and the reason (``disk
    full``, or the system's), and says to ``again`` once fixed, e.g. ``prepare it again``.

    ``OSError`` is a failed write; ``also`` adds the errors a library raises instead (safetensors'
    ``SafetensorError`` for a full disk)."""
    try:
        yield
    except (OSError, *also) as exc:
        reason, full = write_failure_reason(exc, Path(path).parent)
        raise StorageError(f"cannot write {path}: {reason}; {'free some space' if full else 'fix that'} "
                           f"and {again}") from exc


@contextmanager
def created_directory(path: str | Path) -> Iterator[Path]:
    """Make the directory ``path`` (and missing parents) for the block. If the block raises, what
    this call created goes again: ``path`` with whatever the block wrote in it, then the parents it
    made, while empty, so a failed command leaves no empty folders behind (an existing ``path`` is
    left as it is)."""
    path = Path(path)
    missing, probe = [], path.absolute()
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if missing:
            shutil.rmtree(missing[0], ignore_errors=True)
            for parent in missing[1:]:
                try:
                    parent.rmdir()
                except OSError:  # something else put a file there meanwhile: keep it
                    break
        raise


@contextmanager
def replacing_directory(path: str | Path) -> Iterator[Path]:
    """Yield a new hidden folder beside ``path`` to write a whole output into; when the block ends
    it takes ``path``'s place (an earlier folder there is removed only then). If the block raises
    (a failed run, Ctrl-C), the new folder goes and ``path`` stays as it was, so replacing an
    earlier output never leaves neither."""
    path = Path(path)
    with created_directory(path.parent):  # parents it makes go again if the block fails
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
        except OSError as exc:  # name the folder asked for, not the temporary one (a read-only disk)
            raise StorageError(f"cannot create directory: {path} ({exc.strerror or exc})") from None
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's folder is private; give it a plain mode
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    old = None
    if path.is_dir():  # moved aside, not deleted, until the new folder is in place
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / path.name)
    try:
        os.replace(staging, path)
    except BaseException:
        if old is not None:
            os.replace(old / path.name, path)
            old.rmdir()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- Atomic writes ----------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    Readers therefore see either the old file or the complete new one, never half a file, even
    if the process is killed mid-write. On an exception the temporary file is removed. A symbolic
    link keeps pointing where it did (its target is replaced); a device or a pipe (``/dev/null``,
    ``/dev/stdout``) is written to once the temporary file is complete.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():  # follows links: /dev/stdout too
        with _written_through(path) as tmp:
            yield tmp
        return
    if path.is_symlink():  # replace the file it points to, not the link with a file of its own
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file asked for, not the temporary one (a read-only folder)
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file 0600 (private while half-written); give the finished file the
        # mode any newly created file gets (0666 less the umask), as a plain open() would.
        os.chmod(tmp, 0o666 & ~current_umask())
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. a folder of that name: name it, not the temporary file
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def _written_through(path: Path) -> Iterator[Path]:
    """Yield a temporary path; on success copy it into ``path``, a device, pipe or socket
    (``/dev/null``, ``/dev/stdout``) that is written to, never replaced: renaming a file onto it
    would swap the device for a plain file (as root), or fail in a folder like /dev."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp")  # the system's temp folder
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as source, open(path, "wb") as target:
            shutil.copyfileobj(source, target)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` atomically (for optimizer state; load it with ``torch.load(weights_only=True)``)."""
    import torch  # late: the tokenizer and download modules write files without needing torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # Through a Python file object, so a failed write (disk full) surfaces as the OSError with
        # its errno (as the RuntimeError's __context__); given a path, torch reports no cause.
        torch.save(obj, f)
    return Path(path)


def atomic_save_safetensors(
    tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Save a dict of tensors as a safetensors file atomically; a failed write (a full disk) is a
    one-line ``StorageError`` naming ``path``, and leaves no file behind."""
    from safetensors import SafetensorError  # late, as above
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with write_errors(path, "save it again", also=(SafetensorError,)), atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
