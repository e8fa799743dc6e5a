"""gptsmith: build GPT-2-class language models from scratch in PyTorch.

The package follows the data's path, one subpackage per stage (see ARCHITECTURE.md):
``data`` (text -> ids -> windows), ``model`` (ids -> logits; checkpoints, GPT-2 weights),
``generate`` (logits -> text), ``train`` (pretraining), ``finetune``, ``explain`` and ``serve``,
and ``cli`` (the ``gptsmith`` command).

The names a user needs most are here::

    from gptsmith import GPTConfig, GPTModel, get_tokenizer, load_model, generate

They are imported on first use, so ``import gptsmith`` (and ``gptsmith --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from gptsmith.errors import GptsmithError
from gptsmith.version import __version__

# public name -> the module that defines it
_API = {
    "GPTConfig": "gptsmith.model.gpt",
    "GPTModel": "gptsmith.model.gpt",
    "get_tokenizer": "gptsmith.data.tokenizer",
    "load_model": "gptsmith.model.checkpoint",
    "save_model": "gptsmith.model.checkpoint",
    "use_int8_decoding": "gptsmith.model.fast_linear",
    "GenerationConfig": "gptsmith.generate.config",
    "generate": "gptsmith.generate.generation",
    "stream_text": "gptsmith.generate.generation",
    "text_to_token_ids": "gptsmith.generate.generation",
    "token_ids_to_text": "gptsmith.generate.generation",
    "ask": "gptsmith.generate.ask",
    "TrainConfig": "gptsmith.train.config",
    "train": "gptsmith.train.run",
    "prepare_splits": "gptsmith.train.run",
    "finetune_classifier": "gptsmith.finetune.classify",
    "Classifier": "gptsmith.finetune.classifier",
    "finetune_instruct": "gptsmith.finetune.instruct",
}

__all__ = [*_API, "GptsmithError", "__version__"]

# ``generate`` and ``train`` name both a stage (a subpackage) and the function a user calls most.
# Python binds a subpackage to its parent's namespace only when the subpackage is first imported,
# so import the two (light, docstring-only) packages now and drop those bindings: from then on
# ``gptsmith.generate`` and ``gptsmith.train`` are the functions (see ``__getattr__``), while
# ``from gptsmith.generate.generation import ...`` / ``from gptsmith.train import trainer`` still work.
importlib.import_module("gptsmith.generate")
importlib.import_module("gptsmith.train")
del globals()["generate"], globals()["train"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'gptsmith' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
