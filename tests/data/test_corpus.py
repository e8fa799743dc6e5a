"""Corpora: files, directories, globs, JSONL/parquet/HF data sets, safe chunks, and their clear errors."""

from __future__ import annotations

import gzip
import json
import sys
import types

import pytest

from gptsmith.data.corpus import builtin_documents, resolve_corpus
from gptsmith.data.shards import prepare_corpus
from gptsmith.data.text_files import safe_chunks, text_lines
from gptsmith.errors import DataError


def test_builtin_corpus_is_cpython_documentation():
    docs = builtin_documents()
    assert len(docs) > 50 and all(docs)
    source = resolve_corpus("builtin")
    assert source.kind == "builtin" and list(source.documents()) == docs


def test_text_files_directories_and_globs(tmp_path):
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second <|endoftext|>\nthird")
    (tmp_path / "skip.bin").write_bytes(b"\x00")
    assert list(resolve_corpus(tmp_path).documents()) == ["first file", "second ", "third"]
    assert list(resolve_corpus(str(tmp_path / "*.txt")).documents()) == ["first file"]
    (tmp_path / "notes.rst").write_text("any suffix")  # named on its own: text, whatever its suffix
    (tmp_path / "README").write_text("no suffix")
    assert list(resolve_corpus(str(tmp_path / "notes.rst")).documents()) == ["any suffix"]
    assert list(resolve_corpus(str(tmp_path / "README")).documents()) == ["no suffix"]
    assert "any suffix" not in list(resolve_corpus(tmp_path).documents())  # a directory: .txt/.md only
    (tmp_path / "weights.bin").write_bytes(b"\x80\x00\x01binary")
    with pytest.raises(DataError, match=r"weights.bin is not UTF-8: .*\(it looks like a binary file"):
        list(resolve_corpus(str(tmp_path / "weights.bin")).documents())
    (tmp_path / "data.json").write_text('[{"text": "x"}]')
    with pytest.raises(DataError, match=r"data.json: a .json corpus is not read \(write one"):
        resolve_corpus(str(tmp_path / "data.json"))
    (tmp_path / "br[ack]et.txt").write_text("a file, not a glob")  # an existing path wins
    assert list(resolve_corpus(str(tmp_path / "br[ack]et.txt")).documents()) == ["a file, not a glob"]


def test_a_windows_file_splits_into_the_same_documents_as_a_unix_one(tmp_path):
    # The line break around <|endoftext|> goes with it, "\r\n" as much as "\n": no stray "\r".
    (tmp_path / "unix.txt").write_bytes(b"first doc\n<|endoftext|>\nsecond\r\ndoc\n")
    (tmp_path / "windows.txt").write_bytes(b"first doc\r\n<|endoftext|>\r\nsecond\r\ndoc\r\n")
    assert list(resolve_corpus(tmp_path / "unix.txt").documents()) == ["first doc", "second\r\ndoc"]
    assert list(resolve_corpus(tmp_path / "windows.txt").documents()) == ["first doc", "second\r\ndoc"]


def test_a_directory_corpus_follows_symlinked_folders_once(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "linked.txt").write_text("behind a link")
    (tmp_path / "corpus" / "own").mkdir(parents=True)
    (tmp_path / "corpus" / "own" / "a.txt").write_text("own text")
    (tmp_path / "corpus" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "corpus" / "own" / "up").symlink_to(tmp_path / "corpus", target_is_directory=True)  # a loop
    source = resolve_corpus(tmp_path / "corpus")
    assert list(source.documents()) == ["behind a link", "own text"]  # as the glob corpus/**/*.txt reads


@pytest.mark.parametrize("loops", [1, 2])
def test_a_glob_through_symlink_loops_reads_each_file_once(tmp_path, loops):
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "a.txt").write_text("first")
    (notes / "sub" / "b.txt").write_text("second")
    (notes / "alias.txt").symlink_to(notes / "a.txt")  # a second name for the same file
    for i in range(loops):  # glob.glob walks one loop ~40 times over; two, for ever
        (notes / "sub" / f"loop{i}").symlink_to(notes, target_is_directory=True)
    source = resolve_corpus(str(notes / "**" / "*.txt"))
    assert source.paths == (notes / "a.txt", notes / "sub" / "b.txt")  # sorted, each at its first name
    assert list(source.documents()) == ["first", "second"]
    assert resolve_corpus(notes).paths == source.paths  # the directory corpus alike
    assert resolve_corpus(str(notes / "*" / "*.txt")).paths == (notes / "sub" / "b.txt",)


def test_a_glob_keeps_glob_rules_for_hidden_names_and_folders(tmp_path):
    (tmp_path / "a" / ".drafts").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / ".drafts" / "d.txt").write_text("hidden folder")
    (tmp_path / "a" / ".e.txt").write_text("hidden file")
    (tmp_path / "a" / "b" / "c" / "f.txt").write_text("deep")
    (tmp_path / "a" / "b" / "g.md").write_text("markdown")
    names = lambda spec: [p.relative_to(tmp_path).as_posix() for p in resolve_corpus(spec).paths]  # noqa: E731
    assert names(str(tmp_path / "a" / "**" / "*.txt")) == ["a/b/c/f.txt"]  # as glob: no hidden names
    assert names(str(tmp_path / "a" / "**" / ".drafts" / "*")) == ["a/.drafts/d.txt"]
    assert names(str(tmp_path / "**" / "b" / "**")) == ["a/b/c/f.txt", "a/b/g.md"]


def test_a_directory_skips_hidden_files_and_folders_as_a_glob_does(tmp_path):
    """.git/, Jupyter's .ipynb_checkpoints/ (a second copy of each note) and hidden drafts were read."""
    notes = tmp_path / ".notes"  # the directory named may itself be hidden
    for folder in (".git", ".ipynb_checkpoints", "sub"):
        (notes / folder).mkdir(parents=True)
    (notes / "a.txt").write_text("the note")
    (notes / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("the note")
    (notes / ".git" / "description.txt").write_text("Unnamed repository")
    (notes / "sub" / ".draft.md").write_text("not yet")
    (notes / "sub" / "b.md").write_text("another note")
    assert list(resolve_corpus(notes).documents()) == ["the note", "another note"]
    assert resolve_corpus(notes).paths == resolve_corpus(str(notes / "**" / "*.*")).paths
    checkpoints = notes / ".ipynb_checkpoints"  # named itself, a hidden folder is read
    assert resolve_corpus(checkpoints).paths == (checkpoints / "a-checkpoint.txt",)


def test_named_corpus_from_data_dir(tmp_path, monkeypatch):
    (tmp_path / "mycorpus.txt").write_text("hello")
    monkeypatch.setenv("GPTSMITH_DATA_DIR", str(tmp_path))
    assert resolve_corpus("mycorpus").paths == (tmp_path / "mycorpus.txt",)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="corpus not found: .*nothing.txt"):
        resolve_corpus(str(tmp_path / "nothing.txt"))


def test_an_empty_file_in_a_directory_is_skipped_with_a_warning(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("hello there")
    (tmp_path / "d" / "b.txt").write_text(" \n")
    with pytest.warns(UserWarning, match=r"skipped 1 empty file\(s\) of .*b.txt"):
        assert list(resolve_corpus(tmp_path / "d").documents()) == ["hello there"]
    (tmp_path / "d" / "a.txt").write_text("")
    with pytest.raises(DataError, match=r"every file of .* is empty \(2 files\)"):
        list(resolve_corpus(tmp_path / "d").documents())


def test_empty_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="empty.txt is empty"):
        list(resolve_corpus(tmp_path / "empty.txt").documents())


def test_directory_without_text_files(tmp_path):
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(DataError, match="holds no .txt or .md files"):
        resolve_corpus(tmp_path)


def test_a_token_shard_given_as_a_corpus_names_the_corpus_it_came_from(tmp_path, word_tokenizer):
    (tmp_path / "corpus.txt").write_text("alpha beta gamma")
    prepare_corpus(tmp_path / "corpus.txt", tokenizer=word_tokenizer, out_dir=tmp_path / "shard")
    with pytest.raises(DataError, match=r"shard holds no .txt or .md files \(it is a token shard made by "
                       r"`gptsmith prepare`: pass the corpus it was made from, .*corpus.txt \(it is"):
        resolve_corpus(tmp_path / "shard")


def test_non_utf8_bytes_name_file_and_offset(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8: byte 0xe9 at offset 3 .*iconv -f latin1"):
        list(resolve_corpus(tmp_path / "latin1.txt").documents())
    (tmp_path / "utf16.txt").write_bytes("café".encode("utf-16"))  # with its byte-order mark
    with pytest.raises(DataError, match=r"utf16.txt is not UTF-8: .*UTF-16 byte-order mark.*iconv -f utf-16"):
        list(resolve_corpus(tmp_path / "utf16.txt").documents())
    # A byte-order mark is dropped, and offsets still count from the start of the file.
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhi caf\xe9")
    with pytest.raises(DataError, match=r"bom.txt is not UTF-8: byte 0xe9 at offset 9"):
        list(resolve_corpus(tmp_path / "bom.txt").documents())
    (tmp_path / "bom-ok.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert list(resolve_corpus(tmp_path / "bom-ok.txt").documents()) == ["hello"]


def test_nul_bytes_are_refused_and_utf16_without_a_byte_order_mark_is_named(tmp_path):
    """A NUL is valid UTF-8 but never text: UTF-16 without a BOM was read as "H\\0e\\0l\\0..." garbage."""
    text = "Hello world, a plain English line.\n" * 5
    (tmp_path / "le.txt").write_bytes(text.encode("utf-16-le"))
    with pytest.raises(DataError, match=r"le.txt is not text: a NUL byte at offset 1 .*UTF-16 .*without a "
                       r"byte-order mark.*iconv -f utf-16le"):
        list(resolve_corpus(tmp_path / "le.txt").documents())
    (tmp_path / "be.txt").write_bytes(text.encode("utf-16-be"))
    with pytest.raises(DataError, match=r"offset 0 .*iconv -f utf-16be"):
        list(resolve_corpus(tmp_path / "be.txt").documents())
    (tmp_path / "stray.txt").write_bytes(text.encode() + b"\0" + text.encode())
    with pytest.raises(DataError, match=r"stray.txt is not text: a NUL byte at offset 175 \(remove the NUL"):
        list(resolve_corpus(tmp_path / "stray.txt").documents())
    # JSONL: json.loads read the bytes of a UTF-16 line as UTF-16 (big-endian: garbage documents;
    # little-endian: a UnicodeDecodeError traceback at the line's "\n").
    lines = "".join(json.dumps({"text": f"story {i}"}) + "\n" for i in range(3))
    for order in ("le", "be"):
        (tmp_path / f"{order}.jsonl").write_bytes(lines.encode(f"utf-16-{order}"))
        with pytest.raises(DataError, match=rf"{order}.jsonl:1 is not text: a NUL byte at offset \d of the "
                           rf"line .*iconv -f utf-16{order}"):
            list(resolve_corpus(tmp_path / f"{order}.jsonl").documents())
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode())  # a UTF-8 BOM is still fine
    assert list(resolve_corpus(tmp_path / "bom.jsonl").documents()) == ["story 0", "story 1", "story 2"]


def test_the_conversion_hint_fits_the_bytes(tmp_path):
    def error(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as info:
            list(resolve_corpus(tmp_path / name).documents())
        return str(info.value)

    # Windows' curly quotes are Latin-1 control codes: converting from Latin-1 would keep them so.
    assert "iconv -f cp1252 -t utf-8" in error("win.txt", "\u201cquoted\u201d caf\u00e9".encode("cp1252"))
    assert "iconv -f latin1 -t utf-8" in error("latin.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"))
    # One broken byte in UTF-8 text: converting all of it from Latin-1 would garble its "é"s.
    broken = "caf\u00e9 na\u00efve cr\u00e8me ".encode() + b"\xff" + "r\u00e9sum\u00e9".encode()
    assert "the rest of it is UTF-8" in error("broken.txt", broken)
    assert "it is gzip-compressed: decompress it first" in error("c.txt.gz", gzip.compress(b"some text"))


def test_a_record_holding_endoftext_is_split_so_each_boundary_gets_one(tmp_path, word_tokenizer):
    records = ["alpha beta.<|endoftext|>", "gamma<|endoftext|>\r\ndelta", "  <|endoftext|>", "epsilon"]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in records))
    assert list(resolve_corpus(tmp_path / "c.jsonl").documents()) == [
        "alpha beta.", "gamma", "delta", "epsilon"]
    shard = prepare_corpus(tmp_path / "c.jsonl", tokenizer=word_tokenizer, out_dir=tmp_path / "shard")
    ids = [int(i) for i in shard.tokens]
    eot = word_tokenizer.eot_id
    assert ids.count(eot) == 3 and [ids[i - 1] for i in shard.doc_starts[1:]] == [eot] * 3


def test_jsonl_corpus_and_its_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    assert list(resolve_corpus(good).documents()) == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "one"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        list(resolve_corpus(tmp_path / "bad.jsonl").documents())
    (tmp_path / "field.jsonl").write_text('{"body": "one"}\n')
    with pytest.raises(DataError, match=r"field.jsonl:1: no field 'text' \(found: body; .* --text-field\)"):
        list(resolve_corpus(tmp_path / "field.jsonl").documents())
    assert list(resolve_corpus(tmp_path / "field.jsonl", text_field="body").documents()) == ["one"]
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "one"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:2 is not UTF-8: byte 0xe9 at offset 13 of the line"):
        list(resolve_corpus(tmp_path / "latin.jsonl").documents())
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n{"text": "  \\n "}\n{"text": null}\n')
    with pytest.raises(DataError, match=r"blank.jsonl has 3 line\(s\) but every 'text' is blank"):
        list(resolve_corpus(tmp_path / "blank.jsonl").documents())
    # A null text is a record without text, skipped as an empty one (and as a null Parquet cell): it
    # stopped the whole corpus with "holds NoneType values, not text".
    (tmp_path / "null.jsonl").write_text('{"text": "one"}\n{"text": null}\n{"text": "two"}\n')
    assert list(resolve_corpus(tmp_path / "null.jsonl").documents()) == ["one", "two"]


def test_a_lone_surrogate_escape_in_jsonl_becomes_the_replacement_character(tmp_path, word_tokenizer):
    """JSON allows "\\ud800"; UTF-8 cannot hold it: it reads as U+FFFD, as tiktoken encodes it."""
    path = tmp_path / "surrogate.jsonl"
    path.write_text('{"text": "a\\ud800b \\ud83d\\ude00"}\n{"text": "\\udfff"}\n')  # (a valid pair too)
    assert list(resolve_corpus(path).documents()) == ["a\ufffdb \U0001F600", "\ufffd"]
    shard = prepare_corpus(path, tokenizer=word_tokenizer, out_dir=tmp_path / "shard")  # was a traceback
    assert len(shard) > 0


def test_parquet_corpus_streams_the_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [f"document {i}" for i in range(2500)]
    table = pa.table({"id": list(range(2500)), "text": texts})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=700)
    assert list(resolve_corpus(tmp_path / "a.parquet").documents()) == texts
    with pytest.raises(DataError, match=r"no 'body' column \(columns: id, text\)"):
        list(resolve_corpus(tmp_path / "a.parquet", text_field="body").documents())
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        list(resolve_corpus(tmp_path / "fake.parquet").documents())


def test_hf_datasets_through_the_optional_package(monkeypatch):
    calls = {}

    def load_dataset(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return iter([{"text": "a"}, {"text": ""}, {"text": "b"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(resolve_corpus("hf:someone/stories:validation").documents()) == ["a", "b"]
    assert calls == {"name": "someone/stories", "config": None, "split": "validation", "streaming": True}
    list(resolve_corpus("hf:wikitext:wikitext-2-raw-v1:test").documents())
    assert calls["name"] == "wikitext" and calls["config"] == "wikitext-2-raw-v1" and calls["split"] == "test"
    list(resolve_corpus("hf:someone/stories").documents())
    assert calls["split"] == "train" and calls["config"] is None
    with pytest.raises(DataError, match="expected hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT"):
        list(resolve_corpus("hf:a:b:c:d").documents())
    monkeypatch.setitem(sys.modules, "datasets", None)  # import now fails
    with pytest.raises(DataError, match=r"needs the optional `datasets` package"):
        list(resolve_corpus("hf:someone/stories").documents())


def test_hf_dataset_from_local_parquet_files(tmp_path, word_tokenizer):
    # The real `datasets` package streaming a folder of Parquet files, as it streams a hub dataset.
    pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["alpha beta.", "gamma, delta"]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"text": ["epsilon zeta"]}), folder / "part-1.parquet")
    spec = f"hf:{folder}"
    assert sorted(resolve_corpus(spec).documents()) == ["alpha beta.", "epsilon zeta", "gamma, delta"]
    shard = prepare_corpus(spec, tokenizer=word_tokenizer, out_dir=tmp_path / "shard")
    assert shard.n_documents == 3 and not shard.reused
    assert prepare_corpus(spec, tokenizer=word_tokenizer, out_dir=tmp_path / "shard").reused
    # Changing the files behind a local hf: path makes a new shard, never a stale one.
    pq.write_table(pa.table({"text": ["theta eta", "alpha"]}), folder / "part-1.parquet")
    changed = prepare_corpus(spec, tokenizer=word_tokenizer, out_dir=tmp_path / "shard")
    assert not changed.reused and changed.n_documents == 4
    # A second format beside them would be dropped by `datasets` without a word: refused instead.
    (folder / "more.jsonl").write_text('{"text": "iota"}\n')
    with pytest.raises(DataError, match=r"mixes data formats \(json: more.jsonl; parquet: part-0.parquet, "
                       r"part-1.parquet\); the datasets library would read only one"):
        list(resolve_corpus(spec).documents())


def test_text_fields_must_hold_text(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"ints.parquet: column 'text' holds int values, not text"):
        list(resolve_corpus(tmp_path / "ints.parquet").documents())
    (tmp_path / "num.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(DataError, match=r"num.jsonl:1: field 'text' holds int values, not text"):
        list(resolve_corpus(tmp_path / "num.jsonl").documents())


def test_safe_chunks_give_the_same_ids_as_the_whole_text(gpt2_tokenizer, shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    pieces = safe_chunks(text, target_chars=5_000)
    assert len(pieces) > 30 and "".join(pieces) == text
    assert sum(gpt2_tokenizer.encode_batch(pieces), []) == gpt2_tokenizer.encode(text)


@pytest.mark.parametrize("line_end", ["\r\n", "\r"], ids=["crlf", "cr"])
def test_windows_and_old_mac_text_splits_for_parallel_tokenization(gpt2_tokenizer, shared_data, tmp_path,
                                                                    line_end):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:300_000].replace("\n", line_end)
    pieces = safe_chunks(text, target_chars=5_000)
    assert len(pieces) > 30 and "".join(pieces) == text  # split as often as the "\n" text is
    assert sum(gpt2_tokenizer.encode_batch(pieces), []) == gpt2_tokenizer.encode(text)
    (tmp_path / "play.txt").write_bytes(text.encode("utf-8"))  # a shard, tokenized on two threads
    shard = prepare_corpus(tmp_path / "play.txt", out_dir=tmp_path / "shard", num_threads=2)
    assert shard.tokens.tolist() == gpt2_tokenizer.encode(text)


def test_safe_chunks_on_awkward_whitespace(gpt2_tokenizer):
    import random

    alphabet = ["a", "Hello", " ", "  ", "\n", "\n\n", "\r\n", "\r", "\t", "\u00a0", "\u3000", "\x1c",
                "\u0085", "'s", "'ll", "<|endoftext|>", "12", "345", ".", "!?", "é", "😀", " \n"]
    for seed in range(300):
        rng = random.Random(seed)
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        pieces = safe_chunks(text, target_chars=rng.randint(1, 30))
        assert "".join(pieces) == text
        assert sum((gpt2_tokenizer.encode(p) for p in pieces), []) == gpt2_tokenizer.encode(text), repr(text)


ALL_BREAKS = "a\u2028b\u2029c\x85d\x0ce\x0bf\x1cg\x1dh\x1ei\rj"  # what str.splitlines splits at, but "\n"


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("", []),
        ("a", ["a"]),
        ("a\n", ["a"]),
        ("a\n\nb", ["a", "", "b"]),
        ("a\r\nb\r\n", ["a", "b"]),
        (ALL_BREAKS + "\n", [ALL_BREAKS]),
    ],
)
def test_text_lines_split_at_newlines_only(text, lines):
    """Unlike ``str.splitlines``, which breaks ALL_BREAKS into ten lines."""
    assert text_lines(text) == lines


def test_a_text_field_on_plain_text_is_a_warning_not_silently_ignored(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("Plain text has no fields.\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="the text field 'body' is not used: .*notes.txt is plain text"):
        source = resolve_corpus(path, text_field="body")
    # Nothing to read differently, so the same shard serves it: the fingerprint ignores the field.
    assert source.fingerprint() == resolve_corpus(path).fingerprint()
    assert list(source.documents()) == ["Plain text has no fields.\n"]


def test_a_local_hf_folder_is_recorded_absolute_and_the_same_however_spelt(tmp_path, monkeypatch):
    from gptsmith.data.corpus import corpus_location, same_corpus

    root = tmp_path.resolve()
    (root / "stories").mkdir()
    monkeypatch.chdir(root)
    # so a run on hf:./stories resumes from any directory (a hub name stays a name)
    assert corpus_location("hf:./stories:validation") == f"hf:{root / 'stories'}:validation"
    assert same_corpus("hf:./stories", f"hf:{root}/stories/")
    assert not same_corpus("hf:./stories", "hf:x/y")
    assert corpus_location("hf:roneneldan/TinyStories") == "hf:roneneldan/TinyStories"
