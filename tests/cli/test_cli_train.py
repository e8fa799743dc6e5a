"""`gptsmith train` and `gptsmith eval` end to end (tiny model, simple tokenizer, small corpus)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from training_helpers import (
    train_args,
    write_cli_inputs,
)

from gptsmith.cli import main
from gptsmith.data.tokenizer import SimpleTokenizerV2
from gptsmith.model.checkpoint import load_model


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    return write_cli_inputs(tmp_path)




def test_train_eval_and_resume_from_the_command_line(inputs, tmp_path, capsys):
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "20", "--eval-every", "10")) == 0
    out = capsys.readouterr().out
    assert f"data: {corpus} (tokenizing with simple; cached for the next runs)" in out
    assert "step     0 | train loss" in out and "step    20 | train loss" in out
    assert "sample: " in out and f"gptsmith generate --checkpoint {run}" in out
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in evals if r["kind"] == "eval"]
    assert val[-1] < val[0] - 1.0  # validation loss falls
    for name in ("run.json", "latest", "best", "loss.png", "samples.txt", "checkpoints/step-000020"):
        assert (run / name).exists(), name
    vocab_size = load_model(run).cfg.vocab_size
    assert vocab_size == SimpleTokenizerV2.from_text(corpus.read_text()).vocab_size  # the corpus's words
    assert (run / "latest").read_text().strip() in {"checkpoints/step-000020"}
    assert json.loads((run / "checkpoints/step-000020/vocab.json").read_text())["tokenizer"] == "simple"
    # generate rebuilds the run's own vocabulary (the built-in corpus's would not fit the model)
    assert main(["generate", "--checkpoint", str(run), "--max-new-tokens", "4", "--json", "The module"]) == 0
    sample = json.loads(capsys.readouterr().out)["samples"][0]
    assert sample["new_tokens"] == 4 or sample["stop_reason"] == "eos"

    assert main(["eval", "--checkpoint", str(run), "--max-batches", "2"]) == 0
    out = capsys.readouterr().out
    val_line = next(line for line in out.splitlines() if line.strip().startswith("val:"))
    loss = float(val_line.split("loss")[1].split()[0])
    assert loss < math.log(vocab_size) - 1.0 and "perplexity" in val_line and "(2 batches of " in val_line
    assert main(["eval", "--checkpoint", str(run), "--max-batches", "1"]) == 0
    assert "(1 batch of " in capsys.readouterr().out

    assert main(["train", "--resume", str(run), "--max-steps", "25", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and f"data: {corpus} (cached tokens)" in out and "tokenizing" not in out
    assert (run / "latest").read_text().strip() == "checkpoints/step-000025"


@pytest.mark.parametrize("flags, trimmed", [([], True), (["--no-trim-vocab"], False)])
def test_the_default_recipe_trains_the_head_on_the_corpus_tokens_unless_asked_not_to(inputs, tmp_path, capsys,
                                                                                     flags, trimmed):
    import torch

    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "3", *flags)) == 0
    out = capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["train"]["trim_vocab"] is trimmed and ("head trained on the" in out) is trimmed
    weight = load_model(run).out_head.weight.detach()
    distinct_rows = torch.unique(weight, dim=0).shape[0]
    if trimmed:  # the saved model: one row per used token, and one shared by all the others
        used, vocab_size = info["trim_vocab"]["used_tokens"], info["trim_vocab"]["vocab_size"]
        assert f"the {used:,} tokens the training split uses; the other {vocab_size - used:,} share" in out
        assert used < vocab_size == weight.shape[0] and distinct_rows == used + 1
    else:
        assert "trim_vocab" not in info and distinct_rows == weight.shape[0]


def test_eval_on_text_a_word_level_vocabulary_lacks_says_how_much_is_unk(inputs, tmp_path, capsys):
    """Words a simple tokenizer never learnt all become <|unk|>, one easy token: the loss was printed
    as if the model understood the text."""
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "1")) == 0
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("Zyx qwv plorf the module. " * 200 + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(unseen), "--max-batches", "1"]) == 0
    err = capsys.readouterr().err
    assert f"gptsmith eval: warning: 50% of the tokens of {unseen} are <|unk|> (words the model's " \
        "vocabulary lacks)" in err
    assert main(["eval", "--checkpoint", str(run), "--max-batches", "1"]) == 0  # its own corpus: every word
    assert "<|unk|>" not in capsys.readouterr().err


def test_eval_of_a_jsonl_run_on_plain_text_does_not_warn_of_the_runs_text_field(inputs, tmp_path, capsys):
    """The run's --text-field was applied to any --data: plain text warned of a field nobody gave."""
    corpus, config = inputs
    records = tmp_path / "records.jsonl"
    parts = corpus.read_text().split("\n\n")
    records.write_text("".join(json.dumps({"body": part}) + "\n" for part in parts))
    run = tmp_path / "run"
    assert main(train_args(records, config, run, "--max-steps", "1", "--text-field", "body")) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(corpus), "--max-batches", "1"]) == 0
    assert "text field" not in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(run), "--max-batches", "1"]) == 0  # its own records: 'body'
    assert f"data: {records}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "0"], "--lr must be > 0, got 0.0"),
        (["--lr", "-0.1"], "--lr must be > 0"),
        (["--batch-size", "5000"], "fewer than one batch of 5000"),
        (["--context-length", "100000"], "a training step needs about 4.1 TiB"),  # refused before the data
        (["--preset", "nope"], "unknown model preset 'nope'"),
        (["--recipe", "nope"], "unknown recipe 'nope'"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--min-lr", "nan"], "--min-lr must be a finite number"),
        (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
        (["--label-smoothing", "1"], "--label-smoothing must be >= 0 and < 1, got 1.0"),
        (["--keep-last", "0"], "--keep-last must be > 0"),
        (["--muon-ns-steps", "0"], "--muon-ns-steps must be > 0, got 0"),
        (["--eval-batches", "0"], "--eval-batches must be > 0"),
        (["--val-fraction", "1.5"], "--val-fraction must be more than 0 and less than 1"),
        (["--fallback"], "--fallback only applies with --resume RUN_DIR"),
        (["--data", ""], "the corpus name is empty (pass a corpus name or path"),
        (["--data", "nonexist.txt"], "corpus not found: nonexist.txt"),
        (["--out", ""], "--out is empty (pass a run directory"),
        (["--resume", ""], "--resume is empty (pass a run directory"),
    ],
)
def test_bad_train_flags_are_one_line_errors(inputs, tmp_path, capsys, extra, message):
    corpus, config = inputs
    assert main(train_args(corpus, config, tmp_path / "bad", "--max-steps", "2", *extra)) == 2
    out, err = capsys.readouterr()
    assert err.startswith("gptsmith train: error: ") and message in err and "Traceback" not in err
    if extra[0] == "--data":
        assert "data:" not in out  # said only once the corpus resolved
    assert not (tmp_path / "bad").exists()


def test_existing_run_and_resume_flags_are_checked(inputs, tmp_path, capsys):
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--eval-every", "2")) == 0
    assert main(train_args(corpus, config, run, "--max-steps", "2")) == 2
    assert "already holds a run (continue it with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--batch-size", "8"]) == 2
    assert "batch_size=4 in the run vs 8 asked for" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--overwrite"]) == 2
    assert "--overwrite cannot be used with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing")]) == 2
    assert "run.json not found" in capsys.readouterr().err
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--eval-every", "2", "--overwrite")) == 0
    capsys.readouterr()
    run_json = (run / "run.json").read_bytes()
    assert main(["train", "--resume", str(run), "--max-steps", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out == (f"nothing to do: {run} is already at step 2 >= --max-steps 1 (pass a "
                                       "larger --max-steps to train it further)\n")
    assert (run / "run.json").read_bytes() == run_json  # its max_steps stays 2
    saved = json.loads(run_json)
    for broken, message in (
        ({"model": saved["model"]}, 'run.json has no "train" section'),
        ({**saved, "model": {"layers": 2}}, "unknown GPTConfig field(s)"),
        ({**saved, "train": {**saved["train"], "batch_size": "eight"}},
         "run.json holds a value that cannot work (--batch-size must be a whole number"),
    ):
        (run / "run.json").write_text(json.dumps(broken), encoding="utf-8")
        assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    (run / "run.json").write_bytes(run_json)


def fake_run(run_dir: Path) -> dict[str, bytes]:
    """A run directory's files (as bytes by name): enough to count as a run, and to see any deletion."""
    (run_dir / "checkpoints" / "step-000002").mkdir(parents=True)
    files = {"run.json": b"{}", "latest": b"checkpoints/step-000002\n", "metrics.jsonl": b"{}\n",
             "checkpoints/step-000002/config.json": b"{}"}
    for name, data in files.items():
        (run_dir / name).write_bytes(data)
    return files


@pytest.mark.parametrize(("extra", "message"), [
    (["--data", "nonexist.txt"], "corpus not found: nonexist.txt"),
    (["--batch-size", "1000"], "fewer than one batch of 1000"),
    (["--device", "cuda"], "--device cuda asked for, but PyTorch sees no CUDA GPU"),
])
def test_overwrite_checks_every_argument_before_deleting_the_old_run(inputs, tmp_path, capsys, monkeypatch,
                                                                     extra, message):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    corpus, config = inputs
    run = tmp_path / "run"
    files = fake_run(run)
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--overwrite", *extra)) == 2
    assert message in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in files} == files  # the old run is untouched


def test_overwrite_replaces_only_the_run_files(inputs, tmp_path, capsys):
    corpus, config = inputs
    run = tmp_path / "run"
    fake_run(run)
    (run / "notes.txt").write_text("mine")
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--overwrite")) == 0
    assert f"--overwrite: deleted the old run's files in {run}" in capsys.readouterr().out
    assert (run / "notes.txt").read_text() == "mine"  # not a run file: kept
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000002"]  # the new run's
    assert json.loads((run / "run.json").read_text())["model"]


def test_out_must_be_a_new_or_empty_folder_or_a_run(inputs, tmp_path, capsys):
    corpus, config = inputs
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "letter.txt").write_text("Dear ...")
    for overwrite in ([], ["--overwrite"]):  # --overwrite never deletes what is not a run
        assert main(train_args(corpus, config, documents, "--max-steps", "2", *overwrite)) == 2
        assert capsys.readouterr().err == (
            f"gptsmith train: error: --out {documents} is a folder that holds files but no run (no "
            "run.json); pick a new or empty folder (--overwrite only ever replaces a run)\n")
    assert [p.name for p in documents.iterdir()] == ["letter.txt"]
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"  # a checkpoint is not a run either
    fake_run(tmp_path / "run")
    assert main(train_args(corpus, config, checkpoint, "--max-steps", "2", "--overwrite")) == 2
    assert f"--out {checkpoint} is a folder that holds files but no run" in capsys.readouterr().err
    assert [p.name for p in checkpoint.iterdir()] == ["config.json"]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("run.yaml", "model:\n  preset: tiny\n n_layers: 2\n", "cannot parse config file {path} at line 3, "
     "column 2: expected <block end>, but found '<block mapping start>'"),
    ("run.json", '{"model": {"preset": "tiny",}}', "cannot parse config file {path} at line 1, column 29: "
     "Expecting property name enclosed in double quotes"),
    ("run.yaml", "model:\n  n_layer: 2\n", "unknown GPTConfig field(s) in {path} (model:): n_layer (known: "),
    ("run.yaml", "train:\n  batch: 2\n", "unknown TrainConfig field(s) in {path}: batch (known: "),
    ("run.yaml", "model: tiny\n", "{path}: `model:` must hold a mapping of field names to values, got "
     "'tiny'"),
    ("configs", None, "config file {path} is a directory (pass a .yaml or .json file)"),
])
def test_config_file_errors_name_the_file(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.mkdir() if text is None else path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gptsmith train: error: {message.format(path=path)}") and err.count("\n") == 1


def test_train_and_eval_help_describe_every_flag(capsys):
    for verb in ("train", "eval"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    device_help = "auto (default: CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps"
    assert f"--device DEVICE where to train: {device_help}" in text
    assert ("(default: 'The module' on the recipe's own corpus; on any other corpus the sample is "
            "unprompted)") in text
    assert "Score a checkpoint (or an untrained preset) on the train and validation splits" in text
    assert "--batch-size BATCH_SIZE sequences per batch (default: 8)" in text
    assert "--checkpoint-every CHECKPOINT_EVERY steps between checkpoints; 0 = only at the end" in text
    assert f"--device DEVICE {device_help}" in text.split("Score a checkpoint")[1]
    assert "--seed SEED seed of the untrained weights with --preset (default: 123)" in text


@pytest.mark.parametrize(("extra", "message"), [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--max-batches", "0"], "--max-batches must be >= 1, got 0"),
    (["--val-fraction", "0"], "--val-fraction must be more than 0 and less than 1, got 0.0"),
    (["--data", "{short}", "--context-length", "128"],
     "fewer than one window of 128 + 1 (raise --val-fraction, now 0.1, or lower --context-length)"),
])
def test_bad_eval_flags_are_one_line_errors(tmp_path, capsys, extra, message, request):
    if "{short}" in extra:  # a file of the user's own is encoded with GPT-2 BPE
        request.getfixturevalue("gpt2_tokenizer")
    short = tmp_path / "short.txt"
    short.write_text("the cat sat on the mat. " * 60)  # ~420 tokens: 10% holds no window of 129
    extra = [arg.format(short=short) for arg in extra]
    assert main(["eval", "--preset", "tiny", "--data", "builtin", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptsmith eval: error: ") and message in err and "Traceback" not in err


def test_eval_of_a_preset_takes_any_context_up_to_the_presets_own(gpt2_tokenizer, tmp_path, monkeypatch,
                                                                    capsys):
    """--preset caps the *default* context at 256; an asked-for --context-length may go up to the
    preset's own (gpt2-small's 1024), and beyond it the error names the preset's, not the cap."""
    from gptsmith.model.config import PRESETS, GPTConfig

    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(PRESETS, "long", GPTConfig(context_length=512, emb_dim=16, n_heads=2, n_layers=1))
    corpus = tmp_path / "cats.txt"
    corpus.write_text("the cat sat on the mat. " * 600)  # ~4,200 tokens: 420 for validation
    argv = ["eval", "--preset", "long", "--data", str(corpus), "--max-batches", "1", "--batch-size", "1",
            "--device", "cpu"]
    assert main([*argv, "--context-length", "300"]) == 0
    assert "(1 batch of 1x300 tokens)" in capsys.readouterr().out
    assert main(argv) == 0
    assert "(1 batch of 1x256 tokens)" in capsys.readouterr().out
    assert main([*argv, "--context-length", "513"]) == 2
    assert "error: --context-length 513 exceeds the long preset's 512\n" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_of_an_untrained_gpt2_small_is_about_ln_vocab(shared_data, gpt2_bpe_dir, monkeypatch, capsys):
    monkeypatch.setenv("GPTSMITH_GPT2_BPE", str(gpt2_bpe_dir))
    monkeypatch.setenv("GPTSMITH_DATA_DIR", str(shared_data))
    args = ["eval", "--preset", "gpt2-small", "--data", str(shared_data / "the-verdict.txt"),
            "--max-batches", "1", "--batch-size", "2", "--context-length", "64", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    val_line = next(line for line in out.splitlines() if line.strip().startswith("val:"))
    assert 10.7 < float(val_line.split("loss")[1].split()[0]) < 11.5
    assert "ln(50257) = 10.82" in out


def test_sample_prompt_follows_the_data(tmp_path):
    from gptsmith.cli import build_parser
    from gptsmith.cli.train_configs import build_configs

    def prompt(*argv):
        return build_configs(build_parser().parse_args(["train", *argv]))[1].sample_prompt

    assert prompt() == "The module"  # the default recipe, on its own corpus
    assert prompt("--recipe", "the-verdict") == "Every effort moves you"
    assert prompt("--data", "notes.txt") == ""  # another corpus: an unprompted sample
    assert prompt("--data", "notes.txt", "--prompt", "Dear diary") == "Dear diary"
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  data: notes.txt\n  sample_prompt: Hello\n")
    assert prompt("--config", str(config)) == "Hello"


def test_a_split_far_from_val_fraction_is_noted(inputs, tmp_path, capsys):
    corpus, config = inputs
    documents = tmp_path / "docs"
    documents.mkdir()
    text = corpus.read_text()
    (documents / "a.txt").write_text(text[: len(text) // 2])  # two halves: the cut falls between them
    (documents / "b.txt").write_text(text[len(text) // 2:])
    assert main(train_args(documents, config, tmp_path / "run", "--max-steps", "1")) == 0
    out = capsys.readouterr().out
    assert "note: validation is " in out and "not the --val-fraction 10%" in out


def test_a_target_batch_the_micro_batches_cannot_make_is_noted(inputs, tmp_path, capsys):
    corpus, config = inputs
    args = train_args(corpus, config, tmp_path / "run", "--max-steps", "1", "--target-batch-tokens", "5")
    assert main(args) == 0  # 4 sequences x 32 tokens: one micro-batch is already 128 tokens
    assert ("note: --target-batch-tokens 5 gives steps of 128 tokens: 1 micro-batch(es)"
            in capsys.readouterr().out)


def test_a_jsonl_corpus_with_its_text_in_another_field(inputs, tmp_path, capsys):
    corpus, config = inputs
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "body": line}) + "\n"
                             for i, line in enumerate(corpus.read_text().splitlines()) if line.strip()))
    run = tmp_path / "run"
    assert main(train_args(jsonl, config, run, "--max-steps", "2")) == 2  # the default field is `text`
    err = capsys.readouterr().err
    assert "no field 'text' (found: id, body; pick the text's field with --text-field)" in err
    assert main(train_args(jsonl, config, run, "--max-steps", "2", "--text-field", "body")) == 0
    assert json.loads((run / "run.json").read_text())["train"]["text_field"] == "body"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--max-batches", "1"]) == 0  # the run's field
    assert "val:" in capsys.readouterr().out


def test_context_length_flag_beats_a_config_files_window_length(inputs, tmp_path, capsys):
    corpus, _ = inputs
    config = tmp_path / "windows.yaml"
    config.write_text("model:\n  preset: tiny\n  emb_dim: 32\n  n_heads: 2\n  n_layers: 1\n"
                      "train:\n  context_length: 64\n  batch_size: 2\n  eval_batches: 1\n")
    run = tmp_path / "run"
    # The flag sets the model's context and the windows (it failed: "--context-length 64 is longer...")
    assert main(train_args(corpus, config, run, "--context-length", "16", "--max-steps", "1")) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["context_length"] == 16 and info["train"]["context_length"] in (None, 16)
