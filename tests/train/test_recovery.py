"""A run whose `latest` pointer is missing or broken is recovered from its newest good checkpoint,
by `train --resume`, `generate` and `info` alike; a `latest` that names an incomplete checkpoint is
the same one-line error for every command, naming the older one to use; no message ever advises
`--overwrite` while a loadable checkpoint exists (tiny model, simple tokenizer, small corpus)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from training_helpers import train_args, write_cli_inputs

from gptsmith.cli import main
from gptsmith.data.tokenizer import load_tokenizer
from gptsmith.model.checkpoint import load_model, resolve_model_dir, save_model
from gptsmith.train import checkpointing as ckpt
from gptsmith.train.run_dir import resume_advice


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(corpus, config, run) of a 4-step run with checkpoints at steps 2 and 4 (made once)."""
    root = tmp_path_factory.mktemp("recovery")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTSMITH_CACHE_DIR", str(root / "cache"))
        corpus, config = write_cli_inputs(root)
        run = root / "run"
        assert main(train_args(corpus, config, run, "--max-steps", "4", "--checkpoint-every", "2",
                               "--eval-every", "4")) == 0
    return corpus, config, run


@pytest.fixture
def run_copy(trained, tmp_path, monkeypatch) -> Path:
    """A private copy of the trained run (each test breaks it its own way)."""
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(trained[2].parent / "cache"))
    run = tmp_path / "run"
    shutil.copytree(trained[2], run)
    return run


def one_error_line(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"gptsmith {verb}: error: ") and err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("breakage", ["deleted", "empty", "garbage", "points nowhere"])
def test_a_run_with_a_broken_latest_resumes_from_its_newest_good_checkpoint(run_copy, capsys, breakage):
    latest = run_copy / "latest"
    if breakage == "deleted":
        latest.unlink()
    elif breakage == "empty":
        latest.write_text("")
    elif breakage == "garbage":
        latest.write_bytes(b"\xff\xfe\x00junk")
    else:
        latest.write_text("checkpoints/step-000099\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy), "--max-steps", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{run_copy}/latest names no checkpoint" in out and "checkpoints/step-000004" in out
    assert f"resuming {run_copy} from step 4" in out
    assert ckpt.read_pointer(run_copy, "latest") == "checkpoints/step-000006"
    assert (run_copy / "checkpoints" / "step-000004").is_dir()  # nothing was deleted


def test_generate_and_info_use_the_newest_good_checkpoint_and_say_so(run_copy, capsys):
    (run_copy / "latest").unlink()
    (run_copy / "checkpoints" / "step-000004" / "config.json").unlink()  # an interrupted save
    capsys.readouterr()
    assert main(["info", str(run_copy)]) == 0
    captured = capsys.readouterr()
    assert "checkpoints/step-000002" in captured.out
    assert f"{run_copy}/latest names no checkpoint (it is missing or unreadable); using the newest " \
        "complete one, checkpoints/step-000002" in captured.err
    assert main(["generate", "--checkpoint", str(run_copy), "--max-new-tokens", "3", "--device", "cpu",
                 "the"]) == 0
    assert "checkpoints/step-000002" in capsys.readouterr().err


def loaders(run: Path, corpus: Path) -> dict[str, list[str]]:
    """A command line of every verb that loads a run's latest checkpoint as a model."""
    return {"eval": ["eval", "--checkpoint", str(run), "--data", str(corpus), "--device", "cpu",
                     "--max-batches", "1", "--batch-size", "1"],
            "info": ["info", str(run)],
            "generate": ["generate", "--checkpoint", str(run), "--device", "cpu", "--max-new-tokens", "2",
                         "the"]}


@pytest.mark.parametrize("missing", ["model.safetensors", "config.json"])
def test_an_incomplete_latest_checkpoint_is_one_error_for_every_command(trained, run_copy, capsys, missing):
    """Not used quietly (eval, info and generate fell back to an older step with a warning that
    called the folder gone, or failed with no way on, while --resume refused): each says what is
    missing and names the newest complete checkpoint, and the way on it names works."""
    newest, older = (run_copy / "checkpoints" / step for step in ("step-000004", "step-000002"))
    (newest / missing).unlink()
    problem = (f"the latest checkpoint {newest} has no {missing} (its save was cut short, or a file was "
               "deleted; ")
    capsys.readouterr()
    for verb, argv in loaders(run_copy, trained[0]).items():
        assert main(argv) == 2, verb
        assert one_error_line(capsys, verb) == (f"gptsmith {verb}: error: {problem}load the newest complete "
                                                f"one, {older}, instead, or restore it)")
    assert main(["train", "--resume", str(run_copy), "--max-steps", "6", "--no-progress"]) == 2
    assert one_error_line(capsys, "train") == (f"gptsmith train: error: {problem}resume from the newest "
                                               "complete one, checkpoints/step-000002, with --fallback, or "
                                               "restore it)")
    assert main(loaders(older, trained[0])["info"]) == 0
    assert main(["train", "--resume", str(run_copy), "--max-steps", "6", "--no-progress", "--fallback"]) == 0
    assert f"resuming {run_copy} from step 2" in capsys.readouterr().out


def test_an_incomplete_latest_with_no_older_checkpoint_says_to_restore_it(trained, run_copy, capsys):
    for step in ("step-000002", "step-000004"):
        (run_copy / "checkpoints" / step / "model.safetensors").unlink()
    problem = (f"the latest checkpoint {run_copy}/checkpoints/step-000004 has no model.safetensors (its save "
               "was cut short, or a file was deleted; ")
    capsys.readouterr()
    assert main(loaders(run_copy, trained[0])["info"]) == 2
    assert one_error_line(capsys, "info") == (f"gptsmith info: error: {problem}restore it: the run has no "
                                              "other complete checkpoint)")
    assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 2
    assert one_error_line(capsys, "train") == (f"gptsmith train: error: {problem}restore it, or start the "
                                               f"run again with --out {run_copy} --overwrite)")


def test_a_latest_checkpoint_without_its_training_state_still_loads_as_a_model(trained, run_copy, capsys):
    (run_copy / "checkpoints" / "step-000004" / "training_state.pt").unlink()
    capsys.readouterr()
    assert main(loaders(run_copy, trained[0])["info"]) == 0  # a model needs only config.json + weights
    assert "step-000004" in capsys.readouterr().out
    assert main(["train", "--resume", str(run_copy), "--max-steps", "6", "--no-progress"]) == 2
    assert one_error_line(capsys, "train").endswith(
        "has no training_state.pt (its save was cut short, or a file was deleted; resume from the newest "
        "complete one, checkpoints/step-000002, with --fallback, or restore it)")


def test_no_advice_to_overwrite_while_a_checkpoint_loads(run_copy, capsys):
    (run_copy / "latest").unlink()
    capsys.readouterr()
    # What a stopped run says: resume it (the newest good checkpoint is found), never overwrite it.
    assert resume_advice(run_copy).endswith(f"(continue with: gptsmith train --resume {run_copy})")
    # With every checkpoint incomplete there is nothing to load: then (only then) start again.
    for step in ("step-000002", "step-000004"):
        (run_copy / "checkpoints" / step / "config.json").unlink()
    assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 2
    assert "--overwrite" in one_error_line(capsys, "train")


def test_a_diverged_run_leaves_latest_only_on_a_checkpoint_whose_outputs_are_finite(trained, tmp_path,
                                                                                    monkeypatch, capsys):
    corpus, config, _ = trained
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(trained[2].parent / "cache"))
    run = tmp_path / "diverged"
    args = train_args(corpus, config, run, "--max-steps", "4", "--lr", "1e30", "--grad-clip", "0",
                      "--warmup-steps", "0", "--checkpoint-every", "1")
    assert main(args) == 2
    error = one_error_line(capsys, "train")
    assert "became nan" in error or "became inf" in error
    latest = ckpt.read_pointer(run, "latest")
    if latest is not None:  # whatever is left loads and gives finite logits
        model = load_model(run)
        with torch.no_grad():
            assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]]))).all()
    assert "--overwrite" not in error or not ckpt.list_checkpoints(run)


@pytest.fixture
def nan_checkpoint(run_copy) -> Path:
    """A model directory whose weights are finite except one NaN: its every output is NaN."""
    model = load_model(run_copy)
    with torch.no_grad():
        model.trf_blocks[0].norm1.scale[0] = float("nan")
    tokenizer = load_tokenizer("simple", resolve_model_dir(run_copy))
    return save_model(model, run_copy.parent / "nan-model", tokenizer=tokenizer)


@pytest.mark.parametrize("options", [[], ["--temperature", "0.8"], ["--num-beams", "2"]])
def test_generate_from_a_broken_checkpoint_is_one_line(nan_checkpoint, capsys, options):
    argv = ["generate", "--checkpoint", str(nan_checkpoint), "--device", "cpu", "--max-new-tokens", "3",
            *options]
    assert main([*argv, "the"]) == 2
    out, err = capsys.readouterr()
    assert out in ("", "the\n")  # the prompt's line ends before the error (not "thegptsmith generate: ...")
    assert err.startswith("gptsmith generate: error: the model's next-token logits are not finite (nan)")
    assert err.count("\n") == 1


def test_eval_of_a_broken_checkpoint_is_one_line_and_exit_2(nan_checkpoint, trained, capsys):
    argv = ["eval", "--checkpoint", str(nan_checkpoint), "--data", str(trained[0]), "--device", "cpu",
            "--max-batches", "1", "--batch-size", "1"]
    assert main(argv) == 2
    err = one_error_line(capsys, "eval")
    assert "gives a non-finite loss (nan) on the train split: its weights are broken" in err


def test_fallback_advice_is_not_repeated_to_a_fallback_resume(run_copy, capsys):
    for step in ("step-000002", "step-000004"):
        weights = run_copy / "checkpoints" / step / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 2
    assert "resume with --fallback" in one_error_line(capsys, "train")  # the way on, once
    assert main(["train", "--resume", str(run_copy), "--fallback", "--no-progress"]) == 2
    error = one_error_line(capsys, "train")
    assert error.startswith(f"gptsmith train: error: no loadable checkpoint in {run_copy}: ")
    assert "step-000002/model.safetensors" in error and "step-000004/model.safetensors" in error
    assert "--fallback" not in error
    assert error.endswith(f"(every checkpoint is damaged: start the run again with --out {run_copy} "
                          "--overwrite)")
