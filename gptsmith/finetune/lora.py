"""LoRA: low-rank adapters on a model's linear layers (Hu et al. 2021), base weights frozen.

A wrapped layer computes ``base(x) + (alpha / rank) · B(A(dropout(x)))`` where ``A`` is
(rank, in_features) and ``B`` is (out_features, rank). ``B`` starts at zero, so a freshly
wrapped model gives exactly the base model's outputs; only ``A`` and ``B`` are trained.

Public API (stable; the fine-tuning commands build on it)::

    LoRAConfig(rank=8, alpha=None, dropout=0.0, targets=DEFAULT_TARGETS)   # alpha None: 2 x rank
    lora_settings(rank, alpha=None, dropout=0.0, targets=DEFAULT_TARGETS) -> LoRAConfig | None
                                                         # the fine-tunes' options: alpha 2 x rank, 0 = off
    LoRALinear(base: nn.Linear, rank, alpha, dropout)    # .merged() -> plain nn.Linear
    apply_lora(model, config) -> list[str]               # wrap matching Linears in place, freeze the rest
    count_parameters(model) -> ParameterCount            # .trainable, .total, str() for printing
    merge_lora(model) -> model                           # fold B·A into the weights, in place: a plain model
    lora_state_dict(model) -> dict[str, Tensor]          # only the adapters' A and B tensors
    save_adapter(model, directory, base=..., extra_tensors=None, extra_config=None) -> Path
    read_adapter(directory) -> (config dict, tensors)    # what save_adapter wrote
    load_adapter(model, directory) -> dict               # apply_lora with the saved config + load A, B
    is_adapter_dir(path) -> bool

Targets are name patterns matched against the dotted names of ``nn.Linear`` modules: a pattern
matches a name equal to it or ending in ``.pattern``, and may use ``fnmatch`` wildcards
(``trf_blocks.11.*``). Two group names expand to ``GPTModel``'s projections: ``attention``
(``att.qkv``, ``att.out_proj``) and ``feed-forward`` (``ff.layers.0``, ``ff.layers.2``); the
default is both. A merged model is a plain ``GPTModel`` that ``save_model`` writes and every
command loads. An adapter directory holds ``adapter_config.json`` + ``adapter.safetensors``
and names the base model it goes on top of.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gptsmith.errors import CheckpointError, ConfigError
from gptsmith.storage import atomic_save_safetensors, atomic_write_json

TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("att.qkv", "att.out_proj"),
    "feed-forward": ("ff.layers.0", "ff.layers.2"),
}
DEFAULT_TARGETS: tuple[str, ...] = ("attention", "feed-forward")
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter.safetensors"
ADAPTER_FORMAT = "gptsmith-lora"


@dataclass(frozen=True)
class LoRAConfig:
    """Rank, scaling (``alpha / rank``), dropout on the adapter's input, and which layers to wrap."""

    rank: int = 8
    alpha: float | None = None  # None: 2 x rank
    dropout: float = 0.0
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r} (try 8)")
        if self.alpha is None:
            object.__setattr__(self, "alpha", 2.0 * self.rank)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) \
                or not (0 < self.alpha < math.inf):
            raise ConfigError(f"LoRA alpha must be a positive number, got {self.alpha!r} (try 2 x rank)")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"LoRA targets must be non-empty layer-name patterns, got {self.targets!r}")
        object.__setattr__(self, "targets", targets)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "targets": list(self.targets)}


def lora_settings(
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Sequence[str] | str = DEFAULT_TARGETS,
) -> LoRAConfig | None:
    """The fine-tuning options ``lora_rank``/``lora_alpha``/``lora_dropout``/``lora_targets`` as a
    ``LoRAConfig``, or None for rank 0 (no LoRA). Both fine-tunes take them the same way: ``alpha``
    defaults to 2 × rank, and setting the others without a rank is an error rather than ignored."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if rank == 0 and not isinstance(rank, bool):
        options = (("--lora-alpha", alpha, None), ("--lora-dropout", dropout, 0.0),
                   ("--lora-targets", targets, DEFAULT_TARGETS))
        asked = [flag for flag, value, default in options if value != default]
        if asked:
            raise ConfigError(" and ".join(asked) + " only apply with LoRA: add --lora-rank R (e.g. 8)")
        return None
    return LoRAConfig(rank=rank, alpha=alpha, dropout=dropout, targets=targets)


class LoRALinear(nn.Module):
    """``base(x) + scaling · B(A(dropout(x)))`` with ``base`` frozen; ``B`` starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        base.requires_grad_(False)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.t()  # (..., rank)
        update = update @ self.lora_B.t()  # (..., out_features)
        return self.base(x) + self.scaling * update

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to the base weight: scaling · B @ A, (out_features, in_features)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def merged(self) -> nn.Linear:
        """A plain linear layer of the base's own class (``FastLinear`` in a ``GPTModel``) computing the
        same function (weight + scaling · B @ A), frozen."""
        base = self.base
        merged = type(base)(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            delta = self.delta_weight().to(torch.float32)
            merged.weight.copy_((base.weight.to(torch.float32) + delta).to(base.weight.dtype))
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        if getattr(base, "pad_outputs", False):
            merged.pad_outputs = True
        return merged.requires_grad_(False)


def _expand_targets(targets: Sequence[str]) -> list[str]:
    patterns: list[str] = []
    for target in targets:
        patterns.extend(TARGET_GROUPS.get(target, (target,)))
    return patterns


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def find_targets(model: nn.Module, targets: Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """Dotted names of the ``nn.Linear`` modules of ``model`` that ``targets`` select.

    Raises ``ConfigError`` naming the model's linear layers when a pattern matches none of them.
    """
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in linear_names if any(_matches(n, p) for p in _expand_targets([target]))]
        if not hits:
            examples = sorted({n.split(".", 2)[-1] if n.startswith("trf_blocks.") else n
                               for n in linear_names})
            raise ConfigError(
                f"LoRA target {target!r} matches no linear layer; choose from the groups "
                f"{', '.join(TARGET_GROUPS)} or layer names such as {', '.join(examples)}"
            )
        chosen.extend(n for n in hits if n not in chosen)
    return [n for n in linear_names if n in chosen]  # model order


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _tied_to_another(model: nn.Module, linear: nn.Linear) -> bool:
    """Whether ``linear.weight`` is also held by another module (e.g. a head tied to the embedding)."""
    holders = [m for m in model.modules() for p in m.parameters(recurse=False) if p is linear.weight]
    return len(holders) > 1


def apply_lora(model: nn.Module, config: LoRAConfig | None = None) -> list[str]:
    """Wrap the target ``nn.Linear`` layers of ``model`` in ``LoRALinear``, in place.

    Every parameter of ``model`` is frozen except the new adapters (unfreeze e.g. a new head
    afterwards with ``requires_grad_(True)``). Returns the names of the wrapped layers. A layer
    whose weight is shared with another module (GPT-2's tied output head) cannot be wrapped:
    merging would change the embedding too.
    """
    config = config or LoRAConfig()
    if not isinstance(config, LoRAConfig):
        raise ConfigError(f"apply_lora takes a LoRAConfig (e.g. LoRAConfig(rank=8)), "
                          f"got {type(config).__name__}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ConfigError("the model already has LoRA adapters (merge them with merge_lora first)")
    names = find_targets(model, config.targets)
    for name in names:
        linear = model.get_submodule(name)
        if _tied_to_another(model, linear):
            raise ConfigError(
                f"LoRA target {name!r} shares its weight with another layer (a tied output head); "
                "leave it out of the targets"
            )
        width = min(linear.in_features, linear.out_features)
        if config.rank > width:  # a rank past the layer's width adds parameters, not expressiveness
            raise ConfigError(f"LoRA rank {config.rank} is larger than layer {name!r} "
                              f"({linear.in_features} -> {linear.out_features}): use at most {width} "
                              "(adapters are usually 4-64)")
    model.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        _set_submodule(model, name, LoRALinear(base, config.rank, config.alpha, config.dropout))
    return names


@dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameters of a model (a shared tensor counts once)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({100 * self.fraction:.2f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """How many of ``model``'s parameters will be trained (``requires_grad``) and how many there are."""
    params = list(model.parameters())  # parameters() yields a tied tensor once
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The ``LoRALinear`` modules of ``model`` by dotted name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by a plain ``nn.Linear`` holding weight + scaling · B @ A; in place.

    The result has the original module names (a ``GPTModel`` stays a plain ``GPTModel`` that
    ``save_model`` writes). Merged layers are left frozen; other parameters keep their flags.
    Returns ``model``. Copy it first (``copy.deepcopy``) to keep the adapters.
    """
    for name, layer in lora_layers(model).items():
        _set_submodule(model, name, layer.merged())
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors, keyed as in ``model.state_dict()`` (``...att.qkv.lora_A``)."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def _adapter_config(model: nn.Module) -> dict:
    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA adapters to save (call apply_lora first)")
    first = next(iter(layers.values()))
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    return {"rank": first.rank, "alpha": first.alpha, "dropout": dropout, "targets": list(layers)}


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    *,
    base: str,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_config: dict | None = None,
) -> Path:
    """Write only the adapters (plus ``extra_tensors``, e.g. a new head) to ``directory``.

    ``base`` names the model the adapter goes on top of (a directory or hub name), stored in
    ``adapter_config.json`` with the LoRA settings and the wrapped layer names; ``extra_config``
    keys are added to it. Returns the directory.
    """
    # Everything is checked before anything is written (no adapters, a reserved key, a value
    # JSON cannot hold): a failed save leaves no tensors without their config.
    config = {"format": ADAPTER_FORMAT, "format_version": 1, "base": str(base),
              "lora": _adapter_config(model)}
    for key, value in (extra_config or {}).items():
        if key in config:
            raise ConfigError(f"extra key {key!r} would overwrite a reserved adapter_config.json key")
        config[key] = value
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"save_adapter: extra_config cannot be written as JSON ({exc})") from None
    tensors = {k: v.detach().contiguous() for k, v in lora_state_dict(model).items()}
    for key, value in (extra_tensors or {}).items():
        tensors[key] = value.detach().contiguous()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(tensors, directory / ADAPTER_WEIGHTS_FILE, metadata={"format": "pt"})
    atomic_write_json(directory / ADAPTER_CONFIG_FILE, config)
    return directory


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by ``save_adapter``."""
    return (Path(path) / ADAPTER_CONFIG_FILE).is_file()


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The ``adapter_config.json`` and tensors that ``save_adapter`` wrote to ``directory``."""
    from gptsmith.model.weights import read_safetensors

    directory = Path(directory)
    config_path = directory / ADAPTER_CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{directory} is not a LoRA adapter directory: no {ADAPTER_CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot parse {config_path}: {exc} (the file is corrupt)") from None
    if not isinstance(config, dict) or config.get("format") != ADAPTER_FORMAT or "lora" not in config:
        raise CheckpointError(f"{config_path} is not a gptsmith LoRA adapter config")
    # The one reader of weight files: a missing or damaged file is named, and a folder name that
    # is not UTF-8 (which safetensors cannot open) is read all the same.
    return config, read_safetensors(directory / ADAPTER_WEIGHTS_FILE)


def load_adapter(model: nn.Module, directory: str | Path) -> dict:
    """Put the adapter saved in ``directory`` on ``model`` (its base), in place; returns its config.

    Wraps the same layers with the saved rank/alpha/dropout and loads ``A`` and ``B``. Tensors
    that are not adapters (``extra_tensors`` of ``save_adapter``) are left for the caller, under
    ``config["extra_tensors"]``.
    """
    config, tensors = read_adapter(directory)
    lora = config["lora"]
    names = list(lora["targets"])
    lora_config = LoRAConfig(rank=int(lora["rank"]), alpha=float(lora["alpha"]),
                             dropout=float(lora["dropout"]), targets=tuple(names))
    missing = [n for n in names if n not in dict(model.named_modules())]
    if missing:
        raise CheckpointError(
            f"adapter {directory} wraps layers the model lacks ({', '.join(missing[:3])}); "
            f"is the model its base ({config.get('base')})?"
        )
    # Every tensor is checked against the layer it goes on before any layer is wrapped, so a
    # mismatch leaves the model exactly as it was.
    modules = dict(model.named_modules())
    for name in names:
        layer, rank = modules[name], lora_config.rank
        needed = {"lora_A": (rank, layer.in_features), "lora_B": (layer.out_features, rank)}
        for part, shape in needed.items():
            key = f"{name}.{part}"
            if key not in tensors:
                raise CheckpointError(f"adapter {directory} lacks tensor {key} (the file is incomplete)")
            if tuple(tensors[key].shape) != shape:
                raise CheckpointError(
                    f"adapter tensor {key} has shape {tuple(tensors[key].shape)}, the model needs "
                    f"{shape} (is the model its base ({config.get('base')})?)"
                )
    wrapped = apply_lora(model, lora_config)
    layers = lora_layers(model)
    with torch.no_grad():
        for name in wrapped:
            for part in ("lora_A", "lora_B"):
                getattr(layers[name], part).copy_(tensors[f"{name}.{part}"])
    config["extra_tensors"] = {k: v for k, v in tensors.items() if not k.endswith((".lora_A", ".lora_B"))}
    return config
