"""Hugging Face GPT-2 weights: import and export with exact parity against ``transformers`` (on
small random models made here), the hub's download path, and greedy decoding equal to its generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptsmith.errors import CheckpointError
from gptsmith.model.checkpoint import load_model, read_model_config
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.model.hf_gpt2 import export_hf
from gptsmith.storage import atomic_write_json

TINY = GPTConfig(vocab_size=101, context_length=20, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


HF_CONFIGS = {
    "tied-2x4": dict(n_layer=2, n_head=4, n_embd=32, vocab_size=100, n_positions=24),
    "untied-3x2": dict(
        n_layer=3, n_head=2, n_embd=48, vocab_size=64, n_positions=16, tie_word_embeddings=False
    ),
    "n_inner-1x8-dropout": dict(
        n_layer=1, n_head=8, n_embd=64, n_inner=256, vocab_size=80, n_positions=32, resid_pdrop=0.3
    ),
    "no-dropout-2x2": dict(
        n_layer=2, n_head=2, n_embd=16, vocab_size=90, n_positions=12,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    ),
}


def _hf_model(name: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**HF_CONFIGS[name], bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initialises biases and LayerNorms to 0/1; randomise them to test mapping
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias") or "ln_" in param_name:
                param.normal_(0, 0.5)
    return transformers, model


def _to_legacy_bin(directory: Path, tied: bool) -> None:
    """Rewrite a saved HF dir as an old-style pytorch_model.bin (no prefix, mask buffers, head if untied)."""
    from safetensors.torch import load_file

    state = load_file(directory / "model.safetensors")
    n_positions = state["transformer.wpe.weight"].shape[0]
    if tied:
        state.pop("lm_head.weight", None)
    legacy = {k.removeprefix("transformer."): v for k, v in state.items()}
    causal = torch.tril(torch.ones(n_positions, n_positions))[None, None]
    for key in [k for k in legacy if k.endswith("attn.c_attn.weight")]:
        legacy[key.replace("c_attn.weight", "bias")] = causal
    torch.save(legacy, directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


@pytest.mark.parametrize("name", list(HF_CONFIGS))
@pytest.mark.parametrize("file_format", ["safetensors", "bin"])
def test_hf_import_and_export_match_transformers(tmp_path, name, file_format):
    transformers, hf_model = _hf_model(name)
    hf_model.save_pretrained(tmp_path / "hf")
    if file_format == "bin":
        _to_legacy_bin(tmp_path / "hf", tied=hf_model.config.tie_word_embeddings)
    ids = torch.randint(0, hf_model.config.vocab_size, (2, hf_model.config.n_positions))
    expected = _logits(hf_model, ids).logits

    ours = load_model(tmp_path / "hf")
    assert ours.cfg.tie_weights == hf_model.config.tie_word_embeddings
    torch.testing.assert_close(_logits(ours, ids), expected, atol=1e-5, rtol=1e-5)
    assert read_model_config(tmp_path / "hf")["format"] == "hf-gpt2"

    export_hf(ours, tmp_path / "exported")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    torch.testing.assert_close(_logits(reloaded, ids).logits, expected, atol=1e-5, rtol=1e-5)
    tied = reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
    assert tied == ours.cfg.tie_weights


def test_export_without_qkv_bias_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = GPTModel(GPTConfig(**{**TINY.to_dict(), "qkv_bias": False})).eval()
    export_hf(model, tmp_path)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 12))
    torch.testing.assert_close(_logits(reloaded, ids).logits, _logits(model, ids), atol=1e-5, rtol=1e-5)
    assert load_model(tmp_path).cfg.qkv_bias  # GPT-2 always has the (here zero) bias


def test_unsupported_hf_configs_are_refused(tmp_path):
    _, hf_model = _hf_model("tied-2x4")
    hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for change, message in [
        ({"n_inner": 100}, "n_inner=100 is not 4 \\* n_embd"),
        ({"activation_function": "relu"}, "activation_function 'relu' is not supported"),
        ({"layer_norm_epsilon": "x"}, "layer_norm_epsilon must be a number, got 'x'"),
        ({"resid_pdrop": None, "attn_pdrop": "0.1"}, "attn_pdrop must be a number"),
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
        ({"layer_norm_epsilon": None}, "layer_norm_epsilon must be a number, got None"),  # not a TypeError
        # the field as the file spells it (n_layer), not GPTConfig's n_layers
        ({"n_layer": "2"}, "config.json: n_layer must be a positive whole number, got '2'"),
        ({"n_embd": 30}, "n_embd 30 is not divisible by n_head 4"),
        ({"resid_pdrop": 1.5}, r"resid_pdrop must be in \[0, 1\), got 1.5"),
        ({"n_inner": "128"}, "n_inner must be a whole number or null, got '128'"),
        # a string is true to transformers: not the false it reads as
        ({"scale_attn_by_inverse_layer_idx": "false"},
         "scale_attn_by_inverse_layer_idx must be true or false, got 'false'"),
    ]:
        atomic_write_json(tmp_path / "config.json", {**config, **change})
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path)


def test_sharded_safetensors_load_exactly_and_a_missing_shard_is_named(tmp_path):
    """save_pretrained shards a model over its max_shard_size (gpt2-xl at transformers' 5 GB):
    the index's shards load as one state dict, checked as an import checks it."""

    _, hf_model = _hf_model("untied-3x2")
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    ids = torch.randint(0, hf_model.config.vocab_size, (1, 10))
    _loads_exactly(tmp_path, hf_model, ids)

    shards[-1].rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match=f"lacks {shards[-1].name}, a shard its model.safetensors"):
        load_model(tmp_path)
    (tmp_path / "elsewhere.safetensors").rename(shards[-1])
    (tmp_path / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="has sharded weights but no model.safetensors.index.json"):
        load_model(tmp_path)


def _loads_exactly(directory: Path, hf_model, ids: torch.Tensor):
    """Load ``directory``: its logits on ``ids`` equal transformers', and `info`'s weight check passes."""
    from gptsmith.model.hf_gpt2 import check_hf_weights, gpt_config_from_hf

    ours = load_model(directory)
    torch.testing.assert_close(_logits(ours, ids), _logits(hf_model, ids).logits, atol=1e-5, rtol=1e-5)
    config = json.loads((directory / "config.json").read_text())
    check_hf_weights(directory, gpt_config_from_hf(config, source="config.json"))  # what `info` runs
    return ours


def _to_sharded_bin(directory: Path) -> list[Path]:
    """Rewrite a sharded safetensors save as older transformers' save_pretrained(safe_serialization=
    False) wrote it (transformers 5 writes safetensors only): pytorch_model-0000i-of-0000n.bin
    shards and the pytorch_model.bin.index.json naming each tensor's shard."""
    from safetensors.torch import load_file

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    renamed = {}
    for shard in sorted(directory.glob("model-*-of-*.safetensors")):
        renamed[shard.name] = shard.name.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(shard), directory / renamed[shard.name])
        shard.unlink()
    index["weight_map"] = {name: renamed[file] for name, file in index["weight_map"].items()}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (directory / "model.safetensors.index.json").unlink()
    return [directory / name for name in sorted(renamed.values())]


@pytest.mark.parametrize("name", ["untied-3x2", "tied-2x4"])
def test_sharded_pytorch_bins_load_exactly_and_a_missing_shard_is_named(tmp_path, name):
    """pytorch_model.bin.index.json and its .bin shards load as sharded safetensors do: equal logits,
    `info`'s check, and a shard missing, from another save or without the index named in one line."""

    _, hf_model = _hf_model(name)
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = _to_sharded_bin(tmp_path)
    assert len(shards) > 1 and not list(tmp_path.glob("*.safetensors"))
    ids = torch.randint(0, hf_model.config.vocab_size, (2, hf_model.config.n_positions))
    ours = _loads_exactly(tmp_path, hf_model, ids)
    assert ours.cfg.tie_weights == hf_model.config.tie_word_embeddings

    first = torch.load(shards[0], weights_only=True)
    torch.save({}, shards[0])  # a shard of another save: the index places tensors it lacks
    with pytest.raises(CheckpointError, match=f"{shards[0].name} lacks .*, which pytorch_model.bin"):
        load_model(tmp_path)
    torch.save(first, shards[0])
    shards[-1].rename(tmp_path / "elsewhere.bin")
    with pytest.raises(CheckpointError, match=f"lacks {shards[-1].name}, a shard its pytorch"):
        load_model(tmp_path)
    (tmp_path / "elsewhere.bin").rename(shards[-1])
    (tmp_path / "pytorch_model.bin.index.json").unlink()
    with pytest.raises(CheckpointError, match="has sharded weights but no pytorch_model.bin.index.json"):
        load_model(tmp_path)


def test_hf_dir_without_weights(tmp_path):
    _, hf_model = _hf_model("tied-2x4")
    hf_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_model(tmp_path)


def test_a_task_models_head_is_refused_naming_the_directory_and_the_head(tmp_path):
    transformers, _ = _hf_model("tied-2x4")
    config = transformers.GPT2Config(**HF_CONFIGS["tied-2x4"], pad_token_id=0)
    transformers.GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "sentiment")
    with pytest.raises(CheckpointError, match=r"sentiment has 1 tensor\(s\) gptsmith does not know, e\.g\. "
                       r"score\.weight \(not a GPT-2 language model's") as caught:
        load_model(tmp_path / "sentiment")
    assert "n_layer" not in str(caught.value)  # the layers are fine: the head is the odd one out
    # one block more than config.json's n_layer says: that hint still comes
    _, hf_model = _hf_model("tied-2x4")
    hf_model.save_pretrained(tmp_path / "deeper")
    config = json.loads((tmp_path / "deeper" / "config.json").read_text())
    atomic_write_json(tmp_path / "deeper" / "config.json", {**config, "n_layer": 1})
    with pytest.raises(CheckpointError, match=r"deeper has 12 tensor\(s\).*h\.1\..*n_layer in config"):
        load_model(tmp_path / "deeper")


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("GPTSMITH_OFFLINE", raising=False)  # the hub is mocked: test the online path

    def offline(*args, **kwargs):
        raise OSError("cannot reach huggingface.co")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match="cannot get 'gpt2' from the Hugging Face hub"):
        load_model("gpt2")
    with pytest.raises(CheckpointError, match="checkpoint not found: ./missing-dir"):
        load_model("./missing-dir")


def test_gptsmith_offline_looks_only_in_the_hub_cache(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def cache_only(repo_id, allow_patterns, local_files_only=False):
        calls.append(local_files_only)
        raise OSError("not in the cache" if local_files_only else "Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", cache_only)
    monkeypatch.setenv("GPTSMITH_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"^'nope' is not a local directory nor in the Hugging Face "
                       r"cache, and GPTSMITH_OFFLINE=1 forbids fetching it"):
        load_model("nope")
    assert calls and all(calls)  # no network attempt


def test_hub_download_fetches_config_and_weights_and_completes_a_partial_cache(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("GPTSMITH_OFFLINE", raising=False)  # the hub is mocked: test the online path
    _, hf_model = _hf_model("tied-2x4")
    hf_model.save_pretrained(tmp_path / "repo")  # what the hub serves
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "config.json").write_bytes((tmp_path / "repo" / "config.json").read_bytes())  # interrupted
    calls = []

    def fake_snapshot(repo_id, allow_patterns, local_files_only=False):
        calls.append((repo_id, tuple(allow_patterns), local_files_only))
        if not local_files_only:
            for pattern in allow_patterns:
                if (tmp_path / "repo" / pattern).is_file():
                    (cache / pattern).write_bytes((tmp_path / "repo" / pattern).read_bytes())
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    model = load_model("some-user/gpt2-like")
    assert (cache / "model.safetensors").is_file()
    assert ("some-user/gpt2-like", ("config.json", "model.safetensors"), False) in calls
    ids = torch.randint(0, model.cfg.vocab_size, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_model(ids).logits, atol=1e-5, rtol=0)


def test_preset_names_map_to_openai_weights(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("GPTSMITH_OFFLINE", raising=False)  # the hub is mocked: test the online path
    asked = []

    def record(repo_id, **kwargs):
        asked.append(repo_id)
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", record)
    with pytest.raises(CheckpointError, match="cannot get 'gpt2'"):
        load_model("gpt2-small")
    assert set(asked) == {"gpt2"}
    with pytest.raises(CheckpointError, match="preset 'tiny' has no pretrained weights"):
        load_model("tiny")


def test_greedy_tokens_equal_transformers_generate(tmp_path):
    _, hf_model = _hf_model("n_inner-1x8-dropout")
    with torch.no_grad():  # large random weights, so the greedy path visits several tokens
        for param in hf_model.parameters():
            if param.dim() == 2:
                param.normal_(0, 1.0)
    hf_model.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    prompt = torch.tensor([[5, 17, 42, 3]])
    expected = hf_model.generate(
        prompt, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None, min_length=0
    )
    ids, cache = prompt, ours.new_cache(batch_size=1)
    with torch.no_grad():
        logits = ours(ids, cache=cache, last_token_only=True)
        for _ in range(12):  # greedy decoding with the KV cache, one token at a time
            next_id = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
            logits = ours(next_id, cache=cache)
    assert ids.tolist() == expected.tolist()
    assert len(set(ids[0, 4:].tolist())) >= 3


def _with_tokenizer_files(directory: Path, bpe_dir: Path) -> Path:
    """A HF folder as save_pretrained leaves it with GPT-2's tokenizer: vocab.json + merges.txt
    (GPT-2's encoder.json and vocab.bpe) and tokenizer.json (transformers 5 writes only that one)."""
    transformers, hf_model = _hf_model("tied-2x4")
    hf_model.save_pretrained(directory)
    (directory / "vocab.json").write_bytes((bpe_dir / "encoder.json").read_bytes())
    (directory / "merges.txt").write_bytes((bpe_dir / "vocab.bpe").read_bytes())
    hf_tokenizer = transformers.GPT2Tokenizer(str(bpe_dir / "encoder.json"), str(bpe_dir / "vocab.bpe"))
    hf_tokenizer.save_pretrained(directory / "hf-tokenizer")
    (directory / "hf-tokenizer" / "tokenizer.json").rename(directory / "tokenizer.json")
    return directory


def test_a_folders_own_tokenizer_files_must_be_gpt2s(tmp_path, gpt2_tokenizer, gpt2_bpe_dir):
    """A HF folder is tokenized with GPT-2's BPE: its own tokenizer files, if they differ (another
    vocabulary, other merges, an added token, a prefix space), are refused in one line naming the
    difference instead of being silently ignored; GPT-2's own files load as before."""
    folder = _with_tokenizer_files(tmp_path / "hf", gpt2_bpe_dir)
    _, hf_model = _hf_model("tied-2x4")
    ids = torch.randint(0, hf_model.config.vocab_size, (1, 10))
    torch.testing.assert_close(_logits(load_model(folder), ids), _logits(hf_model, ids).logits,
                               atol=1e-5, rtol=1e-5)
    assert read_model_config(folder)["tokenizer"] == "gpt2"

    def refused(match: str) -> None:
        with pytest.raises(CheckpointError, match=match) as caught:
            load_model(folder)
        assert "carries its own tokenizer, which is not GPT-2's" in str(caught.value)
        assert "\n" not in str(caught.value)

    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["hello"], vocab["Ġthe"] = vocab["Ġthe"], vocab["hello"]  # two ids swapped
    (folder / "tokenizer.json").rename(tmp_path / "tokenizer.json")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    refused(r"\(vocab.json/merges.txt: token 'Ġthe' is id 31373 \(GPT-2's 262\)\)")
    (folder / "vocab.json").write_bytes((gpt2_bpe_dir / "encoder.json").read_bytes())
    merges = (folder / "merges.txt").read_text().split("\n")
    merges[1], merges[2] = merges[2], merges[1]  # the first two merges in the other order
    (folder / "merges.txt").write_text("\n".join(merges))
    refused(r"merges.txt: merge 1 \(Ġ a\) is not GPT-2's")
    (folder / "merges.txt").write_bytes((gpt2_bpe_dir / "vocab.bpe").read_bytes())
    load_model(folder)  # GPT-2's files again: silent

    (tmp_path / "tokenizer.json").rename(folder / "tokenizer.json")
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    added = {"id": 50257, "content": "<|im_start|>", "special": True}
    (folder / "tokenizer.json").write_text(json.dumps(
        {**tokenizer_json, "added_tokens": tokenizer_json["added_tokens"] + [added]}))
    refused(r"tokenizer.json: token '<\|im_start\|>' is id 50257 \(not in GPT-2's\)")
    prefix = {**tokenizer_json["pre_tokenizer"], "add_prefix_space": True}
    (folder / "tokenizer.json").write_text(json.dumps({**tokenizer_json, "pre_tokenizer": prefix}))
    refused(r"\(tokenizer.json: add_prefix_space\)")


def test_a_hf_vocabulary_smaller_than_gpt2s_is_named_without_an_impossible_fix(tmp_path, gpt2_tokenizer):
    """A HF directory has no "tokenizer" key to fix: the error says why GPT-2's BPE cannot serve it."""
    from gptsmith.model.checkpoint import load_model_tokenizer

    _, hf_model = _hf_model("tied-2x4")  # vocab_size 100
    hf_model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="has 50257 ids but the model only 100") as caught:
        load_model_tokenizer(read_model_config(tmp_path), tmp_path, 100, str(tmp_path))
    assert "config.json" not in str(caught.value) and "trained with another tokenizer" in str(caught.value)


def test_a_bin_holding_a_training_checkpoint_is_named_not_a_crash(tmp_path):
    """{"model": state_dict, "step": 3} in pytorch_model.bin: `info`'s shape check crashed on it
    (AttributeError), the load said a tensor was missing; both now say what the file holds."""
    from gptsmith.model.hf_gpt2 import check_hf_weights, gpt_config_from_hf

    _, hf_model = _hf_model("tied-2x4")
    hf_model.save_pretrained(tmp_path)
    torch.save({"model": dict(hf_model.state_dict()), "step": 3}, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    cfg = gpt_config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    for attempt in (lambda: check_hf_weights(tmp_path, cfg), lambda: load_model(tmp_path)):
        with pytest.raises(CheckpointError, match="not a state dict of tensors: 'model' holds a dict"):
            attempt()


def test_without_gpt2_bpe_files_a_folders_tokenizer_is_not_compared(tmp_path, gpt2_bpe_dir, monkeypatch):
    """Weights-only work (convert, info) needs no BPE files: with none at hand the folder's own
    tokenizer cannot be compared, so it is not, instead of failing on the missing files."""
    from gptsmith.data import tokenizer
    from gptsmith.errors import DataError

    folder = _with_tokenizer_files(tmp_path / "hf", gpt2_bpe_dir)
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps({"a": 0}))  # not GPT-2's

    def no_files(cls, path=None):
        raise DataError("GPT-2 BPE files not found")

    monkeypatch.setattr(tokenizer.GPT2Tokenizer, "from_files", classmethod(no_files))
    assert read_model_config(folder)["format"] == "hf-gpt2"
