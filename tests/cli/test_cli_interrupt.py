"""Ctrl-C in the middle of `gptsmith generate` or `ask`: what was generated is not lost, and the exit status
is the one every command gives an interrupt (130)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from generation_helpers import interrupt_decoding, tiny_model

from gptsmith.cli import main
from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.model.checkpoint import save_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = tiny_model(vocab_size=get_tokenizer("simple").vocab_size, context_length=48)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "model", tokenizer="simple")


def _generate(capsys, checkpoint: Path, *flags: str) -> tuple[int, str, str]:
    code = main(["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "8", *flags, "The module"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_prints_the_partial_sample_on_ctrl_c(capsys, checkpoint, monkeypatch):
    code, out, _ = _generate(capsys, checkpoint, "--json")
    assert code == 0
    whole = json.loads(out)["samples"][0]
    assert whole["new_tokens"] > 3, "the model must generate past the interrupt for this test"

    interrupt_decoding(monkeypatch, after_tokens=3)
    code, out, err = _generate(capsys, checkpoint, "--json")
    assert code == 130 and err == "gptsmith generate: interrupted\n"
    result = json.loads(out)  # one valid JSON object, as without Ctrl-C
    assert result["prompt"] == "The module" and result["settings"]["max_new_tokens"] == 8
    [sample] = result["samples"]
    assert sample["stop_reason"] == "interrupted"
    assert sample["token_ids"] == whole["token_ids"][:3] and sample["new_tokens"] == 3
    # the text of those tokens as the stream shows it (after the prompt: with its leading space)
    assert sample["text"].strip() == get_tokenizer("simple").decode(sample["token_ids"])
    assert whole["text"].startswith(sample["text"])


def test_json_keeps_the_finished_samples_and_starts_no_more(capsys, checkpoint, monkeypatch):
    flags = ("--json", "--temperature", "1", "--seed", "3", "--num-samples", "3")
    first = json.loads(_generate(capsys, checkpoint, *flags)[1])["samples"][0]
    interrupt_decoding(monkeypatch, after_tokens=2, decode=2)  # Ctrl-C in the second sample
    code, out, _ = _generate(capsys, checkpoint, *flags)
    assert code == 130
    samples = json.loads(out)["samples"]
    assert [s["stop_reason"] for s in samples] == [first["stop_reason"], "interrupted"]
    assert samples[0] == {**first, "seconds": samples[0]["seconds"]}
    assert samples[1]["seed"] == 4 and samples[1]["new_tokens"] == 2


def test_plain_text_on_ctrl_c_ends_its_line_and_exits_130(capsys, checkpoint, monkeypatch):
    whole = _generate(capsys, checkpoint)[1]
    interrupt_decoding(monkeypatch, after_tokens=3)
    code, out, err = _generate(capsys, checkpoint)
    assert code == 130 and err == "gptsmith generate: interrupted\n"
    assert out.endswith("\n") and whole.startswith(out[:-1]) and len(out) < len(whole)


def _ask(capsys, checkpoint: Path, *flags: str) -> tuple[int, str, str]:
    code = main(["ask", "--checkpoint", str(checkpoint), "--max-new-tokens", "8", "--stop", "zzz", *flags,
                 "What is the module?"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ask_json_prints_the_partial_answer_on_ctrl_c(capsys, checkpoint, monkeypatch):
    code, out, _ = _ask(capsys, checkpoint, "--json")
    assert code == 0
    whole = json.loads(out)
    assert whole["answer_tokens"] > 3, "the model must answer past the interrupt for this test"
    interrupt_decoding(monkeypatch, after_tokens=3)
    code, out, err = _ask(capsys, checkpoint, "--json")  # printed nothing at all before
    assert code == 130 and err.endswith("gptsmith ask: interrupted\n")
    result = json.loads(out)
    assert result["stop_reason"] == "interrupted" and result["answer_tokens"] == 3
    assert result["question"] == "What is the module?" and whole["answer"].startswith(result["answer"])


def test_ask_plain_text_on_ctrl_c_ends_its_line(capsys, checkpoint, monkeypatch):
    whole = _ask(capsys, checkpoint)[1]
    interrupt_decoding(monkeypatch, after_tokens=3)
    code, out, err = _ask(capsys, checkpoint)
    assert code == 130 and err.endswith("gptsmith ask: interrupted\n")
    assert out.endswith("\n") and whole.startswith(out[:-1]) and len(out) < len(whole)
