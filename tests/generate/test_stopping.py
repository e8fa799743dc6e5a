"""Tests for when generation stops (gptsmith/stopping.py): eos, token-id and text stop sequences,
matched alike by greedy decoding, sampling, beam search and streaming."""

from __future__ import annotations

import pytest
import torch
from generation_helpers import ByteTokenizer, MergedTokenizer, TableModel, scripted_model

from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.generate.generation import generate, stream_text
from gptsmith.generate.stopping import NO_EOS


def test_stop_on_eos_is_not_returned():
    model = scripted_model([5, 6, 9, 7], prompt_length=2, vocab_size=10)
    assert generate(model, [1, 2], 10, eos_id=9)[0].tolist() == [1, 2, 5, 6]
    assert generate(model, [1, 2], 4)[0].tolist() == [1, 2, 5, 6, 9, 7]


def test_stop_on_token_sequence():
    model = scripted_model([5, 6, 7, 8], prompt_length=2, vocab_size=10)
    assert generate(model, [1, 2], 10, stop_sequences=[[6, 7]])[0].tolist() == [1, 2, 5]
    assert generate(model, [1, 2], 10, stop_sequences=[[6, 8]])[0].tolist() == [1, 2, 5, 6, 7, 8] + [8] * 6


def test_stop_on_text_sequence():
    tok = ByteTokenizer()
    text = "hello world\nbye"
    model = scripted_model(tok.encode(text), prompt_length=1, vocab_size=257)
    out = generate(model, [tok.eot_id], 30, stop_sequences=["\nb"], tokenizer=tok)
    assert tok.decode(out[0, 1:].tolist()) == "hello world"
    with pytest.raises(GptsmithError, match="tokenizer="):
        generate(model, [1], 3, stop_sequences=["\n"])
    with pytest.raises(GptsmithError, match="empty"):
        generate(model, [1], 3, stop_sequences=[[]])


def test_batch_rows_stop_independently_and_are_padded():
    table = torch.full((6, 6), -5.0)
    table[1, 2] = table[2, 5] = table[3, 4] = table[4, 4] = 0.0  # 1 -> 2 -> eos(5); 3 -> 4 -> 4 ...
    out = generate(TableModel(table), [[1], [3]], 4, eos_id=5, pad_id=0)
    assert out.tolist() == [[1, 2, 0, 0, 0], [3, 4, 4, 4, 4]]




# --- text stops tokenized otherwise than the model emits them ---------------------------------------


@pytest.fixture
def merged():
    """"Answer: yes" then "\n\n" emitted as two "\n" tokens (the tokenizer encodes it as one)."""
    tok = MergedTokenizer()
    assert tok.encode("\n\n") == [257]  # what re-encoding the stop text would look for
    script = tok.encode("Answer: ") + list(b"yes\n\nNext question") + [tok.eot_id]
    return tok, scripted_model(script, prompt_length=1, vocab_size=tok.vocab_size)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_a_text_stop_is_found_however_it_was_tokenized(merged, num_beams):
    tok, model = merged
    out = generate(model, [tok.eot_id], 30, stop_sequences=["\n\n"], tokenizer=tok, num_beams=num_beams)
    assert tok.decode(out[0, 1:].tolist()) == "Answer: yes"
    stream = stream_text(model, tok, [tok.eot_id], 30, stop_sequences=["\n\n"], num_beams=num_beams)
    assert "".join(stream) == "Answer: yes" and stream.stop_reason == "stop_sequence"
    assert stream.token_ids == out[0, 1:].tolist() == tok.encode("Answer: ") + list(b"yes")


@pytest.mark.parametrize("num_beams", [1, 2])
def test_a_stop_inside_a_token_drops_that_token_and_the_text_matches_the_ids(num_beams):
    # "yes\n" is one token; the stop "\n\n" begins inside it, so the whole token goes.
    tok = MergedTokenizer()
    script = tok.encode("Answer: yes\n") + tok.encode("\nNext") + [tok.eot_id]
    assert 258 in script
    model = scripted_model(script, prompt_length=1, vocab_size=tok.vocab_size)
    out = generate(model, [tok.eot_id], 30, stop_sequences=["\n\n"], tokenizer=tok, num_beams=num_beams)
    assert out[0, 1:].tolist() == tok.encode("Answer: ")
    stream = stream_text(model, tok, [tok.eot_id], 30, stop_sequences=["\n\n"], num_beams=num_beams)
    text = "".join(stream)
    assert text == tok.decode(stream.token_ids) == "Answer: "  # "yes" was held back, never shown
    assert stream.token_ids == out[0, 1:].tolist()


def test_a_token_stop_is_matched_on_ids_by_generate_and_stream_alike():
    tok = MergedTokenizer()
    model = scripted_model(list(b"ab\n\ncd") + [tok.eot_id], prompt_length=1, vocab_size=tok.vocab_size)
    stop = [[257]]  # the merged "\n\n": the model emits two "\n" tokens instead, which are not it
    out = generate(model, [tok.eot_id], 10, stop_sequences=stop, tokenizer=tok)
    assert out[0, 1:].tolist() == list(b"ab\n\ncd")
    stream = stream_text(model, tok, [tok.eot_id], 10, stop_sequences=stop)
    assert "".join(stream) == "ab\n\ncd" and stream.stop_reason == "eos"
    stream = stream_text(model, tok, [tok.eot_id], 10, stop_sequences=[list(b"\n\n")])
    assert "".join(stream) == "ab" and stream.token_ids == list(b"ab")


# --- eos: the tokenizer's <|endoftext|> by default ---------------------------------------------------


def test_eos_defaults_to_the_tokenizers_end_of_text():
    tok = ByteTokenizer()
    model = scripted_model(list(b"ab") + [tok.eot_id] + list(b"cd"), prompt_length=1, vocab_size=257)
    everything = list(b"ab") + [tok.eot_id] + list(b"cdd")
    assert generate(model, [tok.eot_id], 6)[0, 1:].tolist() == everything  # no tokenizer: no eos
    assert generate(model, [tok.eot_id], 6, tokenizer=tok)[0, 1:].tolist() == list(b"ab")
    assert generate(model, [tok.eot_id], 6, tokenizer=tok, num_beams=2)[0, 1:].tolist() == list(b"ab")
    assert generate(model, [tok.eot_id], 6, tokenizer=tok, eos_id=NO_EOS)[0, 1:].tolist() == everything
    stream = stream_text(model, tok, [tok.eot_id], 6)
    assert "".join(stream) == "ab" and stream.stop_reason == "eos"
    stream = stream_text(model, tok, [tok.eot_id], 6, eos_id=NO_EOS)
    assert "".join(stream) == "abcdd" and stream.stop_reason == "max_new_tokens"
    with pytest.raises(ConfigError, match="NO_EOS"):
        generate(model, [tok.eot_id], 6, eos_id=-2)
