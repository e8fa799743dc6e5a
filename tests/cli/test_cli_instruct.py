"""``gptsmith finetune instruct``, ``gptsmith ask`` and the instruction template in ``generate``."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from classify_helpers import locked_folder
from generation_helpers import tiny_model
from judge_helpers import stub_judge

from gptsmith.cli import main
from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.model.checkpoint import load_model, read_model_config, save_model

QA = [("Name a colour.", "Red."), ("Name a number.", "One."), ("Name a day.", "Monday."),
      ("Name a month.", "May."), ("Name an animal.", "A cat.")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny random model with the built-in word tokenizer (no BPE files needed)."""
    tokenizer = get_tokenizer("simple")
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=96)
    return save_model(model, tmp_path_factory.mktemp("base") / "model", tokenizer="simple")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """24 Alpaca records as JSONL (split 20 / 2 / 2)."""
    path = tmp_path_factory.mktemp("data") / "alpaca.jsonl"
    records = [{"instruction": q, "input": "" if i % 2 else "the", "output": a}
               for i, (q, a) in enumerate(QA * 5)][:24]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _finetune(capsys, base, data, out, *more):
    return _run(capsys, "finetune", "instruct", "--checkpoint", base, "--data", data, "--out", out,
                "--max-steps", 3, "--batch-size", 4, "--eval-every", 2, "--answer-tokens", 4, "--lr", 1e-3,
                "--no-progress", "--device", "cpu", *more)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, base, data) -> tuple[Path, str]:
    import contextlib
    import io

    out = tmp_path_factory.mktemp("tuned") / "my instruct"  # a space: the printed commands must quote it
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["finetune", "instruct", "--checkpoint", str(base), "--data", str(data),
                     "--out", str(out), "--max-steps", "3", "--batch-size", "4", "--eval-every", "2",
                     "--answer-tokens", "4", "--no-progress", "--device", "cpu", "--template", "chatml",
                     "--mask-prompt"])
    assert code == 0
    return out, stdout.getvalue()


def test_finetune_writes_a_model_dir_with_its_template_and_test_answers(tuned):
    out, log = tuned
    assert "20 train / 2 validation / 2 test records" in log
    assert "test-reference loss before fine-tuning" in log and "test-reference loss after fine-tuning" in log
    assert log.count("sample answer:") == 3  # before training, at step 2, at the end
    assert "val loss" in log and "test answers:" in log
    config = read_model_config(out)
    assert config["instruction_template"] == "chatml" and config["tokenizer"] == "simple"
    assert config["finetune"]["steps"] == 3 and config["finetune"]["mask_prompt"] is True
    report = json.loads((out / "test_responses.json").read_text())
    assert len(report["responses"]) == 2
    first = report["responses"][0]
    assert {"instruction", "input", "reference", "answer", "stopped"} <= set(first)
    assert (first["instruction"], first["reference"]) == QA[20 % 5]
    assert load_model(out).instruction_template == "chatml"


def test_the_ask_hint_runs_as_printed(tuned, capsys):
    out, log = tuned
    ask = shlex.split(log.split("ask it: ", 1)[1].splitlines()[0])
    assert ask == ["gptsmith", "ask", "--checkpoint", str(out), "..."]  # "...": the user's question
    assert main([*ask[1:-1], "Name a colour.", "--max-new-tokens", "3"]) == 0


def test_ask_prints_only_the_answer_and_json_has_counts(tuned, capsys):
    out, _ = tuned
    code, text, err = _run(capsys, "ask", "--checkpoint", out, "Name a colour.", "--max-new-tokens", 5)
    assert code == 0 and err == ""
    assert "<|im_start|>" not in text and "Name a colour" not in text
    code, text, _ = _run(capsys, "ask", "--checkpoint", out, "--json", "--input", "the", "Name a day.",
                         "--max-new-tokens", 5)
    result = json.loads(text)
    assert code == 0 and result["template"] == "chatml" and result["input"] == "the"
    assert result["prompt_tokens"] > 5 and 0 <= result["answer_tokens"] <= 5
    assert result["stop_reason"] in ("eos", "stop_sequence", "max_new_tokens")
    assert {"seconds", "first_token_seconds", "tokens_per_s"} <= set(result)
    code, text, err = _run(capsys, "ask", "--checkpoint", out, "--json", "Name a day.", "--max-new-tokens",
                           100_000)
    result = json.loads(text)
    assert code == 0 and "note: the context leaves" in err and "not at --max-new-tokens 100000" in err
    # This random model never ends its answer: the context does, not --max-new-tokens, and says so.
    assert result["prompt_tokens"] + result["answer_tokens"] == 96
    assert result["stop_reason"] == "context_length"


def test_ask_json_holds_the_answer_exactly_as_plain_ask_prints_it(capsys, tmp_path, gpt2_tokenizer):
    """An answer of only spaces: --json used to strip it to ""."""
    model = tiny_model(vocab_size=gpt2_tokenizer.vocab_size, context_length=64)
    with torch.no_grad():  # every position's final vector is the same, and picks " " (GPT-2's 220)
        model.final_norm.scale.zero_()
        model.final_norm.shift.fill_(1.0)
        model.out_head.weight.zero_()
        model.out_head.weight[220] = 1.0
    out = save_model(model, tmp_path / "spaces", tokenizer="gpt2", extra={"instruction_template": "alpaca"})
    code, text, err = _run(capsys, "ask", "--checkpoint", out, "Say nothing.", "--max-new-tokens", 3)
    assert (code, text, err) == (0, "   \n", "")  # the answer, then the line's end
    code, text, _ = _run(capsys, "ask", "--checkpoint", out, "--json", "Say nothing.", "--max-new-tokens", 3)
    result = json.loads(text)
    assert code == 0 and result["answer"] == "   " and result["answer_tokens"] == 3
    assert result["stop_reason"] == "max_new_tokens"


def test_generate_uses_the_template_unless_raw(tuned, capsys):
    out, _ = tuned
    code, text, _ = _run(capsys, "generate", "--checkpoint", out, "Name a colour.", "--max-new-tokens", 2)
    assert code == 0
    assert text.startswith("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    code, text, _ = _run(capsys, "generate", "--checkpoint", out, "--raw", "Name a colour.",
                         "--max-new-tokens", 2)
    assert code == 0 and text.startswith("Name a colour.") and "<|im_start|>" not in text


def test_lora_run_saves_a_merged_plain_model(capsys, base, data, tmp_path):
    code, log, err = _finetune(capsys, base, data, tmp_path / "lora", "--lora-rank", 2)
    assert code == 0, err
    # rank 2 x (in + out) of qkv (32 -> 96), out_proj (32 -> 32), feed-forward (32 -> 128 -> 32); 2 blocks
    assert "fine-tuning 2,048 of" in log
    code, log, err = _finetune(capsys, base, data, tmp_path / "attention", "--lora-rank", 2,
                               "--lora-targets", "attention", "--lora-dropout", "0.1")
    assert code == 0, err
    assert "fine-tuning 768 of" in log  # qkv and out_proj only: 2 x (32 + 96) + 2 x (32 + 32), 2 blocks
    state = load_model(tmp_path / "lora").state_dict()
    assert not any("lora" in key for key in state)


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--template", "vicuna"], "unknown prompt template 'vicuna' (known: alpaca, chatml)"),
        (["--tokenizer", "klingon"], "unknown tokenizer 'klingon'"),
        (["--judge-url", "http://localhost:1"], "--judge-url and --judge-model go together"),
        (["--judge-url", "localhost:1", "--judge-model", "m"], "is not an http(s) address"),
        (["--max-length", "1000"], "longer than the model's context of 96 tokens"),
        (["--batch-size", "0"], "--batch-size must be a whole number >= 1, got 0"),
        (["--eval-every", "-1"], "--eval-every must be a whole number >= 0, got -1"),
        (["--lora-rank", "-1"], "--lora-rank must be a whole number >= 0, got -1"),
        (["--lora-rank", "2", "--lora-alpha", "nan"], "LoRA alpha must be a positive number, got nan"),
        (["--lora-rank", "1000"], "LoRA rank 1000 is larger than layer"),
        (["--lora-alpha", "8"], "--lora-alpha only apply with LoRA: add --lora-rank R (e.g. 8)"),
        (["--lora-rank", "2", "--lora-targets", "nothing.here"], "nothing.here"),
        (["--weight-decay", "-1"], "--weight-decay must be a number >= 0, got -1.0"),
        (["--grad-clip", "nan"], "--grad-clip must be a number >= 0, got nan"),
        (["--eval-batches", "0"], "--eval-batches must be a whole number >= 1, got 0"),
        # the shortest test prompt (Alpaca preamble + "Name a month.", no input): 28 simple-tokenizer tokens
        (["--max-length", "10"], "every example's prompt is at least 28 tokens but --max-length allows 10: "
         "raise --max-length (up to the model's context, 96)"),
        (["--lr", "1e30", "--max-steps", "1"], "after step 1; stopped before saving (lower --lr, now 1e+30)"),
    ],
)
def test_bad_flags_are_one_line_errors(capsys, base, data, tmp_path, more, message):
    code, log, err = _finetune(capsys, base, data, tmp_path / "out", *more)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "nan" not in log and not (tmp_path / "out").exists()  # nothing saved, not even an empty folder


def test_a_checkpoint_with_another_tokenizer_is_refused(capsys, base, data, tmp_path, gpt2_tokenizer):
    code, _, err = _finetune(capsys, base, data, tmp_path / "out", "--tokenizer", "gpt2")
    assert code == 2 and "trained with tokenizer 'simple' but the data would be encoded with 'gpt2'" in err


def test_a_tokenizer_with_more_ids_than_the_model_is_refused_before_training(capsys, data, tmp_path):
    """As every other command checks it (load_model_tokenizer): a tokenizer whose ids the model has
    no embeddings for is one line naming both sizes, not a deep forward error (or, when the data
    happens to use only low ids, a run that trains with another tokenizer's ids)."""
    tokenizer = get_tokenizer("simple")
    model = tiny_model(vocab_size=tokenizer.vocab_size - 10, context_length=96)
    small = save_model(model, tmp_path / "small", tokenizer=tokenizer)
    code, _, err = _finetune(capsys, small, data, tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"has {tokenizer.vocab_size} ids but the model only {tokenizer.vocab_size - 10}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "is empty"), ('{"instruction": "a"}\n', 'record 0 (line 1) has no "output"'),
     ('[{"instruction": "a", ', "invalid JSON at line 1, column 23")],
)
def test_bad_data_is_a_one_line_error(capsys, base, tmp_path, text, message):
    path = tmp_path / "data.json"
    path.write_text(text)
    code, _, err = _finetune(capsys, base, path, tmp_path / "out")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_long_examples_are_truncated_with_a_count(capsys, base, data, tmp_path):
    code, log, _ = _finetune(capsys, base, data, tmp_path / "out", "--max-length", 30, "--max-steps", 1)
    assert code == 0 and "example(s) longer than --max-length 30 were truncated" in log
    tokenizer = get_tokenizer("simple")
    short = save_model(tiny_model(vocab_size=tokenizer.vocab_size, context_length=30), tmp_path / "short",
                       tokenizer="simple")
    code, log, _ = _finetune(capsys, short, data, tmp_path / "out2", "--max-steps", 1)
    assert code == 0 and "example(s) longer than the model's context (30 tokens) were truncated" in log


def test_out_holding_a_model_needs_overwrite(capsys, base, data, tuned, tmp_path):
    out, _ = tuned
    code, _, err = _finetune(capsys, base, data, out)
    assert code == 2 and "is not empty (pass --overwrite to replace it)" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = _finetune(capsys, base, data, other)
    assert code == 2 and "is not empty (choose a new or empty folder)" in err
    assert (other / "notes.txt").exists()
    again = tmp_path / "again"  # a copy: other tests read the shared fine-tune
    shutil.copytree(out, again)
    for stale in ("classifier.safetensors", "training.png"):  # as a classification fine-tune leaves them
        (again / stale).write_bytes(b"an earlier fine-tune's")
    code, _, err = _finetune(capsys, base, data, again, "--overwrite", "--max-steps", 1)
    assert code == 0 and (again / "model.safetensors").is_file(), err
    assert (again / "test_responses.json").is_file()
    assert not (again / "classifier.safetensors").exists() and not (again / "training.png").exists()


def test_an_out_that_cannot_be_made_fails_before_training(capsys, base, data, tmp_path, monkeypatch):
    locked = locked_folder(tmp_path / "locked", monkeypatch)
    code, log, err = _finetune(capsys, base, data, locked / "out")
    assert code == 2 and err.strip().endswith(
        f"--out {locked / 'out'} cannot be created: {locked} is not writable (permission denied); choose a "
        "folder you can write to")
    out = tmp_path / "read-only"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):  # a read-only file system that the up-front check cannot see
        if Path(path).name.startswith(f".{out.name}."):  # the new folder that would replace --out
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    code, log, err = _finetune(capsys, base, data, out)
    assert code == 2
    assert err.strip() == (f"gptsmith finetune instruct: error: cannot create directory: {out} "
                           "(Read-only file system)")
    assert "test-reference loss" not in log and "fine-tuning" not in log  # said before any training


def test_a_broken_base_is_refused_before_training(capsys, data, tmp_path):
    tokenizer = get_tokenizer("simple")
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=96)
    with torch.no_grad():
        model.trf_blocks[0].norm1.scale.fill_(float("nan"))
    broken = save_model(model, tmp_path / "broken", tokenizer="simple")
    code, log, err = _finetune(capsys, broken, data, tmp_path / "out")
    assert code == 2 and f"the base model {broken} gives non-finite outputs (nan or inf)" in err, err
    assert "--lr" not in err and "nan" not in log and not (tmp_path / "out").exists()


def test_judge_scores_are_written_and_averaged(capsys, base, data, tmp_path):
    with stub_judge(["60", "80"]) as url:
        code, log, err = _finetune(capsys, base, data, tmp_path / "judged", "--judge-url", url,
                                   "--judge-model", "judge-1")
    assert code == 0, err
    assert "judge judge-1: mean score 70.0 / 100 over 2 of 2 answers" in log
    report = json.loads((tmp_path / "judged" / "test_responses.json").read_text())
    assert [r["score"] for r in report["responses"]] == [60, 80] and report["judge_mean"] == 70.0


def test_ask_bad_input(capsys, tuned):
    out, _ = tuned
    code, _, err = _run(capsys, "ask", "--checkpoint", out, "   ")
    assert code == 2 and "the question is empty" in err
    code, _, err = _run(capsys, "ask", "--checkpoint", out, "--template", "nope", "Hi")
    assert code == 2 and "unknown prompt template 'nope'" in err
    for more in ([], ["--json"]):  # a question that leaves the answer no room: one line, not a crop
        code, text, err = _run(capsys, "ask", "--checkpoint", out, *more, " ".join(["colour"] * 96))
        assert code == 2 and text == "" and len(err.splitlines()) == 1, err
        assert re.fullmatch(r"gptsmith ask: error: the question takes \d+ tokens with its template, and the "
                            r"model's context is 96: no room is left for an answer \(shorten it\)\n", err)


def test_ask_warns_that_greedy_decoding_ignores_top_k_and_top_p(capsys, base):
    ask = ["ask", "--checkpoint", base, "--max-new-tokens", 2, "--top-k", 5]
    code, _, err = _run(capsys, *ask, "Hi")
    assert code == 0 and err == ("gptsmith ask: warning: --top-k shape sampling only and --temperature 0 "
                                 "decodes greedily, so they have no effect (add --temperature 0.8, say)\n")
    code, _, err = _run(capsys, *ask, "--temperature", 0.8, "Hi")
    assert code == 0 and err == ""


def test_progress_of_training_and_judging_goes_to_stderr_as_plain_lines(capsys, base, data, tmp_path):
    with stub_judge(["60", "80"]) as url:
        code, log, err = _run(capsys, "finetune", "instruct", "--checkpoint", base, "--data", data, "--out",
                              tmp_path / "judged", "--max-steps", 3, "--batch-size", 4, "--answer-tokens", 4,
                              "--device", "cpu", "--judge-url", url, "--judge-model", "judge-1")
    assert code == 0, err
    assert re.search(r"^step 3/3 \| epoch \d+ loss \d+\.\d{3} [\d.]+ examples/s$", err, re.M), err
    assert re.search(r"^judging: answer 2/2$", err, re.M), err
    assert "\r" not in err and "step 3/3" not in log and "judging" not in log
