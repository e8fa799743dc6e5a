"""Tests for `gptsmith generate` and `gptsmith chat` (tiny checkpoints written in tmp dirs)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from generation_helpers import ByteTokenizer, tiny_model

from gptsmith.cli import main
from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.errors import ConfigError
from gptsmith.generate.chat import Conversation, format_instruction, template_from_config
from gptsmith.generate.generation import stream_text
from gptsmith.model.checkpoint import save_model
from gptsmith.model.fast_linear import fbgemm_int8_linear_works

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def simple_tokenizer():
    return get_tokenizer("simple")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, simple_tokenizer) -> Path:
    """A tiny random model using the built-in word-level tokenizer (no BPE files needed)."""
    model = tiny_model(vocab_size=simple_tokenizer.vocab_size, context_length=48)
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "model", tokenizer="simple")


@pytest.fixture(scope="module")
def instruct_checkpoint(tmp_path_factory, simple_tokenizer) -> Path:
    model = tiny_model(vocab_size=simple_tokenizer.vocab_size, context_length=128)  # fits 2 Alpaca turns
    directory = tmp_path_factory.mktemp("ckpt") / "instruct"
    return save_model(model, directory, tokenizer="simple", extra={"instruction_template": "alpaca"})


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _library_text(checkpoint: Path, tokenizer, prompt: str, n: int, **options) -> str:
    from gptsmith.model.checkpoint import load_model

    model = load_model(checkpoint)
    return "".join(stream_text(model, tokenizer, prompt, n, eos_id=tokenizer.eot_id, **options))


# --- generate ------------------------------------------------------------------------------------


def test_generate_streams_the_greedy_continuation(capsys, checkpoint, simple_tokenizer):
    code, out, _ = _run(
        capsys, "generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "8", "The module"
    )
    assert code == 0
    expected = _library_text(checkpoint, simple_tokenizer, "The module", 8)
    assert expected.strip()
    assert out == "The module" + expected + "\n"


def test_generate_json_seeds_and_cache(capsys, checkpoint):
    args = ["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "6", "--json"]
    sampled = [*args, "--temperature", "1.0", "--seed", "7", "--num-samples", "2", "The module"]
    code, out, _ = _run(capsys, *sampled)
    assert code == 0
    result = json.loads(out)
    assert [s["new_tokens"] for s in result["samples"]] == [6, 6]
    assert [s["seed"] for s in result["samples"]] == [7, 8]
    assert result["samples"][0]["text"] != result["samples"][1]["text"]
    assert json.loads(_run(capsys, *sampled)[1])["samples"][0]["text"] == result["samples"][0]["text"]

    cached = json.loads(_run(capsys, *args, "The module")[1])["samples"][0]
    uncached = json.loads(_run(capsys, *args, "--no-cache", "The module")[1])["samples"][0]
    assert cached["token_ids"] == uncached["token_ids"]
    beams = json.loads(_run(capsys, *args, "--num-beams", "3", "The module")[1])["samples"][0]
    assert beams["new_tokens"] <= 6


def test_generate_from_a_run_directory_and_stdin(capsys, checkpoint, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "latest").write_text(os.path.relpath(checkpoint, run_dir))
    monkeypatch.setattr(sys, "stdin", io.StringIO("The module"))
    code, out, _ = _run(capsys, "generate", "--checkpoint", str(run_dir), "--max-new-tokens", "4", "-")
    code2, out2, _ = _run(
        capsys, "generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "4", "The module"
    )
    assert code == code2 == 0 and out == out2


def test_generate_stop_text(capsys, checkpoint, simple_tokenizer):
    full = _library_text(checkpoint, simple_tokenizer, "The module", 10)
    stop = full.split()[3]
    code, out, _ = _run(
        capsys,
        "generate",
        "--checkpoint",
        str(checkpoint),
        "--max-new-tokens",
        "10",
        "--stop",
        stop,
        "The module",
    )
    assert code == 0
    # The token where the stop begins is dropped; for this word-level tokenizer it carries the space.
    assert out == "The module" + full[: full.index(" " + stop)] + "\n"


def test_generate_long_prompt_warns_before_the_text(checkpoint, monkeypatch):
    terminal = io.StringIO()  # stdout and stderr interleaved, as on a terminal
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    code = main(["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "2", "word " * 60])
    assert code == 0
    warning, text = terminal.getvalue().split("\n", 1)
    assert warning == (
        "gptsmith generate: warning: prompt of 60 tokens is longer than the model's context of 48; "
        "the model sees only the last 48"
    )
    assert text.startswith("word " * 60) and text.endswith("\n") and "warning" not in text


def test_generate_empty_prompt_starts_from_end_of_text(capsys, checkpoint, simple_tokenizer):
    from gptsmith.generate.generation import generate
    from gptsmith.model.checkpoint import load_model

    expected = generate(load_model(checkpoint), [simple_tokenizer.eot_id], 6, tokenizer=simple_tokenizer)
    expected_ids = expected[0, 1:].tolist()
    args = ["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "6"]
    code, out, err = _run(capsys, *args, "--json", "")
    assert code == 0 and err == ""
    assert json.loads(out)["samples"][0]["token_ids"] == expected_ids
    code, out, _ = _run(capsys, *args)  # no prompt at all: the same
    assert code == 0 and out.strip() == simple_tokenizer.decode(expected_ids).strip()


@pytest.mark.parametrize(("flags", "warned"), [
    (["--top-k", "5"], "--top-k"),
    (["--top-k", "5", "--top-p", "0.9"], "--top-k and --top-p"),
    (["--top-p", "0.9", "--temperature", "0.8"], None),
])
def test_generate_warns_that_greedy_decoding_ignores_top_k_and_top_p(capsys, checkpoint, flags, warned):
    args = ["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "2", *flags, "a"]
    code, _, err = _run(capsys, *args)
    assert code == 0
    if warned:
        assert err == (
            f"gptsmith generate: warning: {warned} shape sampling only and --temperature 0 decodes "
            "greedily, so they have no effect (add --temperature 0.8, say)\n"
        )
    else:
        assert err == ""


def test_generate_warns_that_a_length_penalty_needs_beams(capsys, checkpoint):
    base = ["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "2", "--length-penalty", "0.5"]
    code, _, err = _run(capsys, *base, "a")
    assert code == 0 and err == ("gptsmith generate: warning: --length-penalty scores beams only, so it has "
                                 "no effect without --num-beams (add --num-beams 4, say)\n")
    code, _, err = _run(capsys, *base, "--num-beams", "2", "a")
    assert code == 0 and err == ""


@pytest.mark.parametrize("num_beams", ["1", "2"])
def test_generate_stop_text_tokenized_otherwise_json(capsys, monkeypatch, gpt2_tokenizer, num_beams):
    """`--stop '..'` is found when the model emits "." twice (the tokenizer encodes ".." as one token),
    and the ids reported are those of the text: the stop's tokens are not among them."""
    from generation_helpers import scripted_model

    from gptsmith.cli import generate_cmds

    tok = gpt2_tokenizer
    assert tok.encode("..") == [492] and tok.encode(".") == [13]
    model = scripted_model(tok.encode(" Yes") + [13, 13] + tok.encode(" more"), 1, tok.vocab_size)
    monkeypatch.setattr(generate_cmds, "load_for_generation", lambda args: (model, tok, {}, "scripted"))
    code, out, _ = _run(
        capsys, "generate", "--model", "x", "--stop", "..", "--num-beams", num_beams, "--json", "Hi"
    )
    assert code == 0
    sample = json.loads(out)["samples"][0]
    assert sample["text"] == " Yes" == tok.decode(sample["token_ids"])
    assert sample["token_ids"] == tok.encode(" Yes") and sample["new_tokens"] == 1
    assert sample["stop_reason"] == "stop_sequence"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--top-k", "0"], "--top-k must be an integer >= 1"),
        (["--top-k", "100000"], "--top-k must be at most the vocabulary size"),
        (["--top-p", "0"], r"--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], r"--top-p must be in (0, 1]"),
        (["--max-new-tokens", "-1"], "--max-new-tokens must be an integer >= 0"),
        (["--num-beams", "0"], "--num-beams must be an integer >= 1"),
        (["--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
        (["--num-samples", "3"], "identical texts"),
        (["--num-samples", "2", "--num-beams", "3"], "with beam search gives identical texts"),
        (["--num-beams", "3", "--temperature", "0.8"], "beam search (--num-beams > 1) is deterministic"),
        (["--num-beams", "3", "--top-k", "5"], "drop them, or use --num-beams 1 to sample"),
        (["--temperature", "nan"], "--temperature must be a finite number"),
        (["--stop", ""], "stop"),
    ],
)
def test_generate_bad_flags(capsys, checkpoint, flags, message):
    code, out, err = _run(capsys, "generate", "--checkpoint", str(checkpoint), *flags, "The module")
    assert code == 2
    assert err.startswith("gptsmith generate: error: ") and message in err
    assert "Traceback" not in err
    assert not re.search(r"\b(num_beams|top_k|top_p|max_new_tokens|repetition_penalty)\b", err)  # flags
    assert out == ""  # refused before anything is printed, not after the prompt


@pytest.mark.parametrize("verb, device", [("generate", "tpu"), ("chat", "gpu"), ("generate", "cuda:x")])
def test_a_bad_device_is_one_usage_error(capsys, checkpoint, verb, device):
    with pytest.raises(SystemExit) as exit_info:  # refused by the parser, before any model is loaded
        main([verb, "--checkpoint", str(checkpoint), "--device", device])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2  # one line, no usage block
    assert err == f"gptsmith {verb}: error: argument --device: unknown device '{device}' (choose from " \
        f"auto, cpu, cuda, cuda:N, mps) (see gptsmith {verb} --help)\n"


def _stdin_bytes(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace"))


@pytest.mark.parametrize("piped, prompt", [
    (b"The module\n", "The module"), (b"The module\r\n", "The module"), (b"The module\n\n", "The module\n"),
    (b"The module", "The module"), ("caf\u00e9\n".encode(), "caf\u00e9"),
])
def test_stdin_prompt_loses_exactly_one_trailing_newline(capsys, checkpoint, monkeypatch, piped, prompt):
    _stdin_bytes(monkeypatch, piped)
    argv = ["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "2", "--json", "-"]
    code, out, _ = _run(capsys, *argv)
    assert code == 0 and json.loads(out)["prompt"] == prompt


def test_stdin_prompt_that_is_not_utf8_is_one_line_error(capsys, checkpoint, monkeypatch):
    _stdin_bytes(monkeypatch, b"caf\xe9 au lait\n")  # Latin-1; a text read would give U+FFFD silently
    code, out, err = _run(capsys, "generate", "--checkpoint", str(checkpoint), "--json", "-")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("gptsmith generate: error: the prompt on stdin is not UTF-8: byte 0xe9 at offset 3")


def test_chat_checks_flags_against_the_model_before_the_first_message(capsys, checkpoint, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("The module\n"))
    code, out, err = _run(capsys, "chat", "--checkpoint", str(checkpoint), "--top-k", "100000")
    assert code == 2 and out == "" and "--top-k must be at most the vocabulary size" in err
    assert "chatting with" not in err


def test_generate_missing_checkpoint(capsys, tmp_path):
    code, _, err = _run(capsys, "generate", "--checkpoint", str(tmp_path / "nope"), "hi")
    assert code == 2
    assert "checkpoint not found" in err


def test_generate_with_gpt2_tokenizer(capsys, tmp_path, gpt2_tokenizer):
    model = tiny_model(vocab_size=gpt2_tokenizer.vocab_size, context_length=32)
    directory = save_model(model, tmp_path / "gpt2-tiny", tokenizer="gpt2")
    code, out, _ = _run(
        capsys, "generate", "--checkpoint", str(directory), "--max-new-tokens", "12", "--json", "héllo 日本"
    )
    assert code == 0
    sample = json.loads(out)["samples"][0]
    assert sample["text"] == gpt2_tokenizer.decode(sample["token_ids"])


# --- chat ----------------------------------------------------------------------------------------


def test_chat_through_piped_stdin(capsys, checkpoint, monkeypatch):
    monkeypatch.setattr(
        sys, "stdin", io.StringIO("The module\n/reset\nThe module\n/nonsense\n/exit\nignored\n")
    )
    code, out, err = _run(
        capsys, "chat", "--checkpoint", str(checkpoint), "--temperature", "0", "--max-new-tokens", "5"
    )
    assert code == 0
    replies = out.splitlines()
    assert len(replies) == 2 and replies[0] == replies[1]  # after /reset the same prompt, same reply
    assert "plain continuation" in err and "(conversation reset)" in err and "unknown command" in err


def test_chat_ends_on_ctrl_d_and_keeps_the_conversation(capsys, instruct_checkpoint, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("The module\nThe module\n"))  # EOF after two turns
    code, out, err = _run(
        capsys,
        "chat",
        "--checkpoint",
        str(instruct_checkpoint),
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
    )
    assert code == 0
    assert "instruction template alpaca" in err
    first, second = out.splitlines()
    assert first != second  # the second turn sees the first one in its context


@pytest.mark.slow
def test_chat_in_a_subprocess(checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "gptsmith", "chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "3"],
        input="The module\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_chat_missing_checkpoint(capsys, tmp_path):
    code, _, err = _run(capsys, "chat", "--checkpoint", str(tmp_path / "nope"))
    assert code == 2 and "checkpoint not found" in err


# --- the conversation itself ---------------------------------------------------------------------


def test_conversation_drops_the_oldest_turns_when_full(simple_tokenizer):
    conv = Conversation(simple_tokenizer, context_length=20, reply_room=5)
    for i in range(6):
        conv.add(f"turn {i} text", "reply here")
    ids, dropped, cropped = conv.prompt_ids("new message")
    assert len(ids) <= 15 and dropped > 0 and cropped == 0
    assert simple_tokenizer.decode(ids).endswith("new message")
    assert conv.turns[-1] == ("turn 5 text", "reply here") and len(conv.turns) == 6 - dropped
    long_ids, _, cropped = conv.prompt_ids("word " * 40)  # a message longer than the room: its end is kept
    assert len(long_ids) == 15 and cropped == 40 - 15


def test_alpaca_conversation_states_the_preamble_once():
    tok = ByteTokenizer()  # decodes back to the exact text
    conv = Conversation(tok, context_length=1000, reply_room=10, template="alpaca")
    assert tok.decode(conv.prompt_ids("Name a colour.").ids) == format_instruction("Name a colour.")
    conv.add("Name a colour.", "Red.")
    text = tok.decode(conv.prompt_ids("Another?").ids)
    second_turn = "### Instruction:\nAnother?\n\n### Response:\n"
    assert text == format_instruction("Name a colour.") + "Red.\n\n" + second_turn


def test_chat_drops_old_turns_and_warns_about_a_long_message(capsys, checkpoint, monkeypatch):
    # context 48, reply room 10: three short turns do not fit together, a 60-word message alone does not
    lines = ["The module imports the class and the function"] * 3 + ["the " * 60]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = _run(capsys, "chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "10")
    assert code == 0 and len(out.splitlines()) == 4
    assert "(context full: dropped the 1 oldest turn(s))" in err
    assert "message too long for the context of 48 tokens" in err and "22 token(s) cut" in err


def test_alpaca_template(simple_tokenizer):
    prompt = format_instruction("Name a colour.")
    assert prompt.startswith("Below is an instruction that describes a task.")
    assert prompt.endswith("### Instruction:\nName a colour.\n\n### Response:\n")
    assert "### Input:\nred" in format_instruction("Rhyme.", "red")
    assert template_from_config({"instruction_template": "alpaca"}) == "alpaca"
    assert template_from_config({}) is None
    assert template_from_config({"instruction_template": "ChatML"}) == "chatml"  # as get_template reads it
    with pytest.raises(ConfigError, match="does not know"):
        template_from_config({"instruction_template": "vicuna"})


def test_chat_skips_a_line_that_is_not_utf8_and_goes_on(capsys, checkpoint, monkeypatch):
    # Strict decoding, as in a UTF-8 locale, where input() would raise UnicodeDecodeError.
    piped = io.TextIOWrapper(io.BytesIO(b"caf\xe9\nThe module\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", piped)
    code, out, err = _run(capsys, "chat", "--checkpoint", str(checkpoint), "--max-new-tokens", "3")
    assert code == 0 and "Traceback" not in err
    assert "gptsmith chat: warning: that line is not UTF-8 (byte 0xe9 at character 3), skipped" in err
    assert out.count("\n") == 1  # one reply: to "The module"


@pytest.mark.parametrize(("native", "fbgemm"), [(True, False), (False, False), (False, True)])
def test_bf16_on_a_cpu_without_native_bf16_warns(capsys, checkpoint, monkeypatch, native, fbgemm):
    from gptsmith import device
    from gptsmith.model import fast_linear

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: native)
    monkeypatch.setattr(fast_linear, "bf16_on_fbgemm", lambda: fbgemm)  # fp32 arithmetic: no warning
    base = ["generate", "--checkpoint", str(checkpoint), "--max-new-tokens", "2", "--device", "cpu"]
    code, _, err = _run(capsys, *base, "--dtype", "bf16", "a")
    warning = ("gptsmith generate: warning: this CPU has no native bf16 instructions, so bf16 runs far "
               "slower than fp32 here; use --dtype fp32 (or auto)\n")
    assert code == 0 and err == ("" if native or fbgemm else warning)
    code, _, err = _run(capsys, *base, "--dtype", "fp32", "a")
    assert code == 0 and err == ""


@pytest.mark.skipif(not fbgemm_int8_linear_works(),
                    reason="PyTorch's fbgemm int8 kernels are missing here (x86 builds have them)")
def test_dtype_int8_decodes_through_int8_copies(capsys, checkpoint, monkeypatch):
    import torch

    from gptsmith.cli import generate_cmds

    loaded = []
    real = generate_cmds.load_for_generation
    monkeypatch.setattr(generate_cmds, "load_for_generation",
                        lambda args: loaded.append(real(args)) or loaded[-1])
    code, out, err = _run(capsys, "generate", "--checkpoint", str(checkpoint), "--dtype", "int8", "--json",
                          "--max-new-tokens", "5", "--temperature", "0", "the")
    assert code == 0 and err == ""
    assert len(json.loads(out)["samples"][0]["token_ids"]) == 5
    model = loaded[0][0]
    assert next(model.parameters()).dtype == torch.float32  # the weights stay fp32
    assert model.out_head.int8_decoding and "int8" in model.out_head.__dict__["_fast_caches"]
    with pytest.raises(SystemExit) as exit_info:  # decoding only: training refuses it
        main(["train", "--dtype", "int8"])
    assert exit_info.value.code == 2 and "int8 is for decoding only" in capsys.readouterr().err
