"""Run directories on disk: the ``latest`` pointer and the ``checkpoints/step-N`` folders.

A *run directory* (written by the trainer) holds a text file ``latest`` whose content is the
relative path of its newest model directory, and a folder ``checkpoints/`` of ``step-N`` model
directories. A save writes config.json last and moves ``latest`` only once it is complete, so a
folder with a config.json is complete; these helpers find the newest such folder and describe a
pointer that is broken (``broken_pointer_note``) or names a folder missing a file
(``incomplete_latest``) in the same words for every command.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LATEST_FILE = "latest"
CHECKPOINTS = "checkpoints"  # a run directory's folder of step-N model directories
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE)  # what a model directory needs to load


def read_pointer(run_dir: str | Path, name: str = LATEST_FILE) -> str | None:
    """What the pointer file ``RUN_DIR/name`` (``latest`` or ``best``) names, e.g.
    ``checkpoints/step-000300``; None when it is missing, empty or not text (a broken pointer)."""
    path = Path(run_dir) / name
    try:
        return path.read_text(encoding="utf-8").strip() or None if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``checkpoints/step-N`` directories of a run whose save finished (config.json is written
    last), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step-") and (p / CONFIG_FILE).is_file())


def newest_complete_checkpoint(run_dir: str | Path, required: tuple[str, ...] = MODEL_FILES) -> Path | None:
    """The newest checkpoint of a run that holds every file of ``required``, or None: what a broken
    ``latest`` is recovered from, and what an incomplete one's error suggests instead."""
    checkpoints = [p for p in complete_checkpoints(run_dir) if not _missing(p, required)]
    return checkpoints[-1] if checkpoints else None


def _missing(folder: Path, required: tuple[str, ...]) -> list[str]:
    return [name for name in required if not (folder / name).is_file()]


def incomplete_latest(run_dir: str | Path, required: tuple[str, ...] = MODEL_FILES
                      ) -> tuple[Path, list[str], Path | None] | None:
    """(the folder, the files of ``required`` it lacks, the newest other checkpoint that has them
    all or None) when ``RUN_DIR/latest`` names a folder that exists but is incomplete; else None.

    ``latest`` moves only after a save is complete, so this is a checkpoint damaged since (a file
    deleted, a copy cut short): every command refuses it in the same words
    (``incomplete_checkpoint_message``) rather than quietly using an older step. A ``latest`` that
    is missing or names nothing on disk is another case (``broken_pointer_note``): there only the
    pointer is lost, and the newest complete checkpoint is the run's.
    """
    run_dir = Path(run_dir)
    target = read_pointer(run_dir, LATEST_FILE)
    folder = run_dir / target if target else None
    if folder is None or not folder.is_dir():
        return None
    missing = _missing(folder, required)
    if not missing:
        return None
    older = [p for p in complete_checkpoints(run_dir) if p != folder and not _missing(p, required)]
    return folder, missing, older[-1] if older else None


def incomplete_checkpoint_message(folder: Path, missing: list[str], fix: str) -> str:
    """The one line for an incomplete latest checkpoint (see ``incomplete_latest``); ``fix`` is the
    command's way on (load an older step, resume with --fallback)."""
    files = " or ".join(missing) if len(missing) < 3 else f"{', '.join(missing[:-1])} or {missing[-1]}"
    return f"the latest checkpoint {folder} has no {files} (its save was cut short, or a file was deleted; " \
           f"{fix})"


def broken_pointer_note(run_dir: str | Path) -> str:
    """How a run's broken ``latest`` is described wherever it is recovered from (train, generate, info)."""
    target = read_pointer(run_dir, LATEST_FILE)
    if target is None:
        why = "is missing or unreadable"
    elif (Path(run_dir) / target).exists():  # (a folder there is an incomplete_latest, never this)
        why = f"names {target!r}, which is not a checkpoint folder"
    else:
        why = f"names {target!r}, which is gone"
    return f"{Path(run_dir)}/{LATEST_FILE} names no checkpoint (it {why})"
