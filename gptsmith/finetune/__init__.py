"""Stage 5a, a pretrained model -> a model that does one job: classification, following
instructions, and LoRA adapters that both can use.

Lowest first: ``lora`` (adapters), ``instruct_data`` (Alpaca/chat records, the split, batching),
``instruct`` (the instruction-tuning loop, reference loss, test answers), ``judge`` (scores from a
judge model over an OpenAI-compatible endpoint).

May import: ``gptsmith.train``, ``gptsmith.generate``, ``gptsmith.model``, ``gptsmith.data`` and
the top-level helpers; never ``gptsmith.explain``, ``gptsmith.serve`` or ``gptsmith.cli``.
"""
