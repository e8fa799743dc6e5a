"""Reading labelled texts (CSV/TSV/JSONL, header or not), balancing, splitting, and their errors."""

from __future__ import annotations

import json

import pytest
from classify_helpers import labelled_rows, write_csv, write_jsonl, write_tsv_label_first

from gptsmith.errors import ConfigError, DataError
from gptsmith.finetune.class_data import balance, check_classes, make_splits, parse_split, read_labelled


def test_the_three_formats_read_the_same_rows(tmp_path):
    rows = labelled_rows(5)
    csv_data = read_labelled(write_csv(tmp_path / "a.csv", rows))
    tsv_data = read_labelled(write_tsv_label_first(tmp_path / "b.tsv", rows), header=False,
                             text_column=1, label_column=0)
    jsonl_data = read_labelled(write_jsonl(tmp_path / "c.jsonl", rows, "sms", "class"),
                               text_column="sms", label_column="class")
    for data in (csv_data, tsv_data, jsonl_data):
        assert data.texts == [t for t, _ in rows] and data.labels == [lab for _, lab in rows]
        assert data.classes() == ["ham", "spam"]


def test_a_json_array_reads_like_jsonl(tmp_path):
    rows = labelled_rows(5)
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([{"text": t, "label": lab} for t, lab in rows], indent=2), encoding="utf-8")
    jsonl = read_labelled(write_jsonl(tmp_path / "rows.jsonl", rows))
    data = read_labelled(array)  # by the extension
    assert (data.texts, data.labels) == (jsonl.texts, jsonl.labels)
    data = read_labelled(array.rename(tmp_path / "rows.txt"))  # sniffed from the first character
    assert (data.texts, data.labels) == (jsonl.texts, jsonl.labels)
    array.write_text(json.dumps([{"text": "a", "label": "x"}, ["b", "y"]]), encoding="utf-8")
    with pytest.raises(DataError, match="rows.json, record 1: expected a JSON object, got list"):
        read_labelled(array)
    array.write_text('[{"text": "a", "label": "x"},\n {"text": "b"', encoding="utf-8")
    with pytest.raises(DataError, match="rows.json: invalid JSON at line 2, column 14"):
        read_labelled(array)


def test_text_and_label_must_be_two_columns(tmp_path):
    rows = labelled_rows(6)
    with pytest.raises(ConfigError, match="--text-column text and --label-column text are the same column"):
        read_labelled(write_csv(tmp_path / "a.csv", rows), label_column="text")
    with pytest.raises(ConfigError, match="are the same column"):
        read_labelled(write_jsonl(tmp_path / "a.jsonl", rows), label_column="text")
    tsv = write_tsv_label_first(tmp_path / "a.tsv", rows)
    with pytest.raises(ConfigError, match="are the same column"):
        read_labelled(tsv, header=False, text_column=1, label_column="1")
    with pytest.raises(ConfigError, match="columns are numbers from 0: got -1"):
        read_labelled(tsv, header=False, text_column=1, label_column=-1)
    unique = read_labelled(write_csv(tmp_path / "u.csv", [(f"text {i}", f"label {i}") for i in range(12)]))
    with pytest.raises(DataError, match="every one of the 12 rows .* has a label of its own"):
        make_splits(unique)
    small = read_labelled(write_csv(tmp_path / "s.csv", [(f"text {i}", "ab"[i % 2]) for i in range(6)]))
    assert check_classes(make_splits(small).train) == ["a", "b"]  # 6 rows, 3 per class: fine


def test_tsv_quotes_are_plain_characters_and_csv_quotes_are_csv(tmp_path):
    tsv = tmp_path / "q.tsv"
    tsv.write_text('ham\t"Hi" she said\nspam\tWIN "now\n', encoding="utf-8")
    texts = read_labelled(tsv, header=False, text_column=1, label_column=0).texts
    assert texts == ['"Hi" she said', 'WIN "now']
    csv_path = tmp_path / "q.csv"
    csv_path.write_text('text,label\n"one, two",a\nthree,b\n', encoding="utf-8")
    assert read_labelled(csv_path).texts == ["one, two", "three"]


def test_missing_column_names_the_columns_that_exist(tmp_path):
    path = write_csv(tmp_path / "a.csv", labelled_rows(3), header=("message", "category"))
    with pytest.raises(DataError, match=r"no column 'text' \(columns: 'message', 'category'\)"):
        read_labelled(path)
    jsonl = write_jsonl(tmp_path / "a.jsonl", labelled_rows(3), "sms", "label")
    with pytest.raises(DataError, match=r"line 1: no key 'text' \(keys: 'sms', 'label'\)"):
        read_labelled(jsonl)
    with pytest.raises(ConfigError, match="without a header line, so columns are numbers"):
        read_labelled(path, header=False)


def test_header_columns_named_by_numbers_are_found_and_a_doubled_name_is_refused(tmp_path):
    # pandas' DataFrame.to_csv of unnamed columns: an index column "", then "0", "1"
    path = tmp_path / "pandas.csv"
    path.write_text(",0,1\n0,ham,see you\n1,spam,WIN now\n", encoding="utf-8")
    data = read_labelled(path, text_column=1, label_column=0)  # the CLI passes "1" as 1
    assert (data.texts, data.labels) == (["see you", "WIN now"], ["ham", "spam"])
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("text,label,text\na,x,b\nc,y,d\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"has 2 columns named 'text' \(positions 0, 2"):
        read_labelled(doubled)


def test_empty_file_single_class_and_unparsable_rows(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="is empty"):
        read_labelled(empty)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl: invalid JSON at line 2"):
        read_labelled(bad_json)
    short_row = tmp_path / "short.tsv"
    short_row.write_text("ham\thello\nspam\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"short.tsv, line 2: 1 field\(s\)"):
        read_labelled(short_row, header=False, text_column=1, label_column=0)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text('text,label\n"open quote,a\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.csv, line 2: cannot parse the row"):
        read_labelled(bad_csv)
    one_class = write_csv(tmp_path / "one.csv", [("a b", "ham"), ("c", "ham")])
    with pytest.raises(DataError, match="single class \\('ham' in all 2 rows\\)"):
        make_splits(read_labelled(one_class))


def test_empty_texts_are_skipped_and_counted(tmp_path):
    path = write_csv(tmp_path / "a.csv", [("hello", "a"), ("   ", "b"), ("", "a"), ("bye", "b")])
    data = read_labelled(path)
    assert data.texts == ["hello", "bye"] and data.skipped_empty == 2


def test_balance_and_stratified_split():
    from gptsmith.finetune.class_data import LabelledTexts

    data = LabelledTexts([f"t{i}" for i in range(130)], ["a"] * 100 + ["b"] * 30, "mem")
    balanced = balance(data, seed=1)
    assert balanced.counts() == {"a": 30, "b": 30}
    splits = make_splits(data, balance_classes=True, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (42, 6, 12)
    assert splits.train.counts() == {"a": 21, "b": 21} and splits.test.counts() == {"a": 6, "b": 6}
    assert not set(splits.train.texts) & set(splits.test.texts)
    assert parse_split("80/0/20") == (0.8, 0.0, 0.2)
    with pytest.raises(ConfigError, match="--split"):
        parse_split("70/30")


def test_json_boolean_labels_are_the_labels_true_and_false(tmp_path):
    path = tmp_path / "flags.jsonl"
    path.write_text('{"text": "a", "label": true}\n{"text": "b", "label": false}\n'
                    '{"text": "c", "label": 2}\n', encoding="utf-8")
    assert read_labelled(path).labels == ["true", "false", "2"]
    path.write_text('[{"text": "a", "label": true}, {"text": "b", "label": null}]', encoding="utf-8")
    with pytest.raises(DataError, match="record 1: the label must be a string, a number or a boolean, "
                       "got None"):
        read_labelled(path)


def test_a_utf8_bom_is_dropped_and_other_encodings_name_the_byte(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_text("text,label\nhello,a\nbye,b\n", encoding="utf-8-sig")
    data = read_labelled(bom)
    assert (data.texts, data.labels) == (["hello", "bye"], ["a", "b"])  # "text" found: no BOM in the header
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("text,label\ncafé au lait,a\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_labelled(latin)
    assert str(info.value) == (f"{latin} is not UTF-8: byte 0xe9 at offset 14 (convert the file, e.g. "
                               "`iconv -f latin1 -t utf-8 IN > OUT`)")
