"""FastLinear: the model's linear layers take faster CPU kernels in inference, with nn.Linear's results,
parameters and state dict, and rebuild their cached copies whenever the weights change."""

from __future__ import annotations

import copy

import pytest
import torch
from generation_helpers import tiny_model

from gptsmith.generate.generation import generate
from gptsmith.model import fast_linear
from gptsmith.model.fast_linear import FastLinear, clear_fast_caches, split_one_row
from gptsmith.model.gpt import GPTConfig, GPTModel
from gptsmith.train.schedule import build_optimizer


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same model with every FastLinear turned back into a plain nn.Linear."""
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, FastLinear):
            module.__class__ = torch.nn.Linear
    return plain


def caches(layer: FastLinear) -> dict:
    return layer.__dict__.get("_fast_caches", {})


def choose_one_row_kernel(monkeypatch, kernel: str) -> None:
    """fp32 one-row products through oneDNN, split over the threads, or ``F.linear``."""
    monkeypatch.setattr(fast_linear, "ONE_ROW_ON_ONEDNN", kernel == "onednn")
    monkeypatch.setattr(fast_linear, "SPLIT_ONE_ROW", kernel == "split")


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("one_row", ["onednn", "split", "plain"])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(("in_features", "out_features", "bias", "pad"), [
    (16, 50, True, False), (16, 50, False, True), (40, 16, True, False), (8, 97, False, True),
    (8, 5, True, True),
])
def test_fast_linear_equals_linear(monkeypatch, onednn, one_row, threads, in_features, out_features, bias,
                                   pad):
    choose_one_row_kernel(monkeypatch, one_row)  # the three one-row fp32 kernels
    monkeypatch.setattr(fast_linear, "GEMM_ON_ONEDNN", onednn)  # both GEMMs of several rows
    torch.manual_seed(0)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    fast = FastLinear(in_features, out_features, bias=bias)
    fast.pad_outputs = pad
    fast.load_state_dict(linear.state_dict())
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # one row, then batches (a prompt, a scoring batch), then no rows at all
        for shape in [(1, 1, in_features), (1, in_features), (3, 2, in_features), (2, 33, in_features),
                      (0, 4, in_features)]:
            x = torch.randn(shape)
            with torch.inference_mode():
                out = fast(x)
                assert out.shape == (*shape[:-1], out_features)
                torch.testing.assert_close(out, linear(x), atol=1e-5, rtol=1e-5)
        x = torch.randn(1, 1, in_features, requires_grad=True)
        fast(x).sum().backward()  # with autograd on it is nn.Linear's own path
        assert fast.weight.grad.shape == (out_features, in_features)
    finally:
        torch.set_num_threads(saved)


def test_one_row_kernel_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(fast_linear, "ONE_ROW_ON_ONEDNN", False)  # (oneDNN's turn: the next test)
    monkeypatch.setattr(fast_linear, "_cpu_vendor", lambda: "AuthenticAMD")
    assert split_one_row()  # MKL's product ran on one thread on an AMD EPYC
    monkeypatch.setattr(fast_linear, "_cpu_vendor", lambda: "GenuineIntel")
    assert split_one_row() is not torch.backends.mkl.is_available()
    monkeypatch.setattr(fast_linear, "SPLIT_ONE_ROW", True)
    assert split_one_row()
    fast = FastLinear(8, 20)
    calls = []
    spy = lambda x, weight, bias: calls.append(1) or weight[:, 0]  # noqa: E731
    monkeypatch.setattr(fast_linear, "_one_row_on_all_threads", spy)
    with torch.inference_mode():
        fast(torch.randn(1, 8))
    monkeypatch.setattr(fast_linear, "SPLIT_ONE_ROW", False)
    with torch.inference_mode():
        fast(torch.randn(1, 8))
    assert calls == [1]  # the split only when chosen


def test_one_row_on_onednn_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(fast_linear, "ONE_ROW_ON_ONEDNN", None)
    monkeypatch.setattr(fast_linear, "onednn_fp32_gemm_works", lambda: True)
    monkeypatch.setattr(fast_linear, "_cpu_vendor", lambda: "AuthenticAMD")
    for capability, chosen in (("AVX512", True), ("AVX2", False), ("DEFAULT", False)):
        monkeypatch.setattr(fast_linear, "_cpu_capability", lambda c=capability: c)
        assert fast_linear.one_row_on_onednn() is chosen  # oneDNN on an AVX-512 EPYC, the split on AVX2
    monkeypatch.setattr(fast_linear, "_cpu_vendor", lambda: "GenuineIntel")
    assert not fast_linear.one_row_on_onednn()  # MKL's own on Intel CPUs
    calls = []
    real = fast_linear._onednn_linear
    spy = lambda *args: calls.append(args[0].shape) or real(*args)  # noqa: E731
    monkeypatch.setattr(fast_linear, "_onednn_linear", spy)
    fast = FastLinear(8, 20)
    for chosen in (True, False):
        monkeypatch.setattr(fast_linear, "ONE_ROW_ON_ONEDNN", chosen)
        with torch.inference_mode():
            out = fast(torch.randn(1, 1, 8))
        assert out.shape == (1, 1, 20)
    assert calls == [(1, 8)]  # oneDNN only when chosen


def test_gemm_of_several_rows_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(fast_linear, "GEMM_ON_ONEDNN", None)
    monkeypatch.setattr(fast_linear, "_cpu_vendor", lambda: "AuthenticAMD")
    assert fast_linear.gemm_on_onednn() is fast_linear.onednn_fp32_gemm_works()  # faster than MKL on an EPYC
    monkeypatch.setattr(fast_linear, "_cpu_vendor", lambda: "GenuineIntel")
    assert not fast_linear.gemm_on_onednn()  # MKL, tuned for Intel's CPUs
    monkeypatch.setattr(fast_linear, "onednn_fp32_gemm_works", lambda: True)
    calls = []
    real = fast_linear._onednn_linear
    monkeypatch.setattr(fast_linear, "_onednn_linear", lambda *args: calls.append(1) or real(*args))
    fast = FastLinear(8, 20)
    for chosen in (True, False, None):
        monkeypatch.setattr(fast_linear, "GEMM_ON_ONEDNN", chosen)
        with torch.inference_mode():
            fast(torch.randn(3, 8))
    assert calls == [1]  # oneDNN only when chosen (None: an Intel CPU here)


needs_onednn_bf16 = pytest.mark.skipif(
    not fast_linear.mkldnn_bf16_linear_works(),
    reason="this CPU cannot run oneDNN's bf16 linear (needs AVX512-BW/VL/DQ or AVX-NE-CONVERT)")


@pytest.mark.parametrize("onednn", [
    pytest.param(True, marks=needs_onednn_bf16), False])
def test_bf16_one_row_matches_linear(monkeypatch, onednn):
    monkeypatch.setattr(fast_linear, "mkldnn_bf16_linear_works", lambda: onednn)
    torch.manual_seed(0)
    fast = FastLinear(64, 200).to(torch.bfloat16)
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = torch.nn.functional.linear(x.float(), fast.weight.float(), fast.bias.float())
        torch.testing.assert_close(fast(x).float(), expected, atol=0.05, rtol=0.02)
    assert ("mkldnn" in caches(fast)) == onednn  # packed only where oneDNN can run it


@pytest.mark.parametrize("one_row", ["onednn", "split", "plain"])
def test_greedy_tokens_identical_to_the_plain_path(monkeypatch, one_row):
    choose_one_row_kernel(monkeypatch, one_row)
    model = tiny_model(vocab_size=301, context_length=64)  # 301: the head is padded to 320
    plain = plain_copy(model)
    prompts = [[5, 17, 42], [7, 7, 8, 9, 200, 3]]
    assert torch.equal(generate(model, prompts, 40), generate(plain, prompts, 40))
    beams = [generate(net, [5, 17, 42], 40, num_beams=3) for net in (model, plain)]
    assert torch.equal(*beams)
    ids = torch.tensor([[5, 17, 42, 8]])
    with torch.inference_mode():
        logits = model(ids)
        assert logits.shape == (1, 4, 301)
        torch.testing.assert_close(logits, plain(ids), atol=1e-6, rtol=1e-6)
    assert caches(model.out_head)  # the padded head was used (and cached)


def test_parameters_and_state_dict_unchanged():
    cfg = GPTConfig(vocab_size=301, context_length=16, emb_dim=32, n_heads=4, n_layers=2)
    model = GPTModel(cfg)
    reference = plain_copy(model)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]))  # builds the padded head
    state = model.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert state["tok_emb.weight"].shape == (301, 32)
    assert model.num_parameters() == reference.num_parameters()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert not caches(copy.deepcopy(model).out_head)  # copies rebuild their own


def test_caches_follow_an_optimizer_step_and_load_state_dict():
    model = tiny_model(vocab_size=301, context_length=32)
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode():
        model(ids)
    key_before = caches(model.out_head)["padded"][0]
    # A training step changes the weights in place (fused AdamW): the next inference must see it.
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    optimizer.step()
    model.eval()
    with torch.inference_mode():
        after_step = model(ids)
        # (1e-5: oneDNN's GEMM may sum in another order than MKL's; a stale cache is off by ~1e-2)
        torch.testing.assert_close(after_step, plain_copy(model)(ids), atol=1e-5, rtol=1e-5)
    assert caches(model.out_head)["padded"][0] != key_before
    assert torch.equal(generate(model, [3, 1, 4], 20), generate(plain_copy(model), [3, 1, 4], 20))

    other = tiny_model(vocab_size=301, context_length=32, seed=1)
    model.load_state_dict(other.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), other(ids), atol=1e-6, rtol=1e-6)


@needs_onednn_bf16
def test_bf16_packed_weights_follow_changes():
    model = tiny_model(vocab_size=301, context_length=32).to(torch.bfloat16)
    layer = model.trf_blocks[0].att.qkv
    x = torch.randn(1, 1, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        first = layer(x)
    assert "mkldnn" in caches(layer)
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place change bumps the version counter
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias),
                                   atol=0.05, rtol=0.02)
        assert not torch.allclose(layer(x), first)
    layer.weight.data.mul_(0)  # bypasses the version counter: clear_fast_caches makes it visible
    clear_fast_caches(model)
    with torch.inference_mode():
        assert torch.equal(layer(x), layer.bias.expand(1, 1, -1))


def test_a_model_built_under_inference_mode_decodes():
    # Its weights are inference tensors, which have no version counter for the cache key to read.
    with torch.inference_mode():
        cfg = GPTConfig(vocab_size=301, context_length=16, emb_dim=32, n_heads=4, n_layers=2)
        model = GPTModel(cfg).eval()
        plain = plain_copy(model)
        assert torch.equal(generate(model, [1, 2, 3], 6), generate(plain, [1, 2, 3], 6))
        ids = torch.tensor([[1, 2, 3, 4]])
        torch.testing.assert_close(model(ids), plain(ids), atol=1e-6, rtol=1e-6)  # all rows: the padded head
    assert caches(model.out_head)  # it was built and cached
