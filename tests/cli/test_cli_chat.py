"""`gptsmith chat`: seeds per turn, CRLF input, replies that fit the context (tiny checkpoints in
tmp dirs; the other chat tests are in test_cli_generate.py, beside generate's)."""

from __future__ import annotations

import importlib
import io
import sys
from pathlib import Path

import pytest
from generation_helpers import tiny_model

from gptsmith.cli import main
from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.generate.generation import stream_text
from gptsmith.model.checkpoint import save_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random model (context 48) using the built-in word-level tokenizer (no BPE files needed)."""
    model = tiny_model(vocab_size=get_tokenizer("simple").vocab_size, context_length=48)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "model", tokenizer="simple")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_chat_seeds_wrap_past_the_largest_seed(capsys, checkpoint, monkeypatch):
    """Turn i samples with --seed + i; at the largest seed the second turn wraps to seed 0 instead of
    ending the conversation with an out-of-range seed."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("The module\n/reset\nThe module\n"))
    sampled = ("--temperature", "1", "--max-new-tokens", "4")
    code, out, err = _run(capsys, "chat", "--checkpoint", str(checkpoint), *sampled, "--seed", "4294967295")
    assert code == 0, err
    first, second = out.splitlines()
    assert "error" not in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("The module\n"))
    code, out, _ = _run(capsys, "chat", "--checkpoint", str(checkpoint), *sampled, "--seed", "0")
    assert code == 0 and out.splitlines() == [second]  # the second turn was seeded with 0


def test_chat_reads_a_crlf_file_as_its_lines(capsys, tmp_path, monkeypatch, gpt2_tokenizer):
    model = tiny_model(vocab_size=gpt2_tokenizer.vocab_size, context_length=32)
    directory = save_model(model, tmp_path / "gpt2-tiny", tokenizer="gpt2")  # "\r" is a token of its own
    replies = []
    for text in ("The module\nThe class\n", "The module\r\nThe class\r\n"):
        monkeypatch.setattr(sys, "stdin", io.StringIO(text, newline=""))  # input() keeps the \r, as piped
        code, out, _ = _run(capsys, "chat", "--checkpoint", str(directory), "--temperature", "0",
                            "--max-new-tokens", "5")
        assert code == 0
        replies.append(out)
    assert replies[0] == replies[1]  # the \r was part of each message


def test_chat_replies_stop_where_the_context_is_full(capsys, checkpoint, monkeypatch):
    """Context 48, --max-new-tokens 40: a reply may not slide the conversation out of view."""
    generation = importlib.import_module("gptsmith.generate.generation")  # gptsmith.generate: the function
    seen = []

    def recording(model, tokenizer, prompt, max_new_tokens, **options):
        seen.append((len(prompt), max_new_tokens))
        return stream_text(model, tokenizer, prompt, max_new_tokens, **options)

    monkeypatch.setattr(generation, "stream_text", recording)
    message = "The module imports the class and the function from the module of the class\n"  # 15 words
    monkeypatch.setattr(sys, "stdin", io.StringIO(message * 2))
    code, out, err = _run(capsys, "chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "40",
                          "--temperature", "0", "--stop", "never")
    assert code == 0 and len(seen) == 2
    assert all(n_prompt + n_new == 48 for n_prompt, n_new in seen), seen  # were 15 + 40 each
    assert "(reply cut after " in err and "the context of 48 is full" in err
