"""Tests for gptsmith.generate: decoding strategies, KV cache, batches, beams, bad input.

Stopping is tested in test_stopping.py, streaming in test_streaming.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from generation_helpers import ByteTokenizer, TableModel, sequence_logprob, tiny_model

from gptsmith.config import from_dict
from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.generate.beam_search import beam_search
from gptsmith.generate.config import GenerationConfig
from gptsmith.generate.decoding import (
    apply_repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from gptsmith.generate.generation import generate, text_to_token_ids, token_ids_to_text


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=97, context_length=32)


@pytest.fixture
def prompt():
    torch.manual_seed(1)
    return torch.randint(0, 97, (1, 10))


# --- greedy, cache, cropping ---------------------------------------------------------------------


def test_greedy_with_and_without_cache_identical_past_the_context(model, prompt):
    with_cache = generate(model, prompt, 200)
    without_cache = generate(model, prompt, 200, use_cache=False)
    assert with_cache.shape == (1, 210)  # far past context_length 32
    assert torch.equal(with_cache[:, :10], prompt)
    assert torch.equal(with_cache, without_cache)
    assert len(set(with_cache[0, 10:].tolist())) > 5  # a varied sequence, not one repeated token


def test_greedy_with_and_without_cache_identical_within_the_context(prompt):
    # context 256 > 10 + 200: every one of the 200 tokens is decoded from the cache (fed one at a time)
    net = tiny_model(vocab_size=97, context_length=256)
    fed = []
    hook = net.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
    try:
        with_cache = generate(net, prompt, 200)
    finally:
        hook.remove()
    assert fed == [10] + [1] * 199  # prefill, then one token per step
    assert torch.equal(with_cache, generate(net, prompt, 200, use_cache=False))
    assert len(set(with_cache[0, 10:].tolist())) > 5


def test_greedy_matches_step_by_step_argmax_of_the_cropped_window(model, prompt):
    out = generate(model, prompt, 40)[0].tolist()
    with torch.no_grad():
        for i in range(10, 50):
            window = torch.tensor([out[max(0, i - 32) : i]])  # the most recent context_length tokens
            assert int(model(window)[0, -1].argmax()) == out[i]


def test_cache_is_used_by_default(prompt):
    table = TableModel(torch.randn(97, 97))
    generate(table, prompt, 5)
    assert table.fed == [10, 1, 1, 1, 1]  # prefill, then only the newest token per step
    table.fed.clear()
    generate(table, prompt, 5, use_cache=False)
    assert table.fed == [10, 11, 12, 13, 14]  # without the cache every step re-reads the text


def test_max_new_tokens_zero_returns_the_prompt(model, prompt):
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_one_dimensional_and_list_prompts(model, prompt):
    expected = generate(model, prompt, 8)
    assert torch.equal(generate(model, prompt[0], 8), expected)
    assert torch.equal(generate(model, prompt[0].tolist(), 8), expected)


def test_generate_restores_training_mode(prompt):
    net = tiny_model()
    net.train()
    generate(net, prompt, 3)
    assert net.training


def test_prompt_longer_than_context_is_cropped_with_a_warning(model):
    long_prompt = torch.randint(0, 97, (1, 50))
    with pytest.warns(UserWarning, match="longer than the model's context of 32"):
        out = generate(model, long_prompt, 5)
    assert torch.equal(out[:, :50], long_prompt)
    assert torch.equal(out[:, 50:], generate(model, long_prompt[:, -32:], 5)[:, 32:])


def test_empty_prompt_starts_from_end_of_text(model):
    out = generate(model, torch.zeros((1, 0), dtype=torch.long), 4, eos_id=96)
    assert out[0, 0] == 96 and out.shape[1] >= 1
    tok = ByteTokenizer()
    tok.eot_id = 50
    assert generate(model, [], 4, tokenizer=tok)[0, 0] == 50  # the tokenizer's <|endoftext|>
    padded = generate(model, [[1, 2], []], 4, eos_id=96, pad_id=0)
    assert padded[1, :2].tolist() == [0, 96]  # left padding, then the start id
    with pytest.raises(GptsmithError, match="empty prompt"):
        generate(model, [], 4)


# --- batches -------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_rows_equal_their_own_generation(model, use_cache):
    torch.manual_seed(2)
    rows = [torch.randint(0, 97, (n,)).tolist() for n in (5, 2, 12, 31)]
    batched = generate(model, rows, 45, use_cache=use_cache)  # runs past the context too
    assert batched.shape == (4, 31 + 45)
    for i, row in enumerate(rows):
        alone = generate(model, [row], 45)
        assert torch.equal(batched[i, -45:], alone[0, len(row) :]), f"row {i}"
        assert batched[i, 31 - len(row) : 31].tolist() == row  # left-padded prompt


def test_left_padded_tensor_with_attention_mask_equals_list_input(model):
    rows = [[3, 4, 5, 6], [7, 8]]
    ids = torch.tensor([[3, 4, 5, 6], [0, 0, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(generate(model, ids, 10, attention_mask=mask), generate(model, rows, 10))


def test_batch_padding_is_what_the_docstring_says_and_strips_as_it_says(model):
    rows = [[3, 4, 5, 6], [7, 8]]
    width = max(len(row) for row in rows)
    out = generate(model, rows, 6)  # no tokenizer and no eos_id: the padding is id 0, a real token
    assert out[1, : width - 2].tolist() == [0, 0]
    for i, row in enumerate(rows):  # the documented recipes: prompt + continuation, new tokens
        alone = generate(model, [row], 6)[0]
        assert out[i, width - len(row) :].tolist() == alone.tolist()
        assert out[i, width:].tolist() == alone[len(row) :].tolist()
    with_pad_id = generate(model, rows, 6, pad_id=96)
    assert with_pad_id[1, :2].tolist() == [96, 96] and torch.equal(with_pad_id[:, width:], out[:, width:])
    doc = " ".join(generate.__doc__.split())
    assert "padded on the left with ``pad_id``" in doc and "``out[:, width:]``" in doc
    assert "``out[i, width - len(prompts[i]):]``" in doc


def test_bad_attention_mask(model):
    ids = torch.tensor([[3, 4, 5], [7, 8, 0]])
    with pytest.raises(GptsmithError, match="left padding"):
        generate(model, ids, 3, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))
    with pytest.raises(GptsmithError, match="shape"):
        generate(model, ids, 3, attention_mask=torch.ones(2, 2))
    half = torch.tensor([[1.0, 1.0, 1.0], [0.5, 1.0, 1.0]])  # was cut to 0: token 7 taken for padding
    with pytest.raises(GptsmithError, match=r"only 1 \(token\) and 0 \(padding\), got \[0.5, 1.0\]"):
        generate(model, ids, 3, attention_mask=half)
    assert torch.equal(generate(model, ids, 3, attention_mask=torch.ones(2, 3)), generate(model, ids, 3))


@pytest.mark.parametrize("pad_id", [-5, 10**6, 1.5, "x", True])
def test_pad_id_must_be_a_token_id_of_the_vocabulary(model, pad_id):
    # were: an error about the text's tokenizer, an id cut from 1.5 to 1, a ValueError from torch
    with pytest.raises(ConfigError, match=r"^pad_id must be a token id of the model's vocabulary \(0\.\."):
        generate(model, [[1, 2], [3]], 2, pad_id=pad_id)


# --- sampling ------------------------------------------------------------------------------------


def test_seed_makes_sampling_reproducible(model, prompt):
    first = generate(model, prompt, 30, temperature=1.0, seed=123)
    again = generate(model, prompt, 30, temperature=1.0, seed=123)
    other = generate(model, prompt, 30, temperature=1.0, seed=124)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, generate(model, prompt, 30))  # sampling is not greedy


def test_top_k_1_and_tiny_top_p_equal_greedy(model, prompt):
    greedy = generate(model, prompt, 40)
    assert torch.equal(generate(model, prompt, 40, temperature=1.5, top_k=1, seed=0), greedy)
    assert torch.equal(generate(model, prompt, 40, temperature=1.5, top_p=1e-6, seed=0), greedy)


def test_top_k_filter_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    assert top_k_filter(logits, 2).tolist() == [[-float("inf"), 5.0, -float("inf"), 4.0]]


def test_top_p_filter_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs.log(), 0.75) > -float("inf")
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.5 + 0.3
    assert (top_p_filter(probs.log(), 1.0) > -float("inf")).all()
    # A top_p that is 0 in float32 still keeps the most likely token (never an empty nucleus).
    assert (top_p_filter(probs.log(), 1e-300) > -float("inf")).tolist() == [[True, False, False, False]]


def test_repetition_penalty_processor():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    seen = torch.tensor([[True, True, False]])
    penalised = apply_repetition_penalty(logits, seen, 2.0)
    assert penalised.tolist() == [[1.0, -2.0, 0.5]]  # both seen tokens become less likely


def test_repetition_penalty_breaks_a_loop():
    table = torch.zeros(5, 5)
    table[:, 0] = 1.0  # every token prefers 0...
    table[:, 1:] = torch.tensor([0.5, 0.4, 0.3, 0.2])  # ... then 1, 2, 3, 4
    model = TableModel(table)
    assert generate(model, [4], 4)[0, 1:].tolist() == [0, 0, 0, 0]
    assert generate(model, [4], 4, repetition_penalty=10.0)[0, 1:].tolist() == [0, 1, 2, 3]


# --- beam search ---------------------------------------------------------------------------------


def test_beam_search_with_one_beam_is_greedy(model, prompt):
    greedy = generate(model, prompt, 40)
    best, _, reason = beam_search(model, prompt, 40, num_beams=1)
    assert best == greedy[0, 10:].tolist()


def test_beam_search_finds_a_more_likely_sequence_than_greedy():
    # From 0, token 1 is the likelier first step (0.6 vs 0.4), but after 1 every token is equally
    # likely, while after 2 token 3 is almost certain: 0 -> 2 -> 3 beats 0 -> 1 -> anything.
    vocab = 20
    table = torch.full((vocab, vocab), -30.0)
    table[0, 1], table[0, 2] = torch.tensor(0.6).log(), torch.tensor(0.4).log()
    table[1, :] = 0.0
    table[2, 3] = 0.0
    table[3, :] = 0.0
    model = TableModel(table)
    greedy = generate(model, [0], 2)[0, 1:].tolist()
    beams = generate(model, [0], 2, num_beams=3)[0, 1:].tolist()
    assert greedy[0] == 1 and beams == [2, 3]
    assert sequence_logprob(model, [0], beams) > sequence_logprob(model, [0], greedy) + 1.0


def test_beam_search_stops_early_on_eos():
    table = torch.full((6, 6), -10.0)
    table[0, 1] = table[1, 5] = 0.0  # 0 -> 1 -> eos
    model = TableModel(table)
    out = generate(model, [0], 50, num_beams=2, eos_id=5)
    assert out[0].tolist() == [0, 1]
    assert model.calls < 10


def test_beam_search_equals_across_cache_and_window(model, prompt):
    with_cache = generate(model, prompt, 30, num_beams=3)
    assert torch.equal(with_cache, generate(model, prompt, 30, num_beams=3, use_cache=False))


# --- prompts and text ----------------------------------------------------------------------------


def test_text_round_trip(gpt2_tokenizer):
    ids = text_to_token_ids("Hello, world", gpt2_tokenizer)
    assert ids.shape == (1, 3)
    assert token_ids_to_text(ids, gpt2_tokenizer) == "Hello, world"
    assert text_to_token_ids("", gpt2_tokenizer).tolist() == [[gpt2_tokenizer.eot_id]]
    with pytest.raises(GptsmithError, match="batch of 2"):
        token_ids_to_text(torch.zeros(2, 3, dtype=torch.long), gpt2_tokenizer)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_k": 0}, "top_k must be an integer >= 1"),
        ({"top_k": 98}, "top_k must be at most the vocabulary size 97"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
        ({"num_beams": 0}, "num_beams must be an integer >= 1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"eos_id": 500}, "eos_id 500 is outside"),
        ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty must be a finite number"),
        ({"num_beams": 2, "length_penalty": float("nan")}, "length_penalty must be a finite number"),
        ({"num_beams": 2, "temperature": 0.8}, "beam search .* is deterministic"),
        ({"num_beams": 2, "top_k": 5}, "beam search .* is deterministic"),
    ],
)
def test_bad_options_raise_clear_errors(model, prompt, options, message):
    kwargs = {"max_new_tokens": 3, **options}
    with pytest.raises(ConfigError, match=message):
        generate(model, prompt, **kwargs)


def test_generation_config_from_dict_and_kwargs(model):
    cfg = from_dict(GenerationConfig, {"temperature": 0.7, "top_k": 40})
    assert cfg.temperature == 0.7 and cfg.max_new_tokens == 50
    cfg = dataclasses.replace(cfg, max_new_tokens=6, seed=3)
    ids = torch.tensor([[1, 2, 3]])
    # every field is one of generate's keywords, with the same meaning
    assert torch.equal(generate(model, ids, **dataclasses.asdict(cfg)),
                       generate(model, ids, 6, temperature=0.7, top_k=40, seed=3))
    with pytest.raises(ConfigError, match="unknown GenerationConfig field"):
        from_dict(GenerationConfig, {"temprature": 1.0})


def test_text_instead_of_ids_is_refused(model):
    for text in ("hello", ["hello", "world"]):
        with pytest.raises(GptsmithError, match=r"encode it first: text_to_token_ids\(text, tokenizer\)"):
            generate(model, text, 3)


def test_out_of_vocabulary_prompt(model):
    with pytest.raises(GptsmithError, match="outside the model's vocabulary"):
        generate(model, [5, 200], 3)
