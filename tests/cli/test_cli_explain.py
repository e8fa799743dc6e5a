"""`gptsmith explain` and `gptsmith plot` end to end (tiny checkpoints and runs in tmp dirs)."""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path

import pytest
from explain_helpers import TEXT, simple_tokenizer, tiny_model

from gptsmith.cli import main
from gptsmith.model.checkpoint import save_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model with its own word vocabulary saved beside it (vocab.json)."""
    tokenizer = simple_tokenizer()
    model = tiny_model(tokenizer.vocab_size)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "model", tokenizer=tokenizer)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_explain_prints_every_stage_and_writes_html_and_json(checkpoint, tmp_path, capsys):
    html, numbers = tmp_path / "out" / "report.html", tmp_path / "numbers.json"
    code = main(
        [
            "explain",
            "--checkpoint",
            str(checkpoint),
            "--device",
            "cpu",
            TEXT,
            "--html",
            str(html),
            "--json",
            str(numbers),
            "--words",
            "king,queen,man,woman",
            "--focus",
            "3",
            "--top-k",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for stage in ("1. Tokens", "2. Embeddings", "3. Attention", "4. Next token", "5. Random versus trained"):
        assert stage in out
    assert "Every│effort│moves│you│," in out
    assert "token 3 (you) attends most to" in out
    page = html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and not re.search(r"https?://", page)
    data = json.loads(numbers.read_text(encoding="utf-8"))
    assert data["embeddings"]["labels"] == ["king", "queen", "man", "woman"]
    assert data["attention"]["focus"]["position"] == 3
    assert len(data["next_token"]["top_k"][0]) == 3


def test_explain_json_to_stdout_and_text_from_stdin(checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXT + "\n"))
    assert main(["explain", "--checkpoint", str(checkpoint), "--device", "cpu", "-", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["text"] == TEXT and data["tokens"]["pieces"][0] == "Every"


def test_json_on_stdout_still_writes_the_html_file_and_html_can_go_to_stdout(checkpoint, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a file called "-" would appear
    page = tmp_path / "report.html"
    args = ["explain", "--checkpoint", str(checkpoint), "--device", "cpu", TEXT]
    assert main([*args, "--json", "-", "--html", str(page)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["text"] == TEXT  # stdout is the JSON alone
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert f"wrote {page}" in captured.err

    numbers = tmp_path / "numbers.json"
    assert main([*args, "--html", "-", "--json", str(numbers)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("<!DOCTYPE html>") and captured.out.rstrip().endswith("</html>")
    assert json.loads(numbers.read_text(encoding="utf-8"))["text"] == TEXT
    assert not (tmp_path / "-").exists()


def test_a_long_text_is_cropped_with_a_note(checkpoint, capsys):
    assert main(["explain", "--checkpoint", str(checkpoint), "--device", "cpu", " ".join([TEXT] * 3)]) == 0
    assert "note: the text has 39 tokens; only the first 24 are explained" in capsys.readouterr().out


def test_white_space_is_text_to_gpt2(tmp_path, capsys, gpt2_tokenizer):
    """A word tokenizer drops white space (above: an error), but GPT-2 has tokens for it."""
    model = save_model(tiny_model(gpt2_tokenizer.vocab_size), tmp_path / "bpe", tokenizer="gpt2")
    assert main(["explain", "--checkpoint", str(model), "--device", "cpu", " \n\n"]) == 0
    out = capsys.readouterr().out  # was: "the text is empty", exit 2
    assert "1. Tokens: 2 gpt2 tokens" in out and "ids: 220 628" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "{ckpt}", ""], "the text is empty"),
        (["--checkpoint", "{ckpt}", "   "], "the text is only white space, which the tokenizer drops"),
        (
            ["--checkpoint", "{ckpt}", "--focus", "40", TEXT],
            "focus position 40 is not in the text: it has 13",
        ),
        (["--checkpoint", "{ckpt}", "--focus", "-14", TEXT], "focus position -14 is not in the text"),
        (["--checkpoint", "{ckpt}", "--words", "king,,man", TEXT], "--words 'king,,man' has an empty word"),
        (["--checkpoint", "{ckpt}", "--top-k", "0", TEXT], "--top-k must be at least 1"),
        (["--checkpoint", "{ckpt}", "--max-tokens", "0", TEXT], "--max-tokens must be at least 1, got 0"),
        (["--checkpoint", "{ckpt}", "--top-k", "60000", TEXT], "--top-k must be at least 1 and at most"),
        (["--checkpoint", "{missing}", TEXT], "checkpoint not found"),
        (["--checkpoint", "{ckpt}", "--neighbours", " ", TEXT], "--neighbours is empty"),
        (["--checkpoint", "{ckpt}", "--html", "{tmp}", TEXT], "is a directory; give a file name, e.g. "),
        (["--checkpoint", "{ckpt}", "--json", "{tmp}/notes.txt/x.json", TEXT], "notes.txt is a file"),
        (["--checkpoint", "{ckpt}", "--json", "-", "--html", "-", TEXT], "both ask for standard output"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, capsys, args, message):
    args = [a.format(ckpt=checkpoint, missing=tmp_path / "nope", tmp=tmp_path) for a in args]
    (tmp_path / "notes.txt").write_text("a file, not a folder", encoding="utf-8")
    assert main(["explain", "--device", "cpu", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptsmith explain: error: ") and message in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def _write_run(run_dir: Path, steps: int, tokens_per_step: int, lr: float) -> None:
    run_dir.mkdir(parents=True)
    records = []
    for step in range(1, steps + 1):
        records.append(
            {
                "kind": "train",
                "step": step,
                "loss": 5 - step / steps,
                "lr": lr * min(1, step / 3),
                "tokens_seen": step * tokens_per_step,
            }
        )
        if step % 5 == 0:
            records.append(
                {
                    "kind": "eval",
                    "step": step,
                    "tokens_seen": step * tokens_per_step,
                    "train_loss": 5 - step / steps,
                    "val_loss": 5.1 - step / steps,
                }
            )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_plot_overlays_runs_in_one_png(tmp_path, capsys):
    _write_run(tmp_path / "small", 20, 256, 1e-3)
    _write_run(tmp_path / "big", 10, 1024, 3e-3)
    out = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "small"), str(tmp_path / "big"), "--out", str(out)]) == 0
    assert _png_size(out) == (800, 960)  # three panels: loss vs steps, loss vs tokens, learning rate
    assert f"wrote {out}" in capsys.readouterr().out


def test_plot_of_one_run_the_trainer_way_is_unchanged(tmp_path):
    from gptsmith.train.plots import plot_losses
    from gptsmith.train.run_log import read_metrics

    _write_run(tmp_path / "run", 20, 256, 1e-3)
    assert plot_losses(read_metrics(tmp_path / "run"), tmp_path / "loss.png") == tmp_path / "loss.png"
    assert _png_size(tmp_path / "loss.png") == (700, 400)
    assert plot_losses([], tmp_path / "empty.png") is None


@pytest.mark.parametrize("what", ["missing", "not a run", "labels", "out is a folder", "not a picture",
                                  "a file", "damaged metrics", "a fine-tune"])
def test_plot_bad_input_is_one_line_and_exit_2(tmp_path, capsys, what):
    _write_run(tmp_path / "run", 10, 256, 1e-3)
    (tmp_path / "empty").mkdir()
    png = ["--out", str(tmp_path / "x.png")]
    args = {
        "missing": [str(tmp_path / "nope"), *png],
        "not a run": [str(tmp_path / "empty"), *png],
        "labels": [str(tmp_path / "run"), "--label", "a", "--label", "b", *png],
        "out is a folder": [str(tmp_path / "run"), "--out", str(tmp_path / "empty")],
        "not a picture": [str(tmp_path / "run"), "--out", str(tmp_path / "notes.txt")],
        "a file": [str(tmp_path / "run" / "metrics.jsonl"), *png],
        "damaged metrics": [str(tmp_path / "empty"), *png],
        "a fine-tune": [str(tmp_path / "empty"), *png],
    }[what]
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    if what == "damaged metrics":
        (tmp_path / "empty" / "metrics.jsonl").write_bytes(b"\xff\xfe garbage\n[1, 2]\n")
    if what == "a fine-tune":  # finetune classify's records (a KeyError before)
        record = '{"kind": "train", "step": 1, "loss": 0.5, "lr": 1}\n'
        (tmp_path / "empty" / "metrics.jsonl").write_text(record)
    assert main(["plot", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gptsmith plot: error: ")
    assert not (tmp_path / "x.png").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    expected = {"not a run": "has no metrics.jsonl", "not a picture": "must end in .png, .svg, .pdf",
                "a file": "metrics.jsonl is a file",
                "damaged metrics": "holds no records yet", "a fine-tune": "is not a pretraining run's log"}
    assert expected.get(what, "") in err[0]


def test_plot_labels_that_are_not_utf8(tmp_path, capsys):
    """A run folder whose name is not UTF-8 is drawn (U+FFFD in its label); such a --label is one line."""
    run = tmp_path / "caf\udce9"  # how Python hands over a folder name holding the byte 0xe9
    _write_run(run, 10, 256, 1e-3)
    assert main(["plot", str(run), "--out", str(tmp_path / "a.png")]) == 0
    assert _png_size(tmp_path / "a.png") == (800, 960)
    capsys.readouterr()
    assert main(["plot", str(run), "--label", "b\udce9d", "--out", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gptsmith plot: error: --label is not UTF-8: byte 0xe9" in err
    assert not (tmp_path / "b.png").exists()


def test_plot_writes_the_format_its_name_asks_for_and_skips_damaged_lines(tmp_path):
    _write_run(tmp_path / "run", 10, 256, 1e-3)
    with open(tmp_path / "run" / "metrics.jsonl", "ab") as metrics:
        metrics.write(b"\xff\xfe not utf-8\n[1, 2]\n{\"step\": \"x\"}\n")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "c.svg")]) == 0
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "c.pdf")]) == 0
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
