"""How ``gptsmith train`` turns its flags into (GPTConfig, TrainConfig).

A new run: recipe < --config file < flags (``build_configs``). A resumed run
(``resume_configs``): RUN_DIR/run.json fixes the model and the training settings, and anything
else the command line gives (a flag, or a value from --preset, --recipe, --config or
--context-length) must ask for the run's own value; a different one is a one-line error listing
every field that differs, e.g. ``n_layers=4 in the run vs 6 asked for``. Only ``RESUME_FIELDS``
may change. Three of them (``CHANGES_TRAINING``) change the optimisation itself: the schedule is
rebuilt from the resumed step on with the new values, so the run is no longer an exact
continuation, and a note says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptsmith.errors import CheckpointError, ConfigError, GptsmithError
from gptsmith.train.config import flag

# Flags that map one-to-one onto TrainConfig fields (flag dest -> field).
TRAIN_FLAGS = {
    "data": "data", "text_field": "text_field", "tokenizer": "tokenizer", "max_steps": "max_steps",
    "batch_size": "batch_size",
    "lr": "lr", "min_lr": "min_lr", "warmup_steps": "warmup_steps", "weight_decay": "weight_decay",
    "label_smoothing": "label_smoothing", "optimizer": "optimizer", "trim_vocab": "trim_vocab",
    "muon_ns_steps": "muon_ns_steps",
    "grad_clip": "grad_clip", "target_batch_tokens": "target_batch_tokens", "eval_every": "eval_every",
    "eval_batches": "eval_batches", "checkpoint_every": "checkpoint_every", "keep_last": "keep_last",
    "sample_every": "sample_every", "prompt": "sample_prompt", "seed": "seed", "device": "device",
    "dtype": "dtype", "compile": "compile", "val_fraction": "val_fraction", "time_budget": "time_budget",
}

# What may change on resume: when and where the run reports, how long it runs, and the
# learning rate and clipping (the escape from a diverging run).
RESUME_FIELDS = ("max_steps", "device", "eval_every", "checkpoint_every", "sample_every", "keep_last",
                 "lr", "min_lr", "grad_clip")
CHANGES_TRAINING = ("lr", "min_lr", "grad_clip")


def read_config_file(path: str | None) -> tuple[dict, dict]:
    """The (``model:``, ``train:``) sections of a --config file (empty without one)."""
    from gptsmith.config import check_fields, load_config_file
    from gptsmith.model.gpt import GPTConfig

    if not path:
        return {}, {}
    data = load_config_file(path)
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)} (use `model:` and `train:`)")
    model, train = (_section(data, name, path) for name in ("model", "train"))
    # Checked here, so the error names the file (the train: keys are checked by TrainConfig).
    check_fields(GPTConfig, {k: v for k, v in model.items() if k != "preset"}, source=f"{path} (model:)")
    return model, train


def _section(data: dict, name: str, path: str) -> dict:
    """Section ``name`` of a config file as a new dict (absent or empty: {})."""
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: `{name}:` must hold a mapping of field names to values, "
                          f"got {section!r}")
    return dict(section)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given as flags."""
    return {field: getattr(args, dest) for dest, field in TRAIN_FLAGS.items()
            if getattr(args, dest) is not None}


def model_config(args: argparse.Namespace) -> Any:
    """The GPTConfig of recipe < config file < --preset < --context-length."""
    from gptsmith.model.gpt import PRESETS, GPTConfig
    from gptsmith.train.recipes import get_recipe

    recipe = get_recipe(args.recipe or "default")
    model_section, _ = read_config_file(args.config)
    preset = model_section.pop("preset", recipe["preset"])
    model_over = {**recipe["model"], **model_section}
    if args.preset:
        preset = args.preset
        model_over = {k: v for k, v in model_over.items() if args.config or k != "context_length"}
    if args.context_length is not None:
        if args.context_length < 1:
            raise ConfigError(f"--context-length must be > 0, got {args.context_length}")
        model_over["context_length"] = args.context_length
    if not isinstance(preset, str) or preset not in PRESETS:  # named as the flag, so a file's is blamed
        raise ConfigError(f"--preset: unknown model preset {preset!r} (known: {', '.join(PRESETS)})")
    return GPTConfig.from_preset(preset, **model_over)


@contextlib.contextmanager
def file_values_named(args: argparse.Namespace, *, about: str | None = None) -> Iterator[None]:
    """Re-raise an error about a value that came from the --config file (not overridden by a flag)
    so that it names the file and the dotted key, e.g. ``run.yaml: train.lr must be > 0, got -1
    (fix it in the file, or override it with --lr)``: the one way a config-file value is blamed.

    An error is about a key when its message starts with the name the library gives the key (see
    ``_file_keys``), or mentions a model field the file sets (``emb_dim ... n_heads``); with
    ``about`` (a train: key, e.g. ``"data"``) every error raised inside is about that key.
    """
    try:
        yield
    except GptsmithError as exc:
        if not args.config:
            raise
        try:
            keys = _file_keys(args)
        except GptsmithError:
            raise exc from None
        named = _blame_file_value(str(exc), keys, about)
        if named is None:
            raise
        raise type(exc)(f"{args.config}: {named}") from None


def _file_keys(args: argparse.Namespace) -> dict[str, tuple[str, str | None]]:
    """The --config file's keys that no flag overrides: dotted key -> (the name the library's
    messages give it, the flag that could override it or None)."""
    model, train = read_config_file(args.config)
    flags = flag_values(args)
    overrides = {field: "--" + dest.replace("_", "-") for dest, field in TRAIN_FLAGS.items()}
    overrides["context_length"] = "--context-length"  # it sets the model's context and the windows
    keys: dict[str, tuple[str, str | None]] = {}
    for key in train:
        if key not in flags and not (key == "context_length" and args.context_length is not None):
            keys[f"train.{key}"] = (flag(key), overrides.get(key))
    for key in model:
        if key == "preset" and not args.preset:
            keys["model.preset"] = ("--preset", "--preset")
        elif key == "context_length" and args.context_length is None:
            keys["model.context_length"] = ("GPTConfig.context_length", "--context-length")
        elif key not in ("preset", "context_length"):
            keys[f"model.{key}"] = (f"GPTConfig.{key}", None)
    return keys


def _blame_file_value(message: str, keys: dict[str, tuple[str, str | None]], about: str | None) -> str | None:
    """``message`` told as the file's (without the file's name), or None when no key of the file
    is to blame."""
    def fix(key: str) -> str:
        override = keys[key][1]
        return "fix it in the file" + (f", or override it with {override}" if override else "")

    if about is not None and f"train.{about}" in keys:
        return f"train.{about}: {message} ({fix(f'train.{about}')})"
    for key, (name, _) in sorted(keys.items()):
        if message.startswith(name) and message[len(name):len(name) + 1] in (" ", ":"):
            return f"{key}{message[len(name):]} ({fix(key)})"
    if message.startswith("GPTConfig."):  # a check of two fields, e.g. emb_dim % n_heads, the file set one
        for key in sorted(keys):
            if key.startswith("model.") and re.search(rf"\b{re.escape(key[6:])}\b", message):
                return f"{key}: {message.removeprefix('GPTConfig.')} ({fix(key)})"
    return None


def check_vocab_size(config: str | None, tokenizer: str, vocab_size: int) -> None:
    """Refuse a --config file's ``model.vocab_size`` other than the tokenizer's ``vocab_size``: the
    model has one embedding per token id the tokenizer makes, so the tokenizer sets it (a file's
    other value could only be ignored, or break the run)."""
    if not config:
        return
    asked = read_config_file(config)[0].get("vocab_size")
    if asked is not None and asked != vocab_size:
        raise ConfigError(f"{config}: model.vocab_size {asked} does not match the {tokenizer} tokenizer's "
                          f"{vocab_size} (remove it from the file: the tokenizer sets the vocabulary size)")


def build_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """(GPTConfig, TrainConfig) from recipe < config file < flags."""
    with file_values_named(args):
        return _build_configs(args)


def _build_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    from gptsmith.data.shards import check_corpus_tokenizer
    from gptsmith.train.config import TrainConfig
    from gptsmith.train.recipes import get_recipe

    recipe = get_recipe(args.recipe or "default")
    _, config_train = read_config_file(args.config)
    train_over = {**recipe["train"], **config_train}
    if args.context_length is not None:  # the flag sets the sequences' length: a file's windows yield to it
        train_over.pop("context_length", None)
    flags = flag_values(args)
    if "max_steps" in flags and "time_budget" in flags:
        raise ConfigError("give --max-steps or --time-budget, not both (the budget chooses the steps)")
    if "max_steps" in config_train and "time_budget" in config_train:
        raise ConfigError(f"{args.config}: give train.max_steps or train.time_budget, not both (the budget "
                          "chooses the steps)")
    # Steps asked for replace a recipe's budget, and a file's when --max-steps asks for them (a flag
    # wins over the file: the file's budget silently outranked --max-steps); --time-budget wins over both.
    if "max_steps" in flags or ("max_steps" in config_train and "time_budget" not in flags):
        train_over.pop("time_budget", None)
    data = flags.get("data", train_over.get("data"))
    if data != recipe["train"].get("data") and "sample_prompt" not in {**config_train, **flags}:
        # The recipe's prompt ("The module") suits its own corpus only: sample other data unprompted.
        train_over = {**train_over, "sample_prompt": ""}
    train_cfg = TrainConfig.from_dict({**train_over, **flags}, source=args.config or "flags")
    train_cfg.check()
    try:  # a tokenizer's name is checked before the corpus is read (TrainConfig leaves it to its caller)
        check_corpus_tokenizer(train_cfg.tokenizer)
    except ConfigError as exc:
        raise ConfigError(f"--tokenizer: {exc}") from None
    return model_config(args), train_cfg


# --- resume -----------------------------------------------------------------------------------


def read_run_info(run_dir: Path) -> dict:
    """RUN_DIR/run.json, or a CheckpointError saying why it cannot be read."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found ({run_dir} is not a gptsmith run directory; "
                              "pass the --out of a `gptsmith train`)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot parse {path}: {exc} (the file is corrupt)") from None
    for section in ("model", "train"):
        if not isinstance(info, dict) or not isinstance(info.get(section), dict):
            raise CheckpointError(f'{path} has no "{section}" section (the file is incomplete or not '
                                  "gptsmith's; start a new run, or restore it)")
    return info


def resume_configs(args: argparse.Namespace, run_dir: Path, run_info: dict) -> tuple[Any, Any, list[str]]:
    """(GPTConfig, TrainConfig, notes to print) for resuming ``run_dir`` as ``args`` ask."""
    with file_values_named(args):
        return _resume_configs(args, run_dir, run_info)


def _resume_configs(args: argparse.Namespace, run_dir: Path, run_info: dict) -> tuple[Any, Any, list[str]]:
    from gptsmith.config import check_fields
    from gptsmith.data.corpus import same_corpus
    from gptsmith.model.gpt import GPTConfig
    from gptsmith.train.config import TrainConfig

    if args.out and Path(args.out).resolve() != Path(run_dir).resolve():
        raise ConfigError(f"--out {args.out} differs from --resume {run_dir} (a resumed run stays in its "
                          "own directory; drop --out)")
    if args.overwrite:
        raise ConfigError("--overwrite cannot be used with --resume (it would delete the run being resumed)")
    run_json = str(run_dir / "run.json")
    check_fields(GPTConfig, run_info["model"], source=run_json)
    model_cfg = GPTConfig(**run_info["model"])
    check_vocab_size(args.config, run_info["train"].get("tokenizer", "gpt2"), model_cfg.vocab_size)
    asked_model = _asked_model(args, model_cfg)
    if asked_model is not None:
        _refuse_differences("the model config", model_cfg.to_dict(), asked_model.to_dict(), run_dir,
                            "drop --preset/--recipe/--config/--context-length, or start a new run with "
                            "another --out")
    saved = TrainConfig.from_dict(run_info["train"], source=run_json)
    try:
        saved.check()
    except ConfigError as exc:  # not the user's flags: the run's own file
        raise CheckpointError(f"{run_json} holds a value that cannot work ({exc}); was it edited? "
                              "Restore it, or start a new run") from None
    checked, changes = _asked_train_values(args)
    asked = TrainConfig.from_dict({**run_info["train"], **checked}, source=args.config or "flags")
    # `notes` asks for the run's `notes/`, and so does its absolute path from elsewhere: compare what is read.
    moved_to = None
    if any(same_corpus(known, asked.data) for known in (saved.data, run_corpus(run_info))):
        asked = asked.replace(data=saved.data)
    elif args.data is not None and _corpus_gone(run_info):
        # The run's corpus is no longer where it was: --data says where it is now. The tokens'
        # checksum in run.json, checked once it is read, proves that it is the same corpus.
        moved_to, asked = args.data, asked.replace(data=saved.data)
    fixed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RESUME_FIELDS]
    _refuse_differences("training settings", {k: getattr(saved, k) for k in fixed},
                        {k: getattr(asked, k) for k in fixed}, run_dir,
                        "only " + ", ".join(flag(k) for k in RESUME_FIELDS) + " can change")
    train_cfg = saved.replace(**{k: v for k, v in changes.items() if k in RESUME_FIELDS})
    notes = _change_notes(saved, train_cfg)
    if moved_to is not None:
        train_cfg = train_cfg.replace(data=moved_to)
        notes.append(f"note: the corpus {saved.data} has moved: reading it from {moved_to} (its tokens "
                     "must be the run's: checked)")
    if saved.time_budget is not None and train_cfg.max_steps != saved.max_steps:
        # An explicit --max-steps replaces the sized schedule.
        train_cfg = train_cfg.replace(time_budget=None)
        notes.append(f"note: --max-steps {train_cfg.max_steps} replaces the {saved.max_steps} steps that "
                     f"--time-budget {saved.time_budget} chose; the budget no longer applies")
    train_cfg.check()
    return model_cfg, train_cfg, notes


def _corpus_gone(run_info: dict) -> bool:
    """Whether the corpus of the run ``run_info`` cannot be read where run.json says it is, while its
    tokens' checksum is known (so that a corpus found elsewhere can be checked to be the same)."""
    from gptsmith.data.corpus import resolve_corpus

    info = run_info.get("data_info")
    if not isinstance(info, dict) or not info.get("checksum"):
        return False
    try:
        resolve_corpus(run_corpus(run_info))
    except GptsmithError:
        return True
    return False


def resume_corpus(run_info: dict, train_cfg: Any, run_dir: Path) -> str:
    """Where a resumed run reads its corpus: ``run_corpus``'s answer, or where ``--data`` says the
    corpus has moved to; a corpus that is gone is an error that says how to point to it."""
    from gptsmith.data.corpus import resolve_corpus

    if train_cfg.data != run_info["train"].get("data", "builtin"):  # moved (see _resume_configs)
        return train_cfg.data
    data = run_corpus(run_info)
    try:
        resolve_corpus(data, text_field=train_cfg.text_field)
    except GptsmithError as exc:
        raise type(exc)(f"cannot resume {run_dir}: {exc}; if the corpus has moved, pass where it is now "
                        "with --data (its tokens are checked against the run's)") from None
    return data


def run_corpus(run_info: dict) -> str:
    """Where to read the corpus of the run ``run_info`` (its run.json) from: the corpus as it was
    found when the run started (``data_info.location``: a relative --data made absolute) while it
    is still there, so the run resumes and evaluates from any directory; else its --data as given,
    read from here (a project moved with its runs, or a run from before the location was kept)."""
    from gptsmith.data.corpus import resolve_corpus

    spec = str(run_info["train"].get("data", "builtin"))
    info = run_info.get("data_info")
    location = info.get("location") if isinstance(info, dict) else None
    if not isinstance(location, str) or location == spec:
        return spec
    try:
        resolve_corpus(location)
    except GptsmithError:  # gone: the corpus as given, from here
        return spec
    return location


def _change_notes(saved: Any, resumed: Any) -> list[str]:
    """A note, if the resumed run trains differently from here on (``CHANGES_TRAINING``)."""
    def shown(cfg: Any, name: str) -> str:
        value = getattr(cfg, name)
        return "lr/10" if value is None else f"{value:g}"  # min_lr None follows --lr

    changed = [f"{flag(k)} {shown(saved, k)} -> {shown(resumed, k)}" for k in CHANGES_TRAINING
               if getattr(saved, k) != getattr(resumed, k)]
    if not changed:
        return []
    return [f"note: {', '.join(changed)} from here on: the learning-rate schedule and clipping follow the "
            "new values from this step, so the run is no longer an exact continuation"]


def _asked_model(args: argparse.Namespace, run_model: Any) -> Any | None:
    """The model config the command line asks for (None when it asks for none).

    A preset (from --preset, --recipe or the config file) builds it as a new run would; without
    one, the given fields (config file, --context-length) apply to the run's own config.
    """
    from gptsmith.config import replace

    if not (args.preset or args.recipe or args.config or args.context_length is not None):
        return None
    model_section, _ = read_config_file(args.config)
    if args.preset or args.recipe or "preset" in model_section:
        asked = model_config(args)
    else:
        if args.context_length is not None:
            model_section["context_length"] = args.context_length
        asked = replace(run_model, source=args.config or "flags", **model_section)
    # The tokenizer sets the vocabulary size (check_vocab_size refused a file's other value).
    return dataclasses.replace(asked, vocab_size=run_model.vocab_size)


def _asked_train_values(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fields to check against the run, fields that may change it) the command line sets.

    Both are recipe < config file < flags, except that a recipe's values only ever get checked:
    naming the run's recipe must not reset, say, a --max-steps the run was given.
    """
    from gptsmith.train.recipes import get_recipe

    recipe_train = get_recipe(args.recipe)["train"] if args.recipe else {}
    _, config_train = read_config_file(args.config)
    explicit = {**config_train, **flag_values(args)}
    return {**recipe_train, **explicit}, explicit


def _refuse_differences(what: str, run: dict, asked: dict, run_dir: Path, fix: str) -> None:
    differences = [f"{k}={run[k]!r} in the run vs {asked[k]!r} asked for" for k in run if run[k] != asked[k]]
    if differences:
        raise ConfigError(f"{what} cannot change when resuming {run_dir}: {', '.join(differences)} ({fix})")

