"""A token shard changed on disk after it was prepared is never reused as if it were the corpus's:
its checksum is verified on reuse and the corpus is tokenized again, with a warning that says so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gptsmith.cli import main
from gptsmith.data.shards import prepare_corpus


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the cat sat on the mat. the dog sat on the log.\n\nanother document here.\n" * 20)
    return path


def tamper(shard_dir) -> None:
    """Swap the first two token ids in place (still valid ids, same size)."""
    tokens = np.fromfile(shard_dir / "tokens.bin", dtype=np.uint16)
    assert tokens[0] != tokens[1]
    tokens[[0, 1]] = tokens[[1, 0]]
    tokens.tofile(shard_dir / "tokens.bin")


def test_a_tampered_shard_is_tokenized_again(corpus, tmp_path):
    out = tmp_path / "shard"
    first = prepare_corpus(corpus, "simple", out)
    original = np.array(first.tokens)
    del first
    tamper(out)
    with pytest.warns(UserWarning, match=f"{out}/tokens.bin does not match the checksum in its meta.json"):
        again = prepare_corpus(corpus, "simple", out)
    assert not again.reused and np.array_equal(np.array(again.tokens), original)
    assert prepare_corpus(corpus, "simple", out).reused  # intact now: reused


def test_prepare_and_train_never_use_altered_tokens(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "shard"
    assert main(["prepare", str(corpus), "--tokenizer", "simple", "--out", str(out), "--no-progress"]) == 0
    checksum = json.loads((out / "meta.json").read_text())["checksum"]
    tamper(out)
    capsys.readouterr()
    assert main(["prepare", str(corpus), "--tokenizer", "simple", "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "shard written" in captured.out and "reused" not in captured.out
    assert "gptsmith prepare: warning: " in captured.err and "tokenizing the corpus again" in captured.err
    assert json.loads((out / "meta.json").read_text())["checksum"] == checksum
