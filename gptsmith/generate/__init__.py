"""Stage 3, next-token logits -> text.

Lowest first (each module imports only those above it in this list):

- ``config``: ``GenerationConfig``, how to decode, checked once;
- ``stopping``: the one owner of when generation stops (eos, token and text stops);
- ``decoding``: picking a token (greedy, temperature, top-k, top-p, repetition penalty), the
  KV-cached decode state, and the CPU decode layout;
- ``beam_search``: beams with length penalty;
- ``streaming``: text as it is produced, never a half character;
- ``generation``: ``generate`` and ``stream_text``, the entry points, and text <-> id helpers;
- ``chat``: prompt templates (Alpaca, ChatML) and multi-turn conversations;
- ``ask``: a question in the model's template, answered (``ask``, ``stream_answer``, ``answer_batch``).

May import: ``gptsmith.model``, ``gptsmith.data`` and the top-level helpers.
"""
