"""A pickle that would run code is refused with advice that is safe: never torch's suggestion to
load it with weights_only=False (the payload here would only call os.getpid; it never runs)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from gptsmith.cli import main


class Payload:
    def __reduce__(self):
        return (os.getpid, ())


def one_error_line(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"gptsmith {verb}: error: ") and err.count("\n") == 1, err
    return err.strip()


def test_a_hugging_face_pickle_with_code_is_refused_safely(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32, "n_head": 2, "n_layer": 1,
                                                "n_positions": 16, "vocab_size": 50257}))
    torch.save({"wte.weight": Payload()}, hf / "pytorch_model.bin")
    assert main(["convert", str(hf), "--to", "gptsmith", "--out", str(tmp_path / "out")]) == 2
    error = one_error_line(capsys, "convert")
    assert "weights_only" not in error
    assert f"{hf}/pytorch_model.bin holds pickled code (it calls posix.getpid) that gptsmith will not run" \
        in error and "model.safetensors" in error


def test_a_training_state_with_code_is_refused_safely(tmp_path, monkeypatch, capsys):
    from training_helpers import train_args, write_cli_inputs

    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, config = write_cli_inputs(tmp_path)
    run = tmp_path / "run"
    assert main(train_args(corpus, config, run, "--max-steps", "2")) == 0
    state = run / "checkpoints" / "step-000002" / "training_state.pt"
    torch.save({"step": Payload()}, state)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 2
    error = one_error_line(capsys, "train")
    assert "weights_only" not in error
    assert f"{state} holds pickled code (it calls posix.getpid) that gptsmith will not run" in error
    assert error.endswith("resume with --fallback to use the previous good one)")


def test_a_file_that_is_no_pickle_at_all_is_called_unreadable_not_code(tmp_path):
    from gptsmith.errors import CheckpointError
    from gptsmith.model.weights import load_torch_file

    path = tmp_path / "training_state.pt"
    path.write_text("garbage")  # torch: "Unsupported operand 103", under its weights_only advice
    with pytest.raises(CheckpointError) as info:
        load_torch_file(path, damaged="the file is corrupt", code_fix="unused")
    assert str(info.value) == f"cannot read {path}: not a PyTorch file (the file is corrupt)"
