"""The run directory: checkpoints, pointers, metrics and the state needed for an exact resume.

Layout::

    RUN_DIR/run.json                      model + train config, versions, data checksum, seed
    RUN_DIR/latest                        text: "checkpoints/step-000300" (newest good checkpoint)
    RUN_DIR/best                          text: the checkpoint with the lowest validation loss
    RUN_DIR/checkpoints/step-000300/      config.json + model.safetensors (a model directory, so every
                                          loader accepts it) + training_state.pt
    RUN_DIR/metrics.jsonl, samples.txt    the run's log (``run_log``)
    RUN_DIR/loss.png

Every file is written atomically (``gptsmith.storage.atomic_path``), and ``latest`` moves only
after a checkpoint's files are all on disk, so killing the process at any moment leaves
``latest`` on a checkpoint that loads. A write that fails (disk full, read-only directory)
raises ``CheckpointError`` for a checkpoint and ``StorageError`` for any other run file, with one
line that names the file and the reason. ``training_state.pt`` holds only tensors, numbers,
strings and lists, so it loads with ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from gptsmith.errors import CheckpointError, ConfigError, StorageError
from gptsmith.model.checkpoint import read_model_config, save_model
from gptsmith.model.run_dir import (  # noqa: F401 (CHECKPOINTS, read_pointer: part of this module's API)
    CHECKPOINTS,
    CONFIG_FILE,
    MODEL_FILES,
    WEIGHTS_FILE,
    broken_pointer_note,
    complete_checkpoints,
    incomplete_checkpoint_message,
    incomplete_latest,
    read_pointer,
)
from gptsmith.model.weights import load_torch_file, read_safetensors
from gptsmith.storage import atomic_torch_save, atomic_write_text, write_failure_reason

STATE_FILE = "training_state.pt"
RUN_FILE = "run.json"
LOSS_PLOT = "loss.png"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step:06d}"


# --- Saving -------------------------------------------------------------------------------------


@contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """Turn a failed write of run file ``path`` (RUN_DIR/<file>) into a one-line ``StorageError``."""
    try:
        yield
    except OSError as exc:
        run_dir = Path(path).parent
        reason, full = write_failure_reason(exc, run_dir)
        raise StorageError(f"cannot write {path}: {reason}; "
                           f"{_what_is_left(run_dir, read_pointer(run_dir, 'latest'), full)}") from exc


def _what_is_left(run_dir: Path, latest: str | None, full: bool) -> str:
    """The tail of a failed write's message: the checkpoint kept, and how to go on from it."""
    fix = "free some space" if full else "fix that"
    if not latest and list_checkpoints(run_dir):
        latest = f"{CHECKPOINTS}/{list_checkpoints(run_dir)[-1].name}"
    if latest:
        return (f"the previous checkpoint {run_dir / latest} is intact ({fix}, then resume with "
                f"--resume {shell_word(run_dir)})")
    return f"no checkpoint was written ({fix}, then start again with --out {shell_word(run_dir)} --overwrite)"


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    training_state: dict[str, Any],
    *,
    step: int,
    tokenizer: Any,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint ``step`` (weights, config, training state), then move ``latest`` to it.

    On any failure (a full disk makes torch.save raise RuntimeError and safetensors raise
    SafetensorError, not OSError) the half-written checkpoint directory is removed, ``latest``
    still names the previous checkpoint, and a ``CheckpointError`` says why.
    """
    run_dir = Path(run_dir)
    name = checkpoint_name(step)
    directory = run_dir / name
    previous = read_pointer(run_dir, "latest")
    try:
        if directory.exists():  # left over from a killed run that got this far: start clean
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        atomic_torch_save(training_state, directory / STATE_FILE)
        # save_model writes the weights first and config.json last: config.json marks completeness.
        save_model(model, directory, tokenizer=tokenizer, extra={"step": step, **(extra or {})})
        write_pointer(run_dir, "latest", name)
    except BaseException as exc:
        reason, full = write_failure_reason(exc, run_dir)  # before cleaning up frees the space
        if read_pointer(run_dir, "latest") != name:  # (a Ctrl-C after the pointer moved keeps it)
            shutil.rmtree(directory, ignore_errors=True)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not a save problem
            raise
        if _interrupted(exc):  # a Ctrl-C inside torch.save's writes comes out as its RuntimeError
            raise KeyboardInterrupt from None
        raise CheckpointError(f"cannot save checkpoint {directory}: {reason}; "
                              f"{_what_is_left(run_dir, previous, full)}") from exc
    return directory


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a KeyboardInterrupt (raised in a callback of C++ code)."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def shell_word(path: str | Path) -> str:
    """``path`` as the advice in these messages prints it in a command to type: quoted for the shell
    where it needs it (``'runs/my run'``), else as it is; one that starts with ``-`` as ``./-run``,
    which no command takes for a flag. (The CLI's hints, ``gptsmith.cli.shell``, write paths with it.)"""
    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def no_checkpoint_message(run_dir: Path) -> str:
    """What to do with a run that stopped before its first checkpoint (it has nothing to resume)."""
    return (f"{run_dir} has no checkpoint (the run stopped before its first one was saved): start it again "
            f"with `gptsmith train --out {shell_word(run_dir)} --overwrite` and the same settings")


def write_pointer(run_dir: Path, name: str, target: str) -> None:
    """Atomically point ``RUN_DIR/name`` (``latest`` or ``best``) at a checkpoint directory."""
    path = Path(run_dir) / name
    with storage_errors(path):
        atomic_write_text(path, target + "\n")


def pointer_is_broken(run_dir: Path) -> bool:
    """Whether ``latest`` is missing, unreadable or names a directory that is gone (the run is then
    resumed from its newest complete checkpoint, see ``find_resume_checkpoint``)."""
    latest = read_pointer(run_dir, "latest")
    return latest is None or not (Path(run_dir) / latest).is_dir()


def is_complete(checkpoint_dir: Path) -> bool:
    """Whether a checkpoint's save finished (config.json is written last; see ``save_checkpoint``)."""
    return (Path(checkpoint_dir) / CONFIG_FILE).is_file()


def _step_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoint directories of a run, oldest first.

    A directory whose save was interrupted is left out: it can never be resumed from, so it must
    not count among the last ``keep_last`` in place of a good one.
    """
    return complete_checkpoints(run_dir)


def prune_checkpoints(run_dir: Path, keep_last: int, *, keep: Iterable[str] = ()) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns what was deleted.

    Never deletes what ``latest`` or ``best`` names, nor the checkpoints named in ``keep``
    (``checkpoints/step-N``). Leftovers of interrupted saves older than the newest checkpoint go
    too: nothing will ever complete or load them.
    """
    protected = {read_pointer(run_dir, "latest"), read_pointer(run_dir, "best"), *keep}
    checkpoints = list_checkpoints(run_dir)
    newest = checkpoints[-1].name if checkpoints else ""
    doomed = checkpoints[: max(0, len(checkpoints) - keep_last)]
    doomed += [p for p in _step_dirs(run_dir) if not is_complete(p) and p.name < newest]
    doomed = [p for p in sorted(doomed) if f"{CHECKPOINTS}/{p.name}" not in protected]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def restore_best_pointer(run_dir: Path, best_step: int | None) -> None:
    """Point ``best`` at checkpoint ``best_step`` (the resumed state's), or remove it if that is gone.

    After a fallback resume ``best`` may name a checkpoint that was skipped, or one that the
    resumed run will write again with other weights; the training state knows the real best.
    """
    name = checkpoint_name(best_step) if best_step is not None else None
    if name is not None and is_complete(Path(run_dir) / name):
        if read_pointer(run_dir, "best") != name:
            write_pointer(run_dir, "best", name)
    else:
        (Path(run_dir) / "best").unlink(missing_ok=True)


# --- Loading and validating ----------------------------------------------------------------------


def load_training_state(checkpoint_dir: Path) -> dict[str, Any]:
    """``training_state.pt`` of a checkpoint, loaded safely; a bad file is a CheckpointError naming it."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the checkpoint is incomplete; resume with --fallback)")
    previous = "resume with --fallback to use the previous good one"
    return load_torch_file(path, damaged=f"the checkpoint is corrupt or partial; {previous}",
                           code_fix=f"gptsmith never writes code there, so the file was replaced; {previous}")


def check_checkpoint(checkpoint_dir: Path) -> dict[str, Any]:
    """Fully read a checkpoint (config, every tensor, training state); returns the loaded pieces.

    Raises ``CheckpointError`` naming the bad file, so a resume never starts from a checkpoint
    that would load wrong.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"{checkpoint_dir} does not exist (resume with --fallback to use the newest "
                              "good checkpoint)")
    if not (checkpoint_dir / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{checkpoint_dir} has no {CONFIG_FILE} (the save was interrupted; resume with --fallback)"
        )
    config = read_model_config(checkpoint_dir)
    weights_path = checkpoint_dir / WEIGHTS_FILE
    try:
        weights = read_safetensors(weights_path) if weights_path.is_file() else None
    except CheckpointError as exc:
        message = str(exc).split(" (")[0]
        raise CheckpointError(f"{message} (the checkpoint is corrupt or partial; resume with --fallback to "
                              "use the previous good one)") from None
    if weights is None:
        raise CheckpointError(f"{checkpoint_dir / WEIGHTS_FILE} is missing (resume with --fallback)")
    state = load_training_state(checkpoint_dir)
    return {"config": config, "weights": weights, "state": state, "path": checkpoint_dir}


def check_global_batch(state: dict[str, Any], path: Path, tokens_per_step: int, world_size: int) -> None:
    """Refuse to resume with a global batch other than the run's (from another process count).

    With ``target_batch_tokens`` the accumulation adapts, so the same global batch from another
    number of processes is fine (equal up to float rounding, as in tests/test_ddp.py).
    """
    step = int(state["step"])
    saved = state.get("tokens_per_step") or (int(state["tokens_seen"]) // step if step else None)
    if saved is None or saved == tokens_per_step:
        return
    processes = f" from {state['world_size']} process(es)" if "world_size" in state else ""
    raise ConfigError(
        f"{path} was trained with {saved:,} tokens per step{processes}; {world_size} process(es) now "
        f"make {tokens_per_step:,} (resume with the run's number of processes, e.g. torchrun "
        "--nproc_per_node=N, so the global batch stays the same)"
    )


def check_model_config(saved: dict[str, Any], ours: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint whose model config (``saved``) differs from this run's (``ours``)."""
    differences = [f"{k}={saved.get(k)!r} there vs {ours[k]!r} here" for k in ours if saved.get(k) != ours[k]]
    if differences:
        raise CheckpointError(
            f"{path} was trained with a different model config: {', '.join(differences)} "
            "(resume with the same preset/config, or start a new run with another --out)"
        )


def load_checkpoint_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Load a checkpoint's ``weights`` into ``model`` (a tied head may be absent), or raise
    ``CheckpointError`` saying what does not match."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if k != "out_head.weight"]:
        hf = any(k.endswith("wte.weight") for k in unexpected)
        why = (" (it holds Hugging Face GPT-2 weights: was a `gptsmith convert --to hf` written over it?)"
               if hf else f" (missing {missing[:3]}{'...' if len(missing) > 3 else ''})")
        raise CheckpointError(f"{path}/model.safetensors does not match the model{why}")


def find_resume_checkpoint(
    run_dir: Path, *, fallback: bool = False
) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """The checkpoint to resume ``run_dir`` from: ``latest``, or with ``fallback`` the newest good one.

    Returns (loaded checkpoint, [(bad checkpoint, problem)] skipped on the way). Without
    ``fallback`` a bad ``latest`` checkpoint raises its ``CheckpointError`` (which names the path).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir} (pass the --out of an earlier run)")
    latest = read_pointer(run_dir, "latest")
    candidates = [run_dir / latest] if latest and not pointer_is_broken(run_dir) else []
    incomplete = None if fallback else incomplete_latest(run_dir, (*MODEL_FILES, STATE_FILE))
    if incomplete is not None:  # as every loader words it; the way on here is --fallback
        folder, missing, older = incomplete
        restore = "restore it" if len(missing) == 1 else "restore them"
        if older is not None:
            fix = (f"resume from the newest complete one, {CHECKPOINTS}/{older.name}, with --fallback, "
                   f"or {restore}")
        else:
            fix = f"{restore}, or start the run again with --out {run_dir} --overwrite"
        raise CheckpointError(incomplete_checkpoint_message(folder, missing, fix))
    note = None
    if not candidates and not fallback and list_checkpoints(run_dir):
        # A missing or broken pointer loses nothing: the newest complete checkpoint is the run's.
        candidates = [list_checkpoints(run_dir)[-1]]
        note = f"{broken_pointer_note(run_dir)}; resuming from the newest good one, {CHECKPOINTS}/" \
               f"{candidates[0].name}"
    if fallback:  # every step-N directory, so the incomplete ones are quarantined too
        candidates += [p for p in reversed(_step_dirs(run_dir)) if p not in candidates]
    if not candidates:
        raise CheckpointError(no_checkpoint_message(run_dir))
    problems = []
    for candidate in candidates:
        try:
            loaded = check_checkpoint(candidate)
            loaded["note"] = note if candidate == candidates[0] else None
            return loaded, problems
        except CheckpointError as exc:
            if not fallback:
                raise
            problems.append((candidate, _without_fallback_advice(str(exc))))
    start_again = (f"every checkpoint is damaged: start the run again with --out {shell_word(run_dir)} "
                   "--overwrite")
    raise CheckpointError(f"no loadable checkpoint in {run_dir}: " + "; ".join(m for _, m in problems)
                          + f" ({start_again})")


def _without_fallback_advice(message: str) -> str:
    """A checkpoint's problem without its "resume with --fallback" advice: said to a resume that
    already has --fallback, it would only repeat itself."""
    message = re.sub(r"[;:,]? ?resume with --fallback[^)]*", "", message)
    return message.replace(" ()", "")


def quarantine_checkpoint(checkpoint_dir: Path) -> Path:
    """Rename a bad checkpoint to ``corrupt-step-N`` (kept for inspection, never loaded or counted
    among the last K again, so pruning cannot delete a good checkpoint in its favour)."""
    checkpoint_dir = Path(checkpoint_dir)
    target = checkpoint_dir.with_name(f"corrupt-{checkpoint_dir.name}")
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    if checkpoint_dir.exists():
        os.replace(checkpoint_dir, target)
    return target
