"""bf16 on fbgemm's fp16-packed weights and int8 decoding (``use_int8_decoding``): results close to
fp32's, parameters and state dict untouched, copies rebuilt when the weights change, and a clear
error where the kernels are missing."""

from __future__ import annotations

import pytest
import torch
from generation_helpers import tiny_model

from gptsmith.errors import ConfigError
from gptsmith.generate.generation import generate
from gptsmith.model import fast_linear
from gptsmith.model.fast_linear import FastLinear, use_int8_decoding
from gptsmith.train.schedule import build_optimizer

needs_fbgemm = pytest.mark.skipif(
    not (fast_linear.fbgemm_fp16_linear_works() and fast_linear.fbgemm_int8_linear_works()),
    reason="PyTorch's fbgemm kernels are missing here (they ship with x86 builds)")


def caches(layer: FastLinear) -> dict:
    return layer.__dict__.get("_fast_caches", {})


def fp32_reference(layer: FastLinear, x: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.float()
    return torch.nn.functional.linear(x.float(), layer.weight.float(), bias)


@needs_fbgemm
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_through_fbgemm_matches_fp32_arithmetic(monkeypatch, bias):
    monkeypatch.setattr(fast_linear, "BF16_ON_FBGEMM", True)
    torch.manual_seed(0)
    layer = FastLinear(64, 200, bias=bias).to(torch.bfloat16)
    for shape in [(1, 1, 64), (1, 64), (3, 5, 64)]:  # a decode step, then a prompt
        x = torch.randn(shape, dtype=torch.bfloat16)
        with torch.inference_mode():
            out = layer(x)
        assert out.dtype == torch.bfloat16 and out.shape == (*shape[:-1], 200)
        # bf16 weights are exact in fp16 and the sums are fp32: only the output's rounding differs
        torch.testing.assert_close(out.float(), fp32_reference(layer, x), atol=0.02, rtol=0.01)
    assert "fbgemm_fp16" in caches(layer) and "mkldnn" not in caches(layer)


@needs_fbgemm
def test_bf16_fbgemm_copy_follows_changes_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(fast_linear, "BF16_ON_FBGEMM", True)
    torch.manual_seed(0)
    layer = FastLinear(32, 48).to(torch.bfloat16)
    x = torch.randn(1, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        first = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-1)  # in place: the packed copy must be rebuilt
        layer.bias.zero_()  # the bias is not in the pack
    with torch.inference_mode():
        changed = layer(x)
    torch.testing.assert_close(changed.float(), fp32_reference(layer, x), atol=0.02, rtol=0.01)
    assert not torch.allclose(changed, first)
    monkeypatch.setattr(fast_linear, "BF16_ON_FBGEMM", False)
    layer.__dict__.pop("_fast_caches", None)
    with torch.inference_mode():
        layer(torch.randn(3, 32, dtype=torch.bfloat16))  # many rows: F.linear, nothing packed
    assert "fbgemm_fp16" not in caches(layer)


@needs_fbgemm
def test_bf16_weights_beyond_fp16_range_keep_plain_bf16(monkeypatch):
    monkeypatch.setattr(fast_linear, "BF16_ON_FBGEMM", True)
    layer = FastLinear(4, 3, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.weight[0, 0] = 1e6  # fp16 would turn it into inf
    x = torch.ones(1, 4, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), fp32_reference(layer, x), rtol=0.01, atol=0.0)


@needs_fbgemm
@pytest.mark.parametrize("bias", [True, False])
def test_int8_decoding_is_close_to_fp32_on_one_row_and_exact_on_many(bias):
    torch.manual_seed(0)
    layer = use_int8_decoding(torch.nn.Sequential(FastLinear(128, 300, bias=bias)))[0]
    assert layer.int8_decoding
    x = torch.randn(1, 1, 128)
    with torch.inference_mode():
        out = layer(x)
        expected = fp32_reference(layer, x)
        assert out.shape == (1, 1, 300)
        # int8 weights and input: a small error relative to the output's size, never a wrong shape
        assert ((out - expected).norm() / expected.norm()).item() < 0.03
        assert not torch.equal(out, expected)  # it did take the int8 path
        rows = torch.randn(4, 128)
        torch.testing.assert_close(layer(rows), fp32_reference(layer, rows), atol=1e-5, rtol=1e-5)
    assert "int8" in caches(layer)


@needs_fbgemm
def test_int8_decoding_keeps_parameters_and_follows_training():
    model = tiny_model(vocab_size=301, context_length=32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    use_int8_decoding(model)
    tokens = generate(model, [3, 1, 4], 12)
    assert tokens.shape == (1, 15)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert "int8" in caches(model.out_head)
    key_before = caches(model.out_head)["int8"][0]
    # One training step (autograd: the fp32 path) changes the weights; decoding must see the change.
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    model.train()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    optimizer.step()
    model.eval()
    generate(model, [3, 1, 4], 2)
    assert caches(model.out_head)["int8"][0] != key_before
    use_int8_decoding(model, enabled=False)
    assert not any(getattr(m, "int8_decoding", False) for m in model.modules())


def test_int8_decoding_without_fbgemm_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(fast_linear, "fbgemm_int8_linear_works", lambda: False)
    with pytest.raises(ConfigError, match="int8 decoding needs PyTorch's fbgemm kernels"):
        use_int8_decoding(tiny_model(vocab_size=301, context_length=32))


@needs_fbgemm
def test_int8_decoding_of_bf16_weights_is_refused():
    model = tiny_model(vocab_size=301, context_length=32).to(torch.bfloat16)
    with pytest.raises(ConfigError, match=r"this model's are bfloat16: call model.float\(\) first"):
        use_int8_decoding(model)
    use_int8_decoding(model.float())  # then it works


@needs_fbgemm
def test_int8_copy_follows_a_change_of_the_bias_alone():
    torch.manual_seed(0)
    layer = use_int8_decoding(torch.nn.Sequential(FastLinear(32, 40)))[0]
    x = torch.randn(1, 32)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.bias.add_(1.0)  # the bias is packed with the int8 weight: the pack must be rebuilt
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), before + 1.0, atol=1e-4, rtol=1e-4)
