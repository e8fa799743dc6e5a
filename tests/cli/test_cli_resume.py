"""`gptsmith train --resume` when something is off: another model asked for, a new learning rate,
a diverging run, a corrupt checkpoint, a full disk (tiny model, simple tokenizer, small corpus)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch
from training_helpers import (
    train_args,
    write_cli_inputs,
)

from gptsmith.cli import main
from gptsmith.model.checkpoint import load_model
from gptsmith.train import checkpointing as ckpt
from gptsmith.train import run_log
from gptsmith.train.schedule import lr_at_step


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))  # the subprocess reads it too
    return write_cli_inputs(tmp_path)


def one_error_line(capsys) -> str:
    """The single line a failed command printed on stderr (asserts it is one line, no traceback)."""
    err = capsys.readouterr().err
    assert err.startswith("gptsmith train: error: ") and err.count("\n") == 1, err
    return err.strip()


def test_a_run_from_before_the_optimizer_choice_resumes_with_adamw(inputs, tmp_path, capsys):
    """run.json files written before `optimizer` existed hold AdamW states: they resume as AdamW,
    and asking for Muon on resume is refused (the optimizer cannot change mid-run)."""
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--eval-every", "2",
                           "--optimizer", "adamw")) == 0
    run_json = run / "run.json"
    info = json.loads(run_json.read_text())
    del info["train"]["optimizer"]
    run_json.write_text(json.dumps(info))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress",
                 "--optimizer", "muon"]) == 2
    assert "optimizer='adamw' in the run vs 'muon' asked for" in one_error_line(capsys)
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 0
    assert (run / "latest").read_text().strip() == "checkpoints/step-000003"


def test_resume_accepts_the_runs_own_model_and_lists_what_differs(inputs, tmp_path, capsys):
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--eval-every", "2")) == 0
    resume = ["train", "--resume", str(run), "--max-steps", "2", "--no-progress"]
    capsys.readouterr()
    # The same config, context length, data (spelt another way) and --out as the run's: accepted.
    assert main([*resume, "--config", str(config), "--context-length", "32", "--data",
                 f"{corpus.parent}/./{corpus.name}", "--out", str(run)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main([*resume, "--data", "builtin"]) == 2
    assert f"data={str(corpus)!r} in the run vs 'builtin' asked for" in one_error_line(capsys)

    deeper = tmp_path / "deeper.yaml"
    deeper.write_text(config.read_text().replace("n_layers: 2", "n_layers: 3"))
    assert main([*resume, "--config", str(deeper)]) == 2
    assert one_error_line(capsys).endswith(
        f"the model config cannot change when resuming {run}: n_layers=2 in the run vs 3 asked for "
        "(drop --preset/--recipe/--config/--context-length, or start a new run with another --out)")
    assert main([*resume, "--context-length", "16"]) == 2
    assert ": context_length=32 in the run vs 16 asked for (" in one_error_line(capsys)
    assert main([*resume, "--preset", "tiny"]) == 2
    assert (": context_length=32 in the run vs 128 asked for, emb_dim=32 in the run vs 128 asked for, "
            "n_heads=2 in the run vs 4 asked for, n_layers=2 in the run vs 4 asked for, drop_rate=0.1 in "
            "the run vs 0.0 asked for (") in one_error_line(capsys)
    assert main([*resume, "--batch-size", "8", "--seed", "7"]) == 2
    assert (f"training settings cannot change when resuming {run}: batch_size=4 in the run vs 8 asked "
            "for, seed=123 in the run vs 7 asked for (only --max-steps, ") in one_error_line(capsys)
    assert main([*resume, "--out", str(tmp_path / "elsewhere")]) == 2
    assert "differs from --resume" in one_error_line(capsys)


def test_a_run_on_a_relative_corpus_path_resumes_and_evaluates_from_another_directory(
        inputs, tmp_path, capsys, monkeypatch):
    corpus, config = inputs
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert main(train_args(corpus.name, config, run, "--max-steps", "2", "--eval-every", "2")) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # where corpus.txt is not
    capsys.readouterr()
    resume = ["train", "--resume", str(run), "--no-progress"]
    assert main([*resume, "--max-steps", "3"]) == 0
    assert f"data: {corpus} (cached tokens)" in capsys.readouterr().out
    assert main([*resume, "--max-steps", "4", "--data", str(corpus)]) == 0  # its own corpus, spelt from here
    assert (run / "latest").read_text().strip() == "checkpoints/step-000004"
    assert json.loads((run / "run.json").read_text())["train"]["data"] == "corpus.txt"  # as it was given
    assert main(["eval", "--checkpoint", str(run), "--device", "cpu", "--max-batches", "1"]) == 0
    assert f"data: {corpus}" in capsys.readouterr().out


def test_a_run_whose_corpus_has_moved_resumes_from_where_data_says_it_is_now(inputs, tmp_path, capsys):
    """A corpus moved (or renamed) after the run started could not be resumed at all: without --data it
    was not found, and --data NEW was refused as another corpus. Its tokens' checksum decides."""
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--eval-every", "2")) == 0
    moved = tmp_path / "archive" / "my corpus.txt"
    moved.parent.mkdir()
    corpus.rename(moved)
    capsys.readouterr()
    resume = ["train", "--resume", str(run), "--no-progress"]
    assert main([*resume, "--max-steps", "3"]) == 2
    assert one_error_line(capsys).endswith("if the corpus has moved, pass where it is now with --data (its "
                                           "tokens are checked against the run's)")
    other = tmp_path / "other.txt"
    other.write_text(moved.read_text() + "\nOne more line.", encoding="utf-8")
    assert main([*resume, "--max-steps", "3", "--data", str(other)]) == 2  # not the same tokens
    assert "changed since" in one_error_line(capsys)
    assert main([*resume, "--max-steps", "3", "--data", str(moved)]) == 0
    assert f"note: the corpus {corpus} has moved: reading it from {moved}" in capsys.readouterr().out
    assert json.loads((run / "run.json").read_text())["train"]["data"] == str(moved)
    assert main([*resume, "--max-steps", "4"]) == 0  # from its new place from now on
    assert (run / "latest").read_text().strip() == "checkpoints/step-000004"


def test_resume_may_change_the_learning_rate_and_clipping(inputs, tmp_path, capsys):
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--eval-every", "2")) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--lr", "0.001", "--min-lr", "0.0002",
                 "--grad-clip", "0.5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ("note: --lr 0.005 -> 0.001, --min-lr lr/10 -> 0.0002, --grad-clip 1 -> 0.5 from here on: "
            "the learning-rate schedule and clipping follow the new values from this step, so the run is "
            "no longer an exact continuation") in out
    train = json.loads((run / "run.json").read_text())["train"]  # kept for the next resume
    assert (train["lr"], train["min_lr"], train["grad_clip"]) == (0.001, 0.0002, 0.5)
    lrs = {r["step"]: r["lr"] for r in run_log.read_metrics(run) if r["kind"] == "train"}
    assert lrs[3] == lr_at_step(2, peak_lr=0.001, min_lr=0.0002, warmup_steps=4, max_steps=4)


def test_a_diverging_run_stops_with_one_line_and_saves_no_checkpoint_that_gives_nan(inputs, tmp_path, capsys):
    corpus, config = inputs
    run = tmp_path / "run"
    args = train_args(corpus, config, run, "--max-steps", "4", "--lr", "1e30", "--grad-clip", "0",
                      "--checkpoint-every", "1")
    assert main(args) == 2
    error = one_error_line(capsys)
    # The weights of step 1 are finite but give NaN: they are not saved (latest never names them).
    assert "the model's output became nan after the update of step 1; stopped without saving" in error
    assert error.endswith(f"no checkpoint was written yet (start again with --out {run} --overwrite and a "
                          "lower --lr than 1e+30 and --grad-clip 1)")
    assert ckpt.read_pointer(run, "latest") is None and not ckpt.list_checkpoints(run)
    # What the message says to do works.
    fixed = [*args[:-6], "--lr", "1e-3", "--grad-clip", "1", "--checkpoint-every", "1", "--overwrite"]
    assert main(fixed) == 0
    assert ckpt.read_pointer(run, "latest") == "checkpoints/step-000004"


def test_fallback_from_the_command_line_trims_metrics_and_samples(inputs, tmp_path, capsys):
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "4", "--eval-every", "2",
                           "--sample-every", "1")) == 0
    weights = run / "checkpoints" / "step-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    error = one_error_line(capsys)
    assert "step-000004/model.safetensors" in error and "resume with --fallback" in error

    assert main(["train", "--resume", str(run), "--fallback", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "skipped a bad checkpoint" in out and "from step 2" in out
    assert (run / "checkpoints" / "corrupt-step-000004").is_dir()
    assert ckpt.read_pointer(run, "latest") == "checkpoints/step-000004" and load_model(run)
    assert ckpt.is_complete(run / ckpt.read_pointer(run, "best"))
    # Steps 3 and 4 ran twice; each appears once, in order, in the metrics and the samples.
    assert [r["step"] for r in run_log.read_metrics(run) if r["kind"] == "train"] == [1, 2, 3, 4]
    headers = [line for line in (run / "samples.txt").read_text().splitlines() if line.startswith("--- step")]
    assert [int(h.split()[2]) for h in headers] == [1, 2, 3, 4]

    (run / "latest").write_text("checkpoints/step-999999\n")  # names a checkpoint that is gone
    # Nothing is lost: the newest good checkpoint is found (no --fallback needed; see test_recovery.py).
    assert main(["train", "--resume", str(run), "--max-steps", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "step-999999', which is gone); resuming from the newest good one, checkpoints/step-000004" in out
    assert "from step 4" in out
    assert ckpt.read_pointer(run, "latest") == "checkpoints/step-000005"


class CtrlCWhileSaving:
    """A file for torch.save whose first write brings a Ctrl-C (stop after this step) and whose
    second brings another (abort): torch reports the KeyboardInterrupt as its own RuntimeError."""

    def __init__(self, file):
        self.file, self.writes = file, 0

    def write(self, data):
        self.writes += 1
        if self.writes <= 2:
            os.kill(os.getpid(), signal.SIGINT)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_second_ctrl_c_while_saving_aborts_and_says_how_to_start_again(inputs, tmp_path, capsys,
                                                                          monkeypatch):
    corpus, config = inputs
    run = tmp_path / "run"
    save = torch.save
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", lambda obj, f, *a, **k: save(obj, CtrlCWhileSaving(f), *a, **k))
        assert main(train_args(corpus, config, run, "--max-steps", "2")) == 130  # the first save, at step 2
    no_checkpoint = (f"{run} has no checkpoint (the run stopped before its first one was saved): start it "
                     f"again with `gptsmith train --out {run} --overwrite` and the same settings")
    assert capsys.readouterr().err.splitlines() == [f"gptsmith train: {no_checkpoint}",
                                                    "gptsmith train: interrupted"]
    assert list((run / "checkpoints").iterdir()) == []  # the partial checkpoint is gone
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert one_error_line(capsys) == f"gptsmith train: error: {no_checkpoint}"
    assert main(train_args(corpus, config, run, "--max-steps", "2")) == 2
    assert one_error_line(capsys).endswith("already holds a run, with no checkpoint (it stopped before its "
                                           "first one was saved): replace it with --overwrite, or choose "
                                           "another --out")
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--overwrite")) == 0
    assert ckpt.read_pointer(run, "latest") == "checkpoints/step-000002"


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_resumes(inputs, tmp_path, capsys):
    corpus, config = inputs
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "2", "--checkpoint-every", "1")) == 0
    limit = (run / "checkpoints" / "step-000002" / "model.safetensors").stat().st_size // 2

    def full_disk() -> None:  # what `trap '' XFSZ; ulimit -f` does: a write past the limit fails
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    command = [sys.executable, "-m", "gptsmith", "train", "--resume", str(run), "--max-steps", "4",
               "--checkpoint-every", "1", "--no-progress"]
    proc = subprocess.run(command, preexec_fn=full_disk, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"gptsmith train: error: cannot save checkpoint {run}/checkpoints/step-000003: disk full (File too "
        f"large); the previous checkpoint {run}/checkpoints/step-000002 is intact (free some space, then "
        f"resume with --resume {run})"]
    assert ckpt.read_pointer(run, "latest") == "checkpoints/step-000002"
    assert not (run / "checkpoints" / "step-000003").exists()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]) == 0
    assert "from step 2" in capsys.readouterr().out
    assert ckpt.read_pointer(run, "latest") == "checkpoints/step-000004"
