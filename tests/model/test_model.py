"""GPTModel: building blocks equal their formulas, presets have GPT-2's sizes, inputs are checked."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch

from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.model.gpt import (
    GELU,
    PRESETS,
    GPTConfig,
    GPTModel,
    LayerNorm,
    gelu_reference,
    layer_norm_reference,
    summarize,
)

TINY = GPTConfig(vocab_size=97, context_length=24, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


@pytest.fixture
def tiny_model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(TINY).eval()


def test_layer_norm_equals_reference_formula():
    norm = LayerNorm(16)
    with torch.no_grad():
        norm.scale.uniform_(0.5, 1.5)
        norm.shift.uniform_(-1, 1)
    x = torch.randn(3, 5, 16) * 4 + 2
    out = norm(x)
    torch.testing.assert_close(out, layer_norm_reference(x, norm.scale, norm.shift))
    plain = LayerNorm(16)(x)
    torch.testing.assert_close(plain.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.var(-1, unbiased=False), torch.ones(3, 5), atol=1e-3, rtol=0)


def test_gelu_equals_tanh_formula():
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(GELU()(x), gelu_reference(x))
    expected = 0.5 * 1.0 * (1 + math.tanh(math.sqrt(2 / math.pi) * (1 + 0.044715)))
    assert GELU()(torch.tensor(1.0)).item() == pytest.approx(expected, abs=1e-6)
    assert GELU()(torch.tensor(0.0)).item() == 0.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"emb_dim": 100, "n_heads": 12}, "divisible by n_heads"),
        ({"n_layers": 0}, "n_layers must be a positive integer"),
        ({"vocab_size": -5}, "vocab_size must be a positive integer"),
        ({"context_length": 1.5}, "context_length must be a positive integer"),
        ({"n_heads": True}, "n_heads must be a positive integer"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"drop_rate": "0.1"}, "drop_rate must be a number"),
        ({"qkv_bias": "no"}, "qkv_bias must be true or false, got 'no'"),
        ({"n_head": 8}, r"unknown GPTConfig field\(s\) in overrides of preset 'tiny': n_head \(known:"),
    ],
)
def test_invalid_config_fails_at_construction(overrides, message):
    with pytest.raises(ConfigError, match=message):
        GPTConfig.from_preset("tiny", **overrides)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt3'") as info:
        GPTConfig.from_preset("gpt3")
    for name in PRESETS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "tied", "untied"),
    [
        ({}, 124_439_808, 163_037_184),
        ({"qkv_bias": False}, 124_412_160, 163_009_536),
    ],
)
def test_gpt2_small_parameter_counts(overrides, tied, untied):
    cfg = GPTConfig.from_preset("gpt2-small", **overrides)
    summary = summarize(cfg)
    assert (summary.params_tied, summary.params_untied) == (tied, untied)
    with torch.device("meta"):
        model = GPTModel(cfg)
    assert model.num_parameters() == tied
    assert model.num_parameters(count_tied_once=False) == untied
    assert summary.memory_bytes(4)["weights"] == 4 * tied
    assert summary.memory_bytes(2)["total"] == 2 * 4 * tied


def test_presets_have_published_sizes():
    millions = {"gpt2-medium": 355, "gpt2-large": 774, "gpt2-xl": 1558}
    for name, expected in millions.items():
        assert round(summarize(GPTConfig.from_preset(name)).params_tied / 1e6) == expected
    assert 1e6 < summarize(PRESETS["tiny"]).params_tied < 1e7  # "a few million"
    small = PRESETS["small"]
    assert (small.n_layers, small.emb_dim) == (6, 384)


def test_gpt2_small_shapes_match_transformers():
    transformers = pytest.importorskip("transformers")
    from gptsmith.model.hf_gpt2 import state_dict_to_hf

    with torch.device("meta"):
        hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
        ours = GPTModel(GPTConfig.from_preset("gpt2-small"))
    hf_shapes = {k: tuple(v.shape) for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    our_shapes = {k: tuple(v.shape) for k, v in state_dict_to_hf(ours).items()}
    assert our_shapes == hf_shapes
    assert tuple(ours.out_head.weight.shape) == tuple(hf_model.lm_head.weight.shape)


def test_tied_head_shares_the_embedding():
    model = GPTModel(TINY)
    assert model.out_head.weight is model.tok_emb.weight
    untied = GPTModel(GPTConfig(**{**TINY.to_dict(), "tie_weights": False}))
    assert untied.out_head.weight is not untied.tok_emb.weight


def test_initialisation_scales_residual_projections():
    cfg = GPTConfig(vocab_size=500, context_length=64, emb_dim=256, n_heads=4, n_layers=8)
    model = GPTModel(cfg)
    block = model.trf_blocks[0]
    assert block.att.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * cfg.n_layers)
    assert block.att.out_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert block.ff.layers[2].weight.std().item() == pytest.approx(residual_std, rel=0.05)
    assert torch.all(block.att.qkv.bias == 0)


def test_forward_shapes_and_last_token_only(tiny_model):
    ids = torch.randint(0, TINY.vocab_size, (2, 10))
    logits = tiny_model(ids)
    assert logits.shape == (2, 10, TINY.vocab_size)
    last = tiny_model(ids, last_token_only=True)
    torch.testing.assert_close(last, logits[:, -1:], atol=1e-5, rtol=1e-5)


def test_changing_a_future_token_never_changes_earlier_logits(tiny_model):
    ids = torch.randint(0, TINY.vocab_size, (1, 12))
    changed = ids.clone()
    changed[0, 7] = (ids[0, 7] + 1) % TINY.vocab_size
    before, after = tiny_model(ids), tiny_model(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7], atol=0, rtol=0)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_cached_decoding_equals_full_forward(tiny_model):
    ids = torch.randint(0, TINY.vocab_size, (2, 16))
    full = tiny_model(ids)
    cache = tiny_model.new_cache(batch_size=2)
    steps = [tiny_model(ids[:, :6], cache=cache), tiny_model(ids[:, 6:10], cache=cache)]  # chunked prefill
    steps += [tiny_model(ids[:, i : i + 1], cache=cache) for i in range(10, 16)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 16
    cache.reset()
    torch.testing.assert_close(tiny_model(ids[:, :4], cache=cache), full[:, :4], atol=1e-5, rtol=1e-5)


def test_left_padded_batch_matches_unpadded_sequences(tiny_model):
    short = torch.randint(0, TINY.vocab_size, (1, 5))
    long = torch.randint(0, TINY.vocab_size, (1, 8))
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0] * 3 + [1] * 5, [1] * 8])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = tiny_model(ids, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(logits[0, 3:], tiny_model(short)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], tiny_model(long)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([[1, 2, TINY.vocab_size]]), "token id 97 is outside the model's vocabulary of 97"),
        (torch.tensor([[1, -1]]), "token id -1 is outside"),
        (torch.zeros(1, TINY.context_length + 1, dtype=torch.long), "longer than the model's context_length"),
        (torch.tensor([1, 2, 3]), r"shape \(batch, n_tokens\)"),
        (torch.tensor([[1.0, 2.0]]), "must be integers"),
        ([[1, 2]], r"token_ids must be a tensor of shape \(batch, n_tokens\), got list"),
    ],
)
def test_bad_token_ids_give_clear_errors(tiny_model, ids, message):
    with pytest.raises(GptsmithError, match=message):
        tiny_model(ids)


def test_bad_positions_and_cache_batch_give_clear_errors(tiny_model):
    ids = torch.tensor([[1, 2]])
    with pytest.raises(GptsmithError, match="position ids must be >= 0, got -1"):
        tiny_model(ids, position_ids=torch.tensor([[-1, 0]]))
    with pytest.raises(GptsmithError, match="the KV cache holds 2 sequence.* batch of 1"):
        tiny_model(ids, cache=tiny_model.new_cache(batch_size=2))
    with pytest.raises(GptsmithError, match=r"position_ids must be integer positions, one per token"):
        tiny_model(ids, position_ids=torch.arange(3))
    with pytest.raises(GptsmithError, match=r"attention_mask must be .* = \(1, 2\), got \(1, 3\)"):
        tiny_model(ids, attention_mask=torch.ones(1, 3))


def test_cache_overflow_is_a_clear_error(tiny_model):
    cache = tiny_model.new_cache(batch_size=1)
    tiny_model(torch.zeros(1, TINY.context_length, dtype=torch.long), cache=cache)
    with pytest.raises(GptsmithError, match="context_length"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model = GPTModel(TINY).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, TINY.vocab_size, (4, 17))
    losses = []
    for _ in range(15):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_small_cache_overflow_is_a_clear_error(tiny_model):
    cache = tiny_model.new_cache(batch_size=1, max_length=4)
    with pytest.raises(GptsmithError, match="KV cache is full: 0 stored \\+ 5 new > 4"):
        tiny_model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_summary_is_instant_for_any_depth_and_exact():
    # Parameters grow linearly with depth: base + n_layers x one block, both read off real models.
    one, two = (GPTModel(dataclasses.replace(TINY, n_layers=n)) for n in (1, 2))
    per_block = two.num_parameters() - one.num_parameters()
    base = one.num_parameters() - per_block
    summarize(TINY)  # torch's first op on the meta device imports its reference ops (~1 s, once)
    start = time.perf_counter()
    summary = summarize(dataclasses.replace(TINY, n_layers=100_000))
    assert time.perf_counter() - start < 0.5  # building 100,000 blocks, even on meta, took minutes
    assert summary.params_tied == base + 100_000 * per_block
    assert summary.params_untied == summary.params_tied + TINY.vocab_size * TINY.emb_dim
    assert summary.layers[2][0] == "trf_blocks.[0-99999].att.qkv.weight"
    assert sum(n for name, _, n in summary.layers if name.startswith("trf_blocks.")) == per_block
