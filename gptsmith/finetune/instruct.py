"""Instruction fine-tuning: the loop, the loss on reference answers, and answering a test set.

``finetune_instruct(model, tokenizer, train_records, val_records, cfg)`` trains a pretrained
``GPTModel`` to follow instructions (the book's chapter 7): batches padded as ``instruct_data``
says, cross-entropy that ignores the -100 targets, steps by ``finetune.base.StepRunner`` (fused
AdamW at a constant learning rate, bf16 autocast where the device runs it faster, a stop before a
non-finite loss reaches the weights; a base, an evaluation loss or a result that is not finite
stops the run before anything is saved), optional LoRA adapters
(``cfg.lora_rank``: only the adapters train; ``merge_lora`` folds them back before saving). Every
``eval_every`` steps it scores train and validation batches and answers a fixed validation
instruction (``TrainCallbacks.on_eval`` / ``on_sample``).

``response_loss`` is the mean cross-entropy of reference answers given their prompts (the
"test-reference loss", compared before and after fine-tuning); ``answer_records`` generates the
answers a model gives to records' prompts, and whether each ended by itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from gptsmith.data.tokenizer import as_tokenizer
from gptsmith.device import autocast, check_seed, resolve_device, set_seed
from gptsmith.errors import ConfigError, DataError
from gptsmith.finetune.base import (
    StepRunner,
    check_base_outputs,
    check_dtype,
    check_finite_loss,
    check_finite_model,
    check_setting,
)
from gptsmith.finetune.instruct_data import (
    IGNORE_INDEX,
    EncodedExample,
    InstructionRecord,
    as_records,
    batches,
    encode_records,
)
from gptsmith.finetune.lora import DEFAULT_TARGETS, LoRAConfig, apply_lora, lora_settings
from gptsmith.generate.ask import answer_batch
from gptsmith.generate.chat import get_template
from gptsmith.model.gpt import check_gpt_model
from gptsmith.train.callbacks import TrainCallbacks
from gptsmith.train.losses import cross_entropy


@dataclass
class InstructConfig:
    """How to fine-tune (defaults: the book's chapter 7, except the clipping and evaluation cadence)."""

    template: str = "alpaca"
    mask_prompt: bool = False  # loss on the response only (chat records: always)
    epochs: int = 2
    max_steps: int | None = None  # stop after this many optimizer steps even mid-epoch
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0: off
    max_length: int | None = None  # longest example in tokens (default: the model's context)
    seed: int = 123
    device: str = "auto"
    dtype: str = "auto"  # auto (bf16 autocast where faster) | bf16 | fp32
    eval_every: int = 50  # optimizer steps between evaluations (0: only at the end)
    eval_batches: int = 5
    sample_tokens: int = 64  # new tokens of the sample answer at each evaluation
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank instead of every weight
    lora_alpha: float | None = None  # default: 2 x rank (as classification)
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS

    def check(self) -> None:
        """Raise ``ConfigError`` for a value that cannot work, naming it."""
        get_template(self.template)
        for name in ("epochs", "batch_size", "eval_batches"):
            check_setting(name, getattr(self, name), whole=True, minimum=1)
        for name, minimum in (("max_steps", 1), ("max_length", 2)):
            if getattr(self, name) is not None:
                check_setting(name, getattr(self, name), whole=True, minimum=minimum)
        check_setting("lr", self.lr, above=True)
        for name in ("lora_rank", "eval_every", "sample_tokens"):
            check_setting(name, getattr(self, name), whole=True)
        for name in ("weight_decay", "grad_clip"):
            check_setting(name, getattr(self, name))
        self.dtype = check_dtype(self.dtype)
        check_seed(self.seed)
        self.lora()  # checks the LoRA options before any loading

    def lora(self) -> LoRAConfig | None:
        """The LoRA settings (alpha 2 × rank unless set), or None without ``lora_rank``."""
        return lora_settings(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)

    def length_for(self, model: torch.nn.Module) -> int:
        """``max_length``, or the model's context when unset; longer than the context is an error."""
        max_length = self.max_length or model.cfg.context_length
        if max_length > model.cfg.context_length:
            raise ConfigError(f"max_length {max_length} is longer than the model's context of "
                              f"{model.cfg.context_length} tokens (lower it)")
        return max_length


@dataclass
class InstructResult:
    """What ``finetune_instruct`` did."""

    steps: int
    examples_seen: int
    seconds: float
    truncated: int  # training and validation examples cut to max_length
    max_length: int
    amp_dtype: str  # "bf16" or "fp32"
    trainable_parameters: int
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "losses"}


def batch_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not -100 (0 when there are none)."""
    logits = model(inputs)  # (batch, n_tokens, vocab_size)
    total = cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def examples_loss(
    model: torch.nn.Module,
    examples: Sequence[EncodedExample],
    pad_id: int,
    *,
    mask_prompt: bool,
    batch_size: int = 8,
    max_batches: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Token-weighted mean cross-entropy over ``examples`` (the first ``max_batches`` batches), in
    eval mode."""
    device = _model_device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        loader = batches(examples, batch_size, pad_id, mask_prompt=mask_prompt)
        for index, (inputs, targets) in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast(device, amp_dtype):
                logits = model(inputs)  # (batch, n_tokens, vocab_size)
            total += cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if count == 0:
        context_length = getattr(getattr(model, "cfg", None), "context_length", None)
        raise DataError(_no_answer_message(examples, context_length))
    return total / count


def _no_answer_message(examples: Sequence[EncodedExample], context_length: int | None) -> str:
    """Why no example has an answer token to score: each was cut before its answer, by
    ``--max-length`` or, when that is already the model's context, by the context itself."""
    if not examples:
        return "no examples to score (give at least one record)"
    # Only an example cut short loses its closing <|endoftext|> target, so each kept max_length + 1 ids.
    allowed = max(len(e.ids) for e in examples) - 1
    shortest = min(e.prompt_length for e in examples)
    if context_length is None or allowed < context_length:
        limit, fix = "--max-length", "raise --max-length" + (f" (up to the model's context, {context_length})"
                                                            if context_length else "")
    else:
        limit, fix = "the model's context", "shorten the prompts or use a base model with a longer context"
    return (f"no answer tokens to score: every example's prompt is at least {shortest} tokens but "
            f"{limit} allows {allowed}: {fix}")


def response_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[InstructionRecord],
    template: str,
    *,
    max_length: int | None = None,
    batch_size: int = 8,
) -> float:
    """Mean cross-entropy (nats per token) of the records' reference answers (and their closing
    ``<|endoftext|>``) given their prompts: how well ``model`` predicts the answers."""
    max_length = max_length or model.cfg.context_length
    encoded = encode_records(as_records(records, "records"), tokenizer, template, max_length)
    return examples_loss(model, encoded.examples, tokenizer.eot_id, mask_prompt=True, batch_size=batch_size)


def answer_records(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[InstructionRecord],
    template: str,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """The model's greedy answer to each record's prompt: ``{instruction, input, reference,
    answer, new_tokens, stopped}`` (``stopped``: it ended by itself, before ``max_new_tokens``)."""
    chosen = get_template(template)
    records = as_records(records, "records")
    prompts = [chosen.prompt(record.prompt_messages) for record in records]
    answers = answer_batch(model, tokenizer, prompts, chosen, max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    return [
        {"instruction": r.instruction, "input": r.input, "reference": r.reference, "answer": a.text,
         "new_tokens": a.new_tokens, "stopped": a.stopped}
        for r, a in zip(records, answers, strict=True)
    ]


def check_base(
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[InstructionRecord],
    template: str,
    *,
    max_length: int | None = None,
    name: str | None = None,
) -> None:
    """Raise ``NonFiniteError`` when the base ``model`` (called ``name`` in the message) gives NaN or
    infinite outputs on the first records: broken weights, which fine-tuning cannot mend."""
    encoded = encode_records(records[:8], tokenizer, template, max_length or model.cfg.context_length)
    check_base_outputs(model, batches(encoded.examples, 8, tokenizer.eot_id), name=name)


def check_vocabulary(model: torch.nn.Module, tokenizer: Any) -> None:
    """Raise ``DataError`` when ``tokenizer`` makes ids the model has no embedding for."""
    if tokenizer.vocab_size > model.cfg.vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size:,} ids but the model only "
            f"{model.cfg.vocab_size:,}: the data is encoded with another tokenizer than the model's"
        )


def finetune_instruct(
    model: torch.nn.Module,
    tokenizer: Any,
    train_records: Sequence[InstructionRecord],
    val_records: Sequence[InstructionRecord],
    cfg: InstructConfig | None = None,
    *,
    callbacks: TrainCallbacks | None = None,
) -> InstructResult:
    """Fine-tune ``model`` in place on ``train_records``, scoring ``val_records``; returns what
    happened. With ``cfg.lora_rank`` the model comes back with LoRA adapters (``merge_lora`` it)."""
    cfg = cfg or InstructConfig()
    if not isinstance(cfg, InstructConfig):
        raise ConfigError(f"cfg must be an InstructConfig, got {type(cfg).__name__}")
    cfg.check()
    check_gpt_model(model)
    tokenizer = as_tokenizer(tokenizer)
    check_vocabulary(model, tokenizer)
    callbacks = callbacks or TrainCallbacks()
    max_length = cfg.length_for(model)
    train_records = as_records(train_records, "train_records")  # (json.load's dicts are fine too)
    val_records = as_records(val_records, "val_records")
    if not train_records or not val_records:
        raise DataError("fine-tuning needs at least one training and one validation record")
    device = resolve_device(cfg.device)
    set_seed(cfg.seed)
    train_set = encode_records(train_records, tokenizer, cfg.template, max_length)
    val_set = encode_records(val_records, tokenizer, cfg.template, max_length)
    model.to(device)
    check_base(model, tokenizer, train_records, cfg.template, max_length=max_length)
    lora_config = cfg.lora()
    if lora_config:
        apply_lora(model, lora_config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_epoch = math.ceil(len(train_set.examples) / cfg.batch_size)
    total_steps = min(cfg.max_steps or per_epoch * cfg.epochs, per_epoch * cfg.epochs)
    # a constant learning rate, as the book's chapter 7 trains (no warm-up, no decay)
    runner = StepRunner(model, lr=cfg.lr, max_steps=total_steps, device=device, dtype=cfg.dtype,
                        weight_decay=cfg.weight_decay, warmup_steps=0, min_lr=cfg.lr, grad_clip=cfg.grad_clip,
                        emb_dim=model.cfg.emb_dim)
    amp_dtype = runner.autocast_dtype
    result = InstructResult(0, 0, 0.0, train_set.truncated + val_set.truncated, max_length,
                            "bf16" if amp_dtype else "fp32", trainable)
    callbacks.on_start({
        "start_step": 0, "max_steps": total_steps, "device": str(device), "dtype": result.amp_dtype,
        "parameters": sum(p.numel() for p in model.parameters()), "trainable": trainable,
        "train_examples": len(train_set.examples), "val_examples": len(val_set.examples),
        "truncated": result.truncated, "max_length": max_length, "steps_per_epoch": per_epoch,
        "context_length": model.cfg.context_length,
    })
    pad_id = tokenizer.eot_id
    sample_record = val_records[0]
    started = time.perf_counter()

    def evaluate() -> None:
        scores = {
            name: examples_loss(model, data.examples, pad_id, mask_prompt=cfg.mask_prompt,
                                batch_size=cfg.batch_size, max_batches=cfg.eval_batches, amp_dtype=amp_dtype)
            for name, data in (("train_loss", train_set), ("val_loss", val_set))
        }
        for name, what in (("val_loss", "validation loss"), ("train_loss", "training loss")):
            check_finite_loss(what, scores[name], step=result.steps, lr=cfg.lr)  # never a NaN model saved
        info = {"step": result.steps, "examples_seen": result.examples_seen, **scores}
        result.evals.append(info)
        callbacks.on_eval(info)
        if cfg.sample_tokens:
            answer = answer_records(model, tokenizer, [sample_record], cfg.template,
                                    max_new_tokens=cfg.sample_tokens)[0]
            callbacks.on_sample(result.steps, answer["answer"])

    model.train()
    evaluate()
    for epoch in range(cfg.epochs):
        epoch_batches = batches(train_set.examples, cfg.batch_size, pad_id, mask_prompt=cfg.mask_prompt,
                                shuffle=True, seed=cfg.seed + epoch)
        for inputs, targets in epoch_batches:
            if result.steps >= total_steps:
                break
            step_start = time.perf_counter()
            inputs, targets = inputs.to(device), targets.to(device)
            value = runner.run(lambda: batch_loss(model, inputs, targets))  # noqa: B023 (called at once)
            result.steps += 1
            result.examples_seen += inputs.shape[0]
            result.losses.append(value)
            seconds = time.perf_counter() - step_start
            callbacks.on_step({"step": result.steps, "epoch": epoch + 1, "loss": value,
                               "examples_per_s": inputs.shape[0] / seconds, "tokens": inputs.numel()})
            if cfg.eval_every and result.steps % cfg.eval_every == 0 and result.steps < total_steps:
                evaluate()
    evaluate()
    probe = batches(train_set.examples[: cfg.batch_size], cfg.batch_size, pad_id)
    check_finite_model(model, probe, step=result.steps, lr=cfg.lr, amp_dtype=amp_dtype)
    result.seconds = time.perf_counter() - started
    model.eval()
    return result
