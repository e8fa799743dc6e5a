"""Output paths that are files or impossible: one line and exit status 2, never a traceback.

``gptsmith.cli.main`` turns any ``OSError`` that escapes a command into
``gptsmith VERB: error: <what failed>: <path> (<reason>)``; prepare and convert also check --out
up front. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from classify_helpers import locked_folder

from gptsmith.cli import data_cmds, main
from gptsmith.data.corpus import CorpusSource
from gptsmith.model.checkpoint import save_model
from gptsmith.model.gpt import GPTConfig, GPTModel

TINY = GPTConfig(vocab_size=101, context_length=20, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
NO_PROC = not Path("/proc/self").is_dir()  # /proc refuses new directories (Linux only)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("the module is imported and the name is bound. " * 60)
    return path


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a regular file, not a directory\n")
    return path


def _one_line_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"gptsmith {verb}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("where, message", [
    (lambda f: f, "the shard directory {f} is a file, not a directory"),
    (lambda f: f / "sub", "cannot be a directory: {f} is a file"),
], ids=["is-a-file", "under-a-file"])
def test_prepare_out_that_is_or_lies_under_a_file(where, message, corpus, a_file, capsys):
    argv = ["prepare", str(corpus), "--tokenizer", "simple", "--out", str(where(a_file)), "--no-progress"]
    assert main(argv) == 2
    assert message.format(f=a_file) in _one_line_error(capsys, "prepare")
    assert a_file.read_text() == "a regular file, not a directory\n"  # untouched


@pytest.mark.skipif(NO_PROC, reason="needs Linux's /proc")
def test_prepare_out_where_no_directory_can_be_made(corpus, capsys):
    assert main(["prepare", str(corpus), "--tokenizer", "simple", "--out", "/proc/gptsmith-x"]) == 2
    err = _one_line_error(capsys, "prepare")
    assert "cannot create directory: /proc/gptsmith-x (" in err


def test_convert_out_under_a_file(tmp_path, a_file, capsys):
    source = save_model(GPTModel(TINY), tmp_path / "model")
    assert main(["convert", str(source), "--to", "hf", "--out", str(a_file / "sub")]) == 2
    assert f"--out {a_file / 'sub'} cannot be a directory: {a_file} is a file" in _one_line_error(
        capsys, "convert"
    )


@pytest.mark.parametrize("out", ["under-a-file", "proc"])
def test_train_out_under_a_file_or_in_proc(out, corpus, a_file, tmp_path, capsys):
    if out == "proc" and NO_PROC:
        pytest.skip("needs Linux's /proc")
    run_dir = a_file / "run" if out == "under-a-file" else Path("/proc/gptsmith-run")
    argv = ["train", "--data", str(corpus), "--tokenizer", "simple", "--preset", "tiny",
            "--context-length", "16", "--batch-size", "2", "--max-steps", "1", "--device", "cpu",
            "--out", str(run_dir), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptsmith train: error: ") and err.count("\n") == 1, err
    if out == "under-a-file":  # refused up front: the corpus was never read nor tokenized
        assert f"--out {run_dir} cannot be a directory: {a_file} is a file" in err
        assert not (tmp_path / "cache" / "shards").exists()
    else:
        assert f"{run_dir} (No such file or directory)" in err


@pytest.mark.parametrize("verb", ["prepare", "train"])
def test_an_out_in_a_folder_nobody_may_write_is_refused_before_the_corpus_is_read(verb, corpus, tmp_path,
                                                                                   monkeypatch, capsys):
    out = locked_folder(tmp_path / "locked", monkeypatch) / "out"
    read = []
    monkeypatch.setattr(CorpusSource, "documents", lambda self: read.append(self) or iter(["text"]))
    argv = (["prepare", str(corpus), "--out", str(out)] if verb == "prepare" else
            ["train", "--data", str(corpus), "--preset", "tiny", "--max-steps", "1", "--out", str(out)])
    assert main([*argv, "--tokenizer", "simple", "--no-progress"]) == 2
    err = _one_line_error(capsys, verb)
    assert f"{out} cannot be created: {tmp_path / 'locked'} is not writable (permission denied)" in err
    assert read == [] and not out.exists()  # said before the corpus was read for its vocabulary


def test_a_current_shard_in_a_folder_nobody_may_write_is_still_reused(corpus, tmp_path, monkeypatch, capsys):
    shard = tmp_path / "shard"
    argv = ["prepare", str(corpus), "--tokenizer", "simple", "--out", str(shard), "--no-progress"]
    assert main(argv) == 0
    real_access = os.access  # as root on a read-only file system: nothing may be written there
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK and real_access(path, mode))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"shard reused (corpus unchanged): {shard}" in out, out


def test_only_os_errors_become_one_line(monkeypatch, capsys):
    def broken(args):
        raise KeyError("a bug")  # a programming error keeps its traceback

    monkeypatch.setattr(data_cmds, "run_prepare", broken)
    with pytest.raises(KeyError):
        main(["prepare", "builtin"])

    def no_path(args):
        raise TimeoutError("timed out")  # an OSError about no path: the reason alone

    monkeypatch.setattr(data_cmds, "run_prepare", no_path)
    assert main(["prepare", "builtin"]) == 2
    assert _one_line_error(capsys, "prepare") == "gptsmith prepare: error: timed out\n"
