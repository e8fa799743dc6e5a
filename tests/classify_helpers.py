"""Tiny labelled data sets and a tiny base model for the classification tests (no downloads)."""

from __future__ import annotations

import csv
import json
import os
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


def _tokenizer() -> SimpleTokenizerV2:
    return SimpleTokenizerV2.from_text(" ".join(w for words in WORDS.values() for w in words))


def _gpt(vocab_size: int, context_length: int, seed: int) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=vocab_size, context_length=context_length, emb_dim=32, n_heads=4,
                              n_layers=2, drop_rate=0.0))


def tiny_base(directory: Path, context_length: int = 16, seed: int = 0, *, nan_weights: bool = False) -> Path:
    """A random 2-layer GPT with a word-level tokenizer over the test words, saved as a model dir
    (with ``nan_weights``, a broken one: a LayerNorm scale of NaN, as a run that diverged leaves)."""
    tokenizer = _tokenizer()
    model = _gpt(tokenizer.vocab_size, context_length, seed)
    if nan_weights:
        with torch.no_grad():
            model.trf_blocks[0].norm1.scale.fill_(float("nan"))
    return save_model(model, directory, tokenizer=tokenizer)


def random_classifier(directory: Path, *, nan_head: bool = False) -> Path:
    """An untrained ham/spam classifier directory (for what ``classify`` reads and prints, not
    what it predicts); with ``nan_head``, head weights of NaN, what a diverged fine-tune saved
    before such runs were stopped: ``classify`` must refuse it, not print ``nan``."""
    from gptsmith.finetune.class_model import GPTClassifier
    from gptsmith.finetune.classifier import save_classifier

    tokenizer = _tokenizer()
    model = GPTClassifier(_gpt(tokenizer.vocab_size, 16, 0), 2)
    if nan_head:
        with torch.no_grad():
            model.head.weight.fill_(float("nan"))
    return save_classifier(model, directory, labels=["ham", "spam"], max_length=16, tokenizer=tokenizer,
                           finetune={"kind": "classify"})


def nan_classifier(directory: Path) -> Path:
    """A classifier whose head weights are NaN (see ``random_classifier``)."""
    return random_classifier(directory, nan_head=True)


def locked_folder(folder: Path, monkeypatch) -> Path:
    """Make ``folder`` one that nobody may write in: mode 555, or, as root (whom modes do not stop),
    ``os.access`` saying so, as it does for root on a read-only file system."""
    folder.mkdir(parents=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)  # pytest's clean-up of tmp_path restores the write bit to delete it
        return folder
    real_access = os.access

    def access(path, mode, *args, **kwargs) -> bool:
        if mode & os.W_OK and Path(path) == folder:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return folder
