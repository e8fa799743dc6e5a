"""Decoding at the edges: a huge --max-new-tokens, too many beams, tiny temperatures and a model
whose outputs are not finite — each decoder either works or says so in one line."""

from __future__ import annotations

import pytest
import torch
from generation_helpers import ByteTokenizer, TableModel, scripted_model, tiny_model

from gptsmith.errors import ConfigError, NonFiniteError
from gptsmith.generate.decoding import DecodeState
from gptsmith.generate.generation import generate, stream_text
from gptsmith.model import memory

HUGE = 10**13  # new tokens: 80 TB of ids if allocated up front


def test_memory_grows_with_the_tokens_generated_not_with_max_new_tokens():
    model = tiny_model()
    state = DecodeState(model, torch.tensor([[1, 2, 3]]), None, HUGE)
    assert state.seq.numel() <= 3 + model.cfg.context_length
    for token in range(100):  # past the context: the buffer grows as tokens arrive
        state.append(torch.tensor([token % 90]))
    assert state.tokens()[0, 3:].tolist() == [t % 90 for t in range(100)]
    assert state.seq.shape[1] < 3 + 2 * 100


@pytest.mark.parametrize("num_beams", [1, 4])
def test_a_huge_limit_means_until_end_of_text(num_beams):
    model = scripted_model([5, 6, 7, 8], prompt_length=2, vocab_size=10)  # then 8 forever
    out = generate(model, [1, 2], HUGE, eos_id=8, num_beams=num_beams)
    assert out[0].tolist() == [1, 2, 5, 6, 7]
    tokens = ByteTokenizer()
    stream = stream_text(tiny_model(vocab_size=257), tokens, "ab", HUGE, eos_id=-1)
    chunks = iter(stream)
    assert [next(chunks) for _ in range(3)]  # streams at once, no allocation of HUGE first


def test_more_beams_than_the_vocabulary_or_than_memory_are_refused(monkeypatch):
    model = tiny_model(vocab_size=97)
    with pytest.raises(ConfigError, match="num_beams must be at most the vocabulary size 97, got 98"):
        generate(model, [1, 2], 5, num_beams=98)
    monkeypatch.setattr(memory, "available_memory", lambda device: 2**20)
    with pytest.raises(ConfigError, match=r"beam search with 90 beams needs about .* but only 1.0 MiB of "
                                          r"memory is available on cpu \(lower num_beams\)"):
        generate(model, [1, 2], 5, num_beams=90)


@pytest.mark.parametrize("options", [{}, {"top_k": 5}, {"top_p": 0.9}, {"repetition_penalty": 1e-30}])
def test_a_tiny_temperature_samples_like_greedy(options):
    model, prompt = tiny_model(), [[3, 1, 4, 1, 5]]
    greedy = generate(model, prompt, 12, **{k: v for k, v in options.items() if k == "repetition_penalty"})
    for temperature in (1e-40, 1e-300, 5e-324):
        sampled = generate(model, prompt, 12, temperature=temperature, seed=1, **options)
        assert sampled.tolist() == greedy.tolist()


def broken_model() -> torch.nn.Module:
    model = tiny_model(vocab_size=257)
    with torch.no_grad():
        model.out_head.weight[3, 0] = float("nan")  # one weight: every logit of id 3 is NaN
    return model


@pytest.mark.parametrize("options", [{}, {"temperature": 0.8, "seed": 0}, {"num_beams": 3},
                                     {"use_cache": False}])
def test_non_finite_logits_are_an_error_in_every_decoder(options):
    with pytest.raises(NonFiniteError, match=r"the model's next-token logits are not finite \(nan"):
        generate(broken_model(), [1, 2, 3], 5, **options)
    with pytest.raises(NonFiniteError, match="its weights are broken"):
        "".join(stream_text(broken_model(), ByteTokenizer(), "ab", 5, **options))


def test_huge_finite_logits_are_not_mistaken_for_broken_ones():
    # The cheap check sums the logits; 10 values of 1e38 overflow that sum to inf although every
    # logit is finite, so the exact check must decide (and let greedy decoding go on).
    table = torch.full((10, 10), 1e38)
    table[:, 7] = 3e38
    assert not torch.isfinite(table[0].sum())
    for options in ({}, {"use_cache": False}, {"num_beams": 2}):
        assert generate(TableModel(table), [1, 2], 3, **options)[0].tolist() == [1, 2, 7, 7, 7]
