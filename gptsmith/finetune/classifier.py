"""A fine-tuned text classifier on disk and in use: ``save_classifier``, ``Classifier.load``, ``predict``.

A classifier directory is a model directory like every checkpoint (``config.json`` +
``model.safetensors``, so ``generate``/``info`` load its language model too) plus
``classifier.safetensors`` (the head: ``head.weight`` (n_classes, emb_dim), ``head.bias``) and a
``classifier`` section in config.json::

    "classifier": {"labels": ["ham", "spam"], "max_length": 128, "pooling": "last-token",
                   "head": {"file": "classifier.safetensors", "in_features": 768, "n_classes": 2}}

With ``--save-adapter-only`` the directory is a LoRA adapter instead (``adapter_config.json``
with the same ``classifier`` section, the base model's path and a fingerprint of its weights
(``weights_fingerprint``), and ``adapter.safetensors`` with the adapters and the head);
``Classifier.load`` puts it on its base, refusing a base whose weights have changed, and merges it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptsmith.config import check_number
from gptsmith.data.tokenizer import Tokenizer
from gptsmith.device import autocast, resolve_autocast_dtype, resolve_device
from gptsmith.errors import CheckpointError, GptsmithError, NonFiniteError
from gptsmith.finetune.base import load_base, save_finetuned
from gptsmith.finetune.class_model import GPTClassifier, encode_texts, iterate_batches
from gptsmith.finetune.lora import ADAPTER_CONFIG_FILE, is_adapter_dir, load_adapter, merge_lora, read_adapter
from gptsmith.model.checkpoint import (
    is_hub_name,
    load_model_dir,
    load_model_tokenizer,
    read_model_config,
    resolve_model_dir,
)
from gptsmith.model.weights import read_safetensors, weights_fingerprint
from gptsmith.storage import as_path, atomic_save_safetensors

HEAD_FILE = "classifier.safetensors"


def classifier_section(model: GPTClassifier, labels: list[str], max_length: int) -> dict:
    """The ``classifier`` section of config.json for ``model``."""
    return {
        "labels": list(labels),
        "max_length": max_length,
        "pooling": "last-token",
        "head": {"file": HEAD_FILE, "in_features": model.head.in_features, "n_classes": model.n_classes},
    }


def head_tensors(model: GPTClassifier) -> dict[str, torch.Tensor]:
    return {f"head.{k}": v.detach().contiguous() for k, v in model.head.state_dict().items()}


def save_classifier(model: GPTClassifier, out: str | Path, *, labels: list[str], max_length: int,
                    tokenizer: Tokenizer, finetune: dict) -> Path:
    """Write a classifier directory (LoRA adapters merged first); config.json is written last."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merge_lora(model)
    atomic_save_safetensors(head_tensors(model), out / HEAD_FILE, metadata={"format": "pt"})
    return save_finetuned(model.gpt, out, tokenizer, finetune,
                          extra={"classifier": classifier_section(model, labels, max_length)})


def head_file(section: dict, model_dir: Path) -> Path:
    """The head file that a classifier's config section names, in ``model_dir``; a name that is not
    a file there is a ``CheckpointError`` (``Classifier.load`` and ``convert`` both need it)."""
    spec = section.get("head")
    name = str(spec.get("file", HEAD_FILE) if isinstance(spec, dict) else HEAD_FILE)
    path = model_dir / name
    if Path(name).name != name or not path.is_file():
        raise CheckpointError(f"{model_dir} has a classifier config but no {name} "
                              "(copy it from where the classifier was saved)")
    return path


def _check_labels(section: object, source: Path, n_classes: int | None = None) -> list[str]:
    labels = section.get("labels") if isinstance(section, dict) else None
    if not isinstance(labels, list) or len(labels) < 2 \
            or (n_classes is not None and len(labels) != n_classes):
        raise CheckpointError(f"{source}: the classifier section has no valid \"labels\" list "
                              f"(expected {n_classes or 'two or more'} names)")
    return [str(label) for label in labels]


def _load_head(model: GPTClassifier, tensors: dict[str, torch.Tensor], source: Path) -> None:
    try:
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in tensors.items()
                                    if k.startswith("head.")})
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(f"{source}: the classifier head does not fit the model ({reason})") from None


class Classifier:
    """A text classifier ready to use: ``Classifier.load(dir).predict(["text", ...])``."""

    def __init__(self, model: GPTClassifier, tokenizer: Tokenizer, labels: list[str], *,
                 max_length: int | None = None, dtype: str = "auto") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.max_length = min(max_length or model.gpt.cfg.context_length, model.gpt.cfg.context_length)
        self.device = next(model.parameters()).device
        self.autocast_dtype = resolve_autocast_dtype(dtype, self.device, model.gpt.cfg.emb_dim)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto",
             dtype: str = "auto") -> Classifier:
        """Load a classifier directory (or a LoRA adapter directory of one, on its base)."""
        device = resolve_device(device) if isinstance(device, str) else device
        path = as_path(path, "Classifier.load's path")
        if is_adapter_dir(path):
            return cls._load_adapter(path, device, dtype)
        model_dir = resolve_model_dir(path)
        config = read_model_config(model_dir)
        section = config.get("classifier")
        if section is None:
            raise CheckpointError(f"{path} is a language model, not a classifier (make one with "
                                  "`gptsmith finetune classify`)")
        labels = _check_labels(section, model_dir)
        gpt = load_model_dir(model_dir, device=device, dtype=torch.float32)
        model = GPTClassifier(gpt, len(labels))
        head_path = head_file(section, model_dir)
        _load_head(model, read_safetensors(head_path), head_path)
        tokenizer = load_model_tokenizer(config, model_dir, gpt.cfg.vocab_size, str(model_dir))
        return cls(model, tokenizer, labels, max_length=section.get("max_length"), dtype=dtype)

    @classmethod
    def _load_adapter(cls, path: Path, device: torch.device, dtype: str) -> Classifier:
        config, _ = read_adapter(path)
        labels = _check_labels(config.get("classifier"), path)
        base_name = str(config.get("base"))
        base_path = Path(base_name).expanduser()
        if not base_path.is_absolute():
            base_path = path / base_path
        if not base_path.exists() and not is_hub_name(base_name):  # a path that is gone
            raise CheckpointError(f"{path} is a LoRA adapter for the base model {base_name}, which no longer "
                                  f"exists: put the base back there, or edit \"base\" in "
                                  f"{path / ADAPTER_CONFIG_FILE}")
        base = load_base(model=base_path if base_path.exists() else base_name, device=device)
        expected = config.get("base_fingerprint")  # (None in adapters saved before it was recorded)
        if expected is not None and weights_fingerprint(base.model) != expected:
            raise CheckpointError(f"{path} is a LoRA adapter for the base model {base_name}, whose weights "
                                  "have changed since the adapter was trained (retrained or overwritten): "
                                  "put the original base back there, or fine-tune the adapter again")
        model = GPTClassifier(base.model, len(labels))
        config = load_adapter(model, path)
        extra = config["extra_tensors"]
        _load_head(model, extra, path)
        others = {k: v for k, v in extra.items() if not k.startswith("head.")}
        if others:
            missing = set(others) - set(model.state_dict())
            if missing:
                raise CheckpointError(f"{path}: tensors {sorted(missing)[:3]} do not belong to the "
                                      "base model")
            model.load_state_dict(others, strict=False)
        merge_lora(model)
        return cls(model, base.tokenizer, labels, max_length=config["classifier"].get("max_length"),
                   dtype=dtype)

    @torch.no_grad()
    def predict_proba(self, texts: list[str], *, batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (n_texts, n_classes), columns in ``self.labels`` order.

        Raises ``NonFiniteError`` when the model's outputs are NaN or infinite (broken weights).
        """
        if isinstance(texts, str):
            raise GptsmithError("predict takes a list of texts, not one string (wrap it: [text])")
        check_number("batch_size", batch_size, whole=True, minimum=1)
        if not texts:
            return torch.zeros(0, len(self.labels))
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise GptsmithError(f"texts[{bad}] is a {type(texts[bad]).__name__}, not a str")
        blank = next((i for i, text in enumerate(texts) if not text.strip()), None)
        if blank is not None:  # it would get a label all the same, from the padding token alone
            raise GptsmithError(f"texts[{blank}] is empty: there is nothing to classify (leave it out)")
        encoded = encode_texts(texts, self.tokenizer, self.max_length)
        encoded.labels = list(range(len(texts)))  # carry each text's position through the sorted batches
        probs = torch.zeros(len(texts), len(self.labels))
        ctx = autocast(self.device, self.autocast_dtype)
        for ids, lengths, positions in iterate_batches(encoded, batch_size, shuffle=False):
            with ctx:
                logits = self.model(ids.to(self.device), lengths.to(self.device)).float()
            if not bool(torch.isfinite(logits).all()):
                kind = "nan" if bool(torch.isnan(logits).any()) else "inf"
                raise NonFiniteError(f"the classifier's outputs are not finite ({kind}): its weights are "
                                     "broken, e.g. a fine-tune that diverged (fine-tune it again with a "
                                     "lower --lr)")
            probs[positions] = torch.softmax(logits, dim=-1).cpu()  # (batch, n_classes)
        return probs

    def predict(self, texts: list[str], *, batch_size: int = 32) -> tuple[list[str], list[float]]:
        """The label of each text and its probability."""
        probs = self.predict_proba(texts, batch_size=batch_size)
        best, index = probs.max(dim=-1) if len(probs) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        return [self.labels[int(i)] for i in index], [float(p) for p in best]
