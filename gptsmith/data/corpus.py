"""Corpora: where training text comes from, read as a stream of documents.

``resolve_corpus(name_or_path)`` turns what a user typed into a ``CorpusSource``:

- ``"builtin"``: the English documentation that ships inside CPython (``pydoc_data.topics``, about
  80 documents, 0.46 M characters, ~100 k GPT-2 tokens). Every Python has it, so the main job runs
  offline on a fresh machine; it is real English prose about one subject, which a small model
  learns visibly within minutes.
- a named corpus (``"the-verdict"``, ``"tinyshakespeare"``, or any ``NAME`` with a ``NAME.txt``)
  looked up in $GPTSMITH_DATA_DIR, ``../shared/data`` beside the checkout, and the user cache;
- a ``.txt``/``.md`` file, a directory of them (recursively), or a glob; a file named on its
  own or by a glob is text whatever its suffix (``.rst``, ``README``), except ``.json``;
- ``.jsonl`` (one JSON object per line with a ``text`` field) and ``.parquet`` files (a ``text``
  column, read in record batches so the corpus may be larger than memory);
- ``"hf:NAME"`` or ``"hf:NAME:SPLIT"``: a Hugging Face hub dataset, streamed through the optional
  ``datasets`` package.

Text must be UTF-8: other bytes are an error naming the file and the byte offset (a model should
not silently learn U+FFFD). A text file or record holding ``<|endoftext|>`` is split there into documents.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import platform
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from gptsmith.data.download import cache_dir
from gptsmith.data.hf_corpus import hf_documents, hf_parts
from gptsmith.data.text_files import (
    jsonl_documents,
    parquet_documents,
    read_utf8,
    split_at_endoftext,
    text_documents,
)
from gptsmith.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
RECORD_KINDS = ("jsonl", "parquet", "hf")  # corpora of records, whose text is a field (text_field)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the gptsmith package


def builtin_documents() -> list[str]:
    """The built-in corpus: CPython's documentation topics (``pydoc_data.topics``), one per document."""
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics)]


@dataclass(frozen=True)
class CorpusSource:
    """A resolved corpus: what kind it is and where its documents come from."""

    name: str  # what the user asked for, for messages and metadata
    kind: str  # "builtin" | "text" | "jsonl" | "parquet" | "hf"
    paths: tuple[Path, ...] = ()
    text_field: str = "text"

    def documents(self) -> Iterator[str]:
        """Yield the corpus's documents one by one (never the whole corpus at once for big formats)."""
        if self.kind == "builtin":
            yield from builtin_documents()
        elif self.kind == "text":
            # In a directory or glob an empty file is skipped (with a warning); alone it is an error.
            empty = []
            for path in self.paths:
                text = read_utf8(path)
                if not text.strip() and len(self.paths) > 1:
                    empty.append(path)
                    continue
                yield from text_documents(path, text)
            if empty and len(empty) == len(self.paths):
                raise DataError(f"every file of {self.name} is empty ({len(empty)} files): no text")
            if empty:
                shown = ", ".join(str(p) for p in empty[:3]) + (" ..." if len(empty) > 3 else "")
                warnings.warn(f"skipped {len(empty)} empty file(s) of {self.name}: {shown}", stacklevel=2)
        elif self.kind in RECORD_KINDS:
            # A record that holds <|endoftext|> is split there too, as a text file is: each document
            # boundary gets one separator ("story.<|endoftext|>" then the next record gave two).
            for record in self._records():
                yield from split_at_endoftext(record)
        else:  # pragma: no cover - CorpusSource is built by resolve_corpus
            raise DataError(f"unknown corpus kind {self.kind!r}")

    def _records(self) -> Iterator[str]:
        """The texts of a .jsonl, .parquet or hf: corpus, record by record."""
        if self.kind == "hf":
            yield from hf_documents(self.name, self.text_field)
        for path in self.paths:
            reader = jsonl_documents if self.kind == "jsonl" else parquet_documents
            yield from reader(path, self.text_field)

    def total_bytes(self) -> int | None:
        """Bytes of text (for progress bars); None when unknown without reading it all.

        Text files hold just their text; JSONL and Parquet files hold more (keys, escapes,
        compression), and hub datasets are streamed, so those have no known total.
        """
        if self.kind == "builtin":
            return sum(len(d.encode("utf-8")) for d in builtin_documents())
        if self.kind in RECORD_KINDS:
            return None
        return sum(p.stat().st_size for p in self.paths)

    def fingerprint(self) -> str:
        """A short hash that changes when the corpus does (paths, sizes, modification times).

        ``prepare_corpus`` reuses a token shard whose fingerprint matches, without reading the text.
        """
        digest = hashlib.sha256(f"{self.kind}|{self.text_field}".encode())
        if self.kind == "builtin":
            digest.update(platform.python_version().encode())
            for doc in builtin_documents():
                digest.update(doc.encode("utf-8"))
        elif self.kind == "hf":
            digest.update(self.name.encode())
            # A local folder or file of data (hf:./my-parquet) changes on disk; a hub name is
            # taken as fixed (`gptsmith prepare --force` fetches it again).
            local = Path(hf_parts(self.name[3:])[0]).expanduser()
            if local.exists():
                files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
                for path in files:
                    stat = path.stat()
                    digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        for path in self.paths:
            stat = path.stat()
            digest.update(f"|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]


def named_corpus_dirs() -> list[Path]:
    """Where named corpora are looked up, in order."""
    dirs = []
    if os.environ.get("GPTSMITH_DATA_DIR"):
        dirs.append(Path(os.environ["GPTSMITH_DATA_DIR"]).expanduser())
    if os.environ.get("GPTSMITH_SHARED_DATA"):
        dirs.append(Path(os.environ["GPTSMITH_SHARED_DATA"]).expanduser())
    dirs.append(PACKAGE_ROOT.parent.parent / "shared" / "data")  # ../shared/data beside the checkout
    dirs.append(cache_dir() / "data")  # filled by `gptsmith download NAME`
    return dirs


def _find_named(name: str) -> Path | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        return None
    for directory in named_corpus_dirs():
        candidate = directory / f"{name}.txt"
        if candidate.is_file():
            return candidate
    return None


def resolve_corpus(name_or_path: str | Path, text_field: str = "text") -> CorpusSource:
    """Turn a corpus name, path, directory, glob or ``hf:NAME`` into a ``CorpusSource``.

    Raises ``DataError`` for a missing path, a directory without text files, or an unknown format.
    ``text_field`` names the text of records (.jsonl, .parquet, hf:); plain text has none, so another
    field than the default is a warning there (never silently ignored) and not part of its fingerprint.
    """
    if isinstance(name_or_path, CorpusSource):
        return name_or_path
    source = _resolve_corpus(str(name_or_path), text_field)
    if source.kind not in RECORD_KINDS and text_field != "text":
        warnings.warn(f"the text field {text_field!r} is not used: {source.name} is plain text, not "
                      ".jsonl/.parquet/hf: records", stacklevel=2)
        source = replace(source, text_field="text")
    return source


def _resolve_corpus(spec: str, text_field: str) -> CorpusSource:
    if not spec.strip():  # Path("") is the current directory: never read that by accident
        raise DataError("the corpus name is empty (pass a corpus name or path, e.g. builtin, the-verdict "
                        "or notes.txt)")
    if spec == "builtin":
        return CorpusSource("builtin", "builtin", (), text_field)
    if spec.startswith("hf:"):
        if len(spec) <= 3:
            raise DataError("hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
        return CorpusSource(spec, "hf", (), text_field)

    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?[") and not path.exists():  # (a file may be called "br[ack]et.txt")
        files = glob_files(str(path))
        if not files:
            raise DataError(f"glob {spec!r} matches no files (check the pattern and the directory)")
        return _source_from_files(spec, files, text_field)
    if path.is_dir():
        files = directory_text_files(path)
        if not files:
            raise DataError(f"directory {path} holds no .txt or .md files ({_what_to_pass_instead(path)})")
        return _source_from_files(spec, files, text_field)
    if path.is_file():
        return _source_from_files(spec, [path], text_field)
    named = _find_named(spec)
    if named is not None:
        return CorpusSource(spec, "text", (named,), text_field)
    where = ", ".join(str(d) for d in named_corpus_dirs())
    raise DataError(
        f"corpus not found: {spec} (pass an existing .txt/.md/.jsonl/.parquet file, a directory, a glob, "
        f"'builtin', 'hf:NAME', or a named corpus such as the-verdict found in: {where}; "
        "`gptsmith download the-verdict` fetches one when online)"
    )


def directory_text_files(directory: Path) -> list[Path]:
    """The ``.txt``/``.md`` files under ``directory``, sorted, through symlinked folders too (as a
    glob's ``**`` goes; ``Path.rglob`` would drop their files without a word), and, as a glob's
    ``**/*.txt``, none with a hidden name below it: what ``.git/``, Jupyter's ``.ipynb_checkpoints/``
    (a second copy of each note) or a hidden draft holds is not the corpus the user sees."""
    return sorted(p for p in tree_files(directory) if p.suffix.lower() in TEXT_SUFFIXES
                  and not any(name.startswith(".") for name in p.relative_to(directory).parts))


def tree_files(top: Path) -> Iterator[Path]:
    """Every file under ``top``, folders in name order, into symlinked folders too, but never into
    a folder already on the way down from ``top`` (a link back up), so a loop ends at once. A folder
    reached twice by other links is listed twice; ``_source_from_files`` reads each file once."""
    def walk(folder: Path, above: frozenset[str]) -> Iterator[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:  # an unreadable folder is skipped, as os.walk and glob do
            return
        for entry in entries:
            path = Path(folder, entry.name)
            if entry.is_dir():  # (a link to a folder too)
                real = os.path.realpath(path)
                if real not in above:
                    yield from walk(path, above | {real})
            elif entry.is_file():
                yield path

    yield from walk(top, frozenset({os.path.realpath(top)}))


def glob_files(pattern: str) -> list[Path]:
    """The files ``pattern`` matches, sorted, as ``glob.glob(pattern, recursive=True)`` finds them,
    but a ``**`` that meets a symlink loop (``notes/loop -> notes``) walks it once instead of ~40
    times over (or, with two such links, for ever)."""
    parts = Path(pattern).parts
    if "**" not in parts:  # no recursion, so no loop to walk
        return sorted(p for p in map(Path, glob.glob(pattern)) if p.is_file())
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    base = Path(*parts[:fixed]) if fixed else Path()
    return sorted(p for p in tree_files(base) if _parts_match(parts[fixed:], p.parts[len(base.parts):]))


def _parts_match(pattern: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Whether the path ``names`` (folders, then the file) matches ``pattern``'s parts as a glob's:
    ``**`` is any number of folders, a wildcard matches within one name, and neither matches a
    hidden name (a leading ``.``) unless the pattern's part starts with ``.`` too."""
    if not pattern:
        return not names
    if pattern[0] == "**":
        return any(_parts_match(pattern[1:], names[skip:]) for skip in range(len(names) + 1)
                   if not any(name.startswith(".") for name in names[:skip]))
    if not names or (names[0].startswith(".") and not pattern[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], pattern[0]) and _parts_match(pattern[1:], names[1:])


def same_corpus(a: str, b: str) -> bool:
    """Whether corpus specs ``a`` and ``b`` name the same corpus: the same file, directory or glob
    however it is spelt (``notes`` and ``./notes/``), else the same name (``builtin``, ``hf:NAME``,
    a named corpus such as ``the-verdict``)."""
    return _corpus_identity(a) == _corpus_identity(b)


def corpus_location(spec: str) -> str:
    """``spec`` as any working directory reads it: an existing relative path, glob or ``hf:`` folder
    made absolute, a name (``builtin``, ``hf:NAME``, ``the-verdict``) as it is. A run records it, so it
    can be resumed and evaluated from elsewhere."""
    kind, key = _corpus_identity(spec)
    return spec if kind == "name" else key


def _corpus_identity(spec: str) -> tuple[str, str]:
    """What ``resolve_corpus`` would read for ``spec``, as a comparable key (no files are read)."""
    spec = str(spec)
    if spec.startswith("hf:"):  # a local folder of data (hf:./stories) is the same however it is spelt
        name, colon, rest = spec[3:].partition(":")
        local = Path(name).expanduser()
        return ("hf", f"hf:{local.resolve()}{colon}{rest}") if name and local.exists() else ("name", spec)
    if spec == "builtin":
        return ("name", spec)
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?[") and not path.exists():  # (a file may be called "br[ack]et.txt")
        return ("glob", os.path.abspath(path))
    if path.exists():  # an existing path wins over a named corpus, as in resolve_corpus
        return ("path", str(path.resolve()))
    return ("name", spec)


def _source_from_files(spec: str, files: list[Path], text_field: str) -> CorpusSource:
    # Each file once, at its first name: a file and a link to it (or one folder reached by two
    # links) would put the same text in the corpus twice.
    unique: dict[str, Path] = {}
    for path in files:
        unique.setdefault(os.path.realpath(path), path)
    files = list(unique.values())
    kinds = set()
    for path in files:
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            kinds.add("text")
        elif suffix == ".jsonl":
            kinds.add("jsonl")
        elif suffix == ".parquet":
            kinds.add("parquet")
        elif suffix == ".json":  # as text it would train on the JSON's brackets and quotes
            raise DataError(f"{path}: a .json corpus is not read (write one {{\"text\": ...}} object per "
                            "line as .jsonl, or pass the plain text as .txt)")
        else:  # a file named on its own (or by a glob) is text whatever its suffix: .rst, .csv, README
            kinds.add("text")
    if len(kinds) > 1:
        raise DataError(f"{spec} mixes formats ({', '.join(sorted(kinds))}); prepare one format at a time")
    return CorpusSource(spec, kinds.pop(), tuple(files), text_field)


def _what_to_pass_instead(directory: Path) -> str:
    """The fix for a directory without corpus text: the corpus a token shard there was made from."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("format") == "gptsmith-token-shard":
        return (f"it is a token shard made by `gptsmith prepare`: pass the corpus it was made from, "
                f"{meta.get('source', 'its source')} (it is tokenized once into the cache)")
    return "put the corpus text there"
