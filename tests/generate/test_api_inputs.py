"""What the generation API refuses, in one clear line, instead of a silently different answer
(float ids cut to integers, a mask dropped, a tokenizer's name taken for a tokenizer) or a
traceback from inside torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from generation_helpers import ByteTokenizer, tiny_model

from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.data.windows import SlidingWindowDataset
from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.generate.ask import answer_batch, ask, question_prompt, stream_answer
from gptsmith.generate.generation import generate, stream_text, text_to_token_ids, token_ids_to_text


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=97, context_length=32)


@pytest.mark.parametrize("ids, message", [
    ([[1.9, 2.9, 3.9]], "token_ids must be integer token ids, got 1.9"),
    (np.array([[1.5, 2.5]]), "token_ids must be integer token ids, got an array of float64"),
    ([1, True, 3], "token_ids must be integer token ids, got True"),
    ([1, None], "token_ids must be integer token ids, got None"),
    (None, "token_ids must be token ids"),
    (5, "token_ids must be token ids"),
    ([1, 2**70], "token_ids: 1180591620717411303424 is outside any vocabulary"),
])
def test_ids_that_are_not_integers_are_refused(model, ids, message):
    with pytest.raises(GptsmithError, match=message.replace("(", r"\(")):
        generate(model, ids, 2)


def test_integer_ids_of_any_container_give_the_same_tokens(model):
    expected = generate(model, torch.tensor([[1, 2, 3]]), 3)
    for ids in ([1, 2, 3], [[1, 2, 3]], np.array([1, 2, 3]), [np.int64(1), torch.tensor(2), 3]):
        assert torch.equal(generate(model, ids, 3), expected)


def test_a_mask_with_list_ids_is_applied_not_dropped(model):
    mask = torch.tensor([[0, 0, 1, 1]])
    from_tensor = generate(model, torch.tensor([[5, 6, 7, 8]]), 3, attention_mask=mask, pad_id=5)
    assert torch.equal(generate(model, [[5, 6, 7, 8]], 3, attention_mask=mask, pad_id=5), from_tensor)
    assert torch.equal(generate(model, [5, 6, 7, 8], 3, attention_mask=[0, 0, 1, 1], pad_id=5), from_tensor)
    one_row = generate(model, torch.tensor([5, 6, 7, 8]), 3, attention_mask=[[0, 0, 1, 1]], pad_id=5)
    assert torch.equal(one_row, from_tensor)
    with pytest.raises(GptsmithError, match="with attention_mask, token_ids must be rows of one length"):
        generate(model, [[1, 2], [3]], 3, attention_mask=torch.ones(2, 2))


def test_stop_sequences_must_be_integer_ids_or_text(model):
    with pytest.raises(GptsmithError, match="a stop sequence must be integer token ids, got 4.5"):
        generate(model, [1, 2], 3, stop_sequences=[[4.5]])
    with pytest.raises(GptsmithError, match="stop_sequences must be a list"):
        generate(model, [1, 2], 3, stop_sequences=5.0)
    vocab = model.cfg.vocab_size  # an id past it could never match: the stop was ignored silently
    with pytest.raises(GptsmithError, match=f"stop sequence token id {vocab} is outside the model's"):
        generate(model, [1, 2], 3, stop_sequences=[[1, vocab]])
    with pytest.raises(GptsmithError, match="outside the model's vocabulary"):
        generate(model, [1, 2], 3, stop_sequences=vocab + 5, num_beams=2)


@pytest.mark.parametrize("decode", [
    lambda model, **options: generate(model, [1, 2], max_new_tokens=5, **options),
    lambda model, **options: generate(model, [[1, 2], [3]], 5, num_beams=2, **options),
    lambda model, **options: stream_text(model, ByteTokenizer(), "hi", 5, **options),
    lambda model, **options: ask(model, ByteTokenizer(), "hi", **options),
    lambda model, **options: stream_answer(model, ByteTokenizer(), "hi", **options),
], ids=["generate", "beam search", "stream_text", "ask", "stream_answer"])
def test_every_decoder_names_a_misspelt_option_and_the_known_ones(model, decode):
    # Python's own "unexpected keyword argument" TypeError would name neither the fix nor the options
    with pytest.raises(ConfigError, match=r"unknown generation option\(s\) topk \(known: .*\btop_k\b"):
        decode(model, topk=3)


def test_generate_lists_its_own_keywords_among_the_known_options(model):
    with pytest.raises(ConfigError) as error:
        generate(model, [1, 2], 3, tokenzier="gpt2")
    known = str(error.value).split("(known: ")[1].rstrip(")").split(", ")
    assert {"attention_mask", "pad_id", "tokenizer", "temperature", "num_beams"} <= set(known)
    assert "tokenzier" not in known


def test_unknown_options_are_named_and_tokenizer_names_work(model):
    tokenizer = ByteTokenizer()
    with pytest.raises(GptsmithError, match=r"unknown generation option\(s\) topk \(known: "):
        stream_text(model, tokenizer, "hi", 3, topk=3)
    words = get_tokenizer("simple")  # a tokenizer's name works wherever the tokenizer does
    with pytest.raises(GptsmithError, match=r"<\|endoftext\|> \(id 4995\) is outside the model's vocab"):
        stream_text(model, words, "The", 3)
    model = tiny_model(vocab_size=words.vocab_size, context_length=32)
    assert "".join(stream_text(model, "simple", "The", 3)) == "".join(stream_text(model, words, "The", 3))
    assert token_ids_to_text([5, 6], "simple") == words.decode([5, 6])
    assert ask(model, "simple", "The", max_new_tokens=3) == ask(model, words, "The", max_new_tokens=3)
    prompts = [question_prompt("alpaca", "The")]  # was str.encode("gpt2"): LookupError, unknown encoding
    assert answer_batch(model, "simple", prompts, "alpaca", max_new_tokens=3) == answer_batch(
        model, words, prompts, "alpaca", max_new_tokens=3)
    with pytest.raises(GptsmithError, match="tokenizer must be a tokenizer .* or its name, got int"):
        text_to_token_ids("hi", 5)
    with pytest.raises(GptsmithError, match="text must be a str, got NoneType"):
        text_to_token_ids(None, tokenizer)


def test_ask_reads_one_stop_sequence_as_generate_does():
    """A lone string is one stop sequence, not one per letter; a lone id is one stop (was a TypeError)."""
    tokenizer = ByteTokenizer()
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=200)  # bytes: Alpaca's are many
    plain = stream_answer(model, tokenizer, "Hi", max_new_tokens=6)
    answer, ids = "".join(plain), plain.token_ids
    letter = next(chr(i) for i in ids[1:] if i < 128)  # a character of the answer, after its first
    never = letter + "\0\0"  # in the answer as a letter, never as a whole
    stream = stream_answer(model, tokenizer, "Hi", max_new_tokens=6, stop_sequences=never)
    assert "".join(stream) == answer and stream.stop_reason == "max_new_tokens"  # was cut at the letter
    by_id = stream_answer(model, tokenizer, "Hi", max_new_tokens=6, stop_sequences=ids[1])
    "".join(by_id)
    assert by_id.stop_reason == "stop_sequence" and by_id.token_ids == ids[: ids.index(ids[1])]


def test_decoding_and_windows_refuse_float_ids():
    tokenizer = get_tokenizer("simple")
    with pytest.raises(GptsmithError, match="token_ids must be integer token ids, got an array of torch"):
        token_ids_to_text(torch.tensor([5.7, 11.2]), tokenizer)
    with pytest.raises(GptsmithError, match="token ids must be integer token ids, got '5'"):
        tokenizer.decode(["5"])
    with pytest.raises(GptsmithError, match="tokens must be integer token ids, got 1.7"):
        SlidingWindowDataset([1.7] * 20, 4, 2)
    with pytest.raises(GptsmithError, match="tokens must be integer token ids, got an array of float32"):
        SlidingWindowDataset(np.ones(20, dtype=np.float32), 4, 2)
    with pytest.raises(GptsmithError, match=r"tokens must be integer token ids, got True \(bool\)"):
        SlidingWindowDataset([1, 2, True] * 7, 4, 2)  # numpy alone would read True as the id 1
    for flag in (np.True_, torch.tensor(True)):
        with pytest.raises(GptsmithError, match="tokens must be integer token ids, got"):
            SlidingWindowDataset([1, 2, flag] * 7, 4, 2)
    assert SlidingWindowDataset([1, np.int64(2), 3] * 7, 4, 2).tokens.tolist()[:3] == [1, 2, 3]
    windows = SlidingWindowDataset(list(range(20)), 4, 2)
    with pytest.raises(IndexError, match=r"window indices must be in 0\.\.7, got -1\.\.0"):
        windows.batch([-1, 0])


def test_a_special_token_named_alone_is_one_allowed_token():
    tokenizer = get_tokenizer("simple")
    assert tokenizer.encode("a <|endoftext|>", allowed_special="<|endoftext|>")[-1] == tokenizer.eot_id
    assert tokenizer.encode("a <|endoftext|>", allowed_special="all")[-1] == tokenizer.eot_id


def test_objects_of_the_wrong_kind_are_named(tmp_path, monkeypatch):
    from gptsmith.data.windows import create_dataloader
    from gptsmith.finetune.lora import apply_lora, save_adapter
    from gptsmith.model import memory
    from gptsmith.model.gpt import GPTConfig, GPTModel
    from gptsmith.train.config import TrainConfig
    from gptsmith.train.trainer import Trainer

    with pytest.raises(GptsmithError, match="GPTModel takes a GPTConfig .* got dict"):
        GPTModel({"vocab_size": 10})
    for not_a_model in (None, "runs/main"):  # a path: load_model it first
        with pytest.raises(GptsmithError, match=r"model must be a GPTModel \(e.g. load_model"):
            generate(not_a_model, [1, 2], 3)
    import gptsmith

    with pytest.raises(GptsmithError, match=r"model must be a GPTModel \(e.g. load_model"):
        gptsmith.finetune_instruct(None, "gpt2", [], [])
    paths = {"save_model's directory": lambda: gptsmith.save_model(GPTModel(GPTConfig(
                 vocab_size=64, context_length=8, emb_dim=16, n_heads=2, n_layers=1)), None),
             "Classifier.load's path": lambda: gptsmith.Classifier.load(None),
             "the labelled data": lambda: gptsmith.finetune_classifier(None, checkpoint=str(tmp_path))}
    for what, call in paths.items():
        with pytest.raises(GptsmithError, match=f"^{what} must be a path .*, got NoneType$"):
            call()
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**30)  # a 1 GiB machine
    with pytest.raises(GptsmithError, match=r"a model of [\d,]+ parameters needs .* for its weights"):
        GPTModel(GPTConfig(vocab_size=2**20, emb_dim=2**14, n_heads=1, n_layers=1, context_length=8))
    model = GPTModel(GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2, n_layers=1))
    tokens = np.arange(200) % 64
    with pytest.raises(GptsmithError, match="cfg must be a TrainConfig .* got dict"):
        Trainer(model, {"max_steps": 2}, tokens, tokens)
    with pytest.raises(GptsmithError, match=r"train_tokens must be one flat sequence .* shape \(2, 100\)"):
        Trainer(model, TrainConfig(max_steps=2, device="cpu"), tokens.reshape(2, 100), tokens)
    with pytest.raises(GptsmithError, match="apply_lora takes a LoRAConfig"):
        apply_lora(model, {"rank": 2})
    with pytest.raises(GptsmithError, match="seed must be a whole number from 0 to"):
        create_dataloader(tokens, batch_size=2, max_length=4, stride=4, seed=-1)
    with pytest.raises(GptsmithError, match="the text to encode must be a str, got NoneType"):
        get_tokenizer("simple").encode(None)
    with pytest.raises(GptsmithError, match="the model has no LoRA adapters|no adapters|LoRA"):
        save_adapter(model, tmp_path / "adapter", base="b")
    assert not (tmp_path / "adapter").exists()  # checked before anything was written


def test_numpy_scalars_and_torch_dtypes_are_whole_numbers_and_dtypes(model):
    from gptsmith.data.windows import create_dataloader
    from gptsmith.finetune.classify import ClassifyConfig
    from gptsmith.finetune.instruct import InstructConfig

    InstructConfig(epochs=np.int64(2), lr=np.float32(1e-4), max_length=np.int64(64)).check()
    assert ClassifyConfig(dtype=torch.bfloat16, epochs=2).dtype == "bf16"
    assert len(create_dataloader(np.arange(100) % 97, batch_size=2, max_length=4, stride=4,
                                 seed=np.int64(3))) > 0
    stops = generate(model, [1, 2], 4, stop_sequences={7, 8}, eos_id=96)
    assert torch.equal(stops, generate(model, [1, 2], 4, stop_sequences=[[7], [8]], eos_id=96))
    same = generate(model, [1, 2], 4, stop_sequences=[np.int64(7), torch.tensor(8), torch.tensor([9, 10])],
                    eos_id=96)
    assert same.shape[0] == 1
    # numpy's numbers as decoding options: were refused ("must be an integer, got np.int64(4)") or,
    # as a seed, torch.Generator's TypeError
    numpy_options = {"temperature": np.float32(0.8), "top_k": np.int64(20), "top_p": np.float32(0.9),
                     "repetition_penalty": np.float64(1.1), "seed": np.int64(5)}
    python_options = {key: value.item() for key, value in numpy_options.items()}
    assert torch.equal(generate(model, [1, 2], np.int64(4), **numpy_options),
                       generate(model, [1, 2], 4, **python_options))
    assert torch.equal(generate(model, [1, 2], 4, num_beams=np.int64(2), length_penalty=np.float32(0.5)),
                       generate(model, [1, 2], 4, num_beams=2, length_penalty=0.5))
