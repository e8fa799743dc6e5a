"""gptsmith: build GPT-2-class language models from scratch in PyTorch.

The package follows the data's path: ``tokenizer`` (text -> ids), ``data`` (ids -> batches),
``attention`` and ``model`` (batches -> logits), ``weights`` (checkpoints, GPT-2 import/export),
``generate`` (logits -> text), ``train`` (pretraining), and ``cli`` (the ``gptsmith`` command).
"""

from gptsmith.errors import GptsmithError

__version__ = "0.1.0"
__all__ = ["GptsmithError", "__version__"]
