"""The data verbs of the ``gptsmith`` command: prepare, download, bench."""

from __future__ import annotations

import pytest

from gptsmith.cli import main
from gptsmith.data import download
from gptsmith.data.shards import TokenShard


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")


def test_prepare_writes_then_reuses(tmp_path, capsys, gpt2_tokenizer):
    corpus = tmp_path / "story.txt"
    corpus.write_text("Once upon a time there was a tiny model.\n" * 50)
    args = ["prepare", str(corpus), "--out", str(tmp_path / "shard"), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "shard written" in out and "tokenizer gpt2" in out and "split: train" in out
    assert main(args) == 0
    assert "reused (corpus unchanged)" in capsys.readouterr().out
    assert (tmp_path / "shard" / "tokens.bin").is_file()


def test_prepare_with_the_simple_tokenizer_and_custom_split(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the module is imported. " * 40)
    assert main(["prepare", str(corpus), "--tokenizer", "Simple", "--out", str(tmp_path / "s"),  # any case
                 "--split", "0.5,0.5", "--no-progress"]) == 0
    assert "split: train 100, val 100 tokens" in capsys.readouterr().out


def test_prepare_simple_warns_once_of_an_empty_file(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("the module is imported. " * 40)
    (tmp_path / "notes" / "empty.txt").write_text("")
    assert main(["prepare", str(tmp_path / "notes"), "--tokenizer", "simple", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert capsys.readouterr().err.count("skipped 1 empty file(s) of") == 1  # (its words are read first)


def test_prepare_simple_learns_the_corpus_words_and_saves_them(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Quixotic zephyrs vex the jabberwock. " * 30)  # no such words in the built-in corpus
    argv = ["prepare", str(corpus), "--tokenizer", "simple", "--out", str(tmp_path / "s"), "--no-progress"]
    assert main(argv) == 0
    assert "tokenizer simple (8 ids)" in capsys.readouterr().out  # 6 pieces + <|endoftext|> + <|unk|>
    shard = TokenShard.open(tmp_path / "s")
    tokenizer = shard.tokenizer()
    assert tokenizer.unk_id not in shard.tokens.tolist()
    assert tokenizer.decode(shard.tokens[:6].tolist()) == "Quixotic zephyrs vex the jabberwock."
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["prepare", "no/such/file.txt"], "corpus not found: no/such/file.txt"),
    (["prepare", "builtin", "--split", "0.8;0.2"], "--split '0.8;0.2'"),
    (["prepare", "builtin", "--threads", "0"], "--threads must be >= 1"),
    (["prepare", "builtin", "--split", "0.8,0.1"], "--split '0.8,0.1': split fractions [0.8, 0.1] must"),
])
def test_prepare_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "shard")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptsmith prepare: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "shard").exists()  # checked before any tokenizing


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "empty.txt").write_text("  \n"), "is empty"),
    (lambda d: (d / "nodocs").mkdir() or (d / "nodocs" / "x.csv").write_text("a,b"),
     "holds no .txt or .md files"),
    (lambda d: (d / "latin.txt").write_bytes(b"caf\xe9 au lait"), "is not UTF-8: byte 0xe9 at offset 3"),
])
def test_prepare_bad_corpus_files_are_one_line_and_exit_2(make, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    target = next(p.name for p in tmp_path.iterdir())
    assert main(["prepare", target, "--tokenizer", "simple", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptsmith prepare: error:") and message in err and "\n" not in err


def test_prepare_without_bpe_files_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GPTSMITH_GPT2_BPE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    assert main(["prepare", "builtin", "--out", str(tmp_path / "s")]) == 2
    assert "run `gptsmith download gpt2-bpe`" in capsys.readouterr().err


def test_download_gpt2_bpe_prints_the_cached_path(tmp_path, capsys, gpt2_bpe_dir, monkeypatch):
    ranks = (gpt2_bpe_dir / "gpt2.tiktoken").read_bytes()
    monkeypatch.setattr(download, "fetch_url", lambda url, timeout=20.0: ranks)
    monkeypatch.delenv("GPTSMITH_OFFLINE")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    assert main(["download", "gpt2-bpe"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(download.gpt2_bpe_cache_path())
    assert "saved" in captured.err


def test_download_gpt2_bpe_accepts_the_files_the_user_gave(tmp_path, capsys, gpt2_bpe_dir, monkeypatch):
    # Offline, with GPTSMITH_GPT2_BPE already pointing at good files, there is nothing to fetch.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setenv("GPTSMITH_GPT2_BPE", str(gpt2_bpe_dir / "gpt2.tiktoken"))
    assert main(["download", "gpt2-bpe"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(gpt2_bpe_dir / "gpt2.tiktoken") and "nothing to fetch" in captured.err
    (tmp_path / "broken.tiktoken").write_text("not ranks\n")
    monkeypatch.setenv("GPTSMITH_GPT2_BPE", str(tmp_path / "broken.tiktoken"))
    assert main(["download", "gpt2-bpe"]) == 2
    assert "broken.tiktoken" in capsys.readouterr().err


def test_download_gpt2_bpe_offline_names_where_to_copy(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GPTSMITH_GPT2_BPE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    assert main(["download", "gpt2-bpe"]) == 2
    err = capsys.readouterr().err
    *progress, error = err.strip().splitlines()
    assert all(line.startswith("trying ") for line in progress)  # one line per source tried
    assert error.startswith("gptsmith download: error: could not fetch GPT-2's BPE ranks")
    assert f"copy gpt2.tiktoken to {download.gpt2_bpe_cache_path()}" in error


def test_download_corpus_offline_is_a_clear_error(capsys, tmp_path, monkeypatch):
    import gptsmith.data.corpus as corpus

    monkeypatch.setattr(corpus, "named_corpus_dirs", lambda: [tmp_path])  # not here: it must be fetched
    assert main(["download", "the-verdict"]) == 2
    out, err = capsys.readouterr()
    assert "cannot download the-verdict" in err and "needs internet" in err
    assert "fetching" not in out + err and err.count("\n") == 1  # offline: no attempt to announce


def test_bench_lists_benchmarks(capsys):
    assert main(["bench", "--list"]) == 0
    assert "prepare" in capsys.readouterr().out
    assert main(["bench", "no-such-benchmark"]) == 2
    assert "unknown benchmark 'no-such-benchmark'" in capsys.readouterr().err


def test_prepare_refuses_to_replace_another_corpus_shard_unless_forced(tmp_path, capsys):
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("the module is imported. " * 40)
    second.write_text("a name is bound. " * 40)
    out = tmp_path / "shard"
    prepare = ["prepare", "--tokenizer", "simple", "--out", str(out), "--no-progress"]
    assert main([*prepare, str(first)]) == 0
    assert main([*prepare, str(second)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"holds a token shard of '{first}', not of '{second}'" in err
    assert "--force" in err and TokenShard.open(out).meta["source"] == str(first)  # left as it was

    first.write_text("the module is imported again. " * 40)  # the same corpus, changed: tokenized again
    assert main([*prepare, str(first)]) == 0 and "shard written" in capsys.readouterr().out
    assert main([*prepare, str(second), "--force"]) == 0
    assert TokenShard.open(out).meta["source"] == str(second)


def test_download_of_a_corpus_already_here_fetches_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_DATA_DIR", str(tmp_path))
    (tmp_path / "the-verdict.txt").write_text("I had always thought Jack Gisburn")
    assert main(["download", "the-verdict"]) == 0  # offline too: nothing to fetch
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "the-verdict.txt")
    assert "already here" in err and "fetching" not in err
