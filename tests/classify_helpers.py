"""Tiny labelled data sets and a tiny base model for the classification tests (no downloads)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch

from gptsmith.data.tokenizer import SimpleTokenizerV2
from gptsmith.model.checkpoint import save_model
from gptsmith.model.gpt import GPTConfig, GPTModel

WORDS = {
    "spam": ["win", "prize", "free", "cash", "claim", "urgent", "call", "now", "offer", "txt"],
    "ham": ["see", "you", "at", "lunch", "later", "home", "mum", "thanks", "ok", "tomorrow"],
}


def labelled_rows(n_per_class: int = 24, seed: int = 0, classes: tuple[str, ...] = ("ham", "spam")
                  ) -> list[tuple[str, str]]:
    """(text, label) rows whose words tell the class apart, shuffled."""
    rng = random.Random(seed)
    rows = []
    for label in classes:
        words = WORDS.get(label, WORDS["ham"])
        for _ in range(n_per_class):
            rows.append((" ".join(rng.choice(words) for _ in range(rng.randint(2, 7))), label))
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows, header: tuple[str, str] | None = ("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_tsv_label_first(path: Path, rows) -> Path:
    """label<TAB>text, no header, like the SMS spam file."""
    path.write_text("".join(f"{label}\t{text}\n" for text, label in rows), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows, text_key: str = "text", label_key: str = "label") -> Path:
    path.write_text("".join(json.dumps({text_key: t, label_key: lab}) + "\n" for t, lab in rows),
                    encoding="utf-8")
    return path


def tiny_base(directory: Path, context_length: int = 16, seed: int = 0) -> Path:
    """A random 2-layer GPT with a word-level tokenizer over the test words, saved as a model dir."""
    vocabulary = " ".join(w for words in WORDS.values() for w in words)
    tokenizer = SimpleTokenizerV2.from_text(vocabulary)
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=context_length, emb_dim=32, n_heads=4,
                    n_layers=2, drop_rate=0.0)
    return save_model(GPTModel(cfg), directory, tokenizer=tokenizer)
