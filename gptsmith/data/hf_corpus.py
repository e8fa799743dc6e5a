"""``hf:`` corpora: a Hugging Face hub dataset, or a local folder of data files, streamed record by
record through the optional ``datasets`` package (``hf:NAME``, ``hf:NAME:SPLIT``,
``hf:NAME:CONFIG:SPLIT``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from gptsmith.data.download import is_offline
from gptsmith.data.tokenizer_protocol import check_text
from gptsmith.errors import DataError


def hf_documents(spec: str, text_field: str) -> Iterator[str]:
    """The non-empty ``text_field`` values of ``hf:`` data set ``spec``, one record at a time."""
    try:
        import datasets
    except ImportError:
        message = f"{spec} needs the optional `datasets` package: pip install 'gptsmith[datasets]'"
        raise DataError(message) from None
    name, config, split = hf_parts(spec[3:])
    _check_one_format(Path(name).expanduser())
    if is_offline():  # GPTSMITH_OFFLINE: local data sets and the hub cache only
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # hub errors (offline, unknown name) come in many types
        message = f"cannot open Hugging Face dataset {name!r} ({exc}); check the name and the network"
        raise DataError(message) from None
    for record in dataset:
        if text_field not in record:
            raise DataError(f"{spec} has no {text_field!r} field (fields: {', '.join(record)})")
        if record[text_field]:
            yield check_text(record[text_field], f"{spec}: field {text_field!r}")


def _check_one_format(folder: Path) -> None:
    """A local ``hf:`` folder must hold one data format: ``datasets`` reads only one of them and
    would drop the other files without a word."""
    if not folder.is_dir():
        return
    kinds: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*")):
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv",
                ".txt": "text"}.get(path.suffix.lower())
        if kind and path.is_file():
            kinds.setdefault(kind, []).append(path.name)
    if len(kinds) > 1:
        found = "; ".join(f"{kind}: {', '.join(names[:3])}{'...' if len(names) > 3 else ''}"
                          for kind, names in kinds.items())
        raise DataError(f"hf:{folder} mixes data formats ({found}); the datasets library would read only "
                        "one of them: keep one format in the folder")


def hf_parts(spec: str) -> tuple[str, str | None, str]:
    """``NAME``, ``NAME:SPLIT`` or ``NAME:CONFIG:SPLIT`` as (name, config, split)."""
    parts = spec.split(":")
    if len(parts) > 3 or not all(parts):
        raise DataError(f"hf:{spec}: expected hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return parts[0], None, parts[1] if len(parts) == 2 else "train"
