"""Fine-tuning a pretrained GPT to classify texts: ``finetune_classifier``.

The steps, in order: read the data (``class_data``), split it, encode and truncate the texts,
load the base (``base.load_base``), put a head of ``n_classes`` on it (``GPTClassifier``), choose
what trains (``--trainable`` or LoRA), train for ``epochs`` (or ``max_steps``) with
evaluations per epoch or every ``eval_every`` steps, test, and write the output directory
(model + ``metrics.jsonl`` + ``training.png``). The CLI draws its progress from the callbacks.
A base whose outputs are not finite is refused before training; a NaN or infinite training,
validation or test loss, weight or output stops the run before the classifier is saved.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptsmith.config import from_dict
from gptsmith.device import check_seed, set_seed
from gptsmith.errors import ConfigError, DataError
from gptsmith.finetune.base import (
    StepRunner,
    check_base_outputs,
    check_dtype,
    check_finite_loss,
    check_finite_model,
    check_output_dir,
    check_setting,
    load_base,
    parse_trainable,
    set_trainable,
)
from gptsmith.finetune.class_data import (
    LabelledTexts,
    check_classes,
    make_splits,
    parse_split,
    read_labelled,
)
from gptsmith.finetune.class_eval import EvalResult, evaluate, plot_classifier_metrics
from gptsmith.finetune.class_model import (
    EncodedTexts,
    GPTClassifier,
    encode_texts,
    iterate_batches,
    pad_batch,
)
from gptsmith.finetune.classifier import Classifier, classifier_section, head_tensors, save_classifier
from gptsmith.finetune.lora import (
    DEFAULT_TARGETS,
    LoRAConfig,
    apply_lora,
    count_parameters,
    lora_settings,
    merge_lora,
    save_adapter,
)
from gptsmith.model.weights import weights_fingerprint
from gptsmith.storage import atomic_write_text, replacing_directory

METRICS_FILE = "metrics.jsonl"

PLOT_FILE = "training.png"
DEFAULT_TRAINABLE = "last-blocks:1"


@dataclass
class ClassifyConfig:
    """Settings of a classification fine-tune (the CLI flags of ``gptsmith finetune classify``)."""

    text_column: str | int = "text"
    label_column: str | int = "label"
    header: bool = True
    split: str = "70/10/20"
    balance: bool = False
    trainable: str | None = None  # default last-blocks:1, the book's choice (last block, final norm, head)
    lora_rank: int = 0  # > 0: LoRA adapters (and the head) train instead of --trainable
    lora_alpha: float | None = None  # default: 2 x rank
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    save_adapter_only: bool = False
    epochs: int = 5
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    max_length: int | None = None  # default: the model's context length
    eval_every: int = 0  # 0: evaluate after each epoch
    seed: int = 123
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("max_steps", "max_length"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("lora_rank", "eval_every"):
            check_setting(name, getattr(self, name), whole=True)
        check_setting("lr", self.lr, above=True)
        check_setting("weight_decay", self.weight_decay)
        self.dtype = check_dtype(self.dtype)
        check_seed(self.seed)
        self.lora()  # checks the LoRA options
        if self.trainable is not None and self.lora_rank:
            raise ConfigError("--trainable and --lora-rank are alternatives: with LoRA the adapters and the "
                              "new head train (drop one of them)")
        parse_trainable(self.trainable or DEFAULT_TRAINABLE)
        parse_split(self.split)
        if self.save_adapter_only and not self.lora_rank:
            raise ConfigError("--save-adapter-only needs LoRA: add --lora-rank R (e.g. 8)")

    def lora(self) -> LoRAConfig | None:
        """The LoRA settings (alpha 2 × rank unless set), or None without ``lora_rank``."""
        return lora_settings(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)


@dataclass
class ClassifyResult:
    """What ``finetune_classifier`` returns: the classifier, its labels and the measurements."""

    classifier: Classifier
    labels: list[str]
    test: EvalResult | None
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the metrics.jsonl records
    out: Path | None = None


class ClassifyCallbacks:
    """Hooks ``finetune_classifier`` calls (the CLI subclasses it to print and draw a progress bar)."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Before training: notes (skipped, truncated, balanced), sizes, parameters, device, total steps."""

    def on_step(self, info: dict[str, Any]) -> None:
        """After each step: step, epoch, loss, lr."""

    def on_eval(self, info: dict[str, Any]) -> None:
        """After each evaluation: the metrics record (train/val loss and accuracy)."""


def _load_data(data: str | Path | LabelledTexts, config: ClassifyConfig) -> LabelledTexts:
    if isinstance(data, LabelledTexts):
        return data
    return read_labelled(data, text_column=config.text_column, label_column=config.label_column,
                         header=config.header)


def _encode(part: LabelledTexts, classes: list[str], tokenizer, max_length: int, what: str) -> EncodedTexts:
    unknown = sorted(set(part.labels) - set(classes))
    if unknown:
        raise DataError(f"{what} data has label(s) {', '.join(map(repr, unknown[:5]))} that the training "
                        f"data lacks (training classes: {', '.join(map(repr, classes))})")
    index = {label: i for i, label in enumerate(classes)}
    return encode_texts(part.texts, tokenizer, max_length, [index[label] for label in part.labels])


def train_epoch(model: GPTClassifier, runner: StepRunner, data: EncodedTexts, batch_size: int, *,
                seed: int, max_steps: int | None = None,
                on_step: Callable[[int, float, int, int], bool | None] | None = None) -> int:
    """One pass over ``data`` (shuffled, length-bucketed batches); returns the examples trained on.

    ``on_step(step, loss, n_correct, n_examples)`` runs after each step; returning True stops.
    """
    device = runner.device
    seen = 0
    for ids, lengths, labels in iterate_batches(data, batch_size, shuffle=True, seed=seed):
        if max_steps is not None and runner.step >= max_steps:
            break
        ids, lengths, labels = ids.to(device), lengths.to(device), labels.to(device)
        holder: dict[str, torch.Tensor] = {}

        def compute_loss(ids=ids, lengths=lengths, labels=labels, holder=holder) -> torch.Tensor:
            logits = model(ids, lengths).float()  # (batch, n_classes)
            holder["logits"] = logits.detach()
            return F.cross_entropy(logits, labels)

        loss = runner.run(compute_loss)
        seen += len(labels)
        correct = int((holder["logits"].argmax(-1) == labels).sum())
        if on_step is not None and on_step(runner.step, loss, correct, len(labels)):
            break
    return seen


def finetune_classifier(
    data: str | Path | LabelledTexts,
    *,
    checkpoint: str | Path | None = None,
    model: str | Path | None = None,
    out: str | Path | None = None,
    val_data: str | Path | LabelledTexts | None = None,
    test_data: str | Path | LabelledTexts | None = None,
    overwrite: bool = False,
    callbacks: ClassifyCallbacks | None = None,
    **options: Any,
) -> ClassifyResult:
    """Fine-tune the base model (``checkpoint`` dir or ``model`` name) to classify the texts of ``data``.

    ``options`` are ``ClassifyConfig`` fields (``epochs=3``, ``lora_rank=8``, ...). With ``out``
    the classifier is saved there (a model directory, or only the adapter), with
    ``metrics.jsonl`` and ``training.png``. Returns the classifier, its labels, the test result
    and the metrics records.
    """
    config = from_dict(ClassifyConfig, options, source="finetune_classifier options")
    callbacks = callbacks or ClassifyCallbacks()
    out_dir = check_output_dir(out, overwrite=overwrite) if out is not None else None
    set_seed(config.seed)
    full = _load_data(data, config)
    val = _load_data(val_data, config) if val_data is not None else None
    test = _load_data(test_data, config) if test_data is not None else None
    splits = make_splits(full, val=val, test=test, fractions=parse_split(config.split),
                         balance_classes=config.balance, seed=config.seed)
    classes = check_classes(splits.train)
    notes = [f"skipped {n} row(s) with an empty text in {d.source}" for d in (full, val, test)
             if d is not None and (n := d.skipped_empty)] + splits.notes
    lonely = [label for label, n in splits.train.counts().items() if n == 1]
    if lonely:  # allowed (a rare class may be real), but a classifier learns little from one example
        notes.append(f"{len(lonely)} label(s) have a single training text ({', '.join(map(repr, lonely[:5]))}"
                     f"{', ...' if len(lonely) > 5 else ''}): add texts for them, or check --label-column")

    base = load_base(checkpoint, model, device=config.device)
    gpt = base.model
    # the base's weights as the adapter expects them, taken before LoRA wraps any layer
    base_fingerprint = weights_fingerprint(gpt) if config.save_adapter_only else None
    context = gpt.cfg.context_length
    if config.max_length is not None and config.max_length > context:
        raise ConfigError(f"--max-length {config.max_length} is longer than the model's context ({context})")
    max_length = config.max_length or context
    parts = {name: _encode(part, classes, base.tokenizer, max_length, name)
             for name, part in (("train", splits.train), ("validation", splits.val), ("test", splits.test))}
    truncated = sum(p.truncated for p in parts.values())
    if truncated:
        notes.append(f"truncated {truncated} text(s) longer than {max_length} tokens (the model's "
                     f"{'context' if max_length == context else '--max-length'}) to their first {max_length}")

    classifier = GPTClassifier(gpt, len(classes))
    # a batch of training texts (padding taken as text): the base's outputs, and the result's, must be finite
    probe = [(pad_batch(parts["train"].ids[:config.batch_size])[0], None)]
    check_base_outputs(classifier, probe, name=base.name)
    lora_config = config.lora()
    if lora_config:
        apply_lora(classifier, lora_config)
        classifier.head.requires_grad_(True)
    else:
        set_trainable(classifier, gpt, config.trainable or DEFAULT_TRAINABLE, new_parts=[classifier.head])
    steps_per_epoch = math.ceil(len(parts["train"]) / config.batch_size)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    runner = StepRunner(classifier, lr=config.lr, max_steps=total_steps, weight_decay=config.weight_decay,
                        device=next(gpt.parameters()).device, dtype=config.dtype, emb_dim=gpt.cfg.emb_dim)
    callbacks.on_start({
        "notes": notes, "labels": classes, "sizes": {k: len(v) for k, v in parts.items()},
        "counts": splits.train.counts(), "parameters": count_parameters(classifier), "base": base.name,
        "device": str(runner.device), "dtype": runner.dtype_name, "max_steps": total_steps,
        "lora": lora_config.to_dict() if lora_config else None,
    })

    if out_dir is not None and config.save_adapter_only and base.model_dir is not None \
            and out_dir.resolve() == base.model_dir.resolve():
        raise ConfigError(f"--out {out_dir} is the base model's folder, which the adapter needs: "
                          "choose another --out for --save-adapter-only")
    # Data, base and config are good: the run writes into a new folder that replaces --out only once
    # the classifier is saved, so a failed or interrupted run keeps an earlier output (or the base).
    with replacing_directory(out_dir) if out_dir is not None else nullcontext() as write_dir:
        records, test_result = _train(classifier, runner, parts, config, callbacks, total_steps,
                                      write_dir=write_dir)
        check_finite_model(classifier, probe, step=runner.step, lr=config.lr, amp_dtype=runner.autocast_dtype)
        finetune = {"kind": "classify", "base": base.name, "labels": classes, "config": _jsonable(config),
                    "test_accuracy": test_result.accuracy if test_result else None}
        if write_dir is not None:
            if config.save_adapter_only:
                base_ref = str(base.model_dir.resolve()) if base.model_dir is not None else base.name
                section = classifier_section(classifier, classes, max_length)
                save_adapter(classifier, write_dir, base=base_ref, extra_tensors=head_tensors(classifier),
                             extra_config={"classifier": section, "finetune": finetune,
                                           "base_fingerprint": base_fingerprint})
            else:
                save_classifier(classifier, write_dir, labels=classes, max_length=max_length,
                                tokenizer=base.tokenizer, finetune=finetune)
            plot_classifier_metrics(records, write_dir / PLOT_FILE)
    if out_dir is None or config.save_adapter_only:
        merge_lora(classifier)
    result = Classifier(classifier, base.tokenizer, classes, max_length=max_length, dtype=config.dtype)
    return ClassifyResult(result, classes, test_result, records, out_dir)


def _train(classifier: GPTClassifier, runner: StepRunner, parts: dict[str, EncodedTexts],
           config: ClassifyConfig, callbacks: ClassifyCallbacks, total_steps: int, *,
           write_dir: Path | None) -> tuple[list[dict[str, Any]], EvalResult | None]:
    """Train for ``total_steps``, evaluating every ``eval_every`` steps and after each epoch
    (``metrics.jsonl`` in ``write_dir`` rewritten at each), then on the test part; returns the
    metrics records and the test result."""
    records: list[dict[str, Any]] = []
    running = {"loss": 0.0, "correct": 0, "n": 0, "examples": 0}
    started = time.perf_counter()

    def record(rec: dict[str, Any]) -> None:
        records.append(rec)
        if write_dir is not None and rec["kind"] != "train":  # the whole file, atomically, at each evaluation
            atomic_write_text(write_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in records))

    def run_eval(epoch: int) -> None:
        val_result = evaluate(classifier, parts["validation"], autocast=runner.autocast())
        if val_result.n:  # a NaN never reaches metrics.jsonl, and a diverged classifier is never saved
            check_finite_loss("validation loss", val_result.loss, step=runner.step, lr=config.lr)
        n = max(running["n"], 1)
        rec = {"kind": "eval", "step": runner.step, "epoch": epoch, "examples_seen": running["examples"],
               "train_loss": running["loss"] / n, "train_accuracy": running["correct"] / n,
               "val_loss": val_result.loss if val_result.n else None,
               "val_accuracy": val_result.accuracy if val_result.n else None,
               "elapsed_s": round(time.perf_counter() - started, 2)}
        record(rec)
        callbacks.on_eval(rec)
        running.update(loss=0.0, correct=0, n=0)

    def on_step(step: int, loss: float, correct: int, n: int) -> bool:
        running["loss"] += loss * n
        running["correct"] += correct
        running["n"] += n
        running["examples"] += n
        record({"kind": "train", "step": step, "loss": loss, "lr": runner.optimizer.param_groups[0]["lr"]})
        callbacks.on_step({"step": step, "loss": loss, "max_steps": total_steps})
        if config.eval_every and step % config.eval_every == 0:
            run_eval(epoch)
        return False

    epoch = 0
    while runner.step < total_steps:
        epoch += 1
        train_epoch(classifier, runner, parts["train"], config.batch_size, seed=config.seed + epoch,
                    max_steps=total_steps, on_step=on_step)
        if running["n"]:
            run_eval(epoch)
    test_result = None
    if len(parts["test"]):
        test_result = evaluate(classifier, parts["test"], autocast=runner.autocast())
        check_finite_loss("test loss", test_result.loss, step=runner.step, lr=config.lr)
        record({"kind": "test", "step": runner.step, **test_result.to_dict()})
    return records, test_result


def _jsonable(config: ClassifyConfig) -> dict[str, Any]:
    from dataclasses import asdict

    values = asdict(config)
    values["lora_targets"] = list(config.lora_targets)
    return values


__all__ = ["ClassifyCallbacks", "ClassifyConfig", "ClassifyResult", "METRICS_FILE", "finetune_classifier",
           "train_epoch"]
