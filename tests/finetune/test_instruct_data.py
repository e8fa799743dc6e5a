"""Instruction data: reading Alpaca/chat files (and every bad input), the split, encoding, collate."""

from __future__ import annotations

import json

import pytest
from generation_helpers import ByteTokenizer

from gptsmith.errors import ConfigError, DataError
from gptsmith.finetune.instruct_data import (
    IGNORE_INDEX,
    EncodedExample,
    check_tokenizer_matches,
    collate,
    encode_record,
    encode_records,
    load_instruction_file,
    split_records,
    split_train_test,
)
from gptsmith.generate.chat import Message, format_instruction, get_template

ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Red."},
    {"instruction": "Correct the grammar.", "input": "He go.", "output": "He goes."},
]
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                     {"role": "assistant", "content": "Bye."}]}


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_alpaca_json_alpaca_jsonl_and_chat_jsonl(tmp_path):
    from_json = load_instruction_file(_write(tmp_path, "a.json", json.dumps(ALPACA, indent=2)))
    lines = "\n".join(json.dumps(r) for r in [*ALPACA, CHAT]) + "\n\n"
    from_jsonl = load_instruction_file(_write(tmp_path, "a.jsonl", lines))
    assert from_json == from_jsonl[:2]
    record = from_json[1]
    assert (record.instruction, record.input) == ("Correct the grammar.", "He go.")
    assert record.reference == "He goes."
    chat = from_jsonl[2]
    assert chat.chat
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert (chat.instruction, chat.reference) == ("Bye", "Bye.")


def test_a_jsonl_record_ends_at_a_newline_not_at_other_unicode_line_breaks(tmp_path):
    """JSON writers leave U+2028, U+2029 and U+0085 raw in strings (``ensure_ascii=False``):
    ``str.splitlines`` cut such a record in two, and the halves were invalid JSON."""
    joined = {"instruction": "Join\u2028these\u2029lines.", "input": "a\x85b", "output": "Done."}
    records = [joined, ALPACA[0]]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n"  # Windows line ends
    assert "\u2028" in text and "\x85" in text
    loaded = load_instruction_file(_write(tmp_path, "u.jsonl", text))
    assert loaded == load_records_from(records)
    assert (loaded[0].instruction, loaded[0].input) == ("Join\u2028these\u2029lines.", "a\x85b")
    bad = _write(tmp_path, "bad.jsonl", text + '{"instruction": oops}\n')
    with pytest.raises(DataError, match="invalid JSON at line 3, column 17"):  # lines counted by newlines
        load_instruction_file(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("  \n", "is empty"),
        ("[]", "holds no records"),
        ('[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]',
         "invalid JSON at line 2, column 22"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": oops}\n', "invalid JSON at line 2, column 17"),
        ('[{"instruction": "a", "output": "b"}, {"input": "x", "output": "y"}]',
         'record 1 has no "instruction"'),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', 'record 1 (line 2) has no "output"'),
        ('[{"instruction": "a", "output": 3}]', '"output" must be a string'),
        ('[{"instruction": "a", "output": null}]', '"output" must be a string, got null'),
        ('[{"instruction": "a", "output": "  "}]', '"output" is empty (nothing to learn'),
        ('[{"instruction": "", "input": null, "output": "b"}]', '"instruction" and "input" are empty'),
        ('["just text"]', "record 0 is a JSON str, not an object"),
        ('{"messages": [{"role": "bot", "content": "x"}]}',
         "record 0 (line 1), message 0: role 'bot' is not one of system, user, assistant"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "has no assistant message"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " \\n"}]}',
         "record 0 (line 1), message 1: the last assistant message is empty (nothing to learn"),
        ('{"messages": [{"role": "user"}]}', 'needs "role" and "content"'),
        ('{"messages": []}', '"messages" must be a non-empty list'),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path, text, message):
    path = _write(tmp_path, "bad.jsonl", text)
    with pytest.raises(DataError) as info:
        load_instruction_file(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_instruction_file(tmp_path / "nope.json")
    with pytest.raises(DataError, match="is a directory; give an Alpaca JSON/JSONL"):
        load_instruction_file(tmp_path)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError) as info:
        load_instruction_file(path)
    assert str(info.value) == (f"{path} is not UTF-8: byte 0xe9 at offset 20 (convert the file, e.g. "
                               "`iconv -f latin1 -t utf-8 IN > OUT`)")


@pytest.mark.parametrize("name", ["a.json", "a.jsonl"])
def test_a_utf8_bom_is_dropped(tmp_path, name):
    text = json.dumps(ALPACA) if name == "a.json" else "".join(json.dumps(r) + "\n" for r in ALPACA)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8-sig")  # what Windows editors and pandas' to_json(encoding=...) save
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_instruction_file(path) == load_records_from(ALPACA)
    path.write_text("", encoding="utf-8-sig")  # a BOM and nothing else
    with pytest.raises(DataError, match=f"^{path} is empty"):
        load_instruction_file(path)


def test_split_is_the_books_85_5_10_in_file_order(tmp_path):
    records = load_instruction_file(_write(tmp_path, "d.json", json.dumps(
        [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(1100)])))
    train, val, test = split_records(records)
    assert (len(train), len(val), len(test)) == (935, 55, 110)  # the book's numbers for its 1,100 records
    assert train[0].instruction == "q0" and test[0].instruction == "q935" and val[0].instruction == "q1045"
    with pytest.raises(DataError, match="too few"):
        split_records(records[:5])
    train, test = split_train_test(records[:20])
    assert len(train) == 18 and test[-1].instruction == "q19"


def test_unknown_template_is_an_error():
    with pytest.raises(ConfigError, match="unknown prompt template 'vicuna' \\(known: alpaca, chatml\\)"):
        get_template("vicuna")


def test_encoding_matches_the_prompt_ask_uses_and_marks_the_answer():
    tok = ByteTokenizer()
    record = load_records_from(ALPACA)[1]
    example = encode_record(record, tok, "alpaca")
    prompt = format_instruction("Correct the grammar.", "He go.")
    assert tok.decode(example.ids[:-1]) == prompt + "He goes."
    assert example.ids[-1] == tok.eot_id
    trained = [i for i, flag in zip(example.ids, example.trained, strict=True) if flag]
    assert tok.decode(trained[:-1]) == "He goes." and trained[-1] == tok.eot_id


def test_chatml_segments_train_only_the_assistant_turns():
    template = get_template("chatml")
    messages = [Message("user", "Hi"), Message("assistant", "Hello."), Message("user", "Bye"),
                Message("assistant", "Bye.")]
    segments = template.segments(messages)
    assert "".join(s.text for s in segments) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nBye.<|im_end|>")
    assert [s.text for s in segments if s.trained] == ["Hello.<|im_end|>", "Bye.<|im_end|>"]
    assert template.prompt(messages[:1]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def load_records_from(objects):
    from gptsmith.finetune.instruct_data import parse_record

    return [parse_record(obj, i) for i, obj in enumerate(objects)]


def test_collate_pads_with_eot_keeps_one_eot_target_and_ignores_the_rest():
    eot = 9
    short = EncodedExample([1, 2, eot], [False, True, True])
    long = EncodedExample([1, 2, 3, 4, eot], [False, False, True, True, True])
    inputs, targets = collate([short, long], pad_id=eot)
    assert inputs.tolist() == [[1, 2, eot, eot], [1, 2, 3, 4]]
    assert targets.tolist() == [[2, eot, IGNORE_INDEX, IGNORE_INDEX], [2, 3, 4, eot]]
    _, masked = collate([short, long], pad_id=eot, mask_prompt=True)
    assert masked.tolist() == [[2, eot, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX, 3, 4, eot]]
    chat = EncodedExample([1, 2, 3, eot], [False, False, True, True], chat=True)
    _, chat_targets = collate([chat], pad_id=eot)  # chat records: assistant turns only, always
    assert chat_targets.tolist() == [[IGNORE_INDEX, 3, eot]]


def test_examples_longer_than_max_length_are_truncated_and_counted():
    tok = ByteTokenizer()
    records = load_records_from([{"instruction": "x" * 200, "output": "y"}, *ALPACA])
    full = encode_records(records, tok, "alpaca", max_length=1000)
    assert full.truncated == 0
    lengths = [len(e.ids) for e in full.examples]
    limit = max(lengths[1:])  # the two short records fit, the long one does not
    encoded = encode_records(records, tok, "alpaca", max_length=limit)
    assert encoded.truncated == 1 and len(encoded.examples) == 3
    assert len(encoded.examples[0].ids) == limit + 1  # inputs and targets of max_length tokens each
    assert encoded.examples[0].ids == full.examples[0].ids[: limit + 1]
    prompt = len(tok.encode(format_instruction("x" * 200)))  # the tokens before the answer, uncut
    assert encoded.examples[0].prompt_length == full.examples[0].prompt_length == prompt > limit
    assert [len(e.ids) for e in encoded.examples[1:]] == lengths[1:]


def test_data_encoded_with_another_tokenizer_is_refused():
    tok = ByteTokenizer()
    check_tokenizer_matches(tok.name, tok)
    with pytest.raises(DataError, match="trained with tokenizer 'gpt2' but the data would be encoded with"):
        check_tokenizer_matches("gpt2", tok, source="runs/base")


def test_batches_equal_the_books_on_its_data(shared_data, gpt2_tokenizer):
    ch07 = pytest.importorskip("llms_from_scratch.ch07", reason="llms-from-scratch not installed")
    import torch

    path = shared_data / "instruction-data.json"
    records = load_instruction_file(path)[:16]
    book = json.loads(path.read_text())[:16]
    ours = encode_records(records, gpt2_tokenizer, "alpaca", max_length=1024).examples
    theirs = ch07.InstructionDataset(book, gpt2_tokenizer.encoding)
    for start in (0, 8):
        x, y = collate(ours[start : start + 8], gpt2_tokenizer.eot_id)
        bx, by = ch07.custom_collate_fn([theirs[i] for i in range(start, start + 8)], allowed_max_length=1024)
        assert torch.equal(x, bx) and torch.equal(y, by)
