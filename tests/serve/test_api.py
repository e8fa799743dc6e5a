"""The HTTP API (gptsmith/serve/app.py) through OpenAI's own Python client, and raw HTTP for bad input."""

from __future__ import annotations

import http.client
import json
import threading

import openai
import pytest
from serving_helpers import API_KEY, request, wait_until

from gptsmith.generate.generation import generate


def _client(server, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _greedy_text(server, prompt: str, n: int) -> str:
    tok = server.tokenizer
    ids = generate(server.model.inner, tok.encode(prompt), n, tokenizer=tok)[0, len(tok.encode(prompt)):]
    return tok.decode([t for t in ids.tolist() if t != tok.eot_id])


def test_models_and_health(fast):
    assert [m.id for m in _client(fast).models.list().data] == ["tiny"]
    assert _client(fast).models.retrieve("tiny").id == "tiny"
    status, body = request(fast.url, "GET", "/healthz", key=None)
    assert status == 200 and body["status"] == "ok"


def test_completion_equals_generate_while_others_run(fast):
    prompts = ["The cat", "A much longer prompt than the others, to shift the batch", "x"]
    answers = {}

    def ask(prompt: str) -> None:
        answers[prompt] = _client(fast).completions.create(model="tiny", prompt=prompt, max_tokens=40,
                                                           temperature=0)

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for prompt in prompts:
        answer = answers[prompt]
        assert answer.choices[0].text == _greedy_text(fast, prompt, 40)
        assert answer.usage.prompt_tokens == len(prompt.encode())
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_completion_options(fast):
    client = _client(fast)
    seeded = [client.completions.create(model="tiny", prompt="Hi", max_tokens=12, temperature=0.8, top_p=0.9,
                                        seed=7, n=2) for _ in range(2)]
    assert [c.text for c in seeded[0].choices] == [c.text for c in seeded[1].choices]  # same seed, same text
    assert len(seeded[0].choices) == 2 and seeded[0].usage.completion_tokens > 12
    nucleus_of_one = client.completions.create(model="tiny", prompt="Hi", max_tokens=12, temperature=1.5,
                                               top_p=0)
    assert nucleus_of_one.choices[0].text == _greedy_text(fast, "Hi", 12)  # top_p 0: the most likely token
    batch = client.completions.create(model="tiny", prompt=["ab", "cd"], max_tokens=3, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1] and batch.usage.prompt_tokens == 4
    logprobs = client.completions.create(model="tiny", prompt=[65, 66], max_tokens=3, temperature=0,
                                         logprobs=2)
    lp = logprobs.choices[0].logprobs
    assert len(lp.token_logprobs) == len(lp.tokens) == 3 and all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs)
    streamed = client.completions.create(model="tiny", prompt=[65, 66], max_tokens=3, temperature=0,
                                         logprobs=2, stream=True)
    offsets = [o for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
               for o in chunk.choices[0].logprobs.text_offset]
    assert offsets == lp.text_offset  # counted from the answer's start, streamed or not (was [0] each)


def test_top_k_is_honoured_and_other_servers_neutral_fields_are_taken(fast):
    client = _client(fast)
    fast.model.banned = [fast.tokenizer.eot_id]  # sampled answers of full length, so they can differ
    try:
        def text(**extra) -> str:
            answer = client.completions.create(model="tiny", prompt="Hi", max_tokens=12, temperature=1.5,
                                               seed=3, **extra)
            return answer.choices[0].text

        sampled = text()
        assert text(extra_body={"top_k": 1}) == _greedy_text(fast, "Hi", 12) != sampled  # was ignored
        assert text(extra_body={"top_k": 0}) == text(extra_body={"top_k": -1}) == sampled  # off, as vLLM's
        neutral = {"repetition_penalty": 1.0, "min_p": 0, "min_tokens": 0, "ignore_eos": False,
                   "stop_token_ids": [], "include_stop_str_in_output": False, "use_beam_search": False}
        assert text(extra_body=neutral) == sampled  # what vLLM's clients send by default
    finally:
        fast.model.banned = []


def test_chat_and_streaming(fast):
    client = _client(fast)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == _greedy_text(fast, "Be brief.\n\nHello", 20)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=20,
                                                 temperature=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(chunks) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    streamed = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=20, temperature=0,
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == _greedy_text(fast, "Hello", 20)
    reasons = [c.choices[0].finish_reason for c in streamed if c.choices]
    assert reasons[-1] in ("length", "stop") and not any(reasons[:-1])


@pytest.mark.parametrize("include_usage", [False, True])
def test_streams_end_with_usage_and_done(fast, include_usage):
    conn = http.client.HTTPConnection(fast.url.removeprefix("http://"), timeout=30)
    body = {"prompt": "Hi", "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": include_usage}}
    conn.request("POST", "/v1/completions", json.dumps(body),
                 {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    finishing = chunks[-2] if include_usage else chunks[-1]
    assert finishing["choices"][0]["finish_reason"] in ("length", "stop")
    assert finishing["usage"]["completion_tokens"] >= 1  # every streamed answer ends with its usage
    if include_usage:  # and OpenAI's own usage-only chunk when asked
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == finishing["usage"]
    assert all("usage" not in c for c in chunks[: -2 if include_usage else -1])


def test_a_wrong_or_missing_api_key_is_refused(fast):
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        _client(fast, key="wrong").models.list()
    routes = (("/v1/models", "GET"), ("/v1/completions", "POST"), ("/v1/chat/completions", "POST"))
    for path, method in routes:
        status, body = request(fast.url, method, path, {"prompt": "x"}, key=None)
        assert status == 401 and "Authorization: Bearer" in body["error"]["message"]
    assert request(fast.url, "GET", "/healthz", key=None)[0] == 200


BAD = [
    ("/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, None, "JSON object"),
    ("/v1/completions", {"max_tokens": 5}, 400, "prompt", "prompt is required"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt", "prompt is empty"),
    ("/v1/completions", {"prompt": [999]}, 400, "prompt", "outside the vocabulary"),
    ("/v1/chat/completions", {"model": "tiny"}, 400, "messages", "messages is required"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "non-empty list"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role",
     "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content",
     "content"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model", "does not exist"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens", "an integer >= 1, got -1"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**9}, 400, "max_tokens", "at most 200"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "5"}, 400, "max_tokens", "integer"),
    # chat's newer name for max_tokens: errors name the field the client sent
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": "5"},
     400, "max_completion_tokens", "max_completion_tokens must be an integer"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 201},
     400, "max_completion_tokens", "max_completion_tokens is 201; this server allows at most 200"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 100}],
                              "max_completion_tokens": 190},
     400, "max_completion_tokens", "or lower max_completion_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": 3}, 400, "temperature", "from 0 to 2"),
    ("/v1/completions", {"prompt": "x", "temperature": -0.5}, 400, "temperature", "from 0 to 2"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature", "must be a number"),
    ("/v1/completions", {"prompt": "x", "temperature": True}, 400, "temperature", "must be a number"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p", "top_p"),
    ("/v1/completions", {"prompt": "x", "n": 5}, 400, "n", "--max-batch"),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "n", "n must be an integer >= 1, got 0"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, 400, "stop", "non-empty"),
    ("/v1/completions", {"prompt": "x", "seed": -1}, 400, "seed", "seed"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream", "true or false"),
    ("/v1/completions", {"prompt": "x", "stream_options": 3}, 400, "stream_options", "object"),
    ("/v1/completions", {"prompt": "x", "logprobs": 9}, 400, "logprobs", "logprobs"),
    ("/v1/completions", {"prompt": "x" * 300}, 400, "prompt", "context"),
    ("/v1/completions", {"prompt": "x" * 100, "max_tokens": 190}, 400, "max_tokens", "context of 256"),
    ("/v1/completions", {"prompt": "x" * 5000}, 413, None, "--max-body-bytes"),
    ("/v1/completions", {"prompt": "x", "logit_bias": {"220": -100}}, 400, "logit_bias", "not supported"),
    ("/v1/completions", {"prompt": "x", "suffix": "end"}, 400, "suffix", "not supported"),
    ("/v1/completions", {"prompt": "x", "best_of": 2}, 400, "best_of", "other than 1 is not supported"),
    ("/v1/completions", {"prompt": "x", "top_k": 258}, 400, "top_k", "an integer from -1 to 257, got 258"),
    ("/v1/completions", {"prompt": "x", "top_k": 2.5}, 400, "top_k", "top_k must be an integer"),
    # other servers' sampling fields that would change the answer: refused, not ignored
    ("/v1/completions", {"prompt": "x", "repetition_penalty": 1.3}, 400, "repetition_penalty",
     "repetition_penalty is not supported by this server (leave it out, or send 1)"),
    ("/v1/completions", {"prompt": "x", "min_tokens": 5}, 400, "min_tokens", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "ignore_eos": True}, 400,
     "ignore_eos", "leave it out, or send false"),
    ("/v1/completions", {"prompt": "x", "stop_token_ids": [10]}, 400, "stop_token_ids", "not supported"),
    ("/v1/completions", {"prompt": "x", "min_p": 0.1}, 400, "min_p", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function"}]}, 400, "tools", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "response_format": {"type": "json_object"}}, 400, "response_format", "only"),
]


@pytest.mark.parametrize(("path", "body", "status", "param", "message"), BAD,
                         ids=[f"{b[2]}-{b[4][:20]}" for b in BAD])
def test_bad_input_is_a_4xx_naming_the_field(fast, path, body, status, param, message):
    got, answer = request(fast.url, "POST", path, body)
    assert got == status, answer
    error = answer["error"]
    assert message in error["message"] and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_unknown_routes_and_methods_are_openai_errors(fast):
    status, body = request(fast.url, "GET", "/v1/nothing")
    assert status == 404 and "routes:" in body["error"]["message"]
    status, body = request(fast.url, "GET", "/v1/completions")
    assert status == 405 and "error" in body
    status, body = request(fast.url, "GET", "/v1/models/other")
    assert status == 404 and body["error"]["param"] == "model"


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    server.model.delay = 0.02  # a long answer that takes seconds
    engine = server.app.state.engine
    steps_before = engine.steps
    try:
        conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
        body = json.dumps({"prompt": "Hi", "max_tokens": 200, "stream": True})
        conn.request("POST", "/v1/completions", body,
                     {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.readline().startswith(b"data: ")
        assert engine.active == 1
        conn.sock.close()  # the client goes away mid-answer
        conn.close()
        assert wait_until(lambda: engine.active == 0, timeout=10)
        assert engine.steps - steps_before < 150  # it stopped long before its 200 tokens
    finally:
        server.model.delay = 0.0
    answer = _client(server).completions.create(model="tiny", prompt="again", max_tokens=3)
    assert answer.choices[0].finish_reason in ("length", "stop")


def test_a_client_that_disconnects_before_a_whole_answer_frees_its_slot(server):
    server.model.delay = 0.02  # 200 tokens take seconds, each well within a second of the last
    server.model.banned = [server.tokenizer.eot_id]  # and the answer does not end by itself
    engine = server.app.state.engine
    steps_before = engine.steps
    try:
        conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 200}),
                     {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        assert wait_until(lambda: engine.active == 1 and engine.steps - steps_before > 5)
        conn.sock.close()  # the client gives up waiting
        conn.close()
        assert wait_until(lambda: engine.active == 0, timeout=10)
        assert engine.steps - steps_before < 150  # freed long before its 200 tokens (was: never early)
    finally:
        server.model.delay = 0.0
        server.model.banned = []


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_batch": 0}, "--max-batch must be a whole number >= 1, got 0"),
    ({"max_tokens": -1}, "--max-tokens must be a whole number >= 1, got -1"),
    ({"template": "vicuna"}, "unknown prompt template 'vicuna'"),
    # a key no client can send, or an empty one ("Bearer " with nothing would have been let in)
    ({"api_key": ""}, r"--api-key \(or GPTSMITH_API_KEY\) must be printable ASCII, not empty"),
    ({"api_key": "s3cret "}, "no space at either end"),
    ({"api_key": "clé"}, "printable ASCII"),
])
def test_server_settings_are_checked_when_made(settings, message):
    from gptsmith.errors import ConfigError
    from gptsmith.serve.app import ServerSettings

    with pytest.raises(ConfigError, match=message):
        ServerSettings(**settings)
