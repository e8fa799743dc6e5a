"""Odd but well-formed requests (gptsmith/serve/protocol.py, app.py): empty chat prompts, seeds at
the edges of their range, half characters at the end of an answer, caps over the model's context."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from generation_helpers import ByteTokenizer, tiny_model
from serving_helpers import API_KEY, SlowModel, request, wait_until

from gptsmith.device import MAX_SEED, check_seed
from gptsmith.errors import ConfigError, GptsmithError
from gptsmith.generate.generation import stream_text
from gptsmith.serve.app import ServerSettings, create_app, server_limits
from gptsmith.serve.engine import Engine, EngineStopped, SamplingParams
from gptsmith.serve.server import ServerThread

EMPTY_CHATS = [
    {"messages": [{"role": "user", "content": ""}], "max_tokens": 2},
    {"messages": [{"role": "user", "content": ""}], "max_tokens": 2, "stream": True},
    {"messages": [{"role": "user", "content": []}], "max_tokens": 2},
    {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": ""}], "max_tokens": 2},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
]


@pytest.mark.parametrize("body", EMPTY_CHATS, ids=["empty", "streamed", "no-parts", "system", "part"])
def test_a_chat_that_renders_to_nothing_is_a_400_naming_messages(fast, body):
    status, answer = request(fast.url, "POST", "/v1/chat/completions", body)
    assert status == 400, answer
    error = answer["error"]
    assert error["param"] == "messages" and error["type"] == "invalid_request_error"
    assert "empty prompt" in error["message"] and "give the messages some content" in error["message"]


def test_odd_but_valid_requests_are_answered_and_nothing_is_refused_as_a_server_error(fast):
    context, cap = 256, 200  # the shared server: the byte model's context and its --max-tokens
    odd = [
        ("/v1/completions", {"prompt": "x" * (context - 1), "max_tokens": 1}),  # fills the context
        ("/v1/completions", {"prompt": "x" * (context - cap), "max_tokens": cap}),
        ("/v1/completions", {"prompt": [0], "max_tokens": 1, "n": 4, "seed": MAX_SEED - 3}),
        ("/v1/completions", {"prompt": ["a", "b"], "max_tokens": 1, "n": 2, "stop": "\n"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": " "}], "max_tokens": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"},
                                               {"role": "user", "content": ""}], "max_tokens": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": "s"},
                                               {"role": "user", "content": ""}], "max_tokens": 1}),
    ]
    for path, body in odd:
        status, answer = request(fast.url, "POST", path, body)
        assert status == 200, (body, answer)
    status, answer = request(fast.url, "POST", "/v1/completions", {"prompt": "x" * context, "max_tokens": 1})
    assert status == 400 and answer["error"]["param"] == "prompt"  # no room left: the client's to fix


def test_only_a_stopped_engine_is_a_503_and_other_engine_refusals_are_not_try_again_later():
    model, tokenizer = SlowModel(tiny_model(vocab_size=257, context_length=64)), ByteTokenizer()
    with ServerThread(model, tokenizer, ServerSettings(api_key=API_KEY)) as server:
        engine = server.app.state.engine
        with pytest.raises(GptsmithError, match=r"prompt \(0 tokens\)") as refused:
            engine.submit([], SamplingParams(max_tokens=2), lambda chunk: None)
        assert not isinstance(refused.value, EngineStopped)  # a caller's bug, not the server's state

        def refuse(*args) -> None:
            raise GptsmithError("prompt (0 tokens) + max_tokens (2) must fit in 64 tokens")

        engine.submit = refuse  # what protocol.py let through: a bug, said as one, not "try later"
        status, answer = request(server.url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 500 and "internal error" in answer["error"]["message"]
        del engine.submit
        engine.stop()
        status, answer = request(server.url, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 503 and answer["error"]["type"] == "server_error"
        assert "shutting down" in answer["error"]["message"]


def test_api_seeds_are_the_cli_seeds_with_its_wording(fast):
    top = {"prompt": "x", "max_tokens": 1, "seed": MAX_SEED}
    assert request(fast.url, "POST", "/v1/completions", top)[0] == 200
    with pytest.raises(ConfigError) as cli:
        check_seed(MAX_SEED + 1, "seed")  # the one check every verb uses (there as --seed)
    for seed in (MAX_SEED + 1, 2**63 - 1, 1.5, True):
        status, answer = request(fast.url, "POST", "/v1/completions", {"prompt": "x", "seed": seed})
        assert status == 400 and answer["error"]["param"] == "seed"
        assert answer["error"]["message"].startswith("seed must be a whole number from 0 to 4294967295, got ")
    status, answer = request(fast.url, "POST", "/v1/completions", {"prompt": "x", "seed": MAX_SEED + 1})
    assert answer["error"]["message"] == str(cli.value)
    # choice i uses seed + i, so every choice's seed must be in range too
    status, answer = request(fast.url, "POST", "/v1/completions",
                             {"prompt": "x", "max_tokens": 1, "seed": MAX_SEED, "n": 2})
    assert status == 400 and answer["error"]["param"] == "seed"
    assert f"uses seeds up to {MAX_SEED + 1}" in answer["error"]["message"]


class ScriptedModel(SlowModel):
    """Always picks ``SCRIPT[last token]`` next ("A" otherwise): after "A" comes "B", then the four
    bytes of "🎉", one token each, then "A" again. The inner model still runs (its cache is used)."""

    SCRIPT = {65: 66, 66: 0xF0, 0xF0: 0x9F, 0x9F: 0x8E, 0x8E: 0x89, 0x89: 65}

    def forward(self, ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        logits = self.inner(ids, *args, **kwargs)  # (batch, t, vocab_size): t is 1 with last_token_only
        last = ids[:, -logits.shape[1]:]
        wanted = last.clone().apply_(lambda token: self.SCRIPT.get(token, 65))
        return torch.full_like(logits, -1e4).scatter_(-1, wanted.unsqueeze(-1), 0.0)


@pytest.fixture(scope="module")
def scripted():
    model, tokenizer = ScriptedModel(tiny_model(vocab_size=257, context_length=64)), ByteTokenizer()
    with ServerThread(model, tokenizer, ServerSettings(api_key=API_KEY)) as server:
        server.model, server.tokenizer = model, tokenizer
        yield server


@pytest.mark.parametrize(("max_tokens", "text"), [(3, "B"), (4, "B"), (5, "B🎉"), (6, "B🎉A")])
def test_an_answer_cut_inside_a_character_leaves_it_out_streamed_or_not(scripted, max_tokens, text):
    alone = "".join(stream_text(scripted.model, scripted.tokenizer, [65], max_tokens, temperature=0))
    assert alone == text  # generate's own streaming (and the CLI) leave the half "🎉" out
    body = {"prompt": "A", "max_tokens": max_tokens, "temperature": 0}
    status, whole = request(scripted.url, "POST", "/v1/completions", body)
    assert status == 200 and whole["choices"][0]["text"] == text, whole
    assert whole["usage"]["completion_tokens"] == max_tokens  # the half character's tokens still count
    status, streamed = request(scripted.url, "POST", "/v1/completions", {**body, "stream": True})
    events = [json.loads(e.removeprefix("data: ")) for e in streamed["text"].split("\n\n")
              if e.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events) == text
    chat = {"messages": [{"role": "user", "content": "A"}], "max_tokens": max_tokens, "temperature": 0}
    status, answer = request(scripted.url, "POST", "/v1/chat/completions", chat)  # plain turns: prompt "A"
    assert status == 200 and answer["choices"][0]["message"]["content"] == text, answer


def test_engine_chunks_never_end_in_a_replacement_character():
    model, tokenizer = ScriptedModel(tiny_model(vocab_size=257, context_length=64)), ByteTokenizer()
    chunks, done = [], threading.Event()

    def emit(chunk) -> None:
        chunks.append(chunk)
        if chunk.finish_reason is not None:
            done.set()

    engine = Engine(model, tokenizer, max_batch=2)
    engine.start()
    try:
        engine.submit([65], SamplingParams(max_tokens=4), emit)  # B, then 3 of the 4 bytes of "🎉"
        assert done.wait(30)
    finally:
        engine.stop()
    assert [c.token_id for c in chunks] == [66, 0xF0, 0x9F, 0x8E]
    assert "".join(c.text for c in chunks) == "B" and chunks[-1].finish_reason == "length"


@pytest.mark.parametrize("name", ["max_prompt_tokens", "max_tokens"])
def test_a_cap_over_the_context_is_refused_not_lowered_quietly(name):
    model = tiny_model(vocab_size=257, context_length=128)
    flag = "--" + name.replace("_", "-")
    message = f"^{flag} must be at most the model's context of 128 tokens, got 1000 "
    with pytest.raises(ConfigError, match=message):
        create_app(model, ByteTokenizer(), ServerSettings(**{name: 1000}))
    limits = server_limits(ServerSettings(**{name: 128}), 128)  # the whole context is fine
    assert getattr(limits, name) == 128
    assert getattr(server_limits(ServerSettings(**{name: 100}), 128), name) == 100


def _streamed_logprobs(server, body) -> tuple[str, dict[str, list], dict[str, int]]:
    """The text, the logprobs lists (tokens, token_logprobs, top_logprobs, text_offset) and the usage
    of a streamed answer."""
    status, streamed = request(server.url, "POST", "/v1/completions", {**body, "stream": True})
    assert status == 200, streamed
    text, usage = "", {}
    lists = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for event in streamed["text"].split("\n\n"):
        if event.startswith("data: {"):
            chunk = json.loads(event.removeprefix("data: "))
            usage = chunk.get("usage") or usage
            choice = chunk["choices"][0]
            text += choice["text"]
            for name in lists:
                lists[name] += (choice["logprobs"] or {}).get(name, [])
    return text, lists, usage


# The scripted answer to "A" is B, the four bytes of "🎉", A, B: 7 tokens, of which a stop cuts some.
@pytest.mark.parametrize(("stop", "text", "offsets", "generated"), [
    (None, "B🎉AB", [0, 1, 1, 1, 1, 2, 3], 7),  # the emoji's four tokens all start where it does
    ("BX", "B🎉AB", [0, 1, 1, 1, 1, 2, 3], 7),  # each "B" is held back (it may begin "BX"), then released
    ("🎉A", "B", [0], 6),  # the emoji's tokens were held back, then cut by the stop: never reported
    ("B🎉", "", [], 5),  # so is a first token cut by a stop
])
def test_streamed_logprobs_are_the_whole_answers_with_offsets_in_characters(scripted, stop, text, offsets,
                                                                            generated):
    body = {"prompt": "A", "max_tokens": 7, "temperature": 0, "logprobs": 1, "stop": stop}
    status, whole = request(scripted.url, "POST", "/v1/completions", body)
    assert status == 200 and whole["choices"][0]["text"] == text, whole
    logprobs = whole["choices"][0]["logprobs"]
    assert logprobs["text_offset"] == offsets  # characters of the text, not lengths of "�" pieces
    assert len(logprobs["tokens"]) == len(offsets)  # the kept tokens only
    streamed_text, streamed, usage = _streamed_logprobs(scripted, body)
    assert streamed_text == text
    for name, values in streamed.items():  # every kept token once, none cut by a stop, same offsets
        assert values == logprobs[name], name
    # usage counts every token generated, a stop's included (OpenAI bills them), streamed or not
    assert whole["usage"]["completion_tokens"] == usage["completion_tokens"] == generated
    assert whole["usage"] == usage


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_stop_still_counts_the_tokens_it_cut(scripted, stream):
    body = {"messages": [{"role": "user", "content": "A"}], "max_tokens": 7, "temperature": 0,
            "stop": ["🎉"], "stream": stream}
    status, answer = request(scripted.url, "POST", "/v1/chat/completions", body)
    assert status == 200, answer
    if stream:
        chunks = [json.loads(e.removeprefix("data: ")) for e in answer["text"].split("\n\n")
                  if e.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        usage = chunks[-1]["usage"]
    else:
        text, usage = answer["choices"][0]["message"]["content"], answer["usage"]
    assert text == "B" and usage["completion_tokens"] == 5  # B and the emoji's four tokens (was 1)
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


def test_answers_still_running_when_the_grace_period_ends_are_ended_not_cut_off():
    model, tokenizer = SlowModel(tiny_model(vocab_size=257, context_length=256), delay=0.05), ByteTokenizer()
    model.banned = [tokenizer.eot_id]  # each answer would take 10 s: far past the grace period
    results = {}

    def ask(name: str, body: dict) -> None:
        results[name] = request(server.url, "POST", "/v1/completions", body, key=None)

    server = ServerThread(model, tokenizer, ServerSettings(max_batch=1), grace_seconds=0.5)
    with server:  # max_batch 1: one answer runs, the other waits
        threads = [threading.Thread(target=ask, args=(name, {"prompt": "a", "max_tokens": 200, **more}))
                   for name, more in (("streamed", {"stream": True}), ("whole", {}))]
        for thread in threads:
            thread.start()
        engine = server.app.state.engine
        assert wait_until(lambda: engine.active == 1 and len(engine.waiting) == 1)
    for thread in threads:  # leaving the block shut the server down
        thread.join(30)
    status, streamed = results["streamed"]  # read to its end: not a cut-off response
    events = [e.removeprefix("data: ") for e in streamed["text"].split("\n\n") if e.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert "shut down before the answer was finished" in error["message"] and error["type"] == "server_error"
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events[:-2])  # never "stop"
    status, whole = results["whole"]
    assert status == 503 and "shut down before the answer was finished" in whole["error"]["message"], whole


def test_max_tokens_over_the_context_names_the_context_when_no_cap_was_set(scripted, fast):
    status, answer = request(scripted.url, "POST", "/v1/completions", {"prompt": "A", "max_tokens": 65})
    message = answer["error"]["message"]
    assert status == 400 and answer["error"]["param"] == "max_tokens"
    assert "the model's context is 64 tokens" in message and "--max-tokens" not in message  # none was set
    status, answer = request(fast.url, "POST", "/v1/completions", {"prompt": "A", "max_tokens": 201})
    assert status == 400 and "at most 200 (its --max-tokens)" in answer["error"]["message"]  # one was


def test_a_max_batch_too_big_for_memory_is_refused_in_one_line(monkeypatch):
    from gptsmith.model import memory

    model = tiny_model(vocab_size=257, context_length=64)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1 << 30)  # 1 GiB free, on any machine
    create_app(model, ByteTokenizer(), ServerSettings(max_batch=16))  # a few MiB: fine
    with pytest.raises(ConfigError, match=r"^--max-batch 1000000000 needs about .* but only 1\.0 GiB of "
                                          r"memory is available on cpu: lower --max-batch$"):
        create_app(model, ByteTokenizer(), ServerSettings(max_batch=10**9))  # was a torch allocator error


def test_a_developer_message_is_a_system_message(fast):
    """OpenAI's newer clients send the system prompt as role "developer"."""
    answers = []
    for role in ("system", "developer"):
        body = {"messages": [{"role": role, "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "max_tokens": 8, "temperature": 0}
        status, answer = request(fast.url, "POST", "/v1/chat/completions", body)
        assert status == 200, answer  # was a 400: role must be one of system, user, assistant
        answers.append((answer["choices"][0]["message"]["content"], answer["usage"]))
    assert answers[0] == answers[1] and answers[0][1]["prompt_tokens"] == len("Be brief.\n\nHi")


def test_each_prompt_of_a_list_gets_the_seeds_it_would_get_alone(fast):
    fast.model.banned = [fast.tokenizer.eot_id]  # sampled answers of full length, so they can differ
    try:
        def texts(body: dict) -> list[str]:
            body = {"max_tokens": 12, "seed": 5, **body}
            status, answer = request(fast.url, "POST", "/v1/completions", body)
            assert status == 200, answer
            return [choice["text"] for choice in answer["choices"]]

        alone = texts({"prompt": "Hi", "n": 2})  # seeds 5 and 6
        assert alone[0] != alone[1]
        assert texts({"prompt": ["Hi", "Hi"], "n": 2}) == alone * 2  # not seeds 5, 6, 7, 8
    finally:
        fast.model.banned = []


def test_a_second_ctrl_c_ends_the_answers_at_once_and_they_still_say_so():
    model, tokenizer = SlowModel(tiny_model(vocab_size=257, context_length=256), delay=0.05), ByteTokenizer()
    model.banned = [tokenizer.eot_id]
    results = {}

    def ask() -> None:
        body = {"prompt": "a", "max_tokens": 200, "stream": True}
        results["streamed"] = request(server.url, "POST", "/v1/completions", body, key=None)

    server = ServerThread(model, tokenizer, ServerSettings(), grace_seconds=30)
    with server:
        reader = threading.Thread(target=ask)
        reader.start()
        assert wait_until(lambda: server.app.state.engine.active == 1)
        started = time.monotonic()
        server.server.should_exit = True  # Ctrl-C: a 30 s grace period begins
        time.sleep(0.3)
        server.server.force_exit = True  # Ctrl-C again: uvicorn's force quit
        reader.join(10)
    assert time.monotonic() - started < 5  # not the grace period, nor the 10 s answer
    status, streamed = results["streamed"]  # was a cut-off response (and a traceback on the console)
    events = [e.removeprefix("data: ") for e in streamed["text"].split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]" and "shut down" in json.loads(events[-2])["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_0_gives_the_chosen_tokens_logprobs_and_no_alternatives(scripted, stream):
    """OpenAI's logprobs: 0 is the chosen tokens' logprobs with empty top_logprobs dicts (was nulls)."""
    body = {"prompt": "A", "max_tokens": 3, "temperature": 0, "logprobs": 0}
    if stream:
        _, logprobs, _ = _streamed_logprobs(scripted, body)
    else:
        status, answer = request(scripted.url, "POST", "/v1/completions", body)
        assert status == 200, answer
        logprobs = answer["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["B", "\ufffd", "\ufffd"]  # two bytes of "🎉" (their text is left out)
    assert len(logprobs["token_logprobs"]) == 3 and all(-1e-3 < lp <= 0 for lp in logprobs["token_logprobs"])
    assert logprobs["top_logprobs"] == [{}, {}, {}]
