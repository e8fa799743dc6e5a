"""Continuous batching: one decode loop owns the model; requests join and leave between steps.

The loop runs in its own thread. Each turn it

1. drops the requests whose client went away (``Handle.cancel``: the row is free before the next step);
2. admits waiting requests while rows are free: their prompts are prefilled together (one
   forward pass) into new rows of the ``BatchCache``, and each first token is picked from its logits;
3. runs one decode step for every live row at once (a batch of 16 reads the weights once, as a
   single request does) and gives each row's logits to that request's own picker;
4. retires the rows that met a stop or their ``max_tokens``.

Per request, the same pieces as ``generate`` (one owner per rule): a ``TokenPicker`` with its own
seeded ``torch.Generator`` (temperature, top-k, top-p), a ``TextPieces`` (``StopRules``: eos and
stop strings; no half characters; text that may start a stop held back). So a request's tokens
are those ``generate`` gives it alone with the same seed, whatever else runs beside it (greedy:
the same tokens; the batched arithmetic may differ from a lone row's in the last bits).

Results go back through the request's ``emit`` callback, called on the loop's thread with one
``Chunk`` per token and a final one with ``finish_reason`` set.
"""

from __future__ import annotations

import codecs
import collections
import threading
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gptsmith.errors import GptsmithError
from gptsmith.generate.decoding import TokenPicker
from gptsmith.generate.stopping import StopRules, normalise_stops
from gptsmith.generate.streaming import TextPieces
from gptsmith.serve.batch import BatchCache

# The stop reasons of generate and ask (TextStream.stop_reason) in OpenAI's words, which has one
# word for both ways a token budget ends.
FINISH_REASONS = {"eos": "stop", "stop_sequence": "stop",
                  "max_new_tokens": "length", "context_length": "length"}


class EngineStopped(GptsmithError):
    """The decode loop has stopped (the server is shutting down): it takes no new requests."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes (already checked by the API layer). ``temperature`` 0 is greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # report the chosen token's log-probability and this many alternatives


@dataclass
class Chunk:
    """What one step produced for a request; ``finish_reason`` is set on the last one."""

    text: str = ""
    token_id: int | None = None
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None  # with logprobs: the most likely tokens (maybe none)
    text_offset: int = 0  # with logprobs: characters of the answer's text before this token
    shown_tokens: int = 0  # with logprobs: the answer's first tokens whose text has been emitted
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int = 0
    # Every token the model generated, as OpenAI bills them: a stop sequence's tokens (whose text is
    # cut) and the end-of-text token count, so usage is the same streamed or not, and <= max_tokens.
    completion_tokens: int = 0
    kept_tokens: int = 0  # the tokens whose text the answer keeps (those its logprobs report)
    error: str | None = None


@dataclass
class Handle:
    """A submitted request: ``cancel()`` frees its row before the next decode step."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Chunk], None]
    cancelled: bool = False
    finished: bool = False
    picker: Any = None
    pieces: Any = None
    last_token: int = 0
    n_generated: int = 0
    chars: int = 0  # with logprobs: characters the tokens so far decode to (their text offsets)
    offset_decoder: Any = None

    def cancel(self) -> None:
        """The client has gone: stop generating for it (takes effect between decode steps)."""
        self.cancelled = True


class Engine:
    """The decode loop. ``submit`` from any thread; ``start``/``stop`` the loop's thread.

    ``max_batch`` rows decode together; more requests wait their turn (first come, first served).
    ``max_span`` (default: the model's context) bounds prompt + ``max_tokens`` of any request.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_batch: int = 16,
                 max_span: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_span = max_span or model.cfg.context_length
        self.vocab_size = model.cfg.vocab_size
        self.eos_id = getattr(tokenizer, "eot_id", None)
        self.cache = BatchCache(model, max_batch, self.max_span)
        self.rows: list[Handle] = []  # rows[i] owns row i of the cache
        self.waiting: collections.deque[Handle] = collections.deque()
        self.wakeup = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and statistics)

    # -- the caller's side ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode loop's thread."""
        if self.thread is None:
            self.running = True
            self.thread = threading.Thread(target=self._loop, name="gptsmith-decode", daemon=True)
            self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every request still running or waiting, and end the loop."""
        with self.wakeup:
            self.running = False
            self.wakeup.notify()
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    def submit(self, prompt_ids: list[int], params: SamplingParams, emit: Callable[[Chunk], None]) -> Handle:
        """Queue a request; its chunks go to ``emit`` (called on the loop's thread).

        Raises ``EngineStopped`` once the loop is stopping, and ``GptsmithError`` for an empty
        prompt or one that leaves no room for ``max_tokens`` (the API layer refuses those first).
        """
        if not prompt_ids or len(prompt_ids) + params.max_tokens > self.max_span:
            raise GptsmithError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) must fit in "
                f"{self.max_span} tokens"
            )
        handle = Handle(list(prompt_ids), params, emit)
        with self.wakeup:
            if not self.running:
                raise EngineStopped("the server is shutting down")
            self.waiting.append(handle)
            self.wakeup.notify()
        return handle

    @property
    def active(self) -> int:
        """Requests decoding now (rows in use)."""
        return len(self.rows)

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self.wakeup:
                    while self.running and not self.waiting and not self.rows:
                        self.wakeup.wait()
                    if not self.running:
                        break
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self.rows:
                        self._step()
                except Exception as exc:  # noqa: BLE001 (a failure ends the requests in the batch, not the loop)
                    for row in reversed(range(len(self.rows))):
                        self._retire(row, "error", error=f"{type(exc).__name__}: {exc}")
        finally:
            for handle in [*self.rows, *self.waiting]:
                self._finish(handle, "cancelled")
            self.rows.clear()
            self.waiting.clear()

    def _drop_cancelled(self) -> None:
        for row in reversed(range(len(self.rows))):
            if self.rows[row].cancelled:
                self._retire(row, "cancelled")

    def _admit(self) -> None:
        """Prefill the waiting requests that fit in the free rows, all in one forward pass."""
        joining: list[Handle] = []
        with self.wakeup:
            while self.waiting and len(self.rows) + len(joining) < self.max_batch:
                joining.append(self.waiting.popleft())
        ready = []
        for handle in joining:
            if handle.cancelled:
                self._finish(handle, "cancelled")
                continue
            try:
                self._start(handle)
            except Exception as exc:  # noqa: BLE001 (one request's failure must not stop the server)
                self._finish(handle, "error", error=str(exc))
                continue
            ready.append(handle)
        if not ready:
            return
        try:
            with torch.inference_mode():
                logits = self.cache.add_rows([h.prompt_ids for h in ready])  # (len(ready), vocab_size)
        except Exception as exc:  # noqa: BLE001
            for handle in ready:
                self._finish(handle, "error", error=str(exc))
            return
        first = len(self.rows)
        self.rows.extend(ready)
        self._advance(first, logits)

    def _start(self, handle: Handle) -> None:
        """The request's own sampling state and stop rules, as ``generate`` would make them."""
        params = handle.params
        generator = torch.Generator(device=self.cache.store.keys.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        prompt = torch.tensor([handle.prompt_ids])
        handle.picker = TokenPicker(prompt, None, self.vocab_size, temperature=params.temperature,
                                    top_k=params.top_k, top_p=params.top_p, generator=generator)
        token_stops, byte_stops = normalise_stops(list(params.stop) or None, self.tokenizer)
        rules = StopRules(self.eos_id, token_stops, byte_stops, self.tokenizer)
        handle.pieces = TextPieces(rules, self.tokenizer, handle.prompt_ids[-1])
        if params.logprobs is not None:  # the same decoding as the text's, so offsets count its characters
            handle.offset_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _step(self) -> None:
        try:
            with torch.inference_mode():
                logits = self.cache.step([h.last_token for h in self.rows])  # (n_rows, vocab_size)
        except Exception as exc:  # noqa: BLE001 (a failed step ends the requests in it, not the server)
            for row in reversed(range(len(self.rows))):
                self._retire(row, "error", error=str(exc))
            return
        self.steps += 1
        self._advance(0, logits)

    def _advance(self, first_row: int, logits: torch.Tensor) -> None:
        """Pick the next token of rows first_row, first_row + 1, ... from their logits (n, vocab_size)."""
        done = []
        for offset in range(logits.shape[0]):
            row = first_row + offset
            handle = self.rows[row]
            row_logits = logits[offset : offset + 1]  # (1, vocab_size)
            with torch.inference_mode():
                token = int(handle.picker(row_logits)[0])
            chunk = Chunk(token_id=token)
            if handle.params.logprobs is not None:
                self._logprobs(chunk, row_logits[0], token, handle.params.logprobs)
            handle.n_generated += 1
            handle.last_token = token
            text, stop = handle.pieces.push(token)
            chunk.text = text
            if handle.offset_decoder is not None:
                matcher = handle.pieces.matcher
                chunk.text_offset = handle.chars
                handle.chars += len(handle.offset_decoder.decode(bytes(matcher.text[matcher.offsets[-1]:])))
            if stop is not None:
                done.append((row, FINISH_REASONS[stop.reason], chunk))
            elif handle.n_generated >= handle.params.max_tokens:
                chunk.text += handle.pieces.rest()
                done.append((row, "length", chunk))
            else:
                self._emit(handle, chunk)
        for row, reason, chunk in reversed(done):  # highest row first: retiring moves the last row
            self._retire(row, reason, last=chunk)

    @staticmethod
    def _logprobs(chunk: Chunk, logits: torch.Tensor, token: int, top: int) -> None:
        logprobs = torch.log_softmax(logits, dim=-1)  # (vocab_size,) of the model, before sampling filters
        chunk.logprob = float(logprobs[token])
        values, ids = torch.topk(logprobs, top)  # top 0 (OpenAI's logprobs: 0): no alternatives, {}
        chunk.top_logprobs = dict(zip(ids.tolist(), values.tolist(), strict=True))

    def _retire(self, row: int, reason: str, *, last: Chunk | None = None, error: str | None = None) -> None:
        handle = self.rows[row]
        moved = self.cache.remove_row(row)
        if moved is not None:
            self.rows[row] = self.rows[moved]
        self.rows.pop()
        self._finish(handle, reason, last=last, error=error)

    def _finish(self, handle: Handle, reason: str, *, last: Chunk | None = None,
                error: str | None = None) -> None:
        if handle.finished:
            return
        handle.finished = True
        chunk = last or Chunk()
        chunk.finish_reason = reason
        chunk.error = error
        self._emit(handle, chunk)

    def _emit(self, handle: Handle, chunk: Chunk) -> None:
        chunk.prompt_tokens = len(handle.prompt_ids)
        chunk.completion_tokens = handle.n_generated
        chunk.kept_tokens = len(handle.pieces.token_ids) if handle.pieces is not None else 0
        if handle.offset_decoder is not None:
            chunk.shown_tokens = min(_shown_tokens(handle.pieces), chunk.kept_tokens)
        try:
            handle.emit(chunk)
        except Exception:  # noqa: BLE001 (a closed client's callback must not stop the loop)
            handle.cancelled = True


def _shown_tokens(pieces: TextPieces) -> int:
    """How many of the new tokens have all their bytes in the text emitted so far: a token held back
    (it may begin a stop) or cut by a stop is not, so its logprobs are not reported before its text."""
    matcher = pieces.matcher
    if not matcher.new:
        return 0
    # token k (k >= 1) starts at offsets[k], so tokens 0 .. k-1 end there; the last ends at len(text)
    whole = bisect_right(matcher.offsets, pieces.shown) - 1
    return whole + (len(matcher.text) <= pieces.shown)
