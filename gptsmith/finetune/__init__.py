"""Stage 5a, a pretrained model -> a model that does one job: classification, following
instructions, and LoRA adapters that both can use.

May import: ``gptsmith.train``, ``gptsmith.generate``, ``gptsmith.model``, ``gptsmith.data`` and
the top-level helpers; never ``gptsmith.explain``, ``gptsmith.serve`` or ``gptsmith.cli``.
"""
