"""Labelled texts for classification: reading CSV/TSV/JSONL, balancing and splitting.

This module owns the rules for classification data (the CLI and ``finetune_classifier`` both
come here):

- **Formats** by file extension: ``.csv``, ``.tsv``/``.tab`` (tab-separated, quotes are plain
  characters, as in the SMS spam file), ``.jsonl``/``.ndjson`` (one JSON object per line),
  ``.json`` (one JSON array of objects, or JSONL); any other extension is sniffed from the first
  line (a ``[`` means a JSON array, a ``{`` JSONL, a tab TSV, else CSV).
- **Columns** by name when the file has a header line (JSON keys always; a name is matched as
  written, ``"0"`` included, and one that two columns share is an error), by 0-based number
  with ``header=False``. A missing column is an error that names the columns that exist; the
  text and the label must be two different columns.
- **Rows**: a row with an empty text is skipped and counted; an empty label or a row that
  cannot be parsed is an error naming the line. Labels are strings (JSON numbers become
  their text, JSON booleans ``true``/``false``); the classes are the sorted distinct labels, so
  ids are reproducible.
- **Text**: UTF-8, a leading byte-order mark dropped; other bytes are an error naming the
  offset and the byte, with an ``iconv`` hint (``gptsmith.data.corpus.read_utf8``).
- **Balance** (``balance``): down-sample every class to the smallest one's count, as the book
  does for SMS spam. **Split** (``split``): stratified by class, 70/10/20 by default.
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gptsmith.data.text_files import read_utf8
from gptsmith.errors import ConfigError, DataError
from gptsmith.finetune.records import json_objects
from gptsmith.storage import as_path

DEFAULT_SPLIT = (0.7, 0.1, 0.2)


@dataclass
class LabelledTexts:
    """Texts with their string labels; ``skipped_empty`` rows had no text."""

    texts: list[str]
    labels: list[str]
    source: str = ""
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def classes(self) -> list[str]:
        """The distinct labels, sorted (their positions are the class ids)."""
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.labels).items()))

    def subset(self, indices: Sequence[int]) -> LabelledTexts:
        return LabelledTexts([self.texts[i] for i in indices], [self.labels[i] for i in indices], self.source)


@dataclass
class Splits:
    """Train, validation and test sets (validation or test may be empty)."""

    train: LabelledTexts
    val: LabelledTexts
    test: LabelledTexts
    notes: list[str] = field(default_factory=list)  # what was skipped, balanced, ...


def detect_format(path: Path) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``json`` from the extension, else from the file's start: a JSON
    array of objects, a JSON object per line, or a tab in the first line (TSV)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        start = handle.read(4096).lstrip()
    first_line = start.split("\n", 1)[0]
    if start.startswith("[") and (suffix == ".json" or start[1:].lstrip().startswith(("{", "]"))):
        return "json"  # a JSON array of objects (a CSV row may start with "[URGENT]")
    if start.startswith("{") or suffix == ".json":
        return "jsonl"
    return "tsv" if "\t" in first_line else "csv"


def _read_text(path: Path) -> str:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass a CSV, TSV or JSONL file")
    return read_utf8(path)  # a leading BOM dropped; other bytes: offset, byte and an iconv hint


def _column_index(column: str | int, header: list[str] | None, path: Path) -> int:
    """The position of ``column`` in a row: a header name, or a 0-based number without a header."""
    if header is None:
        try:
            index = int(column)
        except (TypeError, ValueError):
            index = -1
        if index < 0:
            raise ConfigError(
                f"{path} is read without a header line, so columns are numbers from 0: got {column!r} "
                "(pass e.g. --text-column 1 --label-column 0)"
            )
        return index
    name = str(column)  # a header may name its columns "0", "1" (pandas' to_csv of unnamed columns)
    if name in header:
        positions = [i for i, h in enumerate(header) if h == name]
        if len(positions) > 1:  # taking the first would read the wrong one half the time, silently
            where = ", ".join(map(str, positions))
            raise DataError(f"{path} has {len(positions)} columns named {name!r} (positions {where}, "
                            "0-based): rename one of them in the header line")
        return positions[0]
    raise DataError(
        f"{path} has no column {str(column)!r} (columns: {', '.join(repr(h) for h in header)}); "
        "pass --text-column/--label-column, or --no-header if the first line is data"
    )


def _read_delimited(path: Path, text: str, fmt: str, text_column: str | int, label_column: str | int,
                    header: bool) -> LabelledTexts:
    if fmt == "tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = iter(reader)
    names: list[str] | None = None
    try:
        if header:
            first = next(rows, None)
            if first is None:
                raise DataError(f"{path} is empty: no header line and no rows")
            names = [name.strip() for name in first]
        text_at = _column_index(text_column, names, path)
        label_at = _column_index(label_column, names, path)
        if text_at == label_at:
            _same_column(text_column, label_column)
        data = LabelledTexts([], [], str(path))
        for row in rows:
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            line = reader.line_num
            if max(text_at, label_at) >= len(row):
                raise DataError(
                    f"{path}, line {line}: {len(row)} field(s), but the text/label columns are "
                    f"{text_at} and {label_at} (0-based); is this the right delimiter ({fmt})?"
                )
            _add_row(data, row[text_at], row[label_at], path, line)
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: cannot parse the row ({exc})") from None
    return data


def _add_row(data: LabelledTexts, text: object, label: object, path: Path, where: int | str) -> None:
    where = f"line {where}" if isinstance(where, int) else where
    if label is None or isinstance(label, dict | list):
        raise DataError(f"{path}, {where}: the label must be a string, a number or a boolean, got {label!r}")
    label = (("true" if label else "false") if isinstance(label, bool) else str(label)).strip()
    if not label:
        raise DataError(f"{path}, {where}: empty label (every row needs one)")
    if text is None or (isinstance(text, str) and not text.strip()):
        data.skipped_empty += 1
        return
    if not isinstance(text, str):
        raise DataError(f"{path}, {where}: the text must be a string, got {text!r}")
    data.texts.append(text)
    data.labels.append(label)


def _same_column(text_column: str | int, label_column: str | int) -> None:
    raise ConfigError(f"--text-column {text_column} and --label-column {label_column} are the same column; "
                      "the label must be another column")


def _read_json(path: Path, text: str, text_column: str | int, label_column: str | int) -> LabelledTexts:
    if str(text_column) == str(label_column):
        _same_column(text_column, label_column)
    data = LabelledTexts([], [], str(path))
    for index, (record, line) in enumerate(json_objects(text, path)):
        where = f"line {line}" if line else f"record {index}"
        if not isinstance(record, dict):
            raise DataError(f"{path}, {where}: expected a JSON object, got {type(record).__name__}")
        for column in (text_column, label_column):
            if str(column) not in record:
                raise DataError(
                    f"{path}, {where}: no key {str(column)!r} (keys: "
                    f"{', '.join(repr(k) for k in record)}); pass --text-column/--label-column"
                )
        _add_row(data, record[str(text_column)], record[str(label_column)], path, where)
    return data


def read_labelled(
    path: str | Path,
    *,
    text_column: str | int = "text",
    label_column: str | int = "label",
    header: bool = True,
    fmt: str | None = None,
) -> LabelledTexts:
    """Read labelled texts from a CSV, TSV, JSONL or JSON file (see the module docstring for the rules).

    Raises ``DataError`` for an empty file, a missing column (naming those that exist) or a row
    that cannot be parsed (naming its line). Rows with an empty text are skipped and counted.
    """
    path = as_path(path, "the labelled data")
    text = _read_text(path)
    fmt = fmt or detect_format(path)
    if fmt not in ("csv", "tsv", "jsonl", "json"):
        raise ConfigError(f"unknown data format {fmt!r} (choose from csv, tsv, jsonl, json)")
    if not text.strip():
        raise DataError(f"{path} is empty (expected labelled rows of text)")
    if fmt in ("jsonl", "json"):
        data = _read_json(path, text, text_column, label_column)
    else:
        data = _read_delimited(path, text, fmt, text_column, label_column, header)
    if not data.texts:
        why = f" ({data.skipped_empty} row(s) with an empty text skipped)" if data.skipped_empty else ""
        raise DataError(f"{path} has no rows with a text and a label{why}")
    return data


def check_classes(data: LabelledTexts) -> list[str]:
    """The sorted classes of ``data``; fewer than two is a ``DataError``."""
    classes = data.classes()
    if len(classes) < 2:
        raise DataError(
            f"{data.source or 'the data'} has a single class ({classes[0]!r} in all {len(data)} rows); "
            "a classifier needs at least two (is --label-column the right column?)"
        )
    return classes


def check_labels_repeat(data: LabelledTexts) -> None:
    """Refuse a whole file in which no label occurs twice (10 rows or more): its label column is
    most likely a column of texts, and a classifier needs several texts per label."""
    if len(data) >= 10 and len(data.classes()) == len(data):
        raise DataError(
            f"every one of the {len(data)} rows of {data.source or 'the data'} has a label of its own; "
            "a classifier needs several texts per label (is --label-column the right column?)"
        )


def balance(data: LabelledTexts, seed: int = 0) -> LabelledTexts:
    """Down-sample every class to the size of the smallest, keeping the rows' order."""
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(data.labels):
        by_class.setdefault(label, []).append(index)
    smallest = min(len(rows) for rows in by_class.values())
    rng = random.Random(seed)
    keep = sorted(i for label in sorted(by_class) for i in rng.sample(by_class[label], smallest))
    return data.subset(keep)


def parse_split(value: str | Sequence[float]) -> tuple[float, float, float]:
    """``"70/10/20"``, ``"0.7,0.1,0.2"`` or a triple -> fractions of train/validation/test summing to 1."""
    if isinstance(value, str):
        parts = value.replace(",", "/").replace(":", "/").split("/")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
    else:
        numbers = [float(v) for v in value]
    if len(numbers) != 3 or any(n < 0 for n in numbers) or numbers[0] <= 0 or sum(numbers) <= 0:
        raise ConfigError(f"--split must be train/validation/test shares such as 70/10/20, got {value!r}")
    total = sum(numbers)
    return (numbers[0] / total, numbers[1] / total, numbers[2] / total)


def split(data: LabelledTexts, fractions: Sequence[float] = DEFAULT_SPLIT, seed: int = 0
          ) -> tuple[LabelledTexts, LabelledTexts, LabelledTexts]:
    """Shuffle and split ``data`` into train/validation/test by ``fractions``, stratified by class.

    Each class is cut in the same proportions (rounded), so a rare class appears in every
    part that has room for it; the parts are then shuffled.
    """
    train_share, val_share, _ = fractions
    rng = random.Random(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for label in data.classes():
        rows = [i for i, lab in enumerate(data.labels) if lab == label]
        rng.shuffle(rows)
        n_train = round(len(rows) * train_share)
        n_val = round(len(rows) * val_share)
        parts[0].extend(rows[:n_train])
        parts[1].extend(rows[n_train:n_train + n_val])
        parts[2].extend(rows[n_train + n_val:])
    for part in parts:
        rng.shuffle(part)
    return data.subset(parts[0]), data.subset(parts[1]), data.subset(parts[2])


def make_splits(
    data: LabelledTexts,
    *,
    val: LabelledTexts | None = None,
    test: LabelledTexts | None = None,
    fractions: Sequence[float] = DEFAULT_SPLIT,
    balance_classes: bool = False,
    seed: int = 0,
) -> Splits:
    """Train/validation/test sets: ``data`` (balanced first if asked) split by ``fractions``, except
    for parts given as their own files (``val``, ``test``), whose shares go to the others."""
    check_classes(data)
    check_labels_repeat(data)
    notes = []
    if balance_classes:
        before = len(data)
        data = balance(data, seed)
        notes.append(f"balanced by down-sampling: {before} -> {len(data)} rows ({data.counts()})")
    train_share, val_share, test_share = fractions
    shares = (train_share, 0.0 if val is not None else val_share, 0.0 if test is not None else test_share)
    train, val_part, test_part = split(data, parse_split(shares), seed)
    splits = Splits(train, val if val is not None else val_part, test if test is not None else test_part,
                    notes)
    if not splits.train.texts:
        raise DataError(f"{data.source}: no rows left for training after the split "
                        "(add rows or change --split)")
    check_classes(splits.train)
    return splits
