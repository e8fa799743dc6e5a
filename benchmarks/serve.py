"""Serving under load: 1, 4, 16 and 64 concurrent streaming clients against `gptsmith serve`, CPU.

The server runs in its own process (random weights of the named shapes, fp32, the decode layout
of FastLinear, continuous batching with ``--max-batch`` rows); this process runs
the clients, one thread each, on loopback. Every client streams completions back to back
(``stream: true``, a 32-token prompt, ``max_tokens`` new tokens, greedy, <|endoftext|> never
ends an answer early: prompts are token ids and the answers run to ``max_tokens``) for the level's
duration; the level ends when the last answer started in it has finished.

Figures per level: aggregate generated tokens/s and requests/s (completed answers over the
level's wall time), p50/p99 request latency and time to first token (TTFT: request sent ->
first text event; includes waiting for a free row), errors (non-200 answers, broken streams,
missing ``[DONE]``), and the server's resident memory (VmRSS) before and after the level.

Goals (issue 11): zero errors and no RSS growth after 64 clients for 60 s; aggregate tokens/s at
16 streams >= 5x one stream's on gpt2-small shapes; TTFT p99 < 2 s at 16 streams.

    python -m benchmarks serve                      # gpt2-small and tiny, 20 s per level, 60 s for 64
    python -m benchmarks serve --models tiny --duration 5 --long-duration 10
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.harness import REPO_ROOT, base_parser, machine_info, write_report

LEVELS = (1, 4, 16, 64)
PROMPT_TOKENS = 32


def serve_child(preset: str, port: int, max_batch: int, threads: int | None) -> None:
    """The server process: a random-weight model of ``preset``'s shape, GPT-2's vocabulary."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from gptsmith.model.gpt import GPTConfig, GPTModel
    from gptsmith.serve.app import ServerSettings
    from gptsmith.serve.server import run_server

    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_preset(preset, drop_rate=0.0)).eval()  # FastLinear: fast decode
    run_server(model, NoEosTokenizer(), ServerSettings(model_name=preset, max_batch=max_batch),
               host="127.0.0.1", port=port, log_level="warning")


class NoEosTokenizer:
    """Byte-valued ids 0..255 decode to their byte, every other id to "x": text for every token,
    and no <|endoftext|> (eot_id None), so every answer runs to ``max_tokens``."""

    name = "bench"
    vocab_size = 256
    eot_id = None

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids) -> bytes:
        return bytes(i if i < 256 else 120 for i in ids)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def server_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_request(port: int, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    """(latency s, time to first token s, tokens) of one streamed completion; raises on any error."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    first = None
    tokens = 0
    done = False
    for line in response:
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            done = True
            break
        event = json.loads(data)
        if "error" in event:
            raise RuntimeError(event["error"]["message"])
        if first is None and event["choices"] and event["choices"][0]["text"]:
            first = time.perf_counter()
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
    conn.close()
    if not done or tokens != max_tokens:
        raise RuntimeError(f"stream ended early ({tokens} of {max_tokens} tokens, [DONE]: {done})")
    end = time.perf_counter()
    return end - start, (first or end) - start, tokens


def run_level(port: int, pid: int, clients: int, duration: float, max_tokens: int, vocab: int) -> dict:
    """``clients`` threads streaming back to back for ``duration`` seconds."""
    rss_before = server_rss_mb(pid)
    results: list[tuple[float, float, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def client(index: int) -> None:
        rng = random.Random(index)
        while time.perf_counter() < stop_at:
            prompt = [rng.randrange(vocab) for _ in range(PROMPT_TOKENS)]
            try:
                outcome = one_request(port, prompt, max_tokens)
                with lock:
                    results.append(outcome)
            except Exception as exc:  # noqa: BLE001 (every failure is counted and reported)
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    ttfts = sorted(r[1] for r in results)
    return {
        "clients": clients, "requests": len(results), "errors": len(errors), "first_error": errors[:1],
        "tokens/s": sum(r[2] for r in results) / wall, "requests/s": len(results) / wall,
        "latency p50": _pct(latencies, 50), "latency p99": _pct(latencies, 99),
        "ttft p50": _pct(ttfts, 50), "ttft p99": _pct(ttfts, 99),
        "rss before MB": rss_before, "rss after MB": server_rss_mb(pid), "wall s": wall,
    }


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(pct / 100 * (len(values) - 1)))]


def bench_model(preset: str, args) -> list[dict]:
    """Start a server for ``preset``, warm it up, run every level."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "benchmarks", "serve", "--child", preset, "--port", str(port),
               "--max-batch", str(args.max_batch)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    child = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                one_request(port, list(range(PROMPT_TOKENS)), 4)
                break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.5)
        run_level(port, child.pid, min(16, args.max_batch), 3, args.max_tokens, 256)  # warm-up
        rows = []
        for clients in args.levels:
            duration = args.long_duration if clients >= 64 else args.duration
            rows.append(run_level(port, child.pid, clients, duration, args.max_tokens, 256))
            print(_row(preset, rows[-1]), flush=True)
        return rows
    finally:
        start = time.perf_counter()
        child.terminate()  # SIGTERM: the server shuts down gracefully and exits 0
        try:
            status = child.wait(120)
            took = time.perf_counter() - start
            print(f"{preset}: server exited {status} {took:.1f} s after SIGTERM", flush=True)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            print(f"{preset}: server still running 120 s after SIGTERM: killed", flush=True)


HEADER = ("model       clients  requests  errors  tokens/s  req/s   latency p50/p99 s  TTFT p50/p99 s  "
          "server RSS MB before -> after")


def _row(preset: str, r: dict) -> str:
    return (f"{preset:<11} {r['clients']:>7}  {r['requests']:>8}  {r['errors']:>6}  {r['tokens/s']:>8.1f}  "
            f"{r['requests/s']:>5.2f}   {r['latency p50']:>6.2f} / {r['latency p99']:<6.2f}   "
            f"{r['ttft p50']:>5.2f} / {r['ttft p99']:<5.2f}   "
            f"{r['rss before MB']:>7.0f} -> {r['rss after MB']:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n", 1)[0], __name__)
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "tiny"], help="presets to serve")
    parser.add_argument("--levels", nargs="+", type=int, default=list(LEVELS), help="concurrent clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level (default 20)")
    parser.add_argument("--long-duration", type=float, default=60.0,
                        help="seconds for 64+ clients (default 60)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per answer (default 64)")
    parser.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default 16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="the server's torch threads (default: torch's; 1 is faster on a busy machine)")
    parser.add_argument("--child", default=None, help=argparse_hidden())
    parser.add_argument("--port", type=int, default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.child:
        serve_child(args.child, args.port, args.max_batch, args.threads)
        return 0
    load = os.getloadavg()
    lines = ["== serve: concurrent streaming clients ==",
             "machine: " + ", ".join(f"{k}: {v}" for k, v in machine_info().items()),
             f"load average at start (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
             f"prompt {PROMPT_TOKENS} tokens, {args.max_tokens} new tokens per answer, greedy, fp32, "
             f"--max-batch {args.max_batch}; {args.duration:g} s per level "
             f"({args.long_duration:g} s for 64+); server torch threads: {args.threads or 'default'}",
             HEADER]
    print("\n".join(lines), flush=True)
    for preset in args.models:
        rows = bench_model(preset, args)  # prints each row as it is measured
        lines += [_row(preset, r) for r in rows]
        summary_start = len(lines)
        by_clients = {r["clients"]: r for r in rows}
        if 1 in by_clients and 16 in by_clients:
            ratio = by_clients[16]["tokens/s"] / by_clients[1]["tokens/s"]
            ttft = by_clients[16]["ttft p99"]
            lines.append(f"  {preset}: aggregate tokens/s, 16 streams / 1 stream = {ratio:.2f}x (goal >= 5x)")
            lines.append(f"  {preset}: TTFT p99 at 16 streams = {ttft:.2f} s (goal < 2 s)")
        for r in rows:
            if r["errors"]:
                lines.append(f"  {preset} x{r['clients']}: first error: {r['first_error'][0]}")
        print("\n".join(lines[summary_start:]), flush=True)
    load = os.getloadavg()
    lines.append(f"load average at end (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    text = "\n".join(lines)
    print(lines[-1])
    write_report(text, args.output)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS
