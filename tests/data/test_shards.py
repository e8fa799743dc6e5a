"""Token shards (prepare, reuse, uint16/uint32, integrity) and train/val splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gptsmith.data.corpus import builtin_documents
from gptsmith.data.shards import TokenShard, prepare_corpus
from gptsmith.data.windows import split_tokens
from gptsmith.errors import ConfigError, DataError


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


def test_a_shard_is_never_written_among_other_files(tmp_path, word_tokenizer):
    (tmp_path / "corpus.txt").write_text("alpha beta gamma")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "meta.json").write_text('{"mine": true}')  # a user's file the shard's would replace
    (notes / "todo.md").write_text("keep me")
    with pytest.raises(DataError, match=r"notes holds other files \(todo.md\), not a token shard: choose"):
        prepare_corpus(tmp_path / "corpus.txt", tokenizer=word_tokenizer, out_dir=notes, force=True)
    assert (notes / "meta.json").read_text() == '{"mine": true}' and sorted(os.listdir(notes)) == [
        "meta.json", "todo.md"]
    shard_dir = tmp_path / "shard"  # a shard, even one cut short (no meta.json), is written again
    prepare_corpus(tmp_path / "corpus.txt", tokenizer=word_tokenizer, out_dir=shard_dir)
    (shard_dir / "meta.json").unlink()
    assert len(prepare_corpus(tmp_path / "corpus.txt", tokenizer=word_tokenizer, out_dir=shard_dir)) == 3


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


def test_the_word_tokenizer_without_endoftext_cannot_tokenize_a_corpus(tmp_path):
    from gptsmith.data.shards import corpus_tokenizer

    (tmp_path / "c.txt").write_text("alpha beta")
    with pytest.raises(ConfigError, match=r"'simple-v1' cannot tokenize a corpus: .*use --tokenizer simple"):
        corpus_tokenizer("simple-v1", tmp_path / "c.txt")
    assert corpus_tokenizer("simple", tmp_path / "c.txt").encode("alpha beta") == [0, 1]
