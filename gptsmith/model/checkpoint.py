"""Checkpoints: our model directory format, and loading by name or path.

A *model directory* holds two files::

    config.json        {"format": "gptsmith", "format_version": 1, "model": {GPTConfig fields},
                        "tokenizer": "gpt2", ...extra keys}
    model.safetensors  the weights (never pickle: safetensors cannot run code when loaded)

With tied weights the output head *is* the token embedding, so only ``tok_emb.weight`` is
stored (safetensors refuses to store one tensor twice) and the tie is rebuilt on load.

A *run directory* (written by the trainer) holds a text file ``latest`` naming its newest model
directory; every loader here accepts either kind (``resolve_model_dir``). Its pointers and
``checkpoints/step-N`` folders are read by ``gptsmith.model.run_dir``.
Hugging Face GPT-2 directories and hub names are handled by ``gptsmith.model.hf_gpt2``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from gptsmith.config import from_dict
from gptsmith.data.tokenizer import VOCAB_FILE, Tokenizer, load_tokenizer, save_tokenizer
from gptsmith.errors import CheckpointError, ConfigError
from gptsmith.model.gpt import PRESETS, GPTConfig, GPTModel
from gptsmith.model.run_dir import (
    CHECKPOINTS,
    CONFIG_FILE,
    LATEST_FILE,
    WEIGHTS_FILE,
    broken_pointer_note,
    incomplete_checkpoint_message,
    incomplete_latest,
    newest_complete_checkpoint,
    read_pointer,
)
from gptsmith.model.weights import TIED_KEY, build_model, read_safetensors, unwrap_model
from gptsmith.storage import (
    as_path,
    atomic_save_safetensors,
    atomic_write_json,
    created_directory,
    write_errors,
)

FORMAT_NAME = "gptsmith"
FORMAT_VERSION = 1
# Our GPT-2 preset names -> the Hugging Face hub repositories of OpenAI's released weights.
PRESET_HUB_NAMES = {
    "gpt2-small": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
}


# --- Our format ---------------------------------------------------------------------------------


def save_model(
    model: GPTModel, directory: str | Path, *, tokenizer: str | Tokenizer = "gpt2", extra: dict | None = None
) -> Path:
    """Save ``model`` as a model directory (config.json + model.safetensors); returns the directory.

    The weights are written first and config.json last, so a directory with a config always has
    complete weights. ``tokenizer`` is a name, or a tokenizer whose vocabulary (if it has its own,
    see ``save_tokenizer``) is saved too. ``extra`` keys (e.g. the training step) are merged into
    config.json.
    """
    model = unwrap_model(model)
    if not isinstance(model, GPTModel):
        raise ConfigError(f"save_model saves a GPTModel, got {type(model).__name__}")
    if any(name.endswith("lora_A") for name, _ in model.named_parameters()):
        raise ConfigError("the model has unmerged LoRA adapters: merge_lora(model) first (or save_adapter "
                          "to save the adapters alone)")
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "tokenizer": tokenizer if isinstance(tokenizer, str) else tokenizer.name,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    for key, value in (extra or {}).items():
        if key in ("format", "format_version", "model"):
            raise ConfigError(f"extra key {key!r} would overwrite a reserved config.json key")
        config[key] = value
    try:  # before anything is written: a value JSON cannot hold must not leave weights without a config
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"save_model: extra cannot be written as JSON ({exc})") from None
    directory = as_path(directory, "save_model's directory")
    state = dict(model.state_dict())
    if model.cfg.tie_weights:
        state.pop(TIED_KEY, None)
    # A failed save (a full disk: a one-line StorageError) removes the directory if it made it.
    with created_directory(directory), write_errors(directory, "save it again"):
        atomic_save_safetensors(state, directory / WEIGHTS_FILE, metadata={"format": "pt"})
        if not isinstance(tokenizer, str):
            save_tokenizer(tokenizer, directory)
        atomic_write_json(directory / CONFIG_FILE, config)
    return directory


def resolve_model_dir(path: str | Path) -> Path:
    """The model directory that ``path`` names: the directory itself, or a run's ``latest`` one.

    Accepts a model directory (has config.json), a run directory (has a ``latest`` file holding
    a relative path to a model directory), or a path to the config.json/model.safetensors file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (pass a model directory or a run directory)")
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE, "pytorch_model.bin"):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file, not a model directory (pass the directory holding config.json)"
        )
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / LATEST_FILE).exists() or (path / CHECKPOINTS).is_dir():  # a run directory
        incomplete = incomplete_latest(path)
        if incomplete is not None:  # not recovered from quietly: newer steps than the one used are lost
            folder, missing, older = incomplete
            them = "it" if len(missing) == 1 else "them"
            fix = (f"load the newest complete one, {older}, instead, or restore {them}" if older
                   else f"restore {them}: the run has no other complete checkpoint")
            raise CheckpointError(incomplete_checkpoint_message(folder, missing, fix))
        target_name = read_pointer(path, LATEST_FILE)
        if target_name and (path / target_name / CONFIG_FILE).is_file():
            return (path / target_name).resolve()
        newest = newest_complete_checkpoint(path)
        if newest is None:
            raise CheckpointError(
                f"run directory {path} has no complete checkpoint (its `latest` names "
                f"{target_name or 'nothing'}, and {CHECKPOINTS}/ holds no step with a {CONFIG_FILE}): "
                "train it, or pass another checkpoint"
            )
        warnings.warn(f"{broken_pointer_note(path)}; using the newest complete one, "
                      f"{CHECKPOINTS}/{newest.name}", stacklevel=2)
        return newest.resolve()
    if (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(
            f"{path} has {WEIGHTS_FILE} but no {CONFIG_FILE} (copy the config.json saved with it)"
        )
    # finetune/lora.py's ADAPTER_CONFIG_FILE (a higher layer): what `finetune classify
    # --save-adapter-only` writes, which only `classify` loads, on top of the base it names.
    if (path / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{path} is a LoRA adapter, not a model directory: only `gptsmith classify` loads it "
            "(on top of its base); for a model of its own, fine-tune again without --save-adapter-only"
        )
    raise CheckpointError(
        f"{path} is not a model directory: no {CONFIG_FILE} (expected config.json + model.safetensors, "
        f"or a run directory with a `{LATEST_FILE}` file)"
    )


SIZE_FIELDS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")  # every config.json has them


def load_model_tokenizer(config: dict, model_dir: Path | None, vocab_size: int, name: str) -> Tokenizer:
    """The tokenizer a model directory names, checked against the model's ``vocab_size``.

    A word-level ("simple") tokenizer's words are the model's own, saved as vocab.json beside
    it: without that file the built-in vocabulary would give other words to the same ids, so a
    mismatch is an error naming the missing file. Any tokenizer with more ids than the model has
    embeddings is an error too.
    """
    tokenizer_name = config.get("tokenizer") or "gpt2"
    tokenizer = load_tokenizer(tokenizer_name, model_dir)
    word_level = tokenizer_name.lower().startswith("simple")
    own_words = model_dir is None or (model_dir / VOCAB_FILE).is_file()
    if word_level and not own_words and tokenizer.vocab_size != vocab_size:
        raise CheckpointError(f"{name} uses its own word-level vocabulary (tokenizer {tokenizer_name!r}) "
                              f"but has no {VOCAB_FILE}: copy it from the checkpoint it was saved with")
    if tokenizer.vocab_size > vocab_size:
        fix = ("a Hugging Face GPT-2 directory is tokenized with GPT-2's BPE, so its model was trained with "
               "another tokenizer, which gptsmith cannot use" if config.get("format") == "hf-gpt2"
               else 'fix "tokenizer" in its config.json')  # (an HF config.json has no such key)
        raise CheckpointError(f"{name}: tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but the "
                              f"model only {vocab_size} ({fix})")
    return tokenizer


def read_model_config(path: str | Path) -> dict:
    """The parsed config.json of a model/run directory, in our format.

    A Hugging Face GPT-2 directory is translated: ``{"format": "hf-gpt2", "model": {...},
    "tokenizer": "gpt2", "hf_config": {...}}``.
    """
    model_dir = resolve_model_dir(path)
    config_path = model_dir / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot parse {config_path}: {exc} (the file is corrupt)") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object")
    if config.get("format") == FORMAT_NAME:
        version = config.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{config_path} has format_version {version!r}; this gptsmith reads up to "
                f"{FORMAT_VERSION} (upgrade gptsmith)"
            )
        if not isinstance(config.get("model"), dict):
            raise CheckpointError(f"{config_path} has no \"model\" section (the file is incomplete)")
        tokenizer = config.get("tokenizer", "gpt2")
        if not isinstance(tokenizer, str):
            raise CheckpointError(f'{config_path}: "tokenizer" must be a tokenizer name such as "gpt2", '
                                  f"got {tokenizer!r} (fix it in the file)")
        missing = [k for k in SIZE_FIELDS if k not in config["model"]]
        if missing:  # a default (GPT-2 small's) would load other weights' shapes, or fail confusingly
            raise CheckpointError(f"{config_path} has no model.{', model.'.join(missing)} "
                                  "(the file is incomplete: restore it from where the model was saved)")
        return config
    if config.get("model_type") == "gpt2":
        from gptsmith.data.tokenizer import hf_tokenizer_mismatch
        from gptsmith.model.hf_gpt2 import gpt_config_from_hf

        gpt_config = gpt_config_from_hf(config, source=str(config_path))
        # Such a model is tokenized with GPT-2's BPE: its own tokenizer files must be GPT-2's,
        # or its ids would be read as other text.
        mismatch = hf_tokenizer_mismatch(model_dir)
        if mismatch:
            raise CheckpointError(
                f"{model_dir} carries its own tokenizer, which is not GPT-2's ({mismatch}); gptsmith "
                "tokenizes Hugging Face GPT-2 models with GPT-2's BPE only (use a GPT-2-tokenized model, "
                "or move the tokenizer files out of the folder to use the weights with GPT-2's anyway)")
        return {
            "format": "hf-gpt2",
            "model": gpt_config.to_dict(),
            "tokenizer": "gpt2",
            "hf_config": config,
        }
    raise CheckpointError(
        f"{config_path} is neither a gptsmith config (\"format\": \"gptsmith\") nor a Hugging Face "
        f"GPT-2 config (\"model_type\": \"gpt2\")"
    )


def check_weights_file(model_dir: Path) -> Path:
    """``model_dir``'s model.safetensors, or the one error for a model directory without it."""
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has {CONFIG_FILE} but no {WEIGHTS_FILE} (its save was cut short, "
                              "or the file was deleted; restore it, or pass another checkpoint)")
    return path


def config_from_checkpoint(path: str | Path) -> GPTConfig:
    """The ``GPTConfig`` stored in a model/run directory (or translated from a HF GPT-2 config)."""
    config = read_model_config(path)
    source = f"{resolve_model_dir(path) / CONFIG_FILE}"
    try:
        return from_dict(GPTConfig, config["model"], source=source)
    except ConfigError as exc:  # (GPTConfig's own checks do not know the file)
        message = str(exc)
        raise CheckpointError(message if source in message else f"{source}: {message}") from None


def is_hub_name(name: str) -> bool:
    """Whether ``name`` (not an existing path) reads as a Hugging Face hub name (``gpt2``,
    ``openai-community/gpt2``) rather than a path that is missing (``./x``, ``runs/a/b``)."""
    return not (name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1)


def load_options(device: torch.device | str | None, dtype: torch.dtype | str | None
                 ) -> tuple[torch.device | None, torch.dtype | None]:
    """``device`` and ``dtype`` checked before any loading: a device that is not here (``cuda``
    without a GPU) and dtypes by any spelling (``"bf16"``, ``torch.bfloat16``) or none at all."""
    from gptsmith.device import resolve_device, torch_dtype

    if device is not None:
        device = resolve_device(str(device))
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    elif dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigError(f"dtype {dtype} cannot hold weights (choose a floating-point dtype, e.g. "
                          "torch.float32 or torch.bfloat16)")
    return device, dtype


def load_model_dir(
    path: str | Path, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> GPTModel:
    """Load a model directory (or a run directory's latest checkpoint) as a ``GPTModel`` in eval mode.

    Hugging Face GPT-2 directories are accepted too (converted on the fly). ``dtype`` defaults
    to the dtype the weights were saved in. ``model.instruction_template`` is the config's
    ``"instruction_template"`` (None for a plain language model).
    """
    device, dtype = load_options(device, dtype)
    model_dir = resolve_model_dir(path)
    config = read_model_config(model_dir)
    if config["format"] == "hf-gpt2":
        from gptsmith.model.hf_gpt2 import load_hf_model_dir

        return load_hf_model_dir(model_dir, device=device, dtype=dtype)
    cfg = config_from_checkpoint(model_dir)
    weights_path = check_weights_file(model_dir)
    state = read_safetensors(weights_path)
    model = build_model(cfg, state, source=str(weights_path), device=device, dtype=dtype)
    # The prompt template an instruction-tuned model was trained with (None: a plain language
    # model), so asking it needs no flag (``gptsmith.generate.ask``).
    model.instruction_template = config.get("instruction_template")
    return model


def load_model(
    name_or_path: str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> GPTModel:
    """Load weights by path or name, in eval mode.

    ``name_or_path`` may be our model directory, a run directory, a Hugging Face GPT-2 directory
    (config.json + model.safetensors or pytorch_model.bin, or their shards), a hub name such as
    ``gpt2`` or ``gpt2-medium``, or a GPT-2 preset name (``gpt2-small`` means hub ``gpt2``). Hub models are
    downloaded through ``huggingface_hub`` into its cache (the network is needed the first time).
    """
    if not isinstance(name_or_path, str | Path):
        raise CheckpointError("load_model takes a model directory or a name, "
                              f"got {type(name_or_path).__name__}")
    device, dtype = load_options(device, dtype)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return load_model_dir(path, device=device, dtype=dtype)
    name = str(name_or_path)
    if name in PRESETS:  # our GPT-2 preset names mean OpenAI's released weights
        if name not in PRESET_HUB_NAMES:
            raise CheckpointError(
                f"preset {name!r} has no pretrained weights; build it untrained with "
                f"GPTModel(GPTConfig.from_preset({name!r})) or train it with `gptsmith train`"
            )
        name = PRESET_HUB_NAMES[name]
    if not is_hub_name(name):
        raise CheckpointError(
            f"checkpoint not found: {name} (pass a model directory, a run directory or a hub name)"
        )
    from gptsmith.model.hf_gpt2 import download_hf_model

    return load_model_dir(download_hf_model(name), device=device, dtype=dtype)
