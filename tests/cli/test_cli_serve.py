"""`gptsmith serve`: a real server process with a saved checkpoint, its chat template, SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from generation_helpers import tiny_model
from serving_helpers import request, wait_until

from gptsmith.cli import main
from gptsmith.data.tokenizer import get_tokenizer
from gptsmith.generate.chat import format_instruction
from gptsmith.generate.generation import stream_text
from gptsmith.model.checkpoint import load_model, save_model

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def instruct_checkpoint(tmp_path_factory) -> Path:
    tokenizer = get_tokenizer("simple")
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=128)
    directory = tmp_path_factory.mktemp("ckpt") / "instruct"
    return save_model(model, directory, tokenizer="simple", extra={"instruction_template": "alpaca"})


def test_serve_answers_with_the_template_and_exits_0_on_sigterm(instruct_checkpoint):
    env = {**os.environ, "GPTSMITH_API_KEY": "k", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gptsmith", "serve", "--checkpoint", str(instruct_checkpoint),
               "--port", "0", "--max-batch", "2"]  # port 0: the system picks one, the banner names it
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = ""
        while "Ctrl-C to stop" not in banner:
            line = proc.stderr.readline()
            assert line, f"the server ended before listening: {banner}"
            banner += line
        url = re.search(r" at (http://127\.0\.0\.1:(\d+))/v1 ", banner).group(1)
        port = int(url.rsplit(":", 1)[1])
        assert port != 0
        def healthy() -> bool:
            try:
                return request(url, "GET", "/healthz", key=None)[0] == 200
            except OSError:
                return proc.poll() is None and False
        assert wait_until(healthy, timeout=90), proc.stderr.read() if proc.poll() is not None else "no answer"
        assert request(url, "GET", "/v1/models", key=None)[0] == 401  # the key came from GPTSMITH_API_KEY
        status, body = request(url, "POST", "/v1/chat/completions", key="k", body={
            "model": "instruct", "messages": [{"role": "user", "content": "What is a cat?"}],
            "max_tokens": 12, "temperature": 0})
        assert status == 200, body
        tokenizer = get_tokenizer("simple")
        ids = tokenizer.encode(format_instruction("What is a cat?"))  # the Alpaca template of config.json
        stream = stream_text(load_model(instruct_checkpoint), tokenizer, ids, 12, stop_sequences=["\n\n### "])
        assert body["choices"][0]["message"]["content"] == "".join(stream)
        assert body["usage"]["prompt_tokens"] == len(ids)

        streamed: list[str] = []

        def stream() -> None:
            import http.client

            conn = http.client.HTTPConnection(f"127.0.0.1:{port}", timeout=30)
            body = json.dumps({"prompt": "the", "max_tokens": 100, "stream": True})
            conn.request("POST", "/v1/completions", body,
                         {"Authorization": "Bearer k", "Content-Type": "application/json"})
            response = conn.getresponse()
            streamed.append(response.readline().decode())
            started.set()
            streamed.extend(response.read().decode().split("\n\n"))

        started = threading.Event()
        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)  # mid-stream: the answer is finished, then the server exits
        assert proc.wait(timeout=60) == 0
        reader.join(30)
        assert [part for part in streamed if part.strip()][-1].strip() == "data: [DONE]"
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-batch", "0"], "--max-batch must be a whole number >= 1, got 0"),
    (["--max-tokens", "-5"], "--max-tokens must be a whole number >= 1, got -5"),
    (["--port", "-1"], "--port must be a whole number >= 0, got -1"),
    (["--port", "70000"], "--port must be at most 65535"),
    # caps over the checkpoint's context (128) are refused once it is loaded, before listening
    (["--max-prompt-tokens", "1000"], "--max-prompt-tokens must be at most the model's context of 128"),
    (["--max-tokens", "129"], "--max-tokens must be at most the model's context of 128 tokens, got 129"),
    (["--cors-origin", "http://localhost:3000/"], "--cors-origin must be '*' or an origin like"),
    (["--api-key", ""], "--api-key (or GPTSMITH_API_KEY) must be printable ASCII, not empty"),  # was: no key
])
def test_serve_bad_flags_are_one_line(capsys, instruct_checkpoint, flags, message):
    assert main(["serve", "--checkpoint", str(instruct_checkpoint), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Ctrl-C to stop" not in err  # refused before it listened


def test_serve_port_in_use_or_a_foreign_address_is_one_line(capsys, instruct_checkpoint):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--checkpoint", str(instruct_checkpoint), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pick another --port" in err
    assert "Ctrl-C to stop" not in err  # no banner for a server that never listened
    # 192.0.2.1 is TEST-NET-1: a valid address that no machine of ours has
    assert main(["serve", "--checkpoint", str(instruct_checkpoint), "--host", "192.0.2.1", "--port", "0",
                 "--api-key", "k"]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 192.0.2.1:0" in err and "--host must be an address of this machine" in err


@pytest.mark.parametrize("given", [".", "./", "../instruct", "{path}/"])
def test_the_model_is_named_after_the_checkpoint_folder_however_it_is_given(
        monkeypatch, instruct_checkpoint, given):
    import gptsmith.serve.server as server

    served = {}

    def run_server(model, tokenizer, settings, **options) -> None:  # instead of listening
        served["name"] = settings.model_name

    monkeypatch.setattr(server, "run_server", run_server)
    monkeypatch.chdir(instruct_checkpoint)
    assert main(["serve", "--checkpoint", given.format(path=instruct_checkpoint)]) == 0
    assert served["name"] == "instruct"  # was "." for --checkpoint .


@pytest.mark.parametrize(("flags", "origins", "warned"), [
    ([], (), False),  # no CORS unless asked
    (["--cors-origin", "http://localhost:3000", "--cors-origin", "https://example.com"],
     ("http://localhost:3000", "https://example.com"), False),
    (["--cors-origin", "*"], ("*",), True),  # any web page may use the model: said, as for --host
    (["--cors-origin", "*", "--api-key", "k"], ("*",), False),
])
def test_cors_origins_reach_the_server(monkeypatch, capsys, instruct_checkpoint, flags, origins, warned):
    import gptsmith.serve.server as server

    served = {}
    monkeypatch.setattr(server, "run_server", lambda model, tokenizer, settings, **options:
                        served.setdefault("origins", settings.cors_origins))
    monkeypatch.delenv("GPTSMITH_API_KEY", raising=False)
    assert main(["serve", "--checkpoint", str(instruct_checkpoint), *flags]) == 0
    assert served["origins"] == origins
    assert ("--cors-origin '*' without an API key" in capsys.readouterr().err) == warned
