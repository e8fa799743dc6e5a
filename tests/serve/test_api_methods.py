"""HTTP methods beyond GET and POST (gptsmith/serve/app.py): HEAD answers as GET does, a 405 names the
methods a route takes, and CORS lets browser pages of the origins given with --cors-origin call the API."""

from __future__ import annotations

import json

import pytest
from serving_helpers import API_KEY, exchange, serving_model

from gptsmith.errors import ConfigError
from gptsmith.serve.app import ServerSettings
from gptsmith.serve.server import ServerThread

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PAGE = "http://localhost:3000"  # a web page's origin, as a browser sends it
PREFLIGHT = {"Origin": PAGE, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os"}


@pytest.mark.parametrize("path", ["/", "/healthz", "/v1/models", "/v1/models/tiny", "/v1/models/other"])
@pytest.mark.parametrize("key", [True, False])
def test_head_answers_as_get_does_without_the_body(fast, path, key):
    headers = AUTH if key else {}
    get_status, get_headers, get_body = exchange(fast.url, "GET", path, headers)
    status, head_headers, body = exchange(fast.url, "HEAD", path, headers)
    assert status == get_status and body == b""  # was a 405 for every route
    assert len(get_body) > 0 and head_headers["content-length"] == str(len(get_body))
    assert head_headers["content-type"] == get_headers["content-type"]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/v1/completions", "POST"), ("HEAD", "/v1/chat/completions", "POST"),
    ("POST", "/v1/models", "GET, HEAD"), ("DELETE", "/healthz", "GET, HEAD"),
])
def test_a_405_names_the_methods_the_route_takes(fast, method, path, allowed):
    status, headers, body = exchange(fast.url, method, path, AUTH)
    assert status == 405
    assert sorted(headers["allow"].split(", ")) == sorted(allowed.split(", "))  # HTTP requires Allow
    if method != "HEAD":
        assert json.loads(body)["error"]["message"] == f"{method} {path}: Method Not Allowed"


def test_without_cors_a_browsers_preflight_is_refused_and_names_the_flag(fast):
    status, headers, body = exchange(fast.url, "OPTIONS", "/v1/completions", PREFLIGHT)
    assert status == 405 and "access-control-allow-origin" not in headers  # no CORS unless asked
    assert "start the server with --cors-origin ORIGIN" in json.loads(body)["error"]["message"]
    status, headers, _ = exchange(fast.url, "GET", "/v1/models", {**AUTH, "Origin": PAGE})
    assert status == 200 and "access-control-allow-origin" not in headers


@pytest.fixture(scope="module")
def cors():
    """A server that lets pages of PAGE (only) call it, with an API key."""
    model, tokenizer = serving_model()
    settings = ServerSettings(model_name="tiny", api_key=API_KEY, max_batch=2, cors_origins=(PAGE,))
    with ServerThread(model, tokenizer, settings) as running:
        yield running


def test_cors_lets_the_pages_of_the_origins_given_call_the_api(cors):
    status, headers, _ = exchange(cors.url, "OPTIONS", "/v1/completions", PREFLIGHT)  # no key: never sent
    assert status == 200 and headers["access-control-allow-origin"] == PAGE
    assert "POST" in headers["access-control-allow-methods"]
    assert "x-stainless-os" in headers["access-control-allow-headers"]  # OpenAI's JS client sends these
    body = json.dumps({"prompt": "Hi", "max_tokens": 3}).encode()
    for stream in (False, True):
        sent = json.dumps({"prompt": "Hi", "max_tokens": 3, "stream": stream}).encode()
        status, headers, answer = exchange(cors.url, "POST", "/v1/completions",
                                           {**AUTH, "Origin": PAGE, "Content-Type": "application/json"}, sent)
        assert status == 200 and headers["access-control-allow-origin"] == PAGE, answer
    # the page can read a refusal too, and the key is still required
    status, headers, answer = exchange(cors.url, "POST", "/v1/completions", {"Origin": PAGE}, body)
    assert status == 401 and headers["access-control-allow-origin"] == PAGE
    assert "Authorization: Bearer" in json.loads(answer)["error"]["message"]


def test_cors_gives_nothing_to_the_pages_of_other_origins(cors):
    status, headers, _ = exchange(cors.url, "OPTIONS", "/v1/completions",
                                  {**PREFLIGHT, "Origin": "https://elsewhere.example"})
    assert status == 400 and "access-control-allow-origin" not in headers
    status, headers, _ = exchange(cors.url, "GET", "/v1/models", {**AUTH, "Origin": "https://elsewhere.example"})
    assert status == 200 and "access-control-allow-origin" not in headers  # the browser hides the answer


def test_any_origin_with_a_star():
    model, tokenizer = serving_model()
    with ServerThread(model, tokenizer, ServerSettings(cors_origins="*")) as running:  # one origin: a str
        status, headers, _ = exchange(running.url, "OPTIONS", "/v1/chat/completions",
                                      {**PREFLIGHT, "Origin": "https://anywhere.example"})
    assert status == 200 and headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("origin", ["https://example.com/", "example.com", "http://localhost:3000/app", "",
                                    "ftp://example.com", "http://example.com:port", " http://example.com"])
def test_an_origin_no_browser_sends_is_refused_when_the_settings_are_made(origin):
    with pytest.raises(ConfigError, match=r"^--cors-origin must be '\*' or an origin like https://example\.com"):
        ServerSettings(cors_origins=(origin,))


@pytest.mark.parametrize("origin", ["*", "http://localhost:3000", "https://example.com", "http://[::1]:8080"])
def test_origins_a_browser_sends_are_taken(origin):
    assert ServerSettings(cors_origins=[origin]).cors_origins == (origin,)
