"""Stage 5b, a model -> answers over HTTP: an OpenAI-compatible API with continuous batching, and
a web playground.

May import: ``gptsmith.train``, ``gptsmith.generate``, ``gptsmith.model``, ``gptsmith.data`` and
the top-level helpers; never ``gptsmith.finetune``, ``gptsmith.explain`` or ``gptsmith.cli``.
"""
