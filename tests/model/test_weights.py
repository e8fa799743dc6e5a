"""Checkpoints: our format round-trips, broken files give clear errors, GPT-2 weights load exactly."""

from __future__ import annotations

import json

import pytest
import torch

from gptsmith.data.tokenizer import SimpleTokenizerV2, get_tokenizer
from gptsmith.errors import CheckpointError, ConfigError
from gptsmith.model.checkpoint import (
    load_model,
    load_model_tokenizer,
    read_model_config,
    resolve_model_dir,
    save_model,
)
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.storage import (
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    replacing_directory,
)

TINY = GPTConfig(vocab_size=101, context_length=20, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_weights": False}, {"qkv_bias": False, "drop_rate": 0.1}],
    ids=["tied", "untied", "no-qkv-bias"],
)
def test_save_load_round_trip(tmp_path, overrides):
    model = GPTModel(GPTConfig(**{**TINY.to_dict(), **overrides})).eval()
    out = save_model(model, tmp_path / "ckpt", extra={"step": 7})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model(out)
    assert loaded.cfg == model.cfg and not loaded.training
    ids = torch.randint(0, TINY.vocab_size, (2, 9))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=0, rtol=0)
    assert (loaded.out_head.weight is loaded.tok_emb.weight) == model.cfg.tie_weights
    assert all(p.requires_grad for p in loaded.parameters())
    config = read_model_config(out)
    assert config["format"] == "gptsmith" and config["tokenizer"] == "gpt2" and config["step"] == 7
    assert load_model(out).cfg == model.cfg


def test_dtype_is_kept_and_can_be_changed(tmp_path):
    model = GPTModel(TINY).to(torch.bfloat16)
    save_model(model, tmp_path)
    assert load_model(tmp_path).tok_emb.weight.dtype == torch.bfloat16
    assert load_model(tmp_path, dtype=torch.float32).tok_emb.weight.dtype == torch.float32


def test_run_directory_resolves_through_latest(tmp_path):
    save_model(GPTModel(TINY), tmp_path / "checkpoints" / "step-000010")
    atomic_write_text(tmp_path / "latest", "checkpoints/step-000010\n")
    assert resolve_model_dir(tmp_path) == (tmp_path / "checkpoints" / "step-000010").resolve()
    assert load_model(tmp_path).cfg == TINY
    assert resolve_model_dir(tmp_path / "checkpoints" / "step-000010" / "config.json").name == "step-000010"
    atomic_write_text(tmp_path / "latest", "checkpoints/step-000020")  # gone: the newest complete one
    with pytest.warns(UserWarning, match="names 'checkpoints/step-000020', which is gone.*step-000010"):
        assert resolve_model_dir(tmp_path).name == "step-000010"
    (tmp_path / "checkpoints" / "step-000020").write_text("")  # there, but no folder: not "gone"
    with pytest.warns(UserWarning, match="names 'checkpoints/step-000020', which is not a checkpoint folder"):
        assert resolve_model_dir(tmp_path).name == "step-000010"
    (tmp_path / "checkpoints" / "step-000020").unlink()
    save_model(GPTModel(TINY), tmp_path / "checkpoints" / "step-000020")
    (tmp_path / "checkpoints" / "step-000020" / "model.safetensors").unlink()  # there, but incomplete
    with pytest.raises(CheckpointError, match=r"latest checkpoint .*step-000020 has no model.safetensors "
                       r"\(.*load the newest complete one, .*step-000010, instead"):
        load_model(tmp_path)
    (tmp_path / "latest").unlink()  # no pointer: the newest step that loads is the run's
    with pytest.warns(UserWarning, match=r"unreadable\); using the newest complete one, .*step-000010"):
        assert resolve_model_dir(tmp_path).name == "step-000010"
    (tmp_path / "checkpoints" / "step-000010" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no complete checkpoint"):
        resolve_model_dir(tmp_path)


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a model directory: no config.json"):
        load_model(tmp_path)
    save_model(GPTModel(TINY), tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has model.safetensors but no config.json"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "nope")


def test_a_model_in_a_folder_whose_name_is_not_utf8_loads(tmp_path):
    """save_model writes such a folder (e.g. `train --out` with a latin-1 name); it must load back,
    not be called truncated or corrupt."""
    model = GPTModel(TINY).eval()
    where = tmp_path / "caf\udce9"  # how Python hands over a name holding the byte 0xe9
    save_model(model, where)
    loaded = load_model(where)
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_a_lora_adapter_directory_is_named_as_such(tmp_path):
    """`finetune classify --save-adapter-only` writes adapter files, no config.json: say what it is."""
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is a LoRA adapter, not a model directory: only "
                                              "`gptsmith classify` loads it"):
        load_model(tmp_path)


def test_shape_mismatch_names_tensor_and_both_shapes(tmp_path):
    save_model(GPTModel(TINY), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["vocab_size"] = 120
    atomic_write_json(tmp_path / "config.json", config)
    expected = r"tok_emb\.weight has shape \(101, 32\) but the config needs \(120, 32\)"
    with pytest.raises(CheckpointError, match=expected):
        load_model(tmp_path)


def test_missing_tensors_are_named(tmp_path):
    save_model(GPTModel(TINY), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["n_layers"] = 3
    atomic_write_json(tmp_path / "config.json", config)
    with pytest.raises(CheckpointError, match=r"missing 12 tensor\(s\), e.g. trf_blocks\.2\."):
        load_model(tmp_path)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    save_model(GPTModel(TINY), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path)
    weights.write_bytes(b"\x01")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path)


def test_bad_config_json_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot parse"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="neither a gptsmith config"):
        load_model(tmp_path)


def test_a_config_without_a_size_field_is_refused(tmp_path):
    directory = save_model(GPTModel(GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2,
                                              n_layers=1)), tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    del config["model"]["n_layers"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"has no model.n_layers \(the file is incomplete"):
        load_model(directory)


@pytest.mark.parametrize(("change", "message"), [
    ({"tokenizer": 5}, r'config.json: "tokenizer" must be a tokenizer name such as "gpt2", got 5 \(fix it'),
    ({"model": {"n_layers": True}}, r"config.json: .*n_layers must be a positive integer, got True"),
])
def test_a_config_with_a_wrong_typed_field_names_the_file(tmp_path, change, message):
    directory = save_model(GPTModel(GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2,
                                              n_layers=1)), tmp_path / "m")
    config = json.loads((directory / "config.json").read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(directory)
    with pytest.raises(ConfigError, match=r"a tokenizer is named by a string \(gpt2, simple\), got None"):
        get_tokenizer(None)


def test_save_model_checks_everything_before_writing(tmp_path):
    model = GPTModel(GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    with pytest.raises(ConfigError, match="extra cannot be written as JSON"):
        save_model(model, tmp_path / "m", extra={"tags": {1, 2}})
    with pytest.raises(ConfigError, match="would overwrite a reserved config.json key"):
        save_model(model, tmp_path / "m", extra={"model": {}})
    with pytest.raises(ConfigError, match="save_model saves a GPTModel, got Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "m")
    assert not (tmp_path / "m").exists()  # no weights without a config


def test_load_options_are_checked_and_take_any_spelling(tmp_path):
    directory = save_model(GPTModel(GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2,
                                              n_layers=1)), tmp_path / "m")
    assert load_model(directory, dtype="bf16").tok_emb.weight.dtype == torch.bfloat16
    assert load_model(directory, dtype=torch.float64).tok_emb.weight.dtype == torch.float64
    assert load_model(directory, device=torch.device("cpu")).tok_emb.weight.device.type == "cpu"
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        load_model(directory, device="gpu")
    with pytest.raises(ConfigError, match="dtype torch.int64 cannot hold weights"):
        load_model(directory, dtype=torch.int64)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU"):
            load_model(directory, device="cuda")


def test_a_word_level_model_needs_its_own_vocabulary(tmp_path):
    tokenizer = SimpleTokenizerV2.from_text("alpha beta gamma delta")
    model = GPTModel(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=8, emb_dim=16, n_heads=2,
                               n_layers=1))
    directory = save_model(model, tmp_path / "m", tokenizer=tokenizer)
    config = read_model_config(directory)
    loaded = load_model_tokenizer(config, directory, model.cfg.vocab_size, "m")
    assert loaded.vocab_size == tokenizer.vocab_size
    (directory / "vocab.json").unlink()  # the built-in words would give the ids other meanings
    with pytest.raises(CheckpointError, match="uses its own word-level vocabulary .* but has no vocab.json"):
        load_model_tokenizer(config, directory, model.cfg.vocab_size, "m")
    save_model(model, tmp_path / "other", tokenizer=SimpleTokenizerV2.from_text("one two"))
    (tmp_path / "other" / "vocab.json").rename(directory / "vocab.json")  # fewer words than ids: fine
    assert load_model_tokenizer(config, directory, model.cfg.vocab_size, "m").vocab_size == 4
    with pytest.raises(CheckpointError, match="has 4 ids but the model only 3"):  # more words than ids
        load_model_tokenizer(config, directory, 3, "m")


def test_atomic_writes_leave_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]  # no temp file left behind
    atomic_torch_save({"step": torch.tensor(3)}, tmp_path / "state.pt")
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"].item() == 3


def test_replacing_directory_swaps_in_a_complete_folder_or_keeps_the_old_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("earlier")
    with pytest.raises(KeyboardInterrupt), replacing_directory(out) as staging:
        (staging / "new.txt").write_text("half")
        raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["old.txt"] and sorted(tmp_path.iterdir()) == [out]
    with replacing_directory(out) as staging:
        assert staging.parent == tmp_path and staging != out
        (staging / "new.txt").write_text("complete")
        assert (out / "old.txt").exists()  # the earlier folder is kept until the block ends
    assert [p.name for p in out.iterdir()] == ["new.txt"] and sorted(tmp_path.iterdir()) == [out]
    with pytest.raises(RuntimeError), replacing_directory(tmp_path / "a" / "b" / "out"):
        raise RuntimeError("failed")
    assert sorted(tmp_path.iterdir()) == [out]  # the parents it made went again


# --- Hugging Face GPT-2 --------------------------------------------------------------------------

def test_save_model_unwraps_compiled_models(tmp_path):
    class Compiled(torch.nn.Module):  # what torch.compile returns: the model as ._orig_mod
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

    model = GPTModel(TINY)
    save_model(Compiled(model), tmp_path)
    loaded = load_model(tmp_path)
    torch.testing.assert_close(loaded.tok_emb.weight, model.tok_emb.weight)
