"""The HTTP API: OpenAI's ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``, plus
``/healthz`` and the playground page at ``/``.

``create_app(model, tokenizer, settings)`` builds the FastAPI app around one ``Engine`` (started
and stopped with the app). Safe by default: with an API key every route but ``/healthz`` and the
static page needs ``Authorization: Bearer KEY``; bodies, prompts, ``max_tokens`` and ``n`` are
capped; every refusal is a 4xx in OpenAI's error shape (``protocol.py``); no CORS unless
``ServerSettings.cors_origins`` names the web pages' origins that may call it (``--cors-origin``).
A streamed answer is server-sent events ending in ``data: [DONE]``; when its client disconnects,
its rows are freed before the next decode step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptsmith.config import check_number
from gptsmith.errors import ConfigError
from gptsmith.generate.chat import get_template
from gptsmith.model import memory
from gptsmith.serve.chat_prompt import render_messages
from gptsmith.serve.engine import Chunk, Engine, EngineStopped
from gptsmith.serve.protocol import (
    APIError,
    CompletionRequest,
    Limits,
    chat_request,
    completion_request,
    parse_json,
)
from gptsmith.serve.responses import DONE, Choices, sse

PLAYGROUND = "playground.html"


@dataclass(frozen=True)
class ServerSettings:
    """What the server serves and its caps (``gptsmith serve`` flags)."""

    model_name: str = "gptsmith"
    api_key: str | None = None
    max_batch: int = 16
    max_prompt_tokens: int | None = None  # default: the model's context
    max_tokens: int | None = None  # default: the model's context
    max_body_bytes: int = 1 << 20
    template: str | None = None  # the chat template (from the checkpoint's config.json)
    cors_origins: tuple[str, ...] = ()  # browser pages of these origins ("*": any) may call the API

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_prompt_tokens", "max_tokens", "max_body_bytes"):
            value = getattr(self, name)
            if value is not None or name in ("max_batch", "max_body_bytes"):
                check_number("--" + name.replace("_", "-"), value, whole=True, minimum=1)
        if self.template is not None:
            get_template(self.template)  # an unknown name fails now, not at the first chat request
        key = self.api_key
        # A key travels in an HTTP header, where spaces at its ends are dropped and only ASCII is safe: an
        # empty or unsendable key would lock every client out (or, empty, let "Bearer " with nothing in).
        if key is not None and (not key or key != key.strip() or not (key.isascii() and key.isprintable())):
            raise ConfigError("--api-key (or GPTSMITH_API_KEY) must be printable ASCII, not empty and with "
                              "no space at either end (clients send it in an HTTP header); leave it out to "
                              "serve without a key")
        origins = self.cors_origins or ()
        origins = (origins,) if isinstance(origins, str) else tuple(origins)
        object.__setattr__(self, "cors_origins", origins)  # one origin, or any sequence of them
        for origin in origins:
            check_origin(origin)


def check_origin(origin: str) -> None:
    """A ``ConfigError`` unless ``origin`` is ``*`` or a browser's origin: scheme://host[:port], nothing more.

    A browser sends its page's origin without a path or a trailing slash and CORS compares it
    exactly, so "https://example.com/" would allow nothing: refused, rather than silently useless.
    """
    if origin != "*" and not _is_origin(origin):
        raise ConfigError(f"--cors-origin must be '*' or an origin like https://example.com or "
                          f"http://localhost:3000 (scheme, host and port: no path or trailing slash), "
                          f"got {origin!r}")


def _is_origin(origin: Any) -> bool:
    if not isinstance(origin, str) or origin != origin.strip():
        return False
    try:
        parts = urlsplit(origin)
        port = parts.port  # a port that is not a number, or over 65535, raises
    except ValueError:
        return False
    extra = parts.path or parts.query or parts.fragment or parts.username
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and not extra
            and not (port is None and origin.endswith(":")))


def server_limits(settings: ServerSettings, context: int) -> Limits:
    """The caps of ``settings`` for a model of ``context`` positions (a ``ConfigError`` if one is more).

    A cap over the context could never be reached; the user who set it expects it to hold, so it
    is refused like every other out-of-range cap, not lowered quietly.
    """
    for name in ("max_prompt_tokens", "max_tokens"):
        value = getattr(settings, name)
        if value is not None and value > context:
            raise ConfigError(f"--{name.replace('_', '-')} must be at most the model's context of {context} "
                              f"tokens, got {value} (lower it, or leave it out for the whole context)")
    return Limits(max_tokens=settings.max_tokens or context,
                  max_prompt_tokens=settings.max_prompt_tokens or context,
                  max_batch=settings.max_batch, context_length=context)


def check_batch_memory(model: torch.nn.Module, max_batch: int) -> None:
    """A ``ConfigError`` naming --max-batch when a KV cache of ``max_batch`` full-context rows cannot fit
    in the model's device's memory (nothing when it is unknown): refused at start, in one line, rather
    than a torch allocator traceback now or an out-of-memory failure once the batch fills up."""
    weight = next(model.parameters())
    need = memory.generation_memory(model.cfg, max_batch, model.cfg.context_length,
                                    bytes_per_value=weight.element_size())
    available = memory.available_memory(weight.device)
    if available is not None and need > available:
        raise ConfigError(f"--max-batch {max_batch} needs about {memory.gib(need)} for the model and its KV "
                          f"cache of {max_batch:,} rows x {model.cfg.context_length:,} tokens but only "
                          f"{memory.gib(available)} of memory is available on {weight.device}: "
                          "lower --max-batch")


def create_app(model: torch.nn.Module, tokenizer: Any, settings: ServerSettings) -> FastAPI:
    """The FastAPI app serving ``model``; its engine runs while the app does (``app.state.engine``).

    Raises ``ConfigError`` when a cap of ``settings`` is over the model's context (``server_limits``) or
    its --max-batch cannot fit in memory (``check_batch_memory``).
    """
    context = model.cfg.context_length
    limits = server_limits(settings, context)
    check_batch_memory(model, settings.max_batch)
    engine = Engine(model, tokenizer, max_batch=settings.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="gptsmith", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.settings = settings
    if settings.cors_origins:  # opt-in: without it, a page of another origin cannot read the answers
        # Any request header: OpenAI's browser clients send their own (x-stainless-...) besides
        # Authorization; the key, not the origin, is what guards the API.
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "HEAD", "POST"], allow_headers=["*"])

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += " (routes: /v1/models, /v1/completions, /v1/chat/completions, /healthz, /)"
        elif exc.status_code == 405 and request.method == "OPTIONS" and not settings.cors_origins:
            message += " (a browser's cross-origin preflight: start the server with --cors-origin ORIGIN)"
        # exc.headers: a 405's Allow, which HTTP requires, naming the methods the route takes
        return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        error = APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer YOUR_KEY'",
                           code="invalid_api_key")
        scheme, _, key = header.partition(" ")
        right = hmac.compare_digest(key.strip().encode(), settings.api_key.encode())
        if scheme.lower() != "bearer" or not right:
            raise APIError(401, "incorrect API key in the Authorization header", code="invalid_api_key")

    def check_model(name: str | None) -> None:
        if name is not None and name != settings.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves {settings.model_name!r}",
                           param="model", code="model_not_found")

    async def read_json(request: Request) -> dict[str, Any]:
        cap = settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise APIError(413, f"request body of {declared} bytes is over this server's limit of {cap} "
                           "bytes (send less, or raise --max-body-bytes)")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > cap:
                raise APIError(413, f"request body is over this server's limit of {cap} bytes "
                               "(send less, or raise --max-body-bytes)")
        return parse_json(bytes(body))

    # HEAD answers as GET does, without the body (uvicorn leaves it out): monitors and link checkers use it.
    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, "active": engine.active,
                "waiting": len(engine.waiting)}

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        page = resources.files("gptsmith.serve").joinpath("static", PLAYGROUND).read_text(encoding="utf-8")
        return HTMLResponse(page)

    def model_card() -> dict[str, Any]:
        return {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "gptsmith",
                "context_length": context}

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.api_route("/v1/models/{name:path}", methods=["GET", "HEAD"])
    async def one_model(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        check_model(name)
        return model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        data = await read_json(request)
        check_model(data.get("model") if isinstance(data.get("model"), str) else None)
        checked = completion_request(data, tokenizer, limits)
        choices = Choices("text_completion", settings.model_name, len(checked.params),
                          sum(map(len, checked.prompts)), tokenizer,
                          want_logprobs=data.get("logprobs") is not None)
        return await answer(request, checked, choices)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        data = await read_json(request)
        check_model(data.get("model") if isinstance(data.get("model"), str) else None)
        checked = chat_request(data, tokenizer, limits,
                               lambda messages: render_messages(messages, tokenizer, settings.template))
        choices = Choices("chat.completion", settings.model_name, len(checked.params),
                          sum(map(len, checked.prompts)), tokenizer)
        return await answer(request, checked, choices)

    async def answer(request: Request, checked: CompletionRequest, choices: Choices):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Chunk]] = asyncio.Queue()

        def emitter(index: int):
            return lambda chunk: loop.call_soon_threadsafe(queue.put_nowait, (index, chunk))

        handles = []
        try:
            for index, params in enumerate(checked.params):
                prompt = checked.prompts[index // checked.n]
                handles.append(engine.submit(prompt, params, emitter(index)))
        except Exception as exc:
            for handle in handles:
                handle.cancel()
            if isinstance(exc, EngineStopped):  # the only refusal that is the server's state, not the request
                raise APIError(503, "the server is shutting down: send the request again once it is back",
                               type="server_error") from None
            # Anything else the engine refuses, protocol.py should have refused with a 400 naming the
            # field: it is a bug, and the 500 handler says what happened rather than "try later".
            raise

        def cancel_all() -> None:
            for handle in handles:
                handle.cancel()

        if checked.stream:
            return StreamingResponse(stream(queue, checked, choices, cancel_all),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            check_at = loop.time() + 1.0
            while not choices.done:
                with contextlib.suppress(TimeoutError):
                    choices.add(*await asyncio.wait_for(queue.get(), timeout=1.0))
                # Once a second, whether chunks keep coming or not: nobody to answer frees the rows now.
                if loop.time() >= check_at:
                    check_at = loop.time() + 1.0
                    if await request.is_disconnected():
                        raise APIError(400, "the client disconnected before the answer was ready")
        finally:
            if not choices.done:
                cancel_all()
        problem = failure(choices)
        if problem is not None:
            raise problem
        return choices.whole()

    def failure(choices: Choices) -> APIError | None:
        """Why an answer whose client is still there did not finish (None: it did)."""
        if choices.error:
            return APIError(500, f"generation failed: {choices.error}", type="server_error")
        if "cancelled" in choices.finish:  # with its client there, only a shutdown cancels an answer
            return APIError(503, "the server shut down before the answer was finished: send the request "
                            "again once it is back", type="server_error")
        return None

    async def stream(queue: asyncio.Queue, checked: CompletionRequest, choices: Choices, cancel_all):
        started: set[int] = set()
        try:
            while not choices.done:
                index, chunk = await queue.get()
                choices.add(index, chunk)
                event = choices.event(index, chunk, first=index not in started)
                started.add(index)
                if event:
                    yield event
            problem = failure(choices)
            if problem is not None:  # after the text so far, an error event says the answer is not whole
                yield sse(problem.body())
            if checked.include_usage:
                yield choices.usage_event()
            yield DONE
        finally:
            if not choices.done:
                cancel_all()  # the client went away: free its rows now

    return app
