"""Data pipeline: corpora, token shards, splits, sliding windows, loaders, and their clear errors."""

from __future__ import annotations

import json
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from gptsmith.data.corpus import builtin_documents, resolve_corpus, safe_chunks
from gptsmith.data.shards import TokenShard, prepare_corpus
from gptsmith.data.tokenizer import SimpleTokenizerV2
from gptsmith.data.windows import SlidingWindowDataset, create_dataloader, input_embeddings, split_tokens
from gptsmith.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")


@pytest.fixture
def word_tokenizer():
    return SimpleTokenizerV2.from_text("alpha beta gamma delta epsilon zeta eta theta . ,")


class CountingTokenizer:
    """A fake tokenizer with a vocabulary past uint16: every character becomes ``offset + ord``."""

    name = "big"
    eot_id = 0

    def __init__(self, vocab_size=70_000, offset=65_600):
        self.vocab_size, self.offset = vocab_size, offset

    def encode(self, text, allowed_special=frozenset()):
        return [self.offset + ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i - self.offset) for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode()


# --- corpora ---------------------------------------------------------------------------------------

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


def test_non_utf8_bytes_name_file_and_offset(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt is not UTF-8: byte 0xe9 at offset 3"):
        list(resolve_corpus(tmp_path / "latin1.txt").documents())
    # A byte-order mark is dropped, and offsets still count from the start of the file.
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfhi caf\xe9")
    with pytest.raises(DataError, match=r"bom.txt is not UTF-8: byte 0xe9 at offset 9"):
        list(resolve_corpus(tmp_path / "bom.txt").documents())
    (tmp_path / "bom-ok.txt").write_bytes(b"\xef\xbb\xbfhello")
    assert list(resolve_corpus(tmp_path / "bom-ok.txt").documents()) == ["hello"]


def test_jsonl_corpus_and_its_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    assert list(resolve_corpus(good).documents()) == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"text": "one"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        list(resolve_corpus(tmp_path / "bad.jsonl").documents())
    (tmp_path / "field.jsonl").write_text('{"body": "one"}\n')
    with pytest.raises(DataError, match=r"field.jsonl:1: no field 'text' \(found: body\)"):
        list(resolve_corpus(tmp_path / "field.jsonl").documents())
    assert list(resolve_corpus(tmp_path / "field.jsonl", text_field="body").documents()) == ["one"]
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "one"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:2 is not UTF-8: byte 0xe9 at offset 13 of the line"):
        list(resolve_corpus(tmp_path / "latin.jsonl").documents())


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


def test_safe_chunks_on_awkward_whitespace(gpt2_tokenizer):
    import random

    alphabet = ["a", "Hello", " ", "  ", "\n", "\n\n", "\r\n", "\t", "\u00a0", "\u3000", "\x1c", "\u0085",
                "'s", "'ll", "<|endoftext|>", "12", "345", ".", "!?", "é", "😀", " \n"]
    for seed in range(300):
        rng = random.Random(seed)
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        pieces = safe_chunks(text, target_chars=rng.randint(1, 30))
        assert "".join(pieces) == text
        assert sum((gpt2_tokenizer.encode(p) for p in pieces), []) == gpt2_tokenizer.encode(text), repr(text)


# --- token shards ----------------------------------------------------------------------------------

def test_prepare_joins_documents_and_reuses_the_shard(tmp_path, word_tokenizer):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "1.txt").write_text("alpha beta.")
    (corpus / "2.txt").write_text("gamma, delta")
    shard = prepare_corpus(corpus, tokenizer=word_tokenizer, out_dir=tmp_path / "shard")
    expected = word_tokenizer.encode("alpha beta. <|endoftext|> gamma, delta")
    assert shard.tokens.tolist() == expected and shard.tokens.dtype == np.uint16
    assert isinstance(shard.tokens, np.memmap) and shard.doc_starts.tolist() == [0, 4]
    meta = json.loads((tmp_path / "shard" / "meta.json").read_text())
    assert meta["n_tokens"] == 7 and meta["n_documents"] == 2 and meta["tokenizer"] == "simple"
    TokenShard.open(tmp_path / "shard", verify=True)  # checksum matches the file
    assert not shard.reused
    again = prepare_corpus(corpus, tokenizer=word_tokenizer, out_dir=tmp_path / "shard")
    assert again.reused and again.tokens.tolist() == expected
    (corpus / "2.txt").write_text("gamma, delta, epsilon")
    changed = prepare_corpus(corpus, tokenizer=word_tokenizer, out_dir=tmp_path / "shard")
    assert not changed.reused and len(changed) == 9


def test_prepare_the_verdict_with_gpt2(tmp_path, gpt2_tokenizer, shared_data):
    progress = []
    shard = prepare_corpus(shared_data / "the-verdict.txt", "gpt2", tmp_path / "v",
                           lambda done, total: progress.append((done, total)))
    assert len(shard) == 5145 and shard.tokens[:4].tolist() == [40, 367, 2885, 1464]
    assert progress[-1] == (20479, 20479)


def test_builtin_corpus_prepares_offline_with_gpt2(gpt2_tokenizer):
    shard = prepare_corpus("builtin")  # into the (private) user cache, as the trainer does
    assert len(shard) > 50_000 and shard.n_documents == len(builtin_documents())
    assert int((shard.tokens == 50256).sum()) == shard.n_documents - 1  # one separator between documents


def test_large_vocabulary_switches_to_uint32(tmp_path):
    (tmp_path / "c.txt").write_text("abc")
    shard = prepare_corpus(tmp_path / "c.txt", tokenizer=CountingTokenizer(), out_dir=tmp_path / "s")
    assert shard.tokens.dtype == np.uint32 and shard.tokens.tolist() == [65_600 + ord(c) for c in "abc"]
    with pytest.raises(DataError, match="token id 65699 does not fit the shard's uint16"):
        prepare_corpus(tmp_path / "c.txt", tokenizer=CountingTokenizer(1000), out_dir=tmp_path / "t")
    # Negative ids would wrap around to 65535 just as silently.
    with pytest.raises(DataError, match="token id -3 does not fit the shard's uint16"):
        prepare_corpus(tmp_path / "c.txt", tokenizer=CountingTokenizer(1000, offset=-100),
                       out_dir=tmp_path / "n")


def test_documents_need_an_end_of_text_token(tmp_path):
    from gptsmith.data.tokenizer import SimpleTokenizerV1

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "1.txt").write_text("alpha beta")
    (tmp_path / "docs" / "2.txt").write_text("beta alpha")
    with pytest.raises(DataError, match="no <\\|endoftext\\|> token to join the documents"):
        prepare_corpus(tmp_path / "docs", tokenizer=SimpleTokenizerV1.from_text("alpha beta"),
                       out_dir=tmp_path / "s")


def test_broken_shard_is_a_clear_error(tmp_path, word_tokenizer):
    (tmp_path / "c.txt").write_text("alpha beta")
    prepare_corpus(tmp_path / "c.txt", tokenizer=word_tokenizer, out_dir=tmp_path / "s")
    (tmp_path / "s" / "tokens.bin").write_bytes(b"\x00")
    with pytest.raises(DataError, match="tokens.bin is missing or not the 4 bytes"):
        TokenShard.open(tmp_path / "s")
    with pytest.raises(DataError, match="no token shard at"):
        TokenShard.open(tmp_path)


# --- splits ----------------------------------------------------------------------------------------

def test_split_by_position_for_one_document():
    parts = split_tokens(np.arange(1000))
    assert [len(p) for p in parts.values()] == [800, 100, 100]
    assert parts["val"][0] == 800 and np.shares_memory(parts["train"], parts["test"]) is False
    assert [len(p) for p in split_tokens(np.arange(10), (0.5, 0.5)).values()] == [5, 5]


def test_split_by_whole_documents(tmp_path, word_tokenizer):
    corpus = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": " ".join(["alpha"] * n)}) + "\n" for n in [30, 30, 30, 7, 3]]
    corpus.write_text("".join(lines))
    shard = prepare_corpus(corpus, tokenizer=word_tokenizer, out_dir=tmp_path / "s")
    assert shard.doc_starts.tolist() == [0, 31, 62, 93, 101]  # each document + one separator
    parts = split_tokens(shard)
    # 80% would be 83 tokens, but cuts land on document starts and every part keeps a document.
    assert [len(p) for p in parts.values()] == [93, 8, 3]
    assert [len(p) for p in split_tokens(shard, (0.6, 0.4, 0.0)).values()] == [62, 42, 0]


def test_progress_counts_text_bytes_against_a_matching_total(tmp_path, word_tokenizer):
    calls = []
    (tmp_path / "c.txt").write_text("alpha beta. " * 500)
    prepare_corpus(tmp_path / "c.txt", tokenizer=word_tokenizer, out_dir=tmp_path / "a",
                   progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (6000, 6000)
    lines = [json.dumps({"text": "alpha beta.", "id": i, "padding": "x" * 50}) + "\n" for i in range(50)]
    (tmp_path / "c.jsonl").write_text("".join(lines))
    calls.clear()
    prepare_corpus(tmp_path / "c.jsonl", tokenizer=word_tokenizer, out_dir=tmp_path / "b",
                   progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (550, None)  # the file's size would overstate the text 7-fold


def test_split_fractions_are_validated():
    with pytest.raises(ConfigError, match="summing to 1"):
        split_tokens(np.arange(10), (0.8, 0.3))
    with pytest.raises(ConfigError, match="non-negative"):
        split_tokens(np.arange(10), (1.2, -0.1, -0.1))


# --- windows and loaders ---------------------------------------------------------------------------

def test_sliding_windows_are_shifted_views():
    dataset = SlidingWindowDataset(np.arange(20, dtype=np.uint16), max_length=4, stride=3)
    assert len(dataset) == 6  # starts 0, 3, ..., 15 (15 + 4 + 1 = 20 tokens)
    inputs, targets = dataset[1]
    assert inputs.tolist() == [3, 4, 5, 6] and targets.tolist() == [4, 5, 6, 7] and inputs.dtype == torch.long
    assert dataset[-1][1].tolist() == [16, 17, 18, 19]
    with pytest.raises(IndexError):
        dataset[6]


@pytest.mark.parametrize("max_length, stride, match", [
    (0, 1, "max_length must be a whole number >= 1, got 0"),
    (4, 0, "stride must be a whole number >= 1, got 0"),
    (4, -2, "stride must be a whole number >= 1, got -2"),
])
def test_window_parameters_are_validated(max_length, stride, match):
    with pytest.raises(ConfigError, match=match):
        SlidingWindowDataset(np.arange(100), max_length, stride)


def test_corpus_shorter_than_a_window_names_both_numbers():
    with pytest.raises(DataError, match=r"corpus has 10 tokens, fewer than max_length \+ 1 = 11"):
        SlidingWindowDataset(np.arange(10), max_length=10, stride=1)


def test_memmap_dataset_pickles_without_copying_the_tokens(tmp_path, word_tokenizer):
    (tmp_path / "c.txt").write_text(" ".join(["alpha beta gamma"] * 2000))
    shard = prepare_corpus(tmp_path / "c.txt", tokenizer=word_tokenizer, out_dir=tmp_path / "s")
    dataset = SlidingWindowDataset(shard.tokens, max_length=8, stride=1)
    blob = pickle.dumps(dataset)
    assert len(blob) < 2000  # the 6000 tokens are not in the pickle
    clone = pickle.loads(blob)
    assert isinstance(clone.tokens, np.memmap) and clone[5][0].tolist() == dataset[5][0].tolist()


def test_a_split_of_a_memmap_pickles_to_the_same_windows(tmp_path, word_tokenizer):
    # A slice of a memmap keeps its parent's offset attribute: a worker process (spawned, as on
    # macOS/Windows) must still read the split's own tokens, not the start of the file.
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    (tmp_path / "c.txt").write_text(" ".join(words[i % 7] for i in range(3000)))
    shard = prepare_corpus(tmp_path / "c.txt", tokenizer=word_tokenizer, out_dir=tmp_path / "s")
    val = split_tokens(shard)["val"]
    dataset = SlidingWindowDataset(val, max_length=8, stride=1)
    clone = pickle.loads(pickle.dumps(dataset))
    assert isinstance(clone.tokens, np.memmap)
    for i in (0, 3, len(dataset) - 1):
        assert clone[i][0].tolist() == dataset[i][0].tolist() == val[i : i + 8].tolist()
    assert dataset[0][0].tolist() != SlidingWindowDataset(shard.tokens, 8, 1)[0][0].tolist()


def test_windows_are_never_materialised(tmp_path):
    import tracemalloc

    path = tmp_path / "tokens.bin"
    np.arange(1_000_000, dtype=np.uint32).astype(np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    tracemalloc.start()
    try:
        dataset = SlidingWindowDataset(tokens, max_length=256, stride=1)
        batch = dataset.batch(np.arange(0, 999_000, 100_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset) == 1_000_000 - 256
    assert batch[0].shape == (10, 256) and batch[1][3, 0].item() == (300_000 + 1) % 65536
    # Storing the windows would take len * 256 * 2 bytes (~0.5 GB); the dataset takes a few KB.
    assert peak < 1_000_000


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_windows_at_stride_one_cost_no_resident_memory(tmp_path):
    # tracemalloc does not see torch's allocator; the resident set size sees everything.
    path = tmp_path / "tokens.bin"
    np.arange(1_000_000, dtype=np.uint32).astype(np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    before = _rss_bytes()
    dataset = SlidingWindowDataset(tokens, max_length=256, stride=1)
    total = 0
    for index in range(0, len(dataset), 997):  # windows from the whole file
        inputs, targets = dataset[index]
        total += int(targets[-1])
    growth = _rss_bytes() - before
    assert total > 0
    # ~1M windows x 256 tokens would be 0.5 GB as uint16 (4 GB as int64); the file itself is 2 MB.
    assert growth < 64 * 2**20, f"resident memory grew by {growth / 2**20:.0f} MiB"


def test_window_sizes_accept_numpy_integers():
    dataset = SlidingWindowDataset(np.arange(100), np.int64(4), np.int32(2))
    assert len(dataset) == 48 and isinstance(dataset.max_length, int)


def test_dataloader_matches_the_book_on_the_verdict(gpt2_tokenizer, shared_data):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    options = {"shuffle": False, "tokenizer": gpt2_tokenizer}
    loader = create_dataloader(text, batch_size=1, max_length=4, stride=1, **options)
    inputs, targets = next(iter(loader))
    assert inputs.tolist() == [[40, 367, 2885, 1464]] and targets.tolist() == [[367, 2885, 1464, 1807]]
    loader = create_dataloader(text, batch_size=8, max_length=4, stride=4, **options)
    inputs, _ = next(iter(loader))
    assert inputs.shape == (8, 4) and inputs[1].tolist() == [1807, 3619, 402, 271]


def test_dataloader_seed_shuffle_and_workers():
    tokens = np.arange(200, dtype=np.uint16)

    def first_batch(seed, workers=0):
        loader = create_dataloader(tokens, batch_size=4, max_length=8, stride=8, seed=seed,
                                   num_workers=workers)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(1), first_batch(1)) and not torch.equal(first_batch(1), first_batch(2))
    assert first_batch(3, workers=1).shape == (4, 8)


def test_dataloader_with_too_few_windows_for_a_batch():
    with pytest.raises(DataError, match="only 2 window.*batch_size 4"):
        create_dataloader(np.arange(20), batch_size=4, max_length=8, stride=8)
    with pytest.raises(ConfigError, match="batch_size"):
        create_dataloader(np.arange(20), batch_size=0)


def test_input_embeddings_add_positions():
    tok_emb, pos_emb = torch.nn.Embedding(50, 16), torch.nn.Embedding(6, 16)
    batch = torch.randint(0, 50, (3, 6))
    out = input_embeddings(batch, tok_emb, pos_emb)
    assert out.shape == (3, 6, 16)
    torch.testing.assert_close(out[2, 4], tok_emb.weight[batch[2, 4]] + pos_emb.weight[4])
    with pytest.raises(DataError, match="7 tokens exceed the 6 positions"):
        input_embeddings(torch.zeros(1, 7, dtype=torch.long), tok_emb, pos_emb)
