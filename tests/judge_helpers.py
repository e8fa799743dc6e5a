"""A stub OpenAI-compatible chat server for the judge tests (started by the tests, on a free port)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer


class StubJudge(BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions with the next of ``replies``; records every request.

    Only the model ``judge-1`` exists: any other gets a 404, as from a real server.
    """

    replies: list[str] = []
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StubJudge.requests.append({"path": self.path, **body})
        if body["model"] != "judge-1":
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": "model not found"}')
            return
        reply = StubJudge.replies.pop(0)
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def stub_judge(replies: list[str]) -> Iterator[str]:
    """Serve ``replies`` in a background thread; yields the server's base URL."""
    StubJudge.replies = list(replies)
    StubJudge.requests.clear()
    server = HTTPServer(("127.0.0.1", 0), StubJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
