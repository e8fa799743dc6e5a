"""The run directory as a whole: which folders a new run may use, clearing an old run, and what a
stopped run leaves to go on from (the advice printed after an interrupt or a divergence).

A folder holds a run when it has ``run.json`` (the Trainer writes it before anything else). A new
run may go into a folder that does not exist, an empty one, or, with ``overwrite``, an old run,
of which only the run files (``RUN_FILES``) are deleted. Any other non-empty folder is refused,
with or without ``overwrite``: a mistyped ``--out`` never writes a run among, or deletes, files
that are not a run's. See ``gptsmith.train.checkpointing`` for the files themselves.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import torch

from gptsmith.errors import ConfigError
from gptsmith.storage import check_can_be_directory, check_writable
from gptsmith.train.checkpointing import (
    CHECKPOINTS,
    LOSS_PLOT,
    RUN_FILE,
    checkpoint_name,
    is_complete,
    list_checkpoints,
    no_checkpoint_message,
    pointer_is_broken,
    read_pointer,
    shell_word,
)
from gptsmith.train.run_log import METRICS_FILE, SAMPLES_FILE
from gptsmith.version import __version__

# Everything a run writes at its top level; --overwrite deletes these and nothing else.
RUN_FILES = (CHECKPOINTS, RUN_FILE, "latest", "best", METRICS_FILE, LOSS_PLOT, SAMPLES_FILE)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a gptsmith run (its ``run.json``)."""
    return (Path(path) / RUN_FILE).is_file()


def check_new_run_dir(run_dir: str | Path, *, overwrite: bool = False) -> None:
    """Raise ``ConfigError`` (``StorageError`` for a path that cannot be a writable folder) unless a
    new run may be written to ``run_dir``.

    Only looks: nothing is deleted until ``clear_run_dir``, which the caller runs once every other
    argument has been checked, so a bad flag never costs the old run.
    """
    run_dir = Path(run_dir)
    # A file in the way (``--out notes.txt/run``) or a folder that cannot be written: said now, not
    # by mkdir once the corpus has been read and tokenized.
    check_can_be_directory(run_dir, "--out")
    check_writable(run_dir, "--out")
    if not run_dir.exists():
        return
    if is_run_dir(run_dir):
        if overwrite:
            return
        if not list_checkpoints(run_dir):  # nothing to --resume from
            raise ConfigError(f"{run_dir} already holds a run, with no checkpoint (it stopped before its "
                              "first one was saved): replace it with --overwrite, or choose another --out")
        raise ConfigError(f"{run_dir} already holds a run (continue it with --resume {shell_word(run_dir)}, "
                          "replace it with --overwrite, or choose another --out)")
    if any(run_dir.iterdir()):
        raise ConfigError(f"--out {run_dir} is a folder that holds files but no run (no {RUN_FILE}); pick "
                          "a new or empty folder (--overwrite only ever replaces a run)")


def replace_old_run(run_dir: str | Path, *, overwrite: bool, is_main: bool = True) -> None:
    """Before a new run's first step: a run already in ``run_dir`` is refused (every process raises
    the same error), or with ``overwrite`` its files are deleted (by the main process), so two
    runs' checkpoints and metrics never mix."""
    if not is_run_dir(run_dir):
        return
    if not overwrite:
        raise ConfigError(f"{run_dir} already holds a run: continue it with trainer.resume(), replace it "
                          "with overwrite=True, or choose another run_dir")
    if is_main:
        clear_run_dir(run_dir)


def clear_run_dir(run_dir: str | Path) -> list[Path]:
    """Delete an old run's files from ``run_dir`` (``RUN_FILES`` only); returns what was deleted."""
    deleted = []
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        deleted.append(path)
    return deleted


def resume_advice(run_dir: str | Path) -> str:
    """How to go on with a run that just stopped: resume it, resume from an older checkpoint, or
    (when it has no checkpoint) start it again."""
    run_dir = Path(run_dir)
    resume = f"gptsmith train --resume {shell_word(run_dir)}"
    latest = read_pointer(run_dir, "latest")
    if latest and is_complete(run_dir / latest):
        return f"checkpoint {run_dir / latest} is kept (continue with: {resume})"
    if pointer_is_broken(run_dir) and list_checkpoints(run_dir):  # --resume finds the newest one
        newest = run_dir / CHECKPOINTS / list_checkpoints(run_dir)[-1].name
        return f"checkpoint {newest} is kept (continue with: {resume})"
    if list_checkpoints(run_dir):
        return (f"{run_dir}/latest names no complete checkpoint (continue from the newest good one with: "
                f"{resume} --fallback)")
    return no_checkpoint_message(run_dir)


def divergence_advice(run_dir: Path | None, failed_step: int | None, *, lr: float, grad_clip: float) -> str:
    """What is left after training diverged, and how to go on (the tail of the NaN error).

    Every checkpoint passed the finite-weights check, but the newest may be the one that diverged:
    when it is checkpoint ``failed_step`` (whose weights gave the non-finite value) resuming from
    it fails again whatever the flags, so the older checkpoints are named too.
    """
    fix = f"a lower --lr than {lr:g}" + (" and --grad-clip 1" if grad_clip == 0 else "")
    kept = [f"{CHECKPOINTS}/{p.name}" for p in reversed(list_checkpoints(run_dir))] if run_dir else []
    if not kept:
        if run_dir is None:
            return f"nothing was saved (start again with {fix})"
        return (f"no checkpoint was written yet (start again with --out {shell_word(run_dir)} --overwrite "
                f"and {fix})")
    newest, older = kept[0], kept[1:]
    others = f"older: {', '.join(older)}" if older else "no older one"
    restart = (f"delete {Path(run_dir) / newest} and resume from {older[0]} with --resume "
               f"{shell_word(run_dir)} --fallback and {fix}" if older else f"start a new run with {fix}")
    if failed_step is not None and newest == checkpoint_name(failed_step):
        return (f"the newest checkpoint {newest} holds the weights that gave it, so resuming from it "
                f"fails again ({others}): {restart}")
    return (f"the newest checkpoint {newest} may already be diverging ({others}): resume with --resume "
            f"{shell_word(run_dir)} and {fix}; if it diverges again, {restart}")


def environment_info() -> dict[str, str]:
    """Versions recorded in run.json so a result can be traced to its software."""
    return {"gptsmith": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
