"""Tests for stream_text (gptsmith/streaming.py): text as tokens arrive, never half a character,
possible stop sequences held back, and the ids and stop reason reported afterwards."""

from __future__ import annotations

import pytest
import torch
from generation_helpers import ByteTokenizer, interrupt_decoding, scripted_model, tiny_model

from gptsmith.generate.generation import generate, stream_text


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=97, context_length=32)


@pytest.fixture
def prompt():
    torch.manual_seed(1)
    return torch.randint(0, 97, (1, 10))


TEXT = "héllo 日本語 🎉"


def _check_stream(model, tok, prompt, expected_text, **options):
    chunks = list(stream_text(model, tok, prompt, 40, **options))
    for chunk in chunks:
        assert "\ufffd" not in chunk  # never half a character
        chunk.encode("utf-8")
    assert "".join(chunks) == expected_text
    return chunks


def test_stream_never_splits_a_character_byte_tokens():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT) + [tok.eot_id]
    model = scripted_model(ids, prompt_length=1, vocab_size=257)
    chunks = _check_stream(model, tok, [tok.eot_id], TEXT, eos_id=tok.eot_id)
    assert len(chunks) > 5  # streamed, not all at the end


def test_stream_never_splits_a_character_gpt2(gpt2_tokenizer):
    tok = gpt2_tokenizer
    ids = tok.encode(TEXT)
    split = [i for i in ids if _invalid_utf8(tok.decode_bytes([i]))]
    assert split, "the test text should contain tokens that split a character"
    model = scripted_model(ids + [tok.eot_id], prompt_length=1, vocab_size=tok.vocab_size)
    _check_stream(model, tok, [tok.eot_id], tok.decode(ids), eos_id=tok.eot_id)


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_stream_holds_back_a_possible_stop_sequence():
    tok = ByteTokenizer()
    model = scripted_model(tok.encode("abc wox world ok") + [tok.eot_id], prompt_length=1, vocab_size=257)
    chunks = _check_stream(model, tok, [tok.eot_id], "abc wox ", stop_sequences=["world"], eos_id=tok.eot_id)
    assert "w" in "".join(chunks)
    chunks = _check_stream(model, tok, [tok.eot_id], "abc wox world ok", eos_id=tok.eot_id)


def test_stream_equals_generate(model, prompt):
    tok = ByteTokenizer()
    tok.vocab_size, tok.eot_id = 97, 96
    out = generate(model, prompt, 20, tokenizer=tok)  # both stop at the tokenizer's eot_id by default
    text = "".join(stream_text(model, tok, prompt, 20))
    assert text == tok.decode_bytes(out[0, 10:].tolist()).decode("utf-8", errors="replace")


def test_stream_reports_tokens_and_stop_reason():
    tok = ByteTokenizer()
    model = scripted_model(tok.encode("ab") + [tok.eot_id], prompt_length=1, vocab_size=257)
    stream = stream_text(model, tok, [tok.eot_id], 10, eos_id=tok.eot_id)
    assert "".join(stream) == "ab"
    assert stream.token_ids == tok.encode("ab") and stream.stop_reason == "eos"
    stream = stream_text(model, tok, [tok.eot_id], 1)
    assert "".join(stream) == "a" and stream.stop_reason == "max_new_tokens"


def test_an_interrupted_stream_says_so_and_keeps_what_it_generated(monkeypatch):
    tok = ByteTokenizer()
    model = scripted_model(tok.encode("abc wor ld") + [tok.eot_id], prompt_length=1, vocab_size=257)
    interrupt_decoding(monkeypatch, after_tokens=7)
    stream = stream_text(model, tok, [tok.eot_id], 20, stop_sequences=["world"])
    shown = []
    with pytest.raises(KeyboardInterrupt):  # re-raised: the caller decides what Ctrl-C means
        for piece in stream:
            shown.append(piece)
    assert "".join(shown) == "abc "  # "wor" was held back: it could have begun "world"
    assert stream.stop_reason == "interrupted"
    assert stream.token_ids == tok.encode("abc wor") and stream.text == "abc wor"
    assert model.training  # back in the mode it was in (the stream decodes in eval mode)


def test_stream_leaves_out_a_character_cut_by_max_new_tokens():
    tok = ByteTokenizer()
    model = scripted_model(tok.encode("aé") + [tok.eot_id], prompt_length=1, vocab_size=257)
    stream = stream_text(model, tok, [tok.eot_id], 2)  # "a" and the first byte of "é"
    assert list(stream) == ["a"] and len(stream.token_ids) == 2
    assert "".join(stream_text(model, tok, [tok.eot_id], 3)) == "aé"


def test_beam_stream_says_why_it_stopped():
    tok = ByteTokenizer()
    model = scripted_model(tok.encode("hello world") + [tok.eot_id], prompt_length=1, vocab_size=257)
    stream = stream_text(model, tok, [tok.eot_id], 20, num_beams=2, stop_sequences=["wor"], eos_id=tok.eot_id)
    assert "".join(stream) == "hello " and stream.stop_reason == "stop_sequence"
    stream = stream_text(model, tok, [tok.eot_id], 20, num_beams=2, eos_id=tok.eot_id)
    assert "".join(stream) == "hello world" and stream.stop_reason == "eos"
    stream = stream_text(model, tok, [tok.eot_id], 3, num_beams=2, eos_id=tok.eot_id)
    assert "".join(stream) == "hel" and stream.stop_reason == "max_new_tokens"


def test_stream_keeps_the_spaces_of_a_word_level_tokenizer():
    from gptsmith.data.tokenizer import SimpleTokenizerV2

    tok = SimpleTokenizerV2.from_text("the cat sat on a mat .")
    ids = tok.encode("the cat sat on a mat.")
    model = scripted_model(ids[1:] + [tok.eot_id], prompt_length=1, vocab_size=tok.vocab_size)
    for num_beams in (1, 2):  # beam search's text comes in one piece, with the same spaces
        stream = stream_text(model, tok, ids[:1], 20, eos_id=tok.eot_id, num_beams=num_beams)
        text = "".join(stream)
        assert "the" + text == "the" + stream.text == tok.decode(ids) == "the cat sat on a mat."


def test_an_answer_that_ends_at_once_is_empty_text_with_or_without_beams():
    from gptsmith.data.tokenizer import SimpleTokenizerV2

    tok = SimpleTokenizerV2.from_text("the cat sat")
    model = scripted_model([tok.eot_id], prompt_length=1, vocab_size=tok.vocab_size)
    for num_beams in (1, 2):
        stream = stream_text(model, tok, tok.encode("the"), 5, eos_id=tok.eot_id, num_beams=num_beams)
        assert "".join(stream) == stream.text == "" and stream.token_ids == [] and stream.stop_reason == "eos"
