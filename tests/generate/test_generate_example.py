"""The README's Python generation example, run on a tiny random model with the GPT-2 tokenizer.

Random weights say nothing about the text, so the checks are properties: shapes, the prompt kept
in front, stops honoured, the seed reproducing a sample, streaming agreeing with ``generate``.
"""

from __future__ import annotations

import pytest
import torch
from generation_helpers import tiny_model

from gptsmith.generate.generation import generate, stream_text, text_to_token_ids, token_ids_to_text

PROMPT = "Every effort moves you"


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=50257, context_length=64)


def test_sampling_with_every_option(model, gpt2_tokenizer):
    tok = gpt2_tokenizer
    prompt = text_to_token_ids(PROMPT, tok)
    n_prompt = prompt.shape[1]
    options = dict(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=123,
                   eos_id=tok.eot_id, stop_sequences=["\n\n"], tokenizer=tok)
    ids = generate(model, prompt, 40, **options)
    assert ids.shape[0] == 1 and n_prompt <= ids.shape[1] <= n_prompt + 40
    assert torch.equal(ids[:, :n_prompt], prompt)
    assert torch.equal(generate(model, prompt, 40, **options), ids)  # the seed reproduces the sample
    assert not torch.equal(generate(model, prompt, 40, **{**options, "seed": 124}), ids)
    text = token_ids_to_text(ids, tok)
    assert text.startswith(PROMPT) and "\n\n" not in text and tok.eot_id not in ids[0].tolist()


def test_streaming_gives_the_text_of_greedy_generate(model, gpt2_tokenizer):
    tok = gpt2_tokenizer
    pieces = list(stream_text(model, tok, PROMPT, 40))
    assert len(pieces) > 1  # streamed, not all at the end
    greedy = generate(model, text_to_token_ids(PROMPT, tok), 40, tokenizer=tok)
    assert "".join(pieces) == token_ids_to_text(greedy[0, len(tok.encode(PROMPT)) :], tok)


def test_prompts_of_different_lengths_and_beam_search(model, gpt2_tokenizer):
    tok = gpt2_tokenizer
    batch = generate(model, [[464, 3290], [15496]], 20)
    assert batch.shape == (2, 22)
    assert batch[0, :2].tolist() == [464, 3290] and batch[1, :2].tolist() == [0, 15496]  # left-padded
    assert torch.equal(batch[1, 2:], generate(model, [15496], 20)[0, 1:])  # as the prompt alone gets

    ids = text_to_token_ids(PROMPT, tok)
    beams = generate(model, ids, 20, num_beams=4, length_penalty=1.0, eos_id=tok.eot_id)
    assert torch.equal(beams[:, : ids.shape[1]], ids) and ids.shape[1] <= beams.shape[1] <= ids.shape[1] + 20
    assert torch.equal(generate(model, ids, 20, num_beams=4, eos_id=tok.eot_id), beams)  # deterministic
