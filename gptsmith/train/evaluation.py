"""Loss and evaluation: next-token cross-entropy over a batch or a loader, perplexity, and the
sample continuation a run prints at its evaluations."""

from __future__ import annotations

import math
from typing import Any

import torch

from gptsmith.device import autocast
from gptsmith.errors import DataError, NonFiniteError
from gptsmith.train.losses import cross_entropy


def calc_loss_batch(
    input_batch: torch.Tensor,
    target_batch: torch.Tensor,
    model: torch.nn.Module,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of one batch (scalar tensor; its exp is the perplexity).

    ``input_batch`` and ``target_batch`` are (batch, n_tokens) token ids; the targets are the
    inputs shifted left by one. The logits (batch, n_tokens, vocab) are flattened to
    (batch·n_tokens, vocab) so every position is one classification over the vocabulary.
    """
    if device is not None:
        input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (batch, n_tokens, vocab_size)
    return cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(
    loader,
    model: torch.nn.Module,
    device: torch.device | str | None = None,
    num_batches: int | None = None,
) -> float:
    """Average ``calc_loss_batch`` over the first ``num_batches`` batches of ``loader`` (all if None).

    Call it in eval mode under ``torch.no_grad()`` (``evaluate`` does both).
    """
    total, count = 0.0, 0
    for i, (input_batch, target_batch) in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
        count += 1
    if count == 0:
        raise DataError("the data loader yielded no batches (the split is shorter than one batch)")
    return total / count


def evaluate(
    model: torch.nn.Module,
    train_loader,
    val_loader,
    eval_iter: int | None = None,
    *,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """(train loss, val loss) over ``eval_iter`` batches each, in eval mode under ``no_grad``.

    Eval mode turns dropout off, so the numbers measure the model rather than the noise; the
    model is put back in training mode afterwards if it was in it.
    """
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    try:
        with torch.no_grad(), autocast(dev, amp_dtype):
            train_loss = calc_loss_loader(train_loader, model, device, eval_iter)
            val_loss = calc_loss_loader(val_loader, model, device, eval_iter)
    finally:
        model.train(was_training)
    return train_loss, val_loss


def outputs_are_finite(model: torch.nn.Module, batches, *, device: torch.device | str | None = None,
                       amp_dtype: torch.dtype | None = None) -> bool:
    """Whether the logits of the first batch of ``batches`` are all finite (eval mode, no dropout,
    no RNG drawn): weights can be finite and still give NaN, and such a model must not be saved."""
    was_training = model.training
    model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    try:
        inputs, _ = next(iter(batches))
        with torch.no_grad(), autocast(dev, amp_dtype):
            return bool(torch.isfinite(model(inputs.to(dev))).all())
    finally:
        model.train(was_training)


def sample_text(model: torch.nn.Module, tokenizer: Any, cfg: Any, *, step: int, context_length: int,
                device: torch.device) -> str:
    """The sample continuation of ``cfg.sample_prompt`` at ``step`` (``cfg``: a ``TrainConfig``), in
    eval mode, with a private seed: sampling must not move the global RNG, or a resumed run would
    differ. It ends at <|endoftext|>, as ``gptsmith generate`` does (the tokenizer names it)."""
    from gptsmith.generate.generation import generate

    ids = tokenizer.encode(cfg.sample_prompt)[-context_length:] or [tokenizer.eot_id]
    prompt = torch.tensor([ids], device=device)
    max_new = max(0, min(cfg.sample_tokens, model.cfg.context_length - prompt.shape[1]))
    was_training = model.training
    model.eval()
    try:
        out = generate(model, prompt, max_new, temperature=cfg.sample_temperature, top_k=cfg.sample_top_k,
                       seed=cfg.seed + step, tokenizer=tokenizer)
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0].tolist())


def perplexity(loss: float) -> float:
    """exp(loss): the effective number of tokens the model hesitates between (inf on overflow)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite; training stopped before the bad update."""
