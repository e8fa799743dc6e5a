"""`gptsmith finetune classify` and `gptsmith classify` end to end, and every bad input as one line."""

from __future__ import annotations

import io
import json
import re
import shlex
import sys

import pytest
from classify_helpers import (
    labelled_rows,
    locked_folder,
    nan_classifier,
    random_classifier,
    tiny_base,
    write_csv,
    write_jsonl,
    write_tsv_label_first,
)

from gptsmith.cli import main


@pytest.fixture
def base(tmp_path):
    return tiny_base(tmp_path / "base")


def _finetune(base, data, out, *more):
    return main(["finetune", "classify", "--checkpoint", str(base), "--data", str(data), "--out", str(out),
                 "--no-progress", *more])


def test_finetune_then_classify_from_the_command_line(base, tmp_path, capsys):
    rows = labelled_rows(30) + [("", "ham"), (" ".join(["win"] * 40), "spam")]  # one empty, one too long
    data = write_tsv_label_first(tmp_path / "sms.tsv", rows)
    out = tmp_path / "my clf"  # a space: the printed commands must quote it
    code = _finetune(base, data, out, "--no-header", "--label-column", "0", "--text-column", "1",
                     "--trainable", "all", "--lr", "3e-3", "--epochs", "3", "--seed", "1")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "note: skipped 1 row(s) with an empty text" in captured.out
    assert "note: truncated 1 text(s) longer than 16 tokens" in captured.out
    assert "trainable parameters:" in captured.out and "epoch 3 step" in captured.out
    assert re.search(r"^test accuracy \d+\.\d% \(n=\d+\)$", captured.out, re.M), captured.out
    assert "true \\ predicted" in captured.out
    try_it = shlex.split(captured.out.split("; try: ", 1)[1].splitlines()[0])
    assert try_it == ["gptsmith", "classify", "--checkpoint", str(out), "some text"]
    texts = ["win cash prize now", "see you at home"]
    assert main(["classify", "--checkpoint", str(out), "--json", *texts]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["label"] for a in answers] == ["spam", "ham"] and all(a["probability"] > 0.5 for a in answers)
    texts = tmp_path / "texts.txt"
    texts.write_text("free cash offer\n\nthanks mum\n", encoding="utf-8-sig")  # a BOM is not text
    assert main(["classify", "--checkpoint", str(out), "--file", str(texts)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("spam\t") and lines[1].endswith("\tthanks mum")
    assert lines[0].endswith("\tfree cash offer")
    assert f"note: skipped 1 blank line(s) of --file {texts}" in captured.err
    assert main(["generate", "--checkpoint", str(out), "--max-new-tokens", "2", "win"]) == 0  # it may, but:
    err = capsys.readouterr().err
    assert f"gptsmith generate: warning: {out} is a classifier (ham, spam): " in err
    assert f"(`gptsmith classify --checkpoint {shlex.quote(str(out))}` gives labels)" in err
    assert main(["info", str(out)]) == 0
    assert f"model:      {out} (gptsmith classifier of ham, spam)" in capsys.readouterr().out
    assert _finetune(base, data, out, "--no-header", "--label-column", "0", "--text-column", "1") == 2
    assert "is not empty (pass --overwrite to replace it)" in capsys.readouterr().err
    before = sorted(p.name for p in out.iterdir())
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    assert _finetune(base, empty, out, "--overwrite") == 2  # bad data: the earlier model is kept
    assert "is empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before and (out / "config.json").is_file()


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line_errors(base, tmp_path, capsys):
    out = tmp_path / "out"
    csv_file = write_csv(tmp_path / "a.csv", labelled_rows(4), header=("message", "category"))
    assert _finetune(base, csv_file, out) == 2
    assert "no column 'text' (columns: 'message', 'category')" in _error(capsys)
    assert _finetune(base, csv_file, out, "--text-column", "message", "--label-column", "kind") == 2
    assert "no column 'kind'" in _error(capsys)

    one_class = write_csv(tmp_path / "one.csv", [("win now", "spam"), ("free cash", "spam")])
    assert _finetune(base, one_class, out) == 2
    assert "single class ('spam' in all 2 rows)" in _error(capsys)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert _finetune(base, empty, out) == 2
    assert "empty.jsonl is empty" in _error(capsys)

    broken = write_jsonl(tmp_path / "broken.jsonl", labelled_rows(3))
    broken.write_text(broken.read_text() + '{"text": "oops"\n', encoding="utf-8")
    assert _finetune(base, broken, out) == 2
    assert "broken.jsonl: invalid JSON at line 7" in _error(capsys)

    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    good = write_csv(tmp_path / "good.csv", labelled_rows(4))
    assert main(["finetune", "classify", "--checkpoint", str(not_a_model), "--data", str(good),
                 "--out", str(out)]) == 2
    assert f"--checkpoint {not_a_model} is not a model directory" in _error(capsys)

    assert _finetune(base, good, out, "--trainable", "some") == 2
    assert "--trainable must be head, last-blocks:N or all" in _error(capsys)
    assert _finetune(base, good, out, "--trainable", "all", "--lora-rank", "4") == 2
    assert "--trainable and --lora-rank are alternatives" in _error(capsys)
    assert _finetune(base, good, out, "--lora-alpha", "64", "--lora-dropout", "0.1") == 2
    assert "--lora-alpha and --lora-dropout only apply with LoRA: add --lora-rank R" in _error(capsys)
    for alpha in ("0", "nan"):
        assert _finetune(base, good, out, "--lora-rank", "2", "--lora-alpha", alpha) == 2
        assert f"LoRA alpha must be a positive number, got {float(alpha)}" in _error(capsys)
    assert _finetune(base, good, out, "--lora-rank", "100000") == 2
    assert "LoRA rank 100000 is larger than layer" in _error(capsys)
    assert _finetune(base, good, out, "--weight-decay", "-0.5") == 2
    assert "--weight-decay must be a number >= 0, got -0.5" in _error(capsys)
    assert _finetune(base, good, out, "--lora-rank", "100000") == 2
    assert "LoRA rank 100000 is larger than layer" in _error(capsys)
    assert main(["classify", "--checkpoint", str(base), "hello"]) == 2
    assert "a language model, not a classifier" in _error(capsys)
    assert main(["classify", "--checkpoint", str(base)]) == 2
    assert "no texts to classify" in _error(capsys)
    assert main(["classify", "--checkpoint", str(base), "fine", " "]) == 2
    assert "text 2 of the arguments is empty" in _error(capsys)
    assert main(["classify", "--checkpoint", str(base), "--file", str(tmp_path)]) == 2
    assert "is a directory; give a text file" in _error(capsys)
    assert not out.exists()  # nothing half-written, not even an empty folder


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "classify", "--help"])
    text = capsys.readouterr().out
    assert "gptsmith finetune classify --checkpoint" in text and "--lora-rank" in text


def test_classify_help_names_every_escape_the_output_uses(capsys):
    """--help says how a text's line breaks are written; each escape it names is the one printed."""
    from gptsmith.finetune.class_eval import escape_text

    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for char in "\n\r\t\\":
        assert escape_text(char) in text, f"--help does not say {char!r} is written {escape_text(char)}"
    assert escape_text("\x01") == "\\x01" and "\\xNN" in text
    assert escape_text("\u2028") == "\\u2028" and "\\uNNNN" in text


def test_progress_goes_to_stderr_as_plain_lines_when_not_a_terminal(base, tmp_path, capsys):
    data = write_tsv_label_first(tmp_path / "sms.tsv", labelled_rows(30))
    code = main(["finetune", "classify", "--checkpoint", str(base), "--data", str(data), "--out",
                 str(tmp_path / "clf"), "--no-header", "--label-column", "0", "--text-column", "1",
                 "--epochs", "1", "--seed", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert re.search(r"^step (\d+)/\1 \| loss \d+\.\d{3}$", captured.err, re.M), captured.err  # the last line
    assert "\r" not in captured.err and not re.search(r"^step \d+/", captured.out, re.M)


def test_a_diverged_run_a_broken_base_or_a_nan_classifier_is_one_line_and_no_nan(base, tmp_path, capsys):
    data = write_csv(tmp_path / "sms.csv", labelled_rows(30))
    out = tmp_path / "clf"
    assert _finetune(base, data, out, "--lr", "1e30", "--max-steps", "1", "--trainable", "all") == 2
    assert re.search(r"the validation loss became (nan|inf) after step 1; stopped before saving "
                     r"\(lower --lr, now 1e\+30\)$", _error(capsys))
    assert not out.exists()  # it diverged before its first evaluation was written: no empty folder
    broken_base = tiny_base(tmp_path / "broken-base", nan_weights=True)
    assert _finetune(broken_base, data, tmp_path / "clf2") == 2
    err = _error(capsys)
    assert f"the base model {broken_base} gives non-finite outputs" in err and "--lr" not in err
    broken = nan_classifier(tmp_path / "nan-clf")
    for more in ([], ["--json"]):
        assert main(["classify", "--checkpoint", str(broken), *more, "win cash now"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # no `nan` probability, no NaN in JSON
        assert captured.err.strip() == ("gptsmith classify: error: the classifier's outputs are not finite "
                                        "(nan): its weights are broken, e.g. a fine-tune that diverged "
                                        "(fine-tune it again with a lower --lr)")


def _snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_overwrite_replaces_the_earlier_output_only_once_the_new_one_is_saved(base, tmp_path, capsys):
    data = write_csv(tmp_path / "sms.csv", labelled_rows(30))
    out = tmp_path / "clf"
    assert _finetune(base, data, out, "--max-steps", "1") == 0
    earlier, base_files = _snapshot(out), _snapshot(base)
    capsys.readouterr()
    # a run that diverges (after its first evaluation was written) keeps the earlier classifier ...
    assert _finetune(base, data, out, "--overwrite", "--lr", "1e30", "--max-steps", "2", "--eval-every", "1",
                     "--trainable", "all") == 2
    assert "stopped before saving" in _error(capsys)
    assert _snapshot(out) == earlier
    # ... and one that writes over its own base keeps the base it started from
    diverge = ("--overwrite", "--lr", "1e30", "--max-steps", "1", "--trainable", "all")
    assert _finetune(base, data, base, *diverge) == 2
    assert _snapshot(base) == base_files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "clf", "sms.csv"]  # no half-written folder
    assert _finetune(base, data, base, "--overwrite", "--max-steps", "1") == 0  # while a good run replaces it
    assert main(["classify", "--checkpoint", str(base), "win cash"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "clf", "sms.csv"]
    capsys.readouterr()
    assert _finetune(out, data, out, "--overwrite", "--lora-rank", "2", "--save-adapter-only") == 2
    assert "is the base model's folder, which the adapter needs" in _error(capsys)


def test_empty_text_files_and_other_encodings_are_named(base, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert main(["classify", "--checkpoint", str(base), "--file", str(empty)]) == 2
    assert _error(capsys).endswith(f"--file {empty} holds no texts (it is empty; put one text per line)")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    assert main(["classify", "--checkpoint", str(base), "--file", str(blank)]) == 2
    assert _error(capsys).endswith(f"--file {blank} holds no texts (only blank lines; put one text per line)")
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("text,label\ncafé au lait,ham\n".encode("latin-1"))
    assert _finetune(base, latin, tmp_path / "out") == 2
    assert _error(capsys).endswith(f"{latin} is not UTF-8: byte 0xe9 at offset 14 (convert the file, e.g. "
                                   "`iconv -f latin1 -t utf-8 IN > OUT`)")
    latin.write_bytes("café au lait\n".encode("latin-1"))
    assert main(["classify", "--checkpoint", str(base), "--file", str(latin)]) == 2
    assert _error(capsys).endswith(f"{latin} is not UTF-8: byte 0xe9 at offset 3 (convert the file, e.g. "
                                   "`iconv -f latin1 -t utf-8 IN > OUT`)")
    assert not (tmp_path / "out").exists()
    latin_stdin = io.TextIOWrapper(io.BytesIO("café\n".encode("latin-1")), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", latin_stdin)
    assert main(["classify", "--checkpoint", str(base), "--file", "-"]) == 2  # was a UnicodeDecodeError
    assert _error(capsys).endswith("--file - (standard input) is not UTF-8: byte 0xe9 at offset 3 (convert "
                                   "it, e.g. `iconv -f latin1 -t utf-8`)")


def test_a_text_of_file_holds_unicode_line_breaks_a_newline_ends_it(tmp_path, capsys, monkeypatch):
    """--file is one text per line: U+2028 & co. (which ``str.splitlines`` also split at) stay in
    their text, and a Windows line end is a line end, from a file and from stdin alike."""
    clf = random_classifier(tmp_path / "clf")
    texts = ["free\u2028cash offer", "see you\u2029at home\x85mum", "page\x0cbreak\x0bhere\x1cnow"]
    path = tmp_path / "texts.txt"
    path.write_text("\r\n".join(texts) + "\r\n", encoding="utf-8", newline="")
    assert main(["classify", "--checkpoint", str(clf), "--json", "--file", str(path)]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["text"] for line in captured.out.splitlines()] == texts, captured.err
    stdin = io.TextIOWrapper(io.BytesIO(("\n".join(texts) + "\n").encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["classify", "--checkpoint", str(clf), "--json", "--file", "-"]) == 0
    assert [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()] == texts


def test_a_text_longer_than_the_classifiers_max_length_gets_a_note(tmp_path, capsys):
    clf = random_classifier(tmp_path / "clf")  # max_length 16 tokens
    long_text = " ".join(["win"] * 20)
    assert main(["classify", "--checkpoint", str(clf), "--json", "see you", long_text]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["text"] for line in captured.out.splitlines()] == ["see you", long_text]
    assert captured.err.strip() == ("note: 1 text(s) longer than the classifier's 16 tokens were "
                                    "classified by their first 16 tokens")
    assert main(["classify", "--checkpoint", str(clf), "see you"]) == 0
    assert capsys.readouterr().err == ""


def test_an_out_that_cannot_be_written_fails_before_anything_loads(base, tmp_path, capsys, monkeypatch):
    locked = locked_folder(tmp_path / "locked", monkeypatch)
    data = write_csv(tmp_path / "sms.csv", labelled_rows(30))
    assert _finetune(base, data, locked / "clf") == 2
    assert _error(capsys).endswith(f"--out {locked / 'clf'} cannot be created: {locked} is not writable "
                                   "(permission denied); choose a folder you can write to")
    assert not (locked / "clf").exists()



def test_plain_output_is_one_line_of_three_fields_per_text_whatever_the_text_holds(tmp_path, capsys):
    """A text with newlines or tabs would have printed over several lines (or with more fields):
    the plain form escapes them, and a backslash too, so the escapes read back unambiguously."""
    clf = random_classifier(tmp_path / "clf")
    texts = ["line one\nline two", "win\tcash", "C:\\new\\path", "free\u2028cash\r\nnow"]
    assert main(["classify", "--checkpoint", str(clf), *texts]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == len(texts)
    fields = [line.split("\t") for line in lines[:-1]]
    assert all(len(f) == 3 and f[0] in ("ham", "spam") for f in fields)
    unescape = [f[2].encode("latin-1", "backslashreplace").decode("unicode_escape") for f in fields]
    assert unescape == texts
    assert fields[0][2] == "line one\\nline two" and fields[2][2] == "C:\\\\new\\\\path"


def test_labels_with_line_breaks_stay_on_their_lines_of_the_run_log(base, tmp_path, capsys):
    """A label holding a newline (JSON allows it) is escaped where the run prints it: the classes
    line and the confusion matrix keep one line per row."""
    rows = [(text, "spam\nmail" if label == "spam" else label) for text, label in labelled_rows(12)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    assert _finetune(base, data, tmp_path / "out", "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert "; classes: ham (" in out and ", spam\\nmail (" in out
    matrix = out[out.index("true \\ predicted"):].splitlines()[:3]
    assert matrix[0].split() == ["true", "\\", "predicted", "ham", "spam\\nmail"]
    assert matrix[1].startswith("ham ") and matrix[2].startswith("spam\\nmail ")
