"""A prepare or train that fails (a bad corpus, a full disk) names the path it could not write and
leaves no empty folders behind: not in the shard cache, not an empty --out."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

from gptsmith.cli import main


def bad_corpus(tmp_path):
    """A folder whose second file is Latin-1: found only while tokenizing, after the shard dir exists."""
    corpus = tmp_path / "mixed"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some good text\n" * 50, encoding="utf-8")
    (corpus / "b.txt").write_bytes(b"caf\xe9\n")
    return corpus


def test_a_failed_prepare_or_train_leaves_no_empty_folders(gpt2_tokenizer, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(cache))
    corpus = bad_corpus(tmp_path)
    assert main(["prepare", str(corpus), "--no-progress"]) == 2
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "shard"), "--no-progress"]) == 2
    assert main(["train", "--data", str(corpus), "--preset", "tiny", "--out", str(tmp_path / "run"),
                 "--device", "cpu", "--no-progress"]) == 2
    assert all("is not UTF-8: byte 0xe9" in line for line in capsys.readouterr().err.splitlines())
    assert not (tmp_path / "shard").exists() and not (tmp_path / "run").exists()
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_dir() and not any(p.iterdir())]


def test_a_full_disk_while_preparing_names_the_shard_file(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"word{i % 500}" for i in range(20000)), encoding="utf-8")
    out = tmp_path / "shard"

    def full_disk() -> None:  # what `trap '' XFSZ; ulimit -f 8` does: a write past 8 KiB fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    command = [sys.executable, "-m", "gptsmith", "prepare", str(corpus), "--tokenizer", "simple", "--out",
               str(out), "--no-progress"]
    proc = subprocess.run(command, preexec_fn=full_disk, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"gptsmith prepare: error: cannot write {out}/tokens.bin: disk full (File too large); free some "
        "space and prepare it again"]
    assert not out.exists()


def test_a_write_onto_a_folder_names_the_file_asked_for_not_the_temporary_one(tmp_path):
    from gptsmith.cli import describe_os_error
    from gptsmith.storage import atomic_write_text

    (tmp_path / "report.html").mkdir()
    try:
        atomic_write_text(tmp_path / "report.html", "<p>hi</p>")
    except OSError as exc:
        message = describe_os_error(exc)
    assert message.startswith(f"cannot write: {tmp_path / 'report.html'} (") and ".tmp" not in message
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind
