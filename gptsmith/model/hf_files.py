"""The weight files of a Hugging Face GPT-2 directory: one ``model.safetensors``, its shards and
their index (``model.safetensors.index.json``, what ``save_pretrained`` writes for a model over its
shard size, e.g. gpt2-xl), or the older ``pytorch_model.bin`` and its shards, read with
``torch.load(weights_only=True)`` (no pickle code run). Names map to ``GPTModel``'s in ``hf_gpt2``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gptsmith.errors import CheckpointError
from gptsmith.model.weights import load_torch_file, read_safetensors, safetensors_shapes

HF_SAFETENSORS = "model.safetensors"
HF_PYTORCH_BIN = "pytorch_model.bin"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"  # sharded weights: which file holds each tensor
HF_PYTORCH_INDEX = "pytorch_model.bin.index.json"  # the same for pytorch_model-0000i-of-0000n.bin shards


def read_hf_state(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a HF directory: model.safetensors, or the shards its index names (what
    ``save_pretrained`` writes for a model over its shard size, e.g. gpt2-xl), else
    pytorch_model.bin or the .bin shards its index names (no pickle code run)."""
    if (model_dir / HF_SAFETENSORS).is_file():
        return read_safetensors(model_dir / HF_SAFETENSORS)
    state: dict[str, torch.Tensor] = {}
    if shards := safetensors_shards(model_dir):
        for shard in shards:
            state.update(read_safetensors(shard))
        return state
    if (model_dir / HF_PYTORCH_BIN).is_file():
        return _read_torch_weights(model_dir / HF_PYTORCH_BIN)
    if bin_shards := _index_shards(model_dir, HF_PYTORCH_INDEX):  # save_pretrained(safe_serialization=False)
        for shard, names in bin_shards.items():
            tensors = _read_torch_weights(shard)
            _check_shard(shard, names, tensors, HF_PYTORCH_INDEX)
            state.update(tensors)
        return state
    for pattern, index in (("model-*-of-*.safetensors", HF_SAFETENSORS_INDEX),
                           ("pytorch_model-*-of-*.bin", HF_PYTORCH_INDEX)):
        if list(model_dir.glob(pattern)):
            raise CheckpointError(f"{model_dir} has sharded weights but no {index} naming them "
                                  "(copy it from where the shards came from)")
    raise CheckpointError(f"{model_dir} has config.json but neither {HF_SAFETENSORS} nor {HF_PYTORCH_BIN}")


def _read_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin or one of its shards, read with ``torch.load(weights_only=True)``."""
    state = load_torch_file(
        path, damaged="the file is truncated, corrupt or not a plain state dict",
        code_fix=f"get the weights as {HF_SAFETENSORS} instead, e.g. from the model's hub page, "
        "or convert the file on a machine where you trust its source")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    other = next((name for name, value in state.items() if not isinstance(value, torch.Tensor)), None)
    if other is not None:  # e.g. a training checkpoint, {"model": {...}, "step": 3}: not a tensor's shape
        nested = isinstance(state[other], dict)
        hint = " (a training checkpoint? save the model's state_dict() alone)" if nested else ""
        raise CheckpointError(f"{path} is not a state dict of tensors: {other!r} holds a "
                              f"{type(state[other]).__name__}{hint}")
    return state


def _index_shards(model_dir: Path, index_name: str) -> dict[Path, list[str]]:
    """The shard files that ``model_dir/index_name`` (``{"weight_map": {tensor: file}}``) names, in
    order, each with the tensors it places there; {} without an index. A missing shard is named."""
    index_path = model_dir / index_name
    if not index_path.is_file():
        return {}
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{index_path} is not a shard index (JSON with a \"weight_map\" of "
                              "tensor names to files); copy it again with its shards") from None
    files: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file:
            raise CheckpointError(f"{index_path} names {file!r} for {name}: not a file name in that folder")
        files.setdefault(file, []).append(name)
    for file in files:
        if not (model_dir / file).is_file():
            raise CheckpointError(f"{model_dir} lacks {file}, a shard its {index_name} names "
                                  "(copy every shard of the model)")
    return {model_dir / file: files[file] for file in sorted(files)}


def _check_shard(path: Path, names: list[str], found: dict, index_name: str) -> None:
    """Each tensor the index places in shard ``path`` must be among ``found`` (its tensors or shapes)."""
    missing = sorted(set(names) - set(found))
    if missing:
        raise CheckpointError(f"{path} lacks {missing[0]}, which {index_name} places there "
                              "(the shards and the index come from different saves: copy them again)")


def safetensors_shards(model_dir: Path) -> dict[Path, dict[str, tuple[int, ...]]]:
    """The shards ``model.safetensors.index.json`` names, each with its header's tensor shapes ({}
    without an index); a shard missing, truncated or from another save is named (from the headers)."""
    shards = {}
    for path, names in _index_shards(model_dir, HF_SAFETENSORS_INDEX).items():
        shards[path] = safetensors_shapes(path)
        _check_shard(path, names, shards[path], HF_SAFETENSORS_INDEX)
    return shards
