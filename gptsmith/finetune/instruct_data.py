"""Instruction data: records read from Alpaca or chat files, split, encoded and batched.

Formats (chosen per record; a file may mix them):

- **Alpaca** JSON (an array) or JSONL (one object per line): ``{"instruction", "input"
  (optional), "output"}``. One user turn and one answer.
- **Chat** JSONL (or a JSON array): ``{"messages": [{"role": "system"|"user"|"assistant",
  "content": ...}, ...]}``, several turns. The loss is on the assistant turns only.

``split_records`` is the book's 85/5/10 train/validation/test split (in file order).
``encode_records`` renders each record with a ``PromptTemplate`` (``gptsmith.generate.chat``,
the one owner of prompt text), appends ``<|endoftext|>`` and truncates to ``max_length`` + 1
tokens, counting what it cut. ``collate`` is the one owner of the batching rules:

- inputs are padded on the right to the longest example of the batch with ``<|endoftext|>``;
- each example's own ``<|endoftext|>`` stays a target (exactly one per example, so the model
  learns to stop) and every padding target is -100, which cross-entropy ignores;
- with ``mask_prompt`` (and always for chat records) the targets that are not an assistant's
  words are -100 too, so the loss is on the response only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptsmith.data.text_files import read_utf8
from gptsmith.errors import DataError
from gptsmith.finetune.records import json_objects
from gptsmith.generate.chat import ROLES, Message, PromptTemplate, get_template
from gptsmith.storage import as_path
from gptsmith.train.losses import IGNORE_INDEX  # the target the loss skips (-100, torch's default)

SPLIT_FRACTIONS = (0.85, 0.05, 0.10)  # train, validation, test: the book's chapter 7


@dataclass(frozen=True)
class InstructionRecord:
    """One training example: the messages (ending with the assistant's answer) and its format."""

    messages: tuple[Message, ...]
    chat: bool = False  # from a chat record: the loss is on assistant turns only

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """Every message before the last answer (what the model is asked)."""
        return self.messages[:-1]

    @property
    def instruction(self) -> str:
        """The last user message (an Alpaca record's instruction)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")

    @property
    def input(self) -> str:
        """Alpaca's input field of the last user message ("" when none)."""
        return next((m.input for m in reversed(self.messages) if m.role == "user"), "")

    @property
    def reference(self) -> str:
        """The answer the record gives (the last assistant message)."""
        return self.messages[-1].content


def load_instruction_file(path: str | Path) -> list[InstructionRecord]:
    """Every record of an Alpaca JSON/JSONL or chat JSONL file, checked.

    The file is UTF-8; a leading byte-order mark (a file saved as ``utf-8-sig``) is dropped.
    Raises ``DataError`` naming the file and the problem: a missing or empty file, bytes that are
    not UTF-8 (offset and byte), JSON that does not parse (line and column), a record without
    ``instruction`` or ``output`` or with a role other than system/user/assistant (by record
    index, 0-based).
    """
    path = as_path(path, "the instruction data")
    if path.is_dir():
        raise DataError(f"{path} is a directory; give an Alpaca JSON/JSONL or chat JSONL file")
    if not path.is_file():
        raise DataError(f"instruction data not found: {path} (give an Alpaca JSON/JSONL or chat JSONL file)")
    text = read_utf8(path)  # a leading BOM dropped; other bytes: offset, byte and an iconv hint
    if not text.strip():
        raise DataError(f"{path} is empty (expected Alpaca JSON/JSONL records or chat JSONL records)")
    records = [parse_record(obj, index, f"{path}: record {index}" + (f" (line {line})" if line else ""))
               for index, (obj, line) in enumerate(json_objects(text, path))]
    if not records:
        raise DataError(f"{path} holds no records (expected at least one instruction and output)")
    return records


def parse_record(obj: Any, index: int, where: str | None = None) -> InstructionRecord:
    """One record from its parsed JSON: Alpaca (``instruction``, ``input``, ``output``) or chat
    (``messages``). ``where`` names it in errors (default ``record INDEX``)."""
    where = where or f"record {index}"
    if not isinstance(obj, dict):
        raise DataError(f"{where} is a JSON {type(obj).__name__}, not an object "
                        '(expected {"instruction", "input", "output"} or {"messages": [...]})')
    if "messages" in obj:
        return _chat_record(obj["messages"], where)
    for key in ("instruction", "output"):
        if key not in obj:
            raise DataError(f'{where} has no "{key}" (an Alpaca record needs "instruction" and "output"; '
                            '"input" is optional; a chat record needs "messages")')
    # null instruction or input means none (the answer alone must be there); input is optional
    fields = {"instruction": obj["instruction"] or "", "output": obj["output"],
              "input": obj.get("input") or ""}
    for key, value in fields.items():
        if not isinstance(value, str):
            kind = "null" if value is None else type(value).__name__
            raise DataError(f'{where}: "{key}" must be a string, got {kind}')
    if not fields["output"].strip():
        raise DataError(f'{where}: "output" is empty (nothing to learn; add the answer or drop the record)')
    if not (fields["instruction"].strip() or fields["input"].strip()):
        raise DataError(f'{where}: "instruction" and "input" are empty (no question to learn an answer to)')
    user = Message("user", fields["instruction"], fields["input"])
    return InstructionRecord((user, Message("assistant", fields["output"])))


def as_records(records: Any, name: str) -> list[InstructionRecord]:
    """``records`` as ``InstructionRecord``s: a JSON object among them (an Alpaca or chat record as
    ``json.load`` gives it) is parsed with ``parse_record``, and checked like a file's; ``name``
    (e.g. ``train_records``) names them in errors."""
    if isinstance(records, str | Path | dict):
        raise DataError(f"{name} must be a list of records, got a {type(records).__name__} (read a file's "
                        "with load_instruction_file(path))")
    return [r if isinstance(r, InstructionRecord) else parse_record(r, i, f"{name}[{i}]")
            for i, r in enumerate(records)]


def _chat_record(messages: Any, where: str) -> InstructionRecord:
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    parsed = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f'{where}, message {number}: needs "role" and "content"')
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(f"{where}, message {number}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(
                f'{where}, message {number}: "content" must be a string, got {type(content).__name__}'
            )
        parsed.append(Message(role, content))
    last_answer = max((i for i, m in enumerate(parsed) if m.role == "assistant"), default=None)
    if last_answer is None:
        raise DataError(f"{where} has no assistant message (nothing to learn; add the answer)")
    if not parsed[last_answer].content.strip():  # as an Alpaca record's empty "output"
        raise DataError(f"{where}, message {last_answer}: the last assistant message is empty (nothing to "
                        "learn; add the answer or drop the record)")
    # Messages after the last answer have no reply to learn from: the record ends with the answer.
    return InstructionRecord(tuple(parsed[: last_answer + 1]), chat=True)


def split_records(
    records: Sequence[InstructionRecord], fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> tuple[list[InstructionRecord], list[InstructionRecord], list[InstructionRecord]]:
    """(train, validation, test) in file order, as the book splits: train is the first 85%, test
    the next 10%, validation the rest (about 5%)."""
    n = len(records)
    n_train, n_test = int(n * fractions[0]), int(n * fractions[2])
    train, test = list(records[:n_train]), list(records[n_train : n_train + n_test])
    val = list(records[n_train + n_test :])
    if not train or not val or not test:
        raise DataError(
            f"{n} record(s) are too few for the {fractions[0]:.0%}/{fractions[1]:.0%}/{fractions[2]:.0%} "
            "train/validation/test split (give at least 20, or a --val-data file)"
        )
    return train, val, test


def split_train_test(records: Sequence[InstructionRecord], test_fraction: float = SPLIT_FRACTIONS[2]
                     ) -> tuple[list[InstructionRecord], list[InstructionRecord]]:
    """(train, test) when the validation records come from their own file: test is the last
    ``test_fraction`` (at least one record)."""
    n_test = max(1, int(len(records) * test_fraction))
    if len(records) <= n_test:
        raise DataError(f"{len(records)} record(s) are too few to keep a test set (give at least 2)")
    return list(records[:-n_test]), list(records[-n_test:])


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one rendered record (ending with ``<|endoftext|>``) and, per id, whether it is
    an assistant's (trained) token; ``chat``: mask the rest whatever ``mask_prompt`` says;
    ``prompt_length``: the tokens before the first trained one, counted before any truncation."""

    ids: list[int]
    trained: list[bool]
    chat: bool = False
    prompt_length: int = 0


@dataclass
class EncodedSet:
    """Encoded examples and how many had to be truncated to ``max_length``."""

    examples: list[EncodedExample] = field(default_factory=list)
    truncated: int = 0
    max_length: int = 0


def encode_record(
    record: InstructionRecord, tokenizer: Any, template: str | PromptTemplate
) -> EncodedExample:
    """``record`` rendered with ``template``, encoded piece by piece, then ``<|endoftext|>``.

    The prompt pieces are encoded alone, exactly as ``ask`` encodes a question's prompt.
    """
    ids: list[int] = []
    trained: list[bool] = []
    for segment in get_template(template).segments(record.messages):
        piece = tokenizer.encode(segment.text)
        ids += piece
        trained += [segment.trained] * len(piece)
    trained.append(True)  # the closing <|endoftext|>
    return EncodedExample(ids + [tokenizer.eot_id], trained, record.chat, trained.index(True))


def encode_records(
    records: Sequence[InstructionRecord], tokenizer: Any, template: str | PromptTemplate, max_length: int
) -> EncodedSet:
    """Every record encoded; an example longer than ``max_length`` input tokens keeps its first
    ``max_length`` + 1 ids (inputs and shifted targets) and is counted in ``truncated``."""
    encoded = EncodedSet(max_length=max_length)
    for record in records:
        example = encode_record(record, tokenizer, template)
        if len(example.ids) > max_length + 1:
            keep = max_length + 1
            example = EncodedExample(example.ids[:keep], example.trained[:keep], example.chat,
                                     example.prompt_length)
            encoded.truncated += 1
        encoded.examples.append(example)
    return encoded


def collate(
    examples: Sequence[EncodedExample], pad_id: int, *, mask_prompt: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each (batch, longest example - 1): see the module docstring for the rules."""
    width = max(len(e.ids) for e in examples) - 1
    inputs = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.ids) - 1
        inputs[row, :n] = torch.tensor(example.ids[:-1])
        labels = torch.tensor(example.ids[1:])
        if mask_prompt or example.chat:
            labels[~torch.tensor(example.trained[1:], dtype=torch.bool)] = IGNORE_INDEX
        targets[row, :n] = labels  # the example's own <|endoftext|> is its last target
    return inputs, targets


def batches(
    examples: Sequence[EncodedExample],
    batch_size: int,
    pad_id: int,
    *,
    mask_prompt: bool = False,
    shuffle: bool = False,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``examples`` in batches of ``batch_size`` (the last may be smaller),
    shuffled with ``seed`` when asked."""
    order = list(range(len(examples)))
    if shuffle:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        yield collate(chunk, pad_id, mask_prompt=mask_prompt)


def check_tokenizer_matches(
    model_tokenizer: str | None, tokenizer: Any, source: str = "the checkpoint"
) -> None:
    """Raise ``DataError`` when the data is encoded with another tokenizer than the model's own."""
    if model_tokenizer and str(model_tokenizer).lower() != str(tokenizer.name).lower():
        raise DataError(
            f"{source} was trained with tokenizer {model_tokenizer!r} but the data would be encoded with "
            f"{tokenizer.name!r}; its ids would mean other words to the model (use {model_tokenizer!r})"
        )
