"""The classifier's printed results: the confusion matrix's alignment and the escaping of labels
and texts that ``gptsmith classify`` prints one per line."""

from __future__ import annotations

import pytest

from gptsmith.finetune.class_eval import display_width, escape_text, format_confusion


@pytest.mark.parametrize("text, width", [
    ("ham", 3), ("スパム", 6), ("😀🎉", 4), ("e\u0301t\u0301e\u0301", 3),  # combining acute accents
    ("👩\u200d💻", 4), ("ＡＢ", 4), ("", 0),  # a zero-width joiner; full-width letters
])
def test_display_width_counts_terminal_columns(text, width):
    assert display_width(text) == width


def test_the_confusion_matrix_lines_up_wide_and_combining_labels():
    labels = ["スパム", "ham", "😀🎉", "e\u0301t\u0301e\u0301"]
    confusion = [[1, 2, 3, 0], [0, 1, 0, 0], [3, 0, 11, 2], [0, 0, 0, 1]]
    lines = format_confusion(confusion, labels).splitlines()
    assert len(lines) == 5
    # every line as wide on screen as the header, and each column's right edge where its label's is
    assert {display_width(line) for line in lines} == {display_width(lines[0])}
    header_edges = [display_width(lines[0][:lines[0].index(label) + len(label)]) for label in labels]
    for line, row in zip(lines[1:], confusion, strict=True):
        assert line.split()[-len(row):] == [str(v) for v in row]
        cells = line.rsplit(None, len(row))[1:]
        ends, cut = [], len(line)
        for cell in reversed(cells):  # each count's right edge, from the end of the line
            end = line.rindex(cell, 0, cut) + len(cell)
            ends.insert(0, display_width(line[:end]))
            cut = end - len(cell)
        assert ends == header_edges


def test_a_label_with_a_newline_or_tab_stays_on_its_row():
    table = format_confusion([[1, 0], [0, 1]], ["spam\nham", "a\tb"])
    lines = table.splitlines()
    assert len(lines) == 3 and "\t" not in table
    assert lines[1].startswith("spam\\nham ") and lines[2].startswith("a\\tb ")


@pytest.mark.parametrize("text, escaped", [
    ("plain text, ünïcödé, スパム", "plain text, ünïcödé, スパム"),
    ("line one\nline two", "line one\\nline two"),
    ("a\tb\r\n", "a\\tb\\r\\n"),
    ("C:\\new", "C:\\\\new"),  # a backslash is escaped, so "\\n" never reads as a newline
    ("esc\x1b[31m u\u2028x\x85y", "esc\\x1b[31m u\\u2028x\\x85y"),
])
def test_escape_text_keeps_a_text_on_one_line_and_reads_back(text, escaped):
    assert escape_text(text) == escaped
    assert "\n" not in escaped and "\t" not in escaped and len(escaped.splitlines()) <= 1
    assert escaped.encode("latin-1", "backslashreplace").decode("unicode_escape") == text
