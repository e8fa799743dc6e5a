"""Stage 5c, a model and a text -> pictures of each step: tokens, embeddings, attention, next-token
probabilities, random versus trained weights.

May import: ``gptsmith.train``, ``gptsmith.generate``, ``gptsmith.model``, ``gptsmith.data`` and
the top-level helpers; never ``gptsmith.finetune``, ``gptsmith.serve`` or ``gptsmith.cli``.
"""
