"""Sub-command ``serve``: an OpenAI-compatible HTTP API and a web playground for one model."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from gptsmith.config import check_number
from gptsmith.errors import ConfigError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``."""
    from gptsmith.cli.generate_cmds import _add_model_args  # the one definition of --checkpoint/--model

    serve = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP: OpenAI-compatible API and a web playground",
        description=(
            "Serve one model with OpenAI's API (GET /v1/models, POST /v1/completions and "
            "/v1/chat/completions, streaming with stream: true), GET /healthz, and a playground page at /. "
            "Requests are batched continuously: each joins the running batch between decode steps. "
            "Needs the serve extra: pip install 'gptsmith[serve]'. SIGTERM or Ctrl-C shuts down gracefully."
        ),
        epilog=(
            "examples:\n"
            "  gptsmith serve --checkpoint runs/main\n"
            "  gptsmith serve --model gpt2 --port 8000 --api-key s3cret --max-batch 16\n"
            "  gptsmith serve --checkpoint runs/main --cors-origin http://localhost:3000\n"
            "  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\\n"
            "       -d '{\"prompt\": \"The module\", \"max_tokens\": 20}'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free port, printed)")
    serve.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' on every route but /healthz and / "
                            "(default: $GPTSMITH_API_KEY, else none)")
    serve.add_argument("--name", default=None,
                       help="the model's id in the API (default: from --checkpoint/--model)")
    serve.add_argument("--max-batch", type=int, default=16, help="requests decoded together (default 16)")
    serve.add_argument("--max-prompt-tokens", type=int, default=None,
                       help="longest prompt in tokens (default: the context)")
    serve.add_argument("--max-tokens", type=int, default=None,
                       help="most new tokens per answer (default: the context)")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20,
                       help="largest request body (default 1 MiB)")
    serve.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                       help="let web pages of this origin (e.g. http://localhost:3000; repeatable; '*': any) "
                            "call the API from a browser (default: none, only the playground's own)")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("serving needs FastAPI and uvicorn: pip install 'gptsmith[serve]'") from None
    check_number("--port", args.port, whole=True, minimum=0)
    if args.port > 65535:
        raise ConfigError(f"--port must be at most 65535, got {args.port}")
    # An empty --api-key (e.g. "$KEY" of an unset variable) is refused, not taken as "no key"; an empty
    # GPTSMITH_API_KEY is unset, as usual for environment variables.
    api_key = args.api_key if args.api_key is not None else os.environ.get("GPTSMITH_API_KEY") or None

    from gptsmith.cli.generate_cmds import load_for_generation
    from gptsmith.generate.chat import template_from_config
    from gptsmith.serve.app import ServerSettings
    from gptsmith.serve.server import run_server

    # The caps are checked here, before the model loads (ServerSettings' own checks, one wording).
    settings = ServerSettings(api_key=api_key, max_batch=args.max_batch,
                              max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
                              max_body_bytes=args.max_body_bytes, cors_origins=tuple(args.cors_origin or ()))
    model, tokenizer, config, name = load_for_generation(args)
    # The checkpoint folder's own name, however it was given ("." names the folder, not "."; a link
    # keeps its own name: abspath does not follow it).
    folder = Path(os.path.abspath(Path(args.checkpoint).expanduser())) if args.checkpoint else Path(name)
    settings = dataclasses.replace(settings, model_name=args.name or folder.name or name,
                                   template=template_from_config(config))
    if args.host not in LOOPBACK and api_key is None:
        print(f"gptsmith serve: warning: listening on {args.host} without an API key: anyone who can reach "
              "this port can use the model (add --api-key)", file=sys.stderr)
    if "*" in settings.cors_origins and api_key is None:
        print("gptsmith serve: warning: --cors-origin '*' without an API key: any web page open in a browser "
              "that can reach this server can use the model (add --api-key, or name the origins)",
              file=sys.stderr)

    def banner(url: str) -> None:  # once listening: the real port, and no banner if it cannot listen
        print(f"gptsmith serve: {settings.model_name} at {url}/v1 (playground: {url}/); Ctrl-C to stop",
              file=sys.stderr, flush=True)

    run_server(model, tokenizer, settings, host=args.host, port=args.port, log_level="warning",
               on_listening=banner)
    print("gptsmith serve: stopped", file=sys.stderr)
    return 0
