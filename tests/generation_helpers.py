"""Small models and a byte tokenizer for the generation tests (no files, no training needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gptsmith.model.attention import KVCache
from gptsmith.model.gpt import GPTConfig, GPTModel


def tiny_model(vocab_size: int = 97, context_length: int = 32, seed: int = 0) -> GPTModel:
    """A 2-layer random GPT whose greedy output varies (the default init repeats one token)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        emb_dim=32,
        n_heads=4,
        n_layers=2,
        drop_rate=0.0,
        tie_weights=False,
    )
    model = GPTModel(cfg)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:  # weight matrices and embeddings; LayerNorms and biases keep their init
                param.normal_(0.0, 0.5)
    return model.eval()


class TableModel(nn.Module):
    """A bigram 'language model': the next-token logits depend only on the last token.

    Speaks the GPTModel interface that generation uses (cfg, new_cache, forward keywords).
    """

    def __init__(self, table: torch.Tensor, context_length: int = 64) -> None:
        super().__init__()
        vocab_size = table.shape[1]
        self.cfg = GPTConfig(vocab_size=vocab_size, context_length=context_length, emb_dim=4, n_heads=1)
        self.table = nn.Parameter(table.float(), requires_grad=False)  # (vocab, vocab) logits
        self.calls = 0
        self.fed: list[int] = []  # how many tokens each call was given

    def new_cache(self, batch_size: int, max_length: int | None = None, *, dtype=None) -> KVCache:
        return KVCache(1, batch_size, 1, 1, max_length or self.cfg.context_length)

    def forward(self, token_ids, *, cache=None, last_token_only=False, **_):
        self.calls += 1
        self.fed.append(token_ids.shape[1])
        if cache is not None:
            cache.advance(token_ids.shape[1])
        if last_token_only:
            token_ids = token_ids[:, -1:]
        return self.table[token_ids]  # (batch, n_tokens, vocab)


def scripted_model(script: Sequence[int], prompt_length: int, vocab_size: int) -> TableModel:
    """A model that emits ``script`` after a prompt of ``prompt_length`` tokens (greedy decoding)."""

    class Scripted(TableModel):
        def forward(self, token_ids, *, cache=None, last_token_only=False, **_):
            n_seen = token_ids.shape[1] + (cache.length if cache is not None else 0)
            if cache is not None:
                cache.advance(token_ids.shape[1])
            step = n_seen - prompt_length
            logits = torch.zeros(token_ids.shape[0], 1, vocab_size)
            logits[:, :, script[min(step, len(script) - 1)]] = 10.0
            return logits

    return Scripted(torch.zeros(1, vocab_size), context_length=1024)


class ByteTokenizer:
    """Each UTF-8 byte is a token (0..255); 256 is <|endoftext|>. Splits every multi-byte character."""

    name = "bytes"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str, allowed_special=frozenset({"<|endoftext|>"})) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(i for i in ids if i < 256)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def sequence_logprob(model: nn.Module, prompt: list[int], continuation: list[int]) -> float:
    """Total log-probability the model gives ``continuation`` after ``prompt``."""
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).float(), dim=-1)[0]
    return sum(float(logprobs[len(prompt) - 1 + i, tok]) for i, tok in enumerate(continuation))


class MergedTokenizer(ByteTokenizer):
    """A ByteTokenizer with a few multi-byte tokens (ids 257...), so one text has several tokenizations.

    ``encode`` prefers the merged tokens, as BPE does: ``"\\n\\n"`` is one token, though a model may
    emit two ``"\\n"`` tokens instead.
    """

    name = "merged"

    def __init__(self, merges: Sequence[str] = ("\n\n", "yes\n")) -> None:
        self.merges = {257 + i: text.encode("utf-8") for i, text in enumerate(merges)}
        self.vocab_size = 257 + len(self.merges)

    def encode(self, text: str, allowed_special=frozenset({"<|endoftext|>"})) -> list[int]:
        data, ids, i = text.encode("utf-8"), [], 0
        while i < len(data):
            merged = [t for t, piece in self.merges.items() if data.startswith(piece, i)]
            ids.append(merged[0] if merged else data[i])
            i += len(self.merges[merged[0]]) if merged else 1
        return ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.merges.get(i, bytes([i]) if i < 256 else b"") for i in ids)


def interrupt_decoding(monkeypatch, after_tokens: int, *, decode: int = 1) -> None:
    """Ctrl-C inside decoding: the ``decode``-th decoding (each prompt, or sample, makes one) raises
    ``KeyboardInterrupt`` when asked for its token after ``after_tokens`` tokens."""
    from gptsmith.generate.decoding import DecodeState

    real = DecodeState.next_logits
    # Each decoding and the tokens it asked for so far. The states themselves are kept (not their
    # ids): a finished state's id can be reused by the next one, which then counted as the same
    # decoding and was never interrupted (a flaky failure of the second sample's Ctrl-C test).
    decodings: list = []
    steps: list[int] = []

    def next_logits(self):
        index = next((i for i, state in enumerate(decodings) if state is self), None)
        if index is None:
            decodings.append(self)
            steps.append(0)
            index = len(decodings) - 1
        if len(decodings) == decode and steps[index] == after_tokens:
            raise KeyboardInterrupt
        steps[index] += 1
        return real(self)

    monkeypatch.setattr(DecodeState, "next_logits", next_logits)
