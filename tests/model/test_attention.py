"""The attention ladder: each rung computes what the previous one did, plus one idea."""

from __future__ import annotations

import pytest
import torch

from gptsmith.model.attention import (
    CausalAttention,
    KVCache,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    causal_mask,
    copy_wrapper_to_fused,
    simplified_self_attention,
)

# "Your journey starts with one step", 3-d embeddings (the classic worked example).
INPUTS = torch.tensor(
    [
        [0.43, 0.15, 0.89],  # Your
        [0.55, 0.87, 0.66],  # journey
        [0.57, 0.85, 0.64],  # starts
        [0.22, 0.58, 0.33],  # with
        [0.77, 0.25, 0.10],  # one
        [0.05, 0.80, 0.55],  # step
    ]
)


def test_simplified_self_attention_known_values():
    context, weights = simplified_self_attention(INPUTS, return_weights=True)
    # Worked by hand: the weights of "journey" and its context vector.
    expected_weights = torch.tensor([0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581])
    torch.testing.assert_close(weights[1], expected_weights, atol=1e-4, rtol=0)
    torch.testing.assert_close(context[1], torch.tensor([0.4419, 0.6515, 0.5683]), atol=1e-4, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    # Batched input gives the same answer per item.
    batched = simplified_self_attention(torch.stack([INPUTS, INPUTS]))
    torch.testing.assert_close(batched[1], context)


def test_parameter_and_linear_versions_agree():
    v2 = SelfAttentionV2(3, 2)
    v1 = SelfAttentionV1(3, 2)
    with torch.no_grad():  # nn.Linear stores (out, in); the raw matrices are (in, out)
        v1.W_query.copy_(v2.W_query.weight.T)
        v1.W_key.copy_(v2.W_key.weight.T)
        v1.W_value.copy_(v2.W_value.weight.T)
    torch.testing.assert_close(v1(INPUTS), v2(INPUTS))
    assert v2.W_query.bias is None  # no bias by default
    assert SelfAttentionV2(3, 2, qkv_bias=True).W_query.bias is not None


def test_causal_attention_last_token_sees_everything_and_first_only_itself():
    v2 = SelfAttentionV2(3, 2)
    causal = CausalAttention(3, 2, context_length=6, dropout=0.0)
    causal.load_state_dict(v2.state_dict())  # same projection names; the mask is not in the state dict
    out = causal(torch.stack([INPUTS, INPUTS]))  # (batch=2, 6, 2)
    assert out.shape == (2, 6, 2)
    # The last token may attend to all tokens, so it equals unmasked self-attention.
    torch.testing.assert_close(out[0, -1], v2(INPUTS)[-1])
    # The first token attends only to itself: its context vector is its own value.
    torch.testing.assert_close(out[0, 0], v2.W_value(INPUTS[0]))
    with pytest.raises(ValueError, match="context_length"):
        causal(torch.rand(1, 7, 3))


def test_causal_attention_dropout_only_in_training():
    torch.manual_seed(1)
    causal = CausalAttention(3, 4, context_length=6, dropout=0.5)
    x = torch.stack([INPUTS, INPUTS])
    causal.eval()
    torch.testing.assert_close(causal(x), causal(x))
    causal.train()
    assert not torch.allclose(causal(x), causal(x))


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_wrapper_equals_fused_with_copied_weights(qkv_bias, use_sdpa):
    d_in, d_out, n_heads = 8, 12, 3
    wrapper = MultiHeadAttentionWrapper(d_in, d_out, 10, 0.0, n_heads, qkv_bias=qkv_bias)
    fused = MultiHeadAttention(d_in, d_out, 10, 0.0, n_heads, qkv_bias=qkv_bias)
    copy_wrapper_to_fused(wrapper, fused)
    fused.use_sdpa = use_sdpa
    x = torch.randn(2, 7, d_in)
    torch.testing.assert_close(fused(x), wrapper(x), atol=1e-6, rtol=1e-5)


def test_copy_refuses_mismatched_heads():
    wrapper = MultiHeadAttentionWrapper(8, 12, 10, 0.0, 3)
    fused = MultiHeadAttention(8, 12, 10, 0.0, 4)
    with pytest.raises(ValueError, match="heads"):
        copy_wrapper_to_fused(wrapper, fused)
    biased = MultiHeadAttentionWrapper(8, 12, 10, 0.0, 3, qkv_bias=True)
    with pytest.raises(ValueError, match="wrapper has qkv biases but the fused module has none"):
        copy_wrapper_to_fused(biased, MultiHeadAttention(8, 12, 10, 0.0, 3, qkv_bias=False))


def test_fused_attention_refuses_more_tokens_than_its_context():
    attention = MultiHeadAttention(8, 8, 6, 0.0, 2)
    assert attention(torch.randn(1, 6, 8)).shape == (1, 6, 8)
    with pytest.raises(ValueError, match="7 tokens exceed context_length 6"):
        attention(torch.randn(1, 7, 8))


def _fused(qkv_bias=True, d=32, n_heads=4):
    torch.manual_seed(0)
    return MultiHeadAttention(d, d, 64, 0.0, n_heads, qkv_bias=qkv_bias).eval()


def test_sdpa_path_equals_matmul_path():
    att = _fused()
    x = torch.randn(3, 20, 32)
    out_fast = att(x)
    out_slow, weights = att(x, return_weights=True)
    torch.testing.assert_close(out_fast, out_slow, atol=1e-5, rtol=1e-5)
    att.use_sdpa = False
    torch.testing.assert_close(att(x), out_slow)
    assert weights.shape == (3, 4, 20, 20)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 20))
    assert torch.all(weights.triu(diagonal=1) == 0)  # no weight on future tokens


def test_sdpa_equals_matmul_with_padding_mask():
    att = _fused()
    x = torch.randn(2, 6, 32)
    keep = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    mask = causal_mask(6, 6) & (keep[:, None, None, :] | torch.eye(6, dtype=torch.bool))
    fast = att(x, attn_mask=mask)
    slow, _ = att(x, attn_mask=mask, return_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_changing_a_future_token_never_changes_earlier_outputs():
    att = _fused()
    x = torch.randn(1, 10, 32)
    changed = x.clone()
    changed[0, 6:] = torch.randn(4, 32)
    for use_sdpa in (True, False):
        att.use_sdpa = use_sdpa
        before, after = att(x), att(changed)
        torch.testing.assert_close(before[:, :6], after[:, :6], atol=0, rtol=0)
        assert not torch.allclose(before[:, 6:], after[:, 6:])


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_cached_attention_equals_full_forward(use_sdpa):
    att = _fused()
    att.use_sdpa = use_sdpa
    x = torch.randn(2, 12, 32)
    full = att(x)
    cache = KVCache(1, 2, 4, 8, max_length=16)
    pieces = []
    for start, end in [(0, 5), (5, 8), (8, 9), (9, 10), (10, 12)]:  # prefill, chunk, single tokens
        pieces.append(att(x[:, start:end], cache=cache))
        cache.advance(end - start)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_bookkeeping():
    cache = KVCache(2, 1, 2, 4, max_length=5)
    k = torch.randn(1, 2, 3, 4)
    keys, values = cache.update(0, k, k)
    assert keys.shape == (1, 2, 3, 4)
    cache.advance(3)
    assert cache.length == 3
    with pytest.raises(ValueError, match="KV cache is full"):
        cache.update(0, k, k)
    cache.crop(1)
    assert cache.length == 1
    cache.reset()
    assert cache.length == 0 and cache.batch_size == 1
