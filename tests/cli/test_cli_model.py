"""`gptsmith info` and `gptsmith convert` end to end."""

from __future__ import annotations

import json

import pytest
import torch

from gptsmith.cli import main
from gptsmith.model.checkpoint import load_model, save_model
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.storage import atomic_write_text

TINY = GPTConfig(vocab_size=101, context_length=20, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


def test_info_preset_prints_gpt2_counts_and_memory(capsys):
    assert main(["info", "gpt2-small"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808 with the output head tied" in out
    assert "163,037,184 with a separate output head" in out
    assert "trf_blocks.[0-11].att.qkv.weight" in out and "2304 x 768" in out
    assert "fp32" in out and "bf16" in out and "474.7 MiB" in out  # 124.4M x 4 bytes


def test_info_json_for_run_directory(tmp_path, capsys):
    save_model(GPTModel(TINY), tmp_path / "checkpoints" / "step-000005", extra={"step": 5})
    atomic_write_text(tmp_path / "latest", "checkpoints/step-000005")
    assert main(["info", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"] == TINY.to_dict()
    assert data["params"] == GPTModel(TINY).num_parameters()
    assert data["checkpoint"]["step"] == 5
    assert data["memory_bytes"]["bf16"]["weights"] == 2 * data["params"]


def test_info_unknown_name_lists_presets(capsys):
    assert main(["info", "gpt-9000"]) == 2
    err = capsys.readouterr().err
    assert "gptsmith info: error:" in err and "gpt2-small" in err and "tiny" in err


def test_info_set_overrides_a_preset(capsys):
    assert main(["info", "gpt2-small", "--set", "qkv_bias=false"]) == 0
    assert "163,009,536 with a separate output head" in capsys.readouterr().out
    assert main(["info", "gpt2-small", "--set", "n_head=8"]) == 2
    assert "unknown GPTConfig field(s)" in capsys.readouterr().err
    assert main(["info", "gpt2-small", "--set", "qkv_bias"]) == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err


def test_info_of_a_very_deep_preset_is_instant(capsys):
    # gpt2-small's 124,439,808 plus 7,087,872 per extra block; once built all 100,000 blocks (minutes).
    assert main(["info", "gpt2-small", "--set", "n_layers=100000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params_tied"] == 124_439_808 + (100_000 - 12) * 7_087_872
    assert data["memory_bytes"]["fp32"]["weights"] == 4 * data["params_tied"]


def test_info_checks_a_checkpoints_weights(tmp_path, capsys):
    directory = save_model(GPTModel(TINY), tmp_path / "model")
    weights = directory / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    assert main(["info", str(directory)]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    save_model(GPTModel(GPTConfig(**{**TINY.to_dict(), "emb_dim": 64})), tmp_path / "other")
    weights.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())  # weights of another model
    assert main(["info", str(directory)]) == 2
    err = capsys.readouterr().err
    assert "tensor " in err and "(101, 64)" in err and "(101, 32)" in err and err.count("\n") == 1


def _one_line_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"gptsmith {verb}: error:") and err.count("\n") == 1, err
    return err


def test_info_checks_a_hugging_face_directorys_weights(tmp_path, capsys):
    from gptsmith.model.hf_gpt2 import export_hf

    directory = export_hf(GPTModel(TINY), tmp_path / "hf")
    assert main(["info", str(directory)]) == 0
    assert "Hugging Face GPT-2 directory" in capsys.readouterr().out
    config = json.loads((directory / "config.json").read_text())
    atomic_write_text(directory / "config.json", json.dumps({**config, "n_embd": 64, "n_head": 4}))
    assert main(["info", str(directory)]) == 2  # config.json no longer fits the weights
    err = _one_line_error(capsys, "info")
    assert "tok_emb.weight has shape (101, 32) but the config needs (101, 64)" in err
    atomic_write_text(directory / "config.json", json.dumps(config))
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert main(["info", str(directory)]) == 2
    assert "truncated" in _one_line_error(capsys, "info")
    weights.unlink()
    assert main(["info", str(directory)]) == 2
    assert "neither model.safetensors nor pytorch_model.bin" in _one_line_error(capsys, "info")


def test_convert_bad_checkpoints_are_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(tmp_path / "empty"), "--to", "hf", "--out", out]) == 2
    assert "no config.json" in _one_line_error(capsys, "convert")
    directory = save_model(GPTModel(TINY), tmp_path / "model")
    weights = directory / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    assert main(["convert", str(directory), "--to", "hf", "--out", out]) == 2
    assert "model.safetensors" in _one_line_error(capsys, "convert")
    save_model(GPTModel(GPTConfig(**{**TINY.to_dict(), "emb_dim": 64})), tmp_path / "other")
    weights.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    assert main(["convert", str(directory), "--to", "gptsmith", "--out", out]) == 2
    assert "(101, 64)" in _one_line_error(capsys, "convert")
    assert not (tmp_path / "out").exists()  # nothing written for a model that did not load


def test_info_directory_without_config(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_convert_round_trip_through_hf(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    model = GPTModel(TINY).eval()
    save_model(model, tmp_path / "ours")
    assert main(["convert", str(tmp_path / "ours"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "Hugging Face GPT-2 directory" in capsys.readouterr().out
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 10))
    with torch.no_grad():
        expected = model(ids)
        torch.testing.assert_close(hf_model(ids).logits, expected, atol=1e-5, rtol=1e-5)

    assert main(["convert", str(tmp_path / "hf"), "--to", "gptsmith", "--out", str(tmp_path / "back")]) == 0
    back = load_model(tmp_path / "back")
    with torch.no_grad():
        torch.testing.assert_close(back(ids), expected, atol=1e-5, rtol=1e-5)

    # A non-empty --out is refused unless --force.
    args = ["convert", str(tmp_path / "ours"), "--to", "gptsmith", "--out", str(tmp_path / "back")]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*args, "--force", "--dtype", "bfloat16"]) == 0
    assert load_model(tmp_path / "back").tok_emb.weight.dtype == torch.bfloat16


def test_convert_never_writes_over_its_source_or_into_a_run(tmp_path, capsys):
    directory = save_model(GPTModel(TINY), tmp_path / "model")
    before = (directory / "model.safetensors").read_bytes()
    for force in ([], ["--force"]):  # the same answer with or without --force: it would not help
        assert main(["convert", str(directory), "--to", "hf", "--out", str(directory), *force]) == 2
        assert "is the model being converted" in _one_line_error(capsys, "convert")
    run = tmp_path / "run"
    step = run / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (run / "run.json").write_text("{}", encoding="utf-8")
    for out in (run, step):
        assert main(["convert", str(directory), "--to", "hf", "--out", str(out), "--force"]) == 2
        assert "belongs to a training run" in _one_line_error(capsys, "convert")
    assert (directory / "model.safetensors").read_bytes() == before and not any(step.iterdir())


def test_convert_missing_source(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), "--to", "hf", "--out", str(tmp_path / "out")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_convert_of_a_word_level_model_notes_its_tokenizer_on_a_line_of_its_own(tmp_path, capsys):
    from gptsmith.data.tokenizer import SimpleTokenizerV2

    words = SimpleTokenizerV2.from_text(" ".join(f"w{i}" for i in range(40)))
    save_model(GPTModel(TINY), tmp_path / "ours", tokenizer=words)
    assert main(["convert", str(tmp_path / "ours"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("wrote ") and out.rstrip().endswith("float32") and "note" not in out
    assert err.strip() == ("note: its tokenizer 'simple' has no Hugging Face equivalent: the ids of a "
                           "Hugging Face tokenizer will not match the model's")


def test_convert_keeps_the_instruction_template_and_the_classifier(tmp_path, capsys):
    from classify_helpers import random_classifier

    from gptsmith.finetune.classifier import Classifier

    save_model(GPTModel(TINY), tmp_path / "chat", extra={"instruction_template": "chatml"})
    out = tmp_path / "chat-bf16"
    args = ["convert", str(tmp_path / "chat"), "--to", "gptsmith", "--out", str(out), "--dtype", "bf16"]
    assert main(args) == 0
    assert load_model(out).instruction_template == "chatml"  # ask and chat still prompt it in ChatML

    source = random_classifier(tmp_path / "spam")
    assert main(["convert", str(source), "--to", "gptsmith", "--out", str(tmp_path / "spam2")]) == 0
    texts = ["win cash now", "see you at lunch"]
    expected = Classifier.load(source, device="cpu").predict_proba(texts)
    converted = Classifier.load(tmp_path / "spam2", device="cpu")
    assert converted.labels == ["ham", "spam"]
    torch.testing.assert_close(converted.predict_proba(texts), expected)
    capsys.readouterr()

    # A Hugging Face directory has no place for either: the export says so, on lines of their own.
    for name in ("chat", "spam"):
        hf_out = str(tmp_path / f"{name}-hf")
        assert main(["convert", str(tmp_path / name), "--to", "hf", "--out", hf_out]) == 0
    out, err = capsys.readouterr()
    assert "note" not in out
    assert "instruction-tuned with the 'chatml' template" in err and "the classifier's head and labels" in err
