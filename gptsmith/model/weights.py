"""Weights in and out of a ``GPTModel``: safetensors files, shape checks, building a model from tensors.

Both our checkpoint format (``checkpoint.py``) and the GPT-2 import (``hf_gpt2.py``) read
weights through here, so a tensor of the wrong shape is named the same way whichever file it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from gptsmith.errors import CheckpointError
from gptsmith.model.gpt import GPTConfig, GPTModel

TIED_KEY = "out_head.weight"  # not stored when the head is tied to tok_emb.weight


def unwrap_model(model: torch.nn.Module) -> GPTModel:
    """The ``GPTModel`` inside a ``torch.compile`` or DistributedDataParallel wrapper (or ``model``)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def load_torch_file(path: str | Path, *, damaged: str, code_fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` (tensors, numbers, strings; no pickled code runs).

    A file that fails is a ``CheckpointError`` naming it: ``damaged`` says what a truncated or corrupt
    one means, and a pickle that would call code (what ``weights_only`` refuses) is said to be
    just that, with ``code_fix`` — never torch's own advice to load it with ``weights_only=False``.
    """
    import pickle
    import re

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc):
            raise CheckpointError(f"cannot read {path}: {str(exc).splitlines()[0]} ({damaged})") from None
        if "global" not in str(exc).lower():  # e.g. "Unsupported operand 103": bytes that are no pickle
            raise CheckpointError(f"cannot read {path}: not a PyTorch file ({damaged})") from None
        called = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it calls {called.group(1)})" if called else ""
        raise CheckpointError(f"{path} holds pickled code{what} that gptsmith will not run "
                              f"({code_fix})") from None
    except Exception as exc:  # truncated zip, not a torch file...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read {path}: {reason} ({damaged})") from None


def _utf8_path(path: Path) -> bool:
    """Whether ``path`` is valid UTF-8 (not holding undecodable bytes as lone surrogates)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU; a truncated or corrupt file is a CheckpointError."""
    from safetensors.torch import load, load_file

    path = Path(path)
    try:
        if not _utf8_path(path):
            # safetensors opens only UTF-8 paths; a folder name with other bytes (written fine by
            # save_model) is read through Python instead, at the cost of one copy in memory.
            return load(path.read_bytes())
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises SafetensorError/OSError/ValueError for bad files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot read {path}: {reason} (the file is truncated or corrupt; save or download it again)"
        ) from None


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header, without reading the tensors.

    Also checks that the file is as long as its header says, so a truncated file is caught here.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if not 0 < header_size <= 100_000_000:
                raise ValueError(f"invalid header length {header_size}")
            header = json.loads(handle.read(header_size))
        tensors = {name: info for name, info in header.items() if name != "__metadata__"}
        data_end = max((int(info["data_offsets"][1]) for info in tensors.values()), default=0)
        needed, size = 8 + header_size + data_end, path.stat().st_size
        if needed > size:
            raise ValueError(f"{size} bytes, but its header describes {needed}")
        return {name: tuple(int(n) for n in info["shape"]) for name, info in tensors.items()}
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"cannot read {path}: {exc} (the file is truncated or corrupt; save or download it again)"
        ) from None


def check_state_shapes(cfg: GPTConfig, shapes: dict[str, tuple[int, ...]], *, source: str) -> None:
    """Raise a ``CheckpointError`` unless ``shapes`` has exactly the tensors ``cfg`` needs (a tied
    head may be left out), each of the right shape; the error names the tensor and both shapes."""
    with torch.device("meta"):
        model = GPTModel(cfg)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if cfg.tie_weights:
        expected.pop(TIED_KEY)
        shapes = {k: v for k, v in shapes.items() if k != TIED_KEY}  # the tie is rebuilt on load
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s), e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(
            f"{source} does not match its config: {'; '.join(parts)} (was it saved by another model?)"
        )
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(shapes[name])} but the config needs "
                f"{shape} (config.json and the weights do not belong together)"
            )


def build_model(
    cfg: GPTConfig,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> GPTModel:
    """A ``GPTModel`` for ``cfg`` holding exactly the tensors in ``state`` (names and shapes checked).

    The model is built on the meta device (no time spent on a random init that would be
    overwritten) and then takes the loaded tensors as its parameters.
    """
    check_state_shapes(cfg, {name: tuple(t.shape) for name, t in state.items()}, source=source)
    with torch.device("meta"):
        model = GPTModel(cfg)
    if cfg.tie_weights:
        state = {k: v for k, v in state.items() if k != TIED_KEY}  # the tie is rebuilt below
    floating = [t.dtype for t in state.values() if t.is_floating_point()]
    target_dtype = dtype or (floating[0] if floating else torch.float32)
    state = {name: t.to(device=device or "cpu", dtype=target_dtype) for name, t in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_weights:
        model.out_head.weight = model.tok_emb.weight  # assign=True replaced tok_emb's Parameter
    model.eval()
    return model


def weights_fingerprint(model: torch.nn.Module, samples: int = 1024) -> str:
    """A short digest of ``model``'s weights: every tensor's name and shape, and up to ``samples`` of
    its values taken evenly through it (as float32, so the device and a bf16 file do not matter).

    What a LoRA adapter records of its base, so that one put on other weights of the same shapes (a
    base retrained or overwritten in its folder) is caught; reading a sample keeps it cheap at any size.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples)][:samples].float().cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
