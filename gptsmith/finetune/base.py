"""What every kind of fine-tuning shares: the base model, the trainable part, the step, the output.

- ``load_base``: the pretrained model and its tokenizer from ``--checkpoint DIR`` (our model or
  run directory, checked to be one) or ``--model NAME_OR_DIR`` (anything ``load_model`` takes).
- ``parse_trainable`` / ``set_trainable``: which parameters train — ``head`` (only the new
  parts), ``last-blocks:N`` (the last N transformer blocks, the final norm and the new parts;
  ``last-blocks:1`` is what the book does), or ``all``.
- ``StepRunner``: one optimizer step — autocast forward (bf16 where ``resolve_autocast_dtype``
  says it is faster), backward, gradient clipping, fused AdamW over the trainable parameters
  (``build_optimizer``), learning rate by ``lr_at_step`` (warm-up, then cosine to lr/10, or
  constant), and a stop before the update when the loss is not finite.
- ``check_base_outputs`` / ``check_finite_loss`` / ``check_finite_model``: a base whose outputs are
  NaN or infinite is refused before training, and a run whose evaluation loss, weights or
  outputs stop being finite stops before anything is saved (never a NaN in a file).
- ``check_output_dir`` / ``save_finetuned``: the output is a model
  directory (``save_model``) with a ``finetune`` section in config.json; checked (a file in the
  way, a folder that cannot be written) before anything is loaded, so no work is lost at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gptsmith.config import check_number
from gptsmith.data.tokenizer import Tokenizer
from gptsmith.device import autocast, parse_dtype, resolve_autocast_dtype, resolve_device, tune_cpu_allocator
from gptsmith.errors import CheckpointError, ConfigError, NonFiniteError, StorageError
from gptsmith.finetune.lora import ADAPTER_CONFIG_FILE
from gptsmith.model.checkpoint import (
    load_model,
    load_model_dir,
    load_model_tokenizer,
    read_model_config,
    resolve_model_dir,
    save_model,
)
from gptsmith.model.gpt import GPTModel
from gptsmith.model.run_dir import CONFIG_FILE
from gptsmith.storage import check_can_be_directory, check_writable
from gptsmith.train.evaluation import NonFiniteLossError, outputs_are_finite
from gptsmith.train.schedule import build_optimizer, lr_at_step

TRAINABLE_CHOICES = "head, last-blocks:N or all"


@dataclass
class BaseModel:
    """A loaded pretrained model, its tokenizer, and where it came from."""

    model: GPTModel
    tokenizer: Tokenizer
    name: str  # what the user passed (a path or a hub name), stored with the fine-tuned model
    model_dir: Path | None


def load_base(checkpoint: str | Path | None = None, model: str | Path | None = None, *,
              device: torch.device | str | None = None) -> BaseModel:
    """The base model named by ``checkpoint`` (a model or run directory) or ``model`` (a name or dir).

    Weights are loaded in fp32 (training precision; autocast lowers the matmuls). A
    ``checkpoint`` that is not a model directory is a ``CheckpointError`` saying what it lacks.
    """
    if (checkpoint is None) == (model is None):
        raise ConfigError("give exactly one base model: --checkpoint DIR or --model NAME_OR_DIR")
    # (None is "auto": str(None) was the unknown device 'None')
    device = resolve_device("auto" if device is None else device) if not isinstance(device, torch.device) \
        else device
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        # (resolve_model_dir names the rest: an adapter folder as one, a weights file without config)
        known = (CONFIG_FILE, "latest", "model.safetensors", ADAPTER_CONFIG_FILE)
        if path.exists() and path.is_dir() and not any((path / f).is_file() for f in known):
            raise CheckpointError(f"--checkpoint {path} is not a model directory: it has no {CONFIG_FILE} "
                                  "(pass the folder written by `gptsmith train` or a fine-tune)")
        model_dir = resolve_model_dir(path)
        gpt = load_model_dir(model_dir, device=device, dtype=torch.float32)
        name = str(checkpoint)
    else:
        path = Path(model).expanduser()
        model_dir = resolve_model_dir(path) if path.exists() else None
        gpt = load_model(model, device=device, dtype=torch.float32)
        name = str(model)
    config = read_model_config(model_dir) if model_dir is not None else {"tokenizer": "gpt2"}
    tokenizer = load_model_tokenizer(config, model_dir, gpt.cfg.vocab_size, name)
    return BaseModel(gpt, tokenizer, name, model_dir)


def parse_trainable(spec: str) -> int | None:
    """``head`` -> 0 blocks, ``last-blocks:N`` -> N, ``all`` -> None (everything)."""
    spec = spec.strip().lower()
    if spec == "all":
        return None
    if spec == "head":
        return 0
    prefix, _, number = spec.partition(":")
    if prefix == "last-blocks" and number.isdigit() and int(number) >= 1:
        return int(number)
    raise ConfigError(f"--trainable must be {TRAINABLE_CHOICES}, got {spec!r}")


def set_trainable(model: nn.Module, gpt: GPTModel, spec: str, new_parts: Sequence[nn.Module] = ()) -> None:
    """Freeze ``model`` and unfreeze what ``spec`` names (see ``parse_trainable``) plus ``new_parts``.

    ``last-blocks:N`` with N above the model's depth is an error naming the depth.
    """
    n_blocks = parse_trainable(spec)
    if n_blocks is None:
        model.requires_grad_(True)
        return
    if n_blocks > len(gpt.trf_blocks):
        raise ConfigError(f"--trainable {spec}: the model has only {len(gpt.trf_blocks)} blocks")
    model.requires_grad_(False)
    if n_blocks:
        for block in gpt.trf_blocks[-n_blocks:]:
            block.requires_grad_(True)
        gpt.final_norm.requires_grad_(True)
    for part in new_parts:
        part.requires_grad_(True)


FINETUNE_DTYPES = ("auto", "bf16", "fp32")


def check_setting(name: str, value: object, *, whole: bool = False, minimum: float = 0,
                  above: bool = False) -> None:
    """``config.check_number`` for a fine-tuning setting, named as its flag (``--weight-decay``)."""
    check_number("--" + name.replace("_", "-"), value, whole=whole, minimum=minimum, above=above)


def check_dtype(dtype: object) -> str:
    """The fine-tuning dtype's one name (auto, bf16, fp32), or a ``ConfigError``."""
    if isinstance(dtype, torch.dtype):  # torch.bfloat16 as well as "bf16"
        dtype = str(dtype).removeprefix("torch.")
    try:
        return parse_dtype(str(dtype), FINETUNE_DTYPES)
    except ConfigError as exc:
        raise ConfigError(f"--dtype: {exc}") from None


class StepRunner:
    """Runs optimizer steps: autocast forward, backward, clip, fused AdamW, scheduled learning rate."""

    def __init__(self, model: nn.Module, *, lr: float, max_steps: int, device: torch.device,
                 dtype: str = "auto", weight_decay: float = 0.1, warmup_steps: int | None = None,
                 min_lr: float | None = None, grad_clip: float = 1.0, emb_dim: int | None = None) -> None:
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError("nothing to train: every parameter is frozen")
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"--lr must be a positive number, got {lr!r}")
        self.model = model
        self.device = device
        if device.type == "cpu":
            tune_cpu_allocator()  # gradients and activations are reused each step, not re-mmapped
        self.autocast_dtype = resolve_autocast_dtype(dtype, device, emb_dim)
        self.optimizer = build_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
        self.peak_lr = lr
        self.min_lr = lr / 10 if min_lr is None else min_lr  # min_lr=lr: a constant learning rate
        self.max_steps = max(1, max_steps)
        self.warmup_steps = min(self.max_steps // 10, 50) if warmup_steps is None else warmup_steps
        self.grad_clip = grad_clip
        self.step = 0
        self.started = time.perf_counter()

    @property
    def dtype_name(self) -> str:
        return "bf16 autocast" if self.autocast_dtype == torch.bfloat16 else "fp32"

    def autocast(self):
        """The autocast context of this run (also for evaluation)."""
        return autocast(self.device, self.autocast_dtype)

    def run(self, compute_loss: Callable[[], torch.Tensor]) -> float:
        """One step on the loss ``compute_loss`` returns (called under autocast); the loss value.

        Raises ``NonFiniteLossError`` before updating the weights when the loss is NaN or infinite,
        so a diverged run never saves broken weights.
        """
        lr = lr_at_step(self.step, peak_lr=self.peak_lr, min_lr=self.min_lr,
                        warmup_steps=self.warmup_steps, max_steps=self.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with self.autocast():
            loss = compute_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"the training loss became {value} at step {self.step + 1} "
                                     f"(lower --lr, now {self.peak_lr:g})")
        if self.grad_clip > 0:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizer.step()
        self.step += 1
        return value


def check_base_outputs(model: nn.Module, batches, *, name: str | None = None) -> None:
    """Raise ``NonFiniteError`` when ``model``'s outputs on the first of ``batches`` ((inputs, _)
    pairs) are NaN or infinite: a broken base, which no learning rate can fix. Checked before
    training, in eval mode, drawing no random numbers."""
    if not outputs_are_finite(model, batches):
        named = f" {name}" if name else ""
        raise NonFiniteError(f"the base model{named} gives non-finite outputs (nan or inf): its weights are "
                             "broken, e.g. a checkpoint of a run that diverged (fine-tune an earlier "
                             "checkpoint or another model)")


def check_finite_loss(what: str, value: float, *, step: int, lr: float) -> None:
    """Raise ``NonFiniteLossError`` when an evaluation loss (``what``, e.g. "validation loss") is NaN
    or infinite: the update of ``step`` broke the weights, so the run stops before saving them."""
    if math.isfinite(value):
        return
    if step == 0:
        raise NonFiniteLossError(f"the {what} of the base model is {value} before any training: its weights "
                                 "are broken (fine-tune an earlier checkpoint or another model)")
    raise NonFiniteLossError(f"the {what} became {value} after step {step}; stopped before saving "
                             f"(lower --lr, now {lr:g})")


def check_finite_model(model: nn.Module, batches, *, step: int, lr: float,
                       amp_dtype: torch.dtype | None = None) -> None:
    """Raise ``NonFiniteLossError`` when a weight of ``model``, or its output on the first of
    ``batches`` ((inputs, _) pairs), is NaN or infinite: checked before a fine-tuned model is saved
    or returned (finite weights may still overflow into NaN outputs)."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        what = "a weight"
    elif not outputs_are_finite(model, batches, amp_dtype=amp_dtype):
        what = "the model's output"
    else:
        return
    raise NonFiniteLossError(f"{what} became non-finite (nan or inf) after step {step}; stopped before "
                             f"saving (lower --lr, now {lr:g})")


# What any fine-tune writes (classification, LoRA adapter, instructions): with --overwrite, one
# fine-tune's output folder may be replaced by another kind's.
FINETUNE_FILES = (CONFIG_FILE, "model.safetensors", "metrics.jsonl", "adapter_config.json",
                  "adapter.safetensors", "classifier.safetensors", "training.png", "vocab.json",
                  "test_responses.json")


def check_output_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """``out`` must be a new or empty folder, or (with ``overwrite``) an earlier fine-tune's output:
    a folder holding only ``FINETUNE_FILES`` (the names any fine-tune writes).

    Checked before training, so a bad ``--out`` (a file in the way, a folder that cannot be written,
    other files) fails in a second, not after the run. Nothing is created or deleted here: a
    fine-tune writes into ``storage.replacing_directory(out)``, which takes the earlier output's
    place only once the new one is complete.
    """
    out = Path(out).expanduser()
    check_can_be_directory(out, "--out")
    check_writable(out, "--out")
    if out.is_dir() and any(out.iterdir()):
        ours = all(child.name in FINETUNE_FILES for child in out.iterdir())
        if not overwrite:
            hint = "pass --overwrite to replace it" if ours else "choose a new or empty folder"
            raise StorageError(f"--out {out} is not empty ({hint})")
        if not ours:
            raise StorageError(f"--out {out} holds files a fine-tune did not write; choose a new or empty "
                               "folder (--overwrite only replaces an earlier fine-tune's output)")
    return out


def save_finetuned(model: GPTModel, out: str | Path, tokenizer: Tokenizer, finetune: dict,
                   extra: dict | None = None) -> Path:
    """Save a fine-tuned ``GPTModel`` as a model directory with ``finetune`` info (what, from which
    base, with which settings) and the ``extra`` keys in config.json."""
    return save_model(model, out, tokenizer=tokenizer, extra={"finetune": finetune, **(extra or {})})
