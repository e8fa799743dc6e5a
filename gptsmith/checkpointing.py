"""The run directory: checkpoints, pointers, metrics and the state needed for an exact resume.

Layout::

    RUN_DIR/run.json                      model + train config, versions, data checksum, seed
    RUN_DIR/latest                        text: "checkpoints/step-000300" (newest good checkpoint)
    RUN_DIR/best                          text: the checkpoint with the lowest validation loss
    RUN_DIR/checkpoints/step-000300/      config.json + model.safetensors (a model directory, so every
                                          loader accepts it) + training_state.pt
    RUN_DIR/metrics.jsonl                 one JSON record per logged step / evaluation
    RUN_DIR/loss.png, RUN_DIR/samples.txt

Every file is written atomically (``gptsmith.weights.atomic_path``), and ``latest`` moves only
after a checkpoint's files are all on disk, so killing the process at any moment leaves
``latest`` on a checkpoint that loads. ``training_state.pt`` holds only tensors, numbers, strings
and lists, so it loads with ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptsmith.errors import CheckpointError
from gptsmith.weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    atomic_torch_save,
    atomic_write_text,
    read_model_config,
    read_safetensors,
    save_model,
)

STATE_FILE = "training_state.pt"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINTS}/step-{step:06d}"


# --- RNG state (as plain tensors and lists, so weights_only loading accepts it) ------------------


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator training touches: torch (CPU, CUDA), numpy, python."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back where ``capture_rng_state`` found it."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    keys = np_state["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, np_state["pos"], np_state["has_gauss"],
                         np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- Saving -------------------------------------------------------------------------------------


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

    On any ``OSError`` (e.g. the disk is full) the half-written checkpoint directory is removed,
    ``latest`` still names the previous checkpoint, and a ``CheckpointError`` says so.
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
    except OSError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        kept = f"the previous checkpoint {run_dir / previous} is intact" if previous else "no checkpoint kept"
        raise CheckpointError(
            f"cannot save checkpoint {directory}: {reason}; {kept} (free some space, then resume with "
            f"--resume {run_dir})"
        ) from exc
    return directory


def write_pointer(run_dir: Path, name: str, target: str) -> None:
    """Atomically point ``RUN_DIR/name`` (``latest`` or ``best``) at a checkpoint directory."""
    atomic_write_text(Path(run_dir) / name, target + "\n")


def read_pointer(run_dir: Path, name: str) -> str | None:
    path = Path(run_dir) / name
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (complete or not)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def prune_checkpoints(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints, never ``latest`` or ``best``; returns deleted."""
    protected = {read_pointer(run_dir, "latest"), read_pointer(run_dir, "best")}
    checkpoints = list_checkpoints(run_dir)
    doomed = [p for p in checkpoints[: max(0, len(checkpoints) - keep_last)]
              if f"{CHECKPOINTS}/{p.name}" not in protected]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# --- Loading and validating ----------------------------------------------------------------------


def load_training_state(checkpoint_dir: Path) -> dict[str, Any]:
    """``training_state.pt`` of a checkpoint, loaded safely; a bad file is a CheckpointError naming it."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing (the checkpoint is incomplete; resume with --fallback)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, disallowed global...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot load {path}: {reason} (the checkpoint is corrupt or partial; resume with --fallback "
            "to use the previous good one)"
        ) from None


def check_checkpoint(checkpoint_dir: Path) -> dict[str, Any]:
    """Fully read a checkpoint (config, every tensor, training state); returns the loaded pieces.

    Raises ``CheckpointError`` naming the bad file, so a resume never starts from a checkpoint
    that would load wrong.
    """
    checkpoint_dir = Path(checkpoint_dir)
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
    candidates = [run_dir / latest] if latest else []
    if fallback:
        candidates += [p for p in reversed(list_checkpoints(run_dir)) if p not in candidates]
    if not candidates:
        raise CheckpointError(
            f"{run_dir} has no checkpoint to resume from (no `latest` file and no {CHECKPOINTS}/step-*)"
        )
    problems = []
    for candidate in candidates:
        try:
            return check_checkpoint(candidate), problems
        except CheckpointError as exc:
            if not fallback:
                raise
            problems.append((candidate, str(exc)))
    raise CheckpointError(f"no loadable checkpoint in {run_dir}: " + "; ".join(m for _, m in problems))


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


# --- Metrics ------------------------------------------------------------------------------------


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON record to metrics.jsonl (a line written in one call, flushed)."""
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of metrics.jsonl (a torn last line from a killed process is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records after ``step`` (logged by a run killed after its last checkpoint) before resuming."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write_text(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
