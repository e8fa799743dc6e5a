"""Instruction fine-tuning: the loop learns answers and to stop; asking; batched answers; the judge."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from generation_helpers import ByteTokenizer, scripted_model, tiny_model
from judge_helpers import StubJudge, stub_judge

from gptsmith.errors import ConfigError, DataError, GptsmithError, NonFiniteError
from gptsmith.finetune.instruct import (
    InstructConfig,
    answer_records,
    finetune_instruct,
    response_loss,
)
from gptsmith.finetune.instruct_data import parse_record
from gptsmith.finetune.judge import JudgeError, chat_completions_url, judge_responses, parse_score
from gptsmith.generate.ask import answer_batch, ask, question_prompt, stream_answer
from gptsmith.generate.chat import format_instruction
from gptsmith.generate.generation import stream_text
from gptsmith.train.callbacks import TrainCallbacks

RECORDS = [parse_record({"instruction": q, "output": a}, i) for i, (q, a) in enumerate(
    [("Say hi.", "hi"), ("Say no.", "no"), ("Say ok.", "ok"), ("Say yes.", "yes")])]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Recorder(TrainCallbacks):
    def __init__(self) -> None:
        self.evals, self.samples, self.start = [], [], None

    def on_start(self, info):
        self.start = info

    def on_eval(self, info):
        self.evals.append(info)

    def on_sample(self, step, text):
        self.samples.append((step, text))


def test_finetuning_learns_the_answers_and_to_stop():
    tok = ByteTokenizer()
    model = tiny_model(vocab_size=tok.vocab_size, context_length=160)
    before = response_loss(model, tok, RECORDS, "alpaca")
    recorder = Recorder()
    cfg = InstructConfig(epochs=60, batch_size=4, lr=3e-3, eval_every=30, sample_tokens=4, mask_prompt=True,
                         device="cpu", dtype="fp32")
    result = finetune_instruct(model, tok, RECORDS, RECORDS[:1], cfg, callbacks=recorder)
    after = response_loss(model, tok, RECORDS, "alpaca")
    assert result.steps == 60 and result.examples_seen == 240 and result.truncated == 0
    assert after < before - 2  # nats per answer token
    assert [e["step"] for e in recorder.evals] == [0, 30, 60] and len(recorder.samples) == 3
    assert recorder.evals[-1]["val_loss"] < recorder.evals[0]["val_loss"]
    answers = answer_records(model, tok, RECORDS, "alpaca", max_new_tokens=12)
    assert [a["answer"] for a in answers] == ["hi", "no", "ok", "yes"]
    assert all(a["stopped"] for a in answers)  # learnt <|endoftext|> after each answer
    assert answers[0] == {"instruction": "Say hi.", "input": "", "reference": "hi", "answer": "hi",
                          "new_tokens": 2, "stopped": True}


def test_max_steps_and_bad_settings():
    tok = ByteTokenizer()
    model = tiny_model(vocab_size=tok.vocab_size, context_length=160)
    cfg = InstructConfig(max_steps=2, batch_size=2, eval_every=0, sample_tokens=0, device="cpu")
    assert finetune_instruct(model, tok, RECORDS, RECORDS[:1], cfg).steps == 2
    with pytest.raises(ConfigError, match="unknown prompt template"):
        finetune_instruct(model, tok, RECORDS, RECORDS, InstructConfig(template="vicuna"))
    with pytest.raises(ConfigError, match="longer than the model's context of 160"):
        finetune_instruct(model, tok, RECORDS, RECORDS, InstructConfig(max_length=500))
    with pytest.raises(DataError, match="another tokenizer"):
        finetune_instruct(tiny_model(vocab_size=100), tok, RECORDS, RECORDS, cfg)
    for bad, message in ((dict(dtype="foo"), "--dtype: unknown dtype 'foo'"),
                         (dict(weight_decay=-1.0), "--weight-decay must be a number >= 0, got -1.0"),
                         (dict(weight_decay=float("nan")), "--weight-decay must be a number >= 0, got nan"),
                         (dict(epochs=1.5), "--epochs must be a whole number >= 1, got 1.5"),
                         (dict(lr="x"), "--lr must be a number > 0, got 'x'")):
        with pytest.raises(ConfigError, match=message):
            finetune_instruct(model, tok, RECORDS, RECORDS, InstructConfig(**bad))
    diverging = InstructConfig(max_steps=4, batch_size=2, lr=1e30, eval_every=0, sample_tokens=0,
                               device="cpu", dtype="fp32")
    with pytest.raises(NonFiniteError, match=r"training loss became (nan|inf) at step [2-4] \(lower --lr"):
        finetune_instruct(model, tok, RECORDS, RECORDS[:1], diverging)


def test_records_as_json_load_gives_them_are_parsed_and_checked():
    tok = ByteTokenizer()
    model = tiny_model(vocab_size=tok.vocab_size, context_length=160)
    raw = [{"instruction": "Say hi.", "output": "hi"},
           {"instruction": "Say no.", "input": None, "output": "no"}]
    cfg = InstructConfig(max_steps=1, eval_every=0, sample_tokens=0, device="cpu")
    assert finetune_instruct(model, tok, raw, raw[:1], cfg).steps == 1
    assert response_loss(model, tok, raw, "alpaca") == response_loss(model, tok, RECORDS[:2], "alpaca")
    assert [a["instruction"] for a in answer_records(model, tok, raw, "alpaca", max_new_tokens=1)] == \
        ["Say hi.", "Say no."]
    with pytest.raises(DataError, match=r'^val_records\[0\] has no "output"'):
        finetune_instruct(model, tok, raw, [{"instruction": "x"}], cfg)
    with pytest.raises(DataError, match="train_records must be a list of records, got a str"):
        finetune_instruct(model, tok, "data.json", raw, cfg)


def test_one_diverging_step_or_a_broken_base_stops_the_run():
    tok = ByteTokenizer()
    one_step = InstructConfig(max_steps=1, batch_size=2, lr=1e30, eval_every=0, sample_tokens=0,
                              device="cpu", dtype="fp32")
    model = tiny_model(vocab_size=tok.vocab_size, context_length=160)
    with pytest.raises(NonFiniteError, match=r"^the validation loss became (nan|inf) after step 1; stopped "
                       r"before saving \(lower --lr, now 1e\+30\)$"):
        finetune_instruct(model, tok, RECORDS, RECORDS[:1], one_step)
    broken = tiny_model(vocab_size=tok.vocab_size, context_length=160)
    with torch.no_grad():
        broken.trf_blocks[0].norm1.scale.fill_(float("nan"))
    recorder = Recorder()
    with pytest.raises(NonFiniteError) as info:
        finetune_instruct(broken, tok, RECORDS, RECORDS[:1], InstructConfig(device="cpu"), callbacks=recorder)
    assert str(info.value).startswith("the base model gives non-finite outputs (nan or inf): its weights are "
                                      "broken") and "--lr" not in str(info.value)
    assert recorder.start is None  # refused before training started


def test_prompts_longer_than_max_length_name_both_lengths_and_the_fix():
    tok = ByteTokenizer()
    model = tiny_model(vocab_size=tok.vocab_size, context_length=160)
    shortest = min(len(tok.encode(format_instruction(r.instruction))) for r in RECORDS)  # one byte a token
    with pytest.raises(DataError) as info:
        response_loss(model, tok, RECORDS, "alpaca", max_length=20)
    assert str(info.value) == (f"no answer tokens to score: every example's prompt is at least {shortest} "
                               "tokens but --max-length allows 20: raise --max-length (up to the model's "
                               "context, 160)")
    short = tiny_model(vocab_size=tok.vocab_size, context_length=20)
    with pytest.raises(DataError) as info:  # already at the context: raising --max-length cannot help
        response_loss(short, tok, RECORDS, "alpaca")
    assert str(info.value).endswith("tokens but the model's context allows 20: shorten the prompts or use a "
                                    "base model with a longer context")
    assert response_loss(model, tok, RECORDS, "alpaca", max_length=shortest) > 0  # one answer token fits


def test_ask_formats_with_the_models_template_and_stops_at_the_next_turn():
    tok = ByteTokenizer()
    prompt = question_prompt("alpaca", "Capital of France?")
    script = list(b"Paris\n\n### Instruction:\nmore")
    model = scripted_model(script, prompt_length=len(tok.encode(prompt)), vocab_size=tok.vocab_size)
    assert ask(model, tok, "Capital of France?", max_new_tokens=40) == "Paris"
    stream = stream_answer(model, tok, "Capital of France?", max_new_tokens=40)
    assert "".join(stream) == "Paris" and stream.stop_reason == "stop_sequence"
    model.instruction_template = "chatml"  # what load_model sets from config.json
    chat_prompt = question_prompt("chatml", "Capital of France?")
    model = scripted_model(list(b"Paris<|im_end|>x"), len(tok.encode(chat_prompt)), tok.vocab_size)
    model.instruction_template = "chatml"
    assert ask(model, tok, "Capital of France?", max_new_tokens=40) == "Paris"


def test_an_answer_cut_by_the_context_says_so_and_a_question_that_fills_it_is_refused():
    tok = ByteTokenizer()
    n_prompt = len(tok.encode(question_prompt("alpaca", "Hi")))
    model = scripted_model(list(b"abcdefgh"), n_prompt, tok.vocab_size)
    model.cfg = dataclasses.replace(model.cfg, context_length=n_prompt + 3)  # room for 3 answer tokens
    stream = stream_answer(model, tok, "Hi", max_new_tokens=40)
    assert "".join(stream) == "abc" and stream.cfg.max_new_tokens == 3
    assert stream.stop_reason == "context_length"  # not the 40 asked for
    stream = stream_answer(model, tok, "Hi", max_new_tokens=40, num_beams=2)  # beam search says it too
    assert "".join(stream) == "abc" and stream.stop_reason == "context_length"
    stream = stream_answer(model, tok, "Hi", max_new_tokens=3)  # the budget asked for, which fits
    assert "".join(stream) == "abc" and stream.stop_reason == "max_new_tokens"
    model.cfg = dataclasses.replace(model.cfg, context_length=n_prompt)  # the prompt fills it: no room
    message = (f"the question takes {n_prompt} tokens with its template, and the model's context is "
               f"{n_prompt}: no room is left for an answer (shorten it)")
    with pytest.raises(ConfigError) as info:
        ask(model, tok, "Hi")
    assert str(info.value) == message  # was: the prompt cropped to its end, with a warning
    with_input = len(tok.encode(question_prompt("alpaca", "Hi", "x")))
    with pytest.raises(ConfigError, match=(f"^the question takes {with_input} tokens with its template "
                                           "and input, .*shorten the question or its input")):
        stream_answer(model, tok, "Hi", input_text="x")


def test_batched_answers_equal_answers_alone():
    tok = ByteTokenizer()
    model = tiny_model(vocab_size=tok.vocab_size, context_length=200)
    prompts = [question_prompt("alpaca", q) for q in ("Hi", "A much longer question here?", "Mid one")]
    together = answer_batch(model, tok, prompts, "alpaca", max_new_tokens=6, batch_size=3)
    alone = [ask(model, tok, q, max_new_tokens=6) for q in ("Hi", "A much longer question here?", "Mid one")]
    assert [a.text for a in together] == alone
    assert all(a.new_tokens <= 6 for a in together)
    # Answers longer than the room the context leaves: the prompt is kept whole, the window slides.
    small = tiny_model(vocab_size=tok.vocab_size, context_length=48)
    long_answers = answer_batch(small, tok, ["Say it: ab"], "alpaca", max_new_tokens=40)
    alone = stream_text(small, tok, "Say it: ab", 40, stop_sequences=["\n\n### "])
    assert long_answers[0].text == "".join(alone).strip() and len(alone.token_ids) > 38
    empty = answer_batch(model, tok, [""], "alpaca", max_new_tokens=3)[0]  # starts from <|endoftext|>
    assert empty.new_tokens <= 3 and "<|endoftext|>" not in empty.text
    with pytest.raises(GptsmithError, match="batch_size must be a whole number >= 1, got -1"):
        answer_batch(model, tok, prompts, "alpaca", batch_size=-1)
    with pytest.raises(GptsmithError, match="list of prompt strings, got one str"):
        answer_batch(model, tok, "Hi", "alpaca")  # was three prompts: "H", "i"... letter by letter
    with pytest.raises(GptsmithError, match="got an item of type int"):
        answer_batch(model, tok, ["Hi", 3], "alpaca")
    with pytest.raises(GptsmithError, match="question must be a str, got NoneType"):
        ask(model, tok, None)
    stream = stream_answer(model, tok, "Hi", max_new_tokens=10_000)  # past the context: capped
    assert stream.cfg.max_new_tokens == 200 - len(stream.prompt_ids) > 0


# --- the judge, against a stub OpenAI-compatible server -------------------------------------------


def test_judge_scores_each_answer_and_reports_the_mean():
    responses = [{"instruction": "Say hi.", "input": "", "reference": "hi", "answer": "hello"},
                 {"instruction": "Fix.", "input": "He go.", "reference": "He goes.", "answer": "He go."},
                 {"instruction": "Say no.", "input": "", "reference": "no", "answer": "yes"}]
    with stub_judge(["85", "Score: 40.", "I cannot score this"]) as url:
        report = judge_responses(responses, url, "judge-1")
    assert report.scores == [85, 40, None] and report.mean == 62.5 and report.scored == 2
    first = StubJudge.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["temperature"] == 0
    text = first["messages"][0]["content"]
    assert "`Say hi.`" in text and "correct output `hi`" in text and "response `hello`" in text
    assert "He go." in StubJudge.requests[1]["messages"][0]["content"]


def test_judge_errors_are_one_line():
    with stub_judge([]) as url, pytest.raises(JudgeError, match="answered HTTP 404"):
        judge_responses([{"instruction": "a", "reference": "b", "answer": "c"}], url, "other")
    with pytest.raises(JudgeError, match="cannot reach the judge"):
        judge_responses([{"instruction": "a", "reference": "b", "answer": "c"}], "http://127.0.0.1:9", "m")
    with pytest.raises(ConfigError, match="not an http"):
        chat_completions_url("localhost:11434")
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert parse_score("150 is too much; 70") == 70 and parse_score("none") is None


def test_lora_trains_only_the_adapters_and_merges_into_a_plain_model():
    from gptsmith.finetune.lora import lora_layers, merge_lora

    tok = ByteTokenizer()
    model = tiny_model(vocab_size=tok.vocab_size, context_length=160)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    before = response_loss(model, tok, RECORDS, "alpaca")
    cfg = InstructConfig(epochs=15, batch_size=4, lr=1e-2, eval_every=0, sample_tokens=0, lora_rank=4,
                         device="cpu", dtype="fp32")
    result = finetune_instruct(model, tok, RECORDS, RECORDS[:1], cfg)
    layers = lora_layers(model)
    assert len(layers) == 8  # qkv, out_proj and the two feed-forward layers of 2 blocks
    assert result.trainable_parameters == sum(l.lora_A.numel() + l.lora_B.numel() for l in layers.values())
    for name, layer in layers.items():
        assert torch.equal(layer.base.weight, frozen[f"{name}.weight"])
    assert torch.equal(model.tok_emb.weight, frozen["tok_emb.weight"])
    tuned = response_loss(model, tok, RECORDS, "alpaca")
    assert tuned < before - 1
    ids = torch.tensor([tok.encode(question_prompt("alpaca", "Say hi."))])
    with torch.no_grad():
        expected = model(ids)
        merge_lora(model)
        assert not lora_layers(model) and set(model.state_dict()) == set(frozen)
        torch.testing.assert_close(model(ids), expected, atol=1e-4, rtol=1e-4)  # logits of size ~50


@pytest.mark.filterwarnings("ignore:this CPU has no native bf16")
def test_bf16_autocast_trains_too():
    tok = ByteTokenizer()
    model = tiny_model(vocab_size=tok.vocab_size, context_length=160)
    cfg = InstructConfig(max_steps=2, batch_size=4, eval_every=0, sample_tokens=0, device="cpu", dtype="bf16")
    result = finetune_instruct(model, tok, RECORDS, RECORDS[:1], cfg)
    assert result.amp_dtype == "bf16" and all(torch.isfinite(torch.tensor(result.losses)))
