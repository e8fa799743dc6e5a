"""LoRA: equal logits at initialisation and after merging, only adapters train, adapters round-trip."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gptsmith.errors import CheckpointError, ConfigError
from gptsmith.finetune.base import load_base
from gptsmith.finetune.lora import (
    LoRAConfig,
    LoRALinear,
    apply_lora,
    count_parameters,
    find_targets,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_adapter,
)
from gptsmith.model.checkpoint import load_model_dir, save_model
from gptsmith.model.gpt import GPTConfig, GPTModel


def tiny_model(seed: int = 0) -> GPTModel:
    """A 2-layer GPT with GPT-2's initialisation (logits of order 1, so 1e-5 is a fair tolerance)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=97, context_length=32, emb_dim=32, n_heads=4, n_layers=2,
                    drop_rate=0.0, tie_weights=False)
    return GPTModel(cfg).eval()


def _ids(vocab_size: int = 97, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab_size, (3, 12), generator=torch.Generator().manual_seed(seed))


def _train_steps(model: nn.Module, ids: torch.Tensor, steps: int = 3) -> None:
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        logits = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_default_targets_are_attention_and_feed_forward_projections():
    model = tiny_model()
    names = find_targets(model)
    assert names == [f"trf_blocks.{i}.{p}" for i in range(2)
                     for p in ("att.qkv", "att.out_proj", "ff.layers.0", "ff.layers.2")]
    block_1 = [f"trf_blocks.1.{p}" for p in ("att.qkv", "att.out_proj", "ff.layers.0", "ff.layers.2")]
    assert find_targets(model, ["trf_blocks.1.*"]) == block_1
    with pytest.raises(ConfigError, match="matches no linear layer.*att.qkv"):
        find_targets(model, ["attn"])


def test_logits_equal_base_at_init_and_only_adapters_are_trainable():
    base = tiny_model()
    model = copy.deepcopy(base)
    wrapped = apply_lora(model, LoRAConfig(rank=4, alpha=8))
    assert len(wrapped) == 8 and all(isinstance(model.get_submodule(n), LoRALinear) for n in wrapped)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), base(ids), rtol=0, atol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    counts = count_parameters(model)
    # per block: qkv 32->96, out 32->32, ff 32->128 and 128->32, each A (4, in) + B (out, 4)
    per_block = 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert counts.trainable == 2 * per_block
    assert counts.total == base.num_parameters() + counts.trainable
    assert "trainable parameters: 4,096 of" in str(counts)


def test_training_changes_only_lora_parameters_and_merge_keeps_logits():
    model = tiny_model()
    apply_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = _ids()
    _train_steps(model, ids)
    for name, param in model.named_parameters():
        if not name.endswith(("lora_A", "lora_B")):
            assert torch.equal(param, before[name]), f"frozen parameter {name} changed"
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.endswith("lora_B"))

    merged = merge_lora(copy.deepcopy(model))
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert set(merged.state_dict()) == set(tiny_model().state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), model(ids), rtol=0, atol=1e-5)


def test_merged_model_saves_as_plain_model_directory(tmp_path):
    model = tiny_model()
    apply_lora(model, LoRAConfig(rank=2, targets=("attention",)))
    _train_steps(model, _ids())
    ids = _ids(seed=5)
    with torch.no_grad():
        expected = model(ids)
    with pytest.raises(ConfigError, match="unmerged LoRA adapters: merge_lora"):
        save_model(model, tmp_path / "unmerged")  # it would not load back
    assert not (tmp_path / "unmerged").exists()
    save_model(merge_lora(model), tmp_path / "merged")
    loaded = load_model_dir(tmp_path / "merged")
    assert type(loaded) is GPTModel
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), expected, rtol=0, atol=1e-5)


def test_adapter_round_trip_on_its_base(tmp_path):
    base = tiny_model()
    model = copy.deepcopy(base)
    apply_lora(model, LoRAConfig(rank=3, alpha=6, targets=("feed-forward", "att.qkv")))
    _train_steps(model, _ids())
    head = torch.randn(2, 32)
    save_adapter(model, tmp_path / "adapter", base="tiny-base", extra_tensors={"head.weight": head},
                 extra_config={"labels": ["a", "b"]})
    assert set(lora_state_dict(model)) == {k for k in lora_state_dict(model) if "lora_" in k}
    fresh = copy.deepcopy(base)
    config = load_adapter(fresh, tmp_path / "adapter")
    assert config["base"] == "tiny-base" and config["labels"] == ["a", "b"]
    assert torch.equal(config["extra_tensors"]["head.weight"], head)
    ids = _ids(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)
    other = GPTModel(GPTConfig(vocab_size=97, context_length=32, emb_dim=48, n_heads=4, n_layers=2,
                               tie_weights=False))  # not its base: other widths
    with pytest.raises(CheckpointError, match=r"has shape \(3, 32\), the model needs \(3, 48\)"):
        load_adapter(other, tmp_path / "adapter")
    assert not lora_layers(other) and all(p.requires_grad for p in other.parameters())  # left as it was
    # Fine-tuning on top of an adapter folder names it as one (it said "not a model directory")
    with pytest.raises(CheckpointError, match="is a LoRA adapter, not a model directory"):
        load_base(checkpoint=tmp_path / "adapter")


def test_adapter_in_a_folder_whose_name_is_not_utf8_loads(tmp_path):
    base = tiny_model()
    model = copy.deepcopy(base)
    apply_lora(model, LoRAConfig(rank=2))
    _train_steps(model, _ids())
    where = tmp_path / "caf\udce9"  # how Python hands over a folder name holding the byte 0xe9
    save_adapter(model, where, base="tiny-base")
    fresh = copy.deepcopy(base)
    load_adapter(fresh, where)
    ids = _ids(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), model(ids), rtol=0, atol=0)


def test_tied_head_cannot_be_a_target():
    model = GPTModel(GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    with pytest.raises(ConfigError, match="shares its weight"):
        apply_lora(model, LoRAConfig(targets=("out_head",)))
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        LoRAConfig(rank=0)


def test_lora_settings_are_read_the_same_way_by_every_fine_tune():
    from gptsmith.finetune.classify import ClassifyConfig
    from gptsmith.finetune.instruct import InstructConfig
    from gptsmith.finetune.lora import lora_settings

    assert lora_settings(0) is None
    assert lora_settings(8) == LoRAConfig(rank=8, alpha=16.0)  # alpha defaults to 2 x rank
    assert LoRAConfig(rank=16).alpha == 32.0 and LoRAConfig(rank=4, alpha=1).alpha == 1
    assert lora_settings(4, alpha=4, dropout=0.1, targets="attention") == \
        LoRAConfig(rank=4, alpha=4, dropout=0.1, targets=("attention",))
    for config in (ClassifyConfig, InstructConfig):
        assert config(lora_rank=16).lora() == LoRAConfig(rank=16, alpha=32.0)
        assert config(lora_rank=2, lora_targets=("feed-forward",)).lora().targets == ("feed-forward",)
    with pytest.raises(ConfigError, match="--lora-alpha and --lora-dropout only apply with LoRA"):
        lora_settings(0, alpha=8, dropout=0.1)
    with pytest.raises(ConfigError, match="--lora-targets only apply with LoRA"):
        InstructConfig(lora_targets=("attention",)).check()
