"""Running the app under uvicorn: in the foreground (``gptsmith serve``) or in a thread (tests, benchmarks).

Shutdown on SIGTERM or Ctrl-C is graceful: uvicorn stops accepting connections, lets running
answers finish for up to ``grace_seconds``, then the engine ends the rest (each as a 503, or a
stream's error event and ``[DONE]``); the app's lifespan stops the engine, and ``run_server``
returns normally, so the command exits 0. A second Ctrl-C (uvicorn's force quit) ends them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from gptsmith.errors import GptsmithError
from gptsmith.serve.app import ServerSettings, create_app

# How long after the grace period uvicorn itself cancels what is left: only a client that stopped
# reading its ended answer can still hold a task then.
BACKSTOP_SECONDS = 5.0
# After a second Ctrl-C (uvicorn's force quit), how long the ended answers get to send their last events.
FORCED_SECONDS = 1.0


def _server(app: Any, host: str, port: int, grace_seconds: float, log_level: str):
    """uvicorn's server for ``app``, whose shutdown ends the answers still running at ``grace_seconds``.

    Left to uvicorn, they would be cancelled mid-write: the client gets a cut-off response (no error,
    no ``[DONE]``) and the console a traceback per answer. Stopping the engine instead ends each one
    as an answer: a 503, or, streamed, an error event and ``[DONE]`` after the text so far.
    """
    import uvicorn

    engine = app.state.engine

    class GracefulServer(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            async def end_answers() -> None:
                await asyncio.sleep(grace_seconds)
                await asyncio.to_thread(engine.stop)

            ender = asyncio.create_task(end_answers())
            try:
                await super().shutdown(sockets)
            finally:
                ender.cancel()
            if self.force_exit:  # a second Ctrl-C: uvicorn waited for nothing; end the answers now
                await asyncio.to_thread(engine.stop)
                with contextlib.suppress(TimeoutError):  # they send their last events, or exit anyway
                    async with asyncio.timeout(FORCED_SECONDS):
                        while self.server_state.tasks:
                            await asyncio.sleep(0.05)
                if not self.lifespan.shutdown_event.is_set():  # uvicorn skipped it: the app's own end
                    await self.lifespan.shutdown()

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=grace_seconds + BACKSTOP_SECONDS, lifespan="on")
    return GracefulServer(config)


def run_server(model: torch.nn.Module, tokenizer: Any, settings: ServerSettings, *, host: str = "127.0.0.1",
               port: int = 8000, grace_seconds: float = 10.0, log_level: str = "info",
               on_listening: Callable[[str], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully and return.

    ``on_listening(url)`` is called once the socket is bound, with the real port (``port=0`` asks
    the system for a free one).
    """
    server = _server(create_app(model, tokenizer, settings), host, port, grace_seconds, log_level)
    sock = listen(host, port)
    # uvicorn re-raises the signal it caught once it has shut down; with these handlers in place
    # that ends nothing, so a SIGTERM'd server returns (exit status 0) instead of dying by the signal.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with sock:
            if on_listening is not None:
                bound_port = sock.getsockname()[1]
                on_listening(f"http://{'[' + host + ']' if ':' in host else host}:{bound_port}")
            server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``; a ``GptsmithError`` that names the flag to change."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except socket.gaierror as exc:
        raise GptsmithError(f"cannot listen on --host {host}: {exc.strerror or exc} (give an address of this "
                            "machine, e.g. 127.0.0.1, or 0.0.0.0 for every interface)") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            fix = "pick another --port, or stop what uses it"
        elif exc.errno == errno.EACCES:
            fix = "ports below 1024 need extra rights: pick e.g. --port 8000"
        elif exc.errno == errno.EADDRNOTAVAIL:
            fix = "--host must be an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        else:
            fix = "check --host and --port"
        raise GptsmithError(f"cannot listen on {host}:{port}: {reason} ({fix})") from None


class ServerThread:
    """The app served on a free loopback port in a background thread: ``with ServerThread(...) as s:``.

    ``s.url`` is e.g. ``http://127.0.0.1:43121``; ``s.app`` the FastAPI app (``s.app.state.engine``).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, settings: ServerSettings | None = None,
                 *, grace_seconds: float = 2.0) -> None:
        self.app = create_app(model, tokenizer, settings or ServerSettings())
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = _server(self.app, "127.0.0.1", 0, grace_seconds, "warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise GptsmithError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
