"""The run's log: ``metrics.jsonl`` (one JSON record per logged step or evaluation) and
``samples.txt`` (each sample under a ``--- step N (tokens seen T)`` header).

Records are appended a line at a time, so a killed run loses at most its torn last line, which
``read_metrics`` skips. On resume both files are cut back to the checkpoint's step
(``truncate_metrics``, ``truncate_samples``), so the resumed run's records follow in order.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gptsmith.storage import atomic_write_bytes, atomic_write_text
from gptsmith.train.checkpointing import storage_errors

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"


# --- Metrics ------------------------------------------------------------------------------------


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON record to metrics.jsonl (a line written in one call, flushed)."""
    path = Path(run_dir) / METRICS_FILE
    with storage_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of metrics.jsonl: JSON objects whose ``step`` is a number.

    Anything else is skipped rather than fatal: a torn last line from a killed process, bytes
    that are not UTF-8 or lines that are not such objects (a damaged file still resumes and plots
    from the records it has).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int | float) and not isinstance(step, bool):
            records.append(record)
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records after ``step`` (logged by a run killed after its last checkpoint) before resuming."""
    kept = [r for r in read_metrics(run_dir) if r["step"] <= step]
    path = Path(run_dir) / METRICS_FILE
    with storage_errors(path):
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


# --- Samples ------------------------------------------------------------------------------------

SAMPLE_HEADER = re.compile(r"^--- step (\d+) \(tokens seen [\d,]+\)$")


def append_sample(run_dir: Path, step: int, tokens_seen: int, text: str) -> None:
    """Append one sample, under a ``--- step N (tokens seen T)`` header, to samples.txt."""
    path = Path(run_dir) / SAMPLES_FILE
    with storage_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(f"--- step {step} (tokens seen {tokens_seen:,})\n{text}\n")


def truncate_samples(run_dir: Path, step: int) -> None:
    """Drop the samples taken after ``step`` (by a run stopped after its last checkpoint), as
    ``truncate_metrics`` drops their metrics, so the resumed run's samples follow in order."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.is_file():
        return
    # Bytes, split at "\n" only: text mode would turn a sample's "\r" into "\n", and a torn last
    # line (a kill in the middle of a character) is not UTF-8. What is kept stays byte for byte.
    kept, keeping = [], True
    with storage_errors(path), path.open("rb") as handle:
        for line in handle:
            header = SAMPLE_HEADER.match(line.rstrip(b"\n").decode("utf-8", errors="replace"))
            if header:
                keeping = int(header.group(1)) <= step
            if keeping:
                kept.append(line)
    with storage_errors(path):
        atomic_write_bytes(path, b"".join(kept))
