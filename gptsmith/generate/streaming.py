"""Text as it is generated: the iterator that ``stream_text`` (``generation.py``) returns.

Two things make streaming harder than decoding the finished ids:

- a byte-level BPE token can hold part of a multi-byte UTF-8 character (``"🎉"`` is three GPT-2
  tokens), so bytes go through an incremental UTF-8 decoder and a chunk never ends inside a
  character;
- text that may turn out to be the start of a stop sequence must not be shown yet. It is held
  back from the start of the *token* in which it begins, because a stop drops that whole token
  (as ``generate`` does): the text shown is always the decoding of the ids reported.

Stops are found by the same ``StopMatcher`` that ``generate`` and beam search use.
"""

from __future__ import annotations

import codecs
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from gptsmith.generate.decoding import sample_steps
from gptsmith.generate.stopping import Stop, StopMatcher, StopRules, token_bytes

if TYPE_CHECKING:
    from gptsmith.generate.config import GenerationConfig


class TextStream:
    """The iterator ``stream_text`` returns: yields str chunks; then ``token_ids`` and ``stop_reason``.

    ``token_ids`` are the new tokens kept (without the eos token or the stop sequence that ended
    generation); ``stop_reason`` is ``"eos"``, ``"stop_sequence"``, or ``budget_reason`` when the
    ``cfg.max_new_tokens`` tokens are all generated: ``"max_new_tokens"``, unless the caller cut
    that budget to the room left in the context and set ``"context_length"`` (``ask.stream_answer``);
    or ``"interrupted"`` when a ``KeyboardInterrupt`` (Ctrl-C) ended the loop: it is re-raised, and
    ``token_ids`` and ``text`` then hold what was generated before it, so a caller can still report it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        ids: torch.Tensor,
        cfg: GenerationConfig,
        stops: StopRules,
    ) -> None:
        self.model, self.tokenizer, self.ids, self.cfg, self.stops = model, tokenizer, ids, cfg, stops
        self.prompt_ids: list[int] = ids[0].tolist()
        self.token_ids: list[int] = []  # new tokens so far
        self.stop_reason: str | None = None
        self.budget_reason = "max_new_tokens"
        self._pieces: TextPieces | None = None  # the sampled path's text, token by token

    def __iter__(self) -> Iterator[str]:
        was_training = self.model.training
        self.model.eval()
        try:
            if self.cfg.num_beams > 1:
                yield from self._beam_text()
            else:
                yield from self._sampled_text()
        except KeyboardInterrupt:
            self.stop_reason = "interrupted"
            raise
        finally:
            self.model.train(was_training)

    @property
    def text(self) -> str:
        """The text of ``token_ids`` as the stream shows it (with a word-level tokenizer's space
        after the prompt), less a character the last token left incomplete. After an interrupted
        loop it also holds the text the stream was holding back for a stop that never came."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # not final: see above
        if self._pieces is None:  # beam search: its tokens come all at once, each after the one before
            previous = (self.prompt_ids[-1:] + self.token_ids)[: len(self.token_ids)]
            return decoder.decode(b"".join(token_bytes(self.tokenizer, before, token)
                                           for before, token in zip(previous, self.token_ids, strict=True)))
        matcher = self._pieces.matcher
        return decoder.decode(bytes(matcher.text[: matcher.kept_bytes(len(self.token_ids))]))

    def _beam_text(self) -> Iterator[str]:
        """Beam search knows its answer only at the end: the text comes in one piece."""
        from gptsmith.generate.beam_search import beam_search

        self.token_ids, _, reason = beam_search(
            self.model,
            self.ids,
            self.cfg.max_new_tokens,
            num_beams=self.cfg.num_beams,
            length_penalty=self.cfg.length_penalty,
            stops=self.stops,
            repetition_penalty=self.cfg.repetition_penalty,
            use_cache=self.cfg.use_cache,
        )
        self.stop_reason = self.budget_reason if reason == "max_new_tokens" else reason
        text = self.text  # a character the last token left incomplete is left out, as when sampling
        if text:
            yield text

    def _sampled_text(self) -> Iterator[str]:
        pieces = self._pieces = TextPieces(self.stops, self.tokenizer, self.prompt_ids[-1])
        self.token_ids = pieces.token_ids  # grows as tokens arrive
        self.stop_reason = self.budget_reason
        for next_ids in sample_steps(self.model, self.ids, None, self.cfg):
            text, stop = pieces.push(int(next_ids[0]))
            if text:
                yield text
            if stop is not None:
                self.token_ids, self.stop_reason = pieces.token_ids, stop.reason
                return
        text = pieces.rest()
        if text:
            yield text


class TextPieces:
    """One sequence's new tokens turned into text that is safe to show, token by token.

    ``push(token)`` returns the text that token makes showable (maybe "") and the ``Stop`` it
    causes, if any; after a stop nothing more is pushed. When generation ends otherwise,
    ``rest()`` returns the text held back for a stop that never came. ``token_ids`` are the new
    tokens kept (a stop's own tokens are dropped). ``TextStream`` and the server's batched
    decoder both stream text through it, so they hold back and cut at stops alike.
    """

    def __init__(self, stops: StopRules, tokenizer: Any, previous: int | None) -> None:
        self.matcher = stops.start(previous, keep_text=True)
        self.token_ids: list[int] = self.matcher.new
        # Text that could begin a stop is held back; for a token-id stop, that is its decoded text.
        self.hold_back = stops.byte_stops + [tokenizer.decode_bytes(stop) for stop in stops.token_stops]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.shown = 0  # bytes of matcher.text passed to the decoder

    def push(self, token: int) -> tuple[str, Stop | None]:
        """Append ``token``: (text now safe to show, the stop it causes or None)."""
        matcher = self.matcher
        stop = matcher.push(token)
        if stop is not None:
            self.token_ids = matcher.new[: stop.kept]
            end = matcher.kept_bytes(stop.kept)
        else:
            end = _showable_bytes(matcher, self.hold_back)
        text = self.decoder.decode(bytes(matcher.text[self.shown : end]))
        self.shown = end
        return text, stop

    def rest(self) -> str:
        """The held-back text, once no stop can come (``max_new_tokens`` reached).

        Not final: bytes of a character the last token left incomplete stay in the decoder, unsaid.
        """
        text = self.decoder.decode(bytes(self.matcher.text[self.shown :]))
        self.shown = len(self.matcher.text)
        return text


def _showable_bytes(matcher: StopMatcher, hold_back: Sequence[bytes]) -> int:
    """How many bytes of the text are safe to show: all but those from the start of the token
    in which a possible beginning of a stop sequence lies."""
    text = matcher.text
    partial = _partial_stop_length(text, hold_back)
    if partial == 0:
        return len(text)
    token = bisect_right(matcher.offsets, len(text) - partial) - 1
    return matcher.offsets[token]


def _partial_stop_length(buffer: bytearray, stops: Sequence[bytes]) -> int:
    """Length of the longest end of ``buffer`` that is the beginning of a stop sequence."""
    longest = 0
    for stop in stops:
        for k in range(min(len(buffer), len(stop) - 1), longest, -1):
            if buffer.endswith(stop[:k]):
                longest = k
                break
    return longest
