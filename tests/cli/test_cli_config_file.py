"""`gptsmith train --config FILE`: a value of the file that cannot work is one line that names the
file, the dotted key and the fix, wherever it is found out (a run's settings, its preset, its
corpus, its device, a resume); the model's vocabulary size is the tokenizer's, never the file's
(tiny model, simple tokenizer, small corpus)."""

from __future__ import annotations

import pytest
import torch
from training_helpers import train_args, write_cli_inputs

from gptsmith.cli import main
from gptsmith.data.tokenizer import SimpleTokenizerV2
from gptsmith.model.checkpoint import load_model


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    return write_cli_inputs(tmp_path)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("gptsmith train: error: ") and err.count("\n") == 1, err
    return err.strip().removeprefix("gptsmith train: error: ")


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  lr: -1\n",
     "{path}: train.lr must be > 0, got -1 (fix it in the file, or override it with --lr)"),
    ("train:\n  dtype: fp64\n",
     "{path}: train.dtype: unknown dtype 'fp64' (choose from auto, bf16, fp32; bfloat16 and float32 work "
     "too) (fix it in the file, or override it with --dtype)"),
    ("model:\n  preset: tiny\n  n_heads: 0\n",
     "{path}: model.n_heads must be a positive integer, got 0 (fix it in the file)"),
    ("model:\n  n_heads: 3\n",  # the preset's emb_dim (128) is checked against the file's n_heads
     "{path}: model.n_heads: emb_dim (128) must be divisible by n_heads (3); try n_heads=2 "
     "(fix it in the file)"),
    ("model:\n  preset: tiny\n  context_length: 0\n", "{path}: model.context_length must be a positive "
     "integer, got 0 (fix it in the file, or override it with --context-length)"),
    ("model:\n  preset: nope\n",
     "{path}: model.preset: unknown model preset 'nope' (known: gpt2-small, gpt2-medium, gpt2-large, "
     "gpt2-xl, tiny, small) (fix it in the file, or override it with --preset)"),
    ("train:\n  device: gpu\n",
     "{path}: train.device: unknown device 'gpu' (choose from auto, cpu, cuda, cuda:N, mps) (fix it in the "
     "file, or override it with --device)"),
    ("train:\n  tokenizer: bert\n",
     "{path}: train.tokenizer: unknown tokenizer 'bert' (known: gpt2, simple) (fix it in the file, or "
     "override it with --tokenizer)"),
    ("train:\n  tokenizer: simple-v1\n",
     "{path}: train.tokenizer: tokenizer 'simple-v1' cannot tokenize a corpus: it has no <|endoftext|> to "
     "put between documents (use --tokenizer simple, which adds it) (fix it in the file, or override it "
     "with --tokenizer)"),
    ("train:\n  betas: 0.9\n",
     "{path}: train.betas must be two numbers in [0, 1), e.g. [0.9, 0.95], got 0.9 (fix it in the file)"),
    ("train:\n  betas: [0.9]\n", "{path}: train.betas must be two numbers in [0, 1), e.g. [0.9, 0.95], "
     "got (0.9,) (fix it in the file)"),
    ("train:\n  betas: [0.9, 2]\n", "{path}: train.betas must be two numbers in [0, 1), e.g. [0.9, 0.95], "
     "got (0.9, 2) (fix it in the file)"),
    ("train:\n  sample_temperature: -1\n",
     "{path}: train.sample_temperature must be >= 0 (0 = greedy), got -1 (fix it in the file)"),
    ("train:\n  sample_tokens: -5\n",
     "{path}: train.sample_tokens must be >= 0, got -5 (fix it in the file)"),
    ("train:\n  sample_prompt: 123\n",
     "{path}: train.sample_prompt must be a string, got 123 (fix it in the file, or override it with "
     "--prompt)"),
    ("train:\n  tokenizer: 7\n",
     "{path}: train.tokenizer must be a string, got 7 (fix it in the file, or override it with --tokenizer)"),
    ("train:\n  compile: 'yes'\n",
     "{path}: train.compile must be true or false, got 'yes' (fix it in the file, or override it with "
     "--compile)"),
])
def test_a_config_files_bad_value_names_the_file_and_key(text, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"gptsmith train: error: {message.format(path=path)}\n"


def test_a_flag_over_a_bad_file_value_is_the_flag_that_is_named(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: -1\n  max_steps: 10\n")
    assert main(["train", "--config", str(path), "--lr", "-2", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "gptsmith train: error: --lr must be > 0, got -2.0\n"


def test_a_corpus_path_from_the_file_is_blamed_on_the_file(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  data: no/such/notes.txt\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    error = one_error_line(capsys)
    assert error.startswith(f"{path}: train.data: corpus not found: no/such/notes.txt (pass an existing ")
    assert error.endswith("(fix it in the file, or override it with --data)")
    flag = ["--data", "no/such/other.txt"]
    assert main(["train", "--config", str(path), *flag, "--out", str(tmp_path / "run")]) == 2
    assert one_error_line(capsys).startswith("corpus not found: no/such/other.txt (")  # the flag's own value


def test_a_device_from_the_file_that_is_not_here_is_blamed_on_the_file(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    corpus, config = inputs
    config.write_text(config.read_text() + "  device: cuda\n")
    argv = ["train", "--data", str(corpus), "--tokenizer", "simple", "--config", str(config), "--out",
            str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    assert one_error_line(capsys) == (f"{config}: train.device cuda asked for, but PyTorch sees no CUDA GPU "
                                      "(use --device cpu or auto) (fix it in the file, or override it with "
                                      "--device)")
    assert not (tmp_path / "run").exists()


def test_a_vocab_size_in_the_file_must_be_the_tokenizers(inputs, tmp_path, capsys):
    corpus, config = inputs
    words = SimpleTokenizerV2.from_text(corpus.read_text()).vocab_size
    tiny = config.read_text()
    config.write_text(tiny.replace("  preset: tiny\n", "  preset: tiny\n  vocab_size: 100\n"))
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "1")) == 2
    refused = (f"{config}: model.vocab_size 100 does not match the simple tokenizer's {words} (remove it "
               "from the file: the tokenizer sets the vocabulary size)")
    assert one_error_line(capsys) == refused  # not quietly replaced: the file asked for another model
    assert not run.exists()
    config.write_text(tiny.replace("  preset: tiny\n", f"  preset: tiny\n  vocab_size: {words}\n"))
    assert main(train_args(corpus, config, run, "--max-steps", "1", "--eval-every", "1")) == 0
    assert load_model(run).cfg.vocab_size == words
    capsys.readouterr()
    # A resume is checked the same way (the run's vocabulary is its tokenizer's), and so are other values.
    config.write_text(tiny.replace("  preset: tiny\n", "  preset: tiny\n  vocab_size: 100\n"))
    resume = ["train", "--resume", str(run), "--config", str(config), "--max-steps", "2", "--no-progress"]
    assert main(resume) == 2
    assert one_error_line(capsys) == refused
    config.write_text(tiny + "  device: gpu\n")
    assert main(resume) == 2
    assert one_error_line(capsys).startswith(f"{config}: train.device: unknown device 'gpu' (choose from ")


def test_max_steps_on_the_command_line_replaces_a_files_time_budget(inputs, tmp_path, capsys):
    """Flags win over the file, --max-steps too: the file's budget silently outranked it (a run
    asked for 1 step trained for the file's hour)."""
    from gptsmith.cli import build_parser
    from gptsmith.cli.train_configs import build_configs

    corpus, config = inputs
    config.write_text(config.read_text() + "  time_budget: 1h\n", encoding="utf-8")

    def train_cfg(*extra: str):
        args = build_parser().parse_args(train_args(corpus, config, tmp_path / "run", *extra))
        return build_configs(args)[1]

    assert train_cfg("--max-steps", "1").time_budget is None and train_cfg("--max-steps", "1").max_steps == 1
    assert train_cfg().time_budget == "1h"  # the file's budget, when no flag says otherwise
    assert train_cfg("--time-budget", "2m").time_budget == "2m"
    config.write_text(config.read_text() + "  max_steps: 5\n", encoding="utf-8")  # both in the file
    assert main(train_args(corpus, config, tmp_path / "run")) == 2
    assert one_error_line(capsys) == (f"{config}: give train.max_steps or train.time_budget, not both (the "
                                      "budget chooses the steps)")
