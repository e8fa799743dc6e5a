"""``TrainConfig``: everything a pretraining run needs besides the model and the data, checked once."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from gptsmith.config import check_fraction, from_dict
from gptsmith.device import DTYPE_SPELLINGS, TRAIN_DTYPES, check_seed, parse_device, parse_dtype
from gptsmith.errors import ConfigError, DataError

# Each unit's spellings: "90s", "90 sec", "10m", "10 min", "1.5h", "2 hours", or parts in a row ("1h30m").
_UNITS = {"s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
          "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
          "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"{_NUMBER}\s*([a-z]+)\s*")


def parse_duration(value: Any, *, name: str = "--time-budget") -> float:
    """Seconds from ``600``, ``"600"``, ``"90s"``, ``"10m"``, ``"1.5h"``, ``"2 hours"`` or
    ``"1h30m"`` (must be > 0)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        bare = re.fullmatch(_NUMBER, text)  # a plain number is seconds
        parts = _PART.findall(text)
        units = [_UNITS.get(unit) for _, unit in parts]
        if bare is not None:
            seconds = float(bare.group(1))
        elif parts and not _PART.sub("", text) and None not in units and len(set(units)) == len(units):
            seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)  # (each unit once)
        else:
            raise ConfigError(f"{name} must be a duration like 90s, 10m, 1.5h or 1h30m, got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{name} must be a positive duration, got {value!r}")
    return seconds

OPTIMIZERS = ("adamw", "muon")  # build_optimizer (schedule.py) makes each
MUON_NS_STEPS = 5  # Muon's Newton-Schulz iterations unless told otherwise (torch.optim.Muon's default)


@dataclass
class TrainConfig:
    """Everything about *how* to train (the model's sizes live in ``GPTConfig``)."""

    data: str = "builtin"  # corpus name or path (see gptsmith.data.resolve_corpus)
    text_field: str = "text"  # the JSONL field / Parquet column that holds a .jsonl/.parquet corpus's text
    tokenizer: str = "gpt2"
    val_fraction: float = 0.1  # the last 10% of the corpus is the validation split
    batch_size: int = 8  # sequences per micro-batch per process
    context_length: int | None = None  # tokens per sequence; None = the model's context_length
    target_batch_tokens: int | None = None  # accumulate gradients until a step sees this many tokens
    max_steps: int = 300  # optimizer steps (with time_budget: sized by the trainer instead)
    time_budget: float | str | None = None  # seconds, or "90s"/"10m"/"1h": size max_steps to end within it
    lr: float = 2e-3  # peak learning rate
    min_lr: float | None = None  # floor of the cosine decay; None = lr / 10
    warmup_steps: int = 20
    weight_decay: float = 0.1
    # Training loss only (evaluations report plain cross-entropy): spreads this share of each
    # target's probability over the whole vocabulary, so tokens the corpus never shows are not
    # driven towards zero probability (see docs/train.md, "Recipes").
    label_smoothing: float = 0.0
    # From scratch only: the head's rows for tokens the training split never contains share one row,
    # and steps compute logits for the used tokens alone (~2x faster on a small corpus; vocab_trim.py).
    trim_vocab: bool = False
    betas: tuple[float, float] = (0.9, 0.95)
    # "adamw", or "muon": Muon for the transformer's matrices and AdamW for the rest (schedule.py)
    optimizer: str = "adamw"
    muon_ns_steps: int = MUON_NS_STEPS  # with optimizer="muon": Newton-Schulz iterations (fewer = faster)
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    eval_every: int = 50  # steps between evaluations (0 = only at the end)
    eval_batches: int = 10  # batches per split per evaluation
    checkpoint_every: int | None = None  # None = at every evaluation; 0 = only at the end
    keep_last: int = 2  # checkpoints kept (plus the best one)
    sample_every: int | None = None  # None = at every evaluation; 0 = never
    sample_prompt: str = "The"
    sample_tokens: int = 40
    sample_temperature: float = 0.8
    sample_top_k: int | None = 40
    log_every: int = 1  # steps between train-loss records in metrics.jsonl
    seed: int = 123
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto | bf16 | fp32 (bf16 = autocast; weights and optimizer stay fp32)
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in run.json

    def __post_init__(self) -> None:
        if isinstance(self.dtype, str):  # one name for each spelling (bfloat16 -> bf16), as --dtype gives
            self.dtype = DTYPE_SPELLINGS.get(self.dtype.strip().lower(), self.dtype)

    def check(self) -> None:
        """Raise ``ConfigError`` for values that cannot work, naming the flag to change."""
        def number(name: str, value: Any, *, whole: bool = False) -> None:
            kinds = int if whole else int | float
            if not isinstance(value, kinds) or isinstance(value, bool) or not math.isfinite(value):
                kind = "whole" if whole else "finite"
                raise ConfigError(f"{flag(name)} must be a {kind} number, got {value!r}")

        def positive(name: str, value: Any, *, whole: bool = False) -> None:
            number(name, value, whole=whole)
            if value <= 0:
                raise ConfigError(f"{flag(name)} must be > 0, got {value!r}")

        for name in ("data", "text_field", "tokenizer", "sample_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{flag(name)} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.trim_vocab, bool):
            raise ConfigError(f"{flag('trim_vocab')} must be true or false, got {self.trim_vocab!r}")
        if not isinstance(self.compile, bool):
            raise ConfigError(f"{flag('compile')} must be true or false, got {self.compile!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"{flag('extra')} must be a mapping of notes, got {self.extra!r}")
        positive("lr", self.lr)
        for name in ("batch_size", "max_steps", "eval_batches", "keep_last", "muon_ns_steps"):
            positive(name, getattr(self, name), whole=True)
        for name in ("context_length", "target_batch_tokens"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name), whole=True)
        if self.min_lr is not None:
            number("min_lr", self.min_lr)
            if not 0 <= self.min_lr <= self.lr:
                raise ConfigError(f"--min-lr must be between 0 and --lr ({self.lr}), got {self.min_lr}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "sample_every", "log_every"):
            value = getattr(self, name)
            if value is not None:
                number(name, value, whole=True)
                if value < 0:
                    raise ConfigError(f"{flag(name)} must be a whole number >= 0, got {value!r}")
        for name in ("weight_decay", "grad_clip"):
            number(name, getattr(self, name))
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        number("label_smoothing", self.label_smoothing)
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be >= 0 and < 1, got {self.label_smoothing}")
        check_seed(self.seed, flag("seed"))
        check_fraction(flag("val_fraction"), self.val_fraction)
        betas = self.betas
        if not (isinstance(betas, list | tuple) and len(betas) == 2
                and all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1
                        for b in betas)):
            raise ConfigError(f"{flag('betas')} must be two numbers in [0, 1), e.g. [0.9, 0.95], "
                              f"got {betas!r}")
        self.betas = tuple(betas)
        if self.muon_ns_steps >= 100:  # torch.optim.Muon's own limit, said before training starts
            raise ConfigError(f"{flag('muon_ns_steps')} must be below 100 (5 is torch's default), "
                              f"got {self.muon_ns_steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"{flag('optimizer')} must be one of {', '.join(OPTIMIZERS)}, "
                              f"got {self.optimizer!r}")
        number("sample_temperature", self.sample_temperature)
        if self.sample_temperature < 0:
            raise ConfigError(f"{flag('sample_temperature')} must be >= 0 (0 = greedy), "
                              f"got {self.sample_temperature}")
        number("sample_tokens", self.sample_tokens, whole=True)
        if self.sample_tokens < 0:
            raise ConfigError(f"{flag('sample_tokens')} must be >= 0, got {self.sample_tokens}")
        if self.sample_top_k is not None:
            positive("sample_top_k", self.sample_top_k, whole=True)
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        try:
            parse_device(self.device)  # a typo is an error here, before any work
        except ConfigError as exc:  # named as the flag, as --dtype is (so a config file's is blamed)
            raise ConfigError(f"--device: {exc}") from None
        try:
            self.dtype = parse_dtype(self.dtype, TRAIN_DTYPES)  # bfloat16 in a config file is bf16
        except ConfigError as exc:
            raise ConfigError(f"--dtype: {exc}") from None

    def intervals(self) -> tuple[int, int, int]:
        """(eval_every, checkpoint_every, sample_every) in steps, defaults resolved; sample 0 = never."""
        eval_every = self.eval_every or self.max_steps
        checkpoint_every = eval_every if self.checkpoint_every is None else self.checkpoint_every
        sample_every = eval_every if self.sample_every is None else self.sample_every
        return eval_every, checkpoint_every or self.max_steps, sample_every

    @property
    def floor_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> TrainConfig:
        data = dict(data)
        if isinstance(data.get("betas"), list):
            data["betas"] = tuple(data["betas"])  # JSON/YAML have lists; anything else check() refuses
        return from_dict(cls, data, source=source)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides`` applied, ``None`` included (``replace(time_budget=None)`` turns
        the budget off); an unknown field is an error that lists the known ones."""
        return TrainConfig.from_dict({**asdict(self), **overrides}, source="overrides")


def check_trainer_inputs(cfg: Any, train_tokens: Any, val_tokens: Any) -> None:
    """What ``Trainer`` checks before anything else: a ``TrainConfig`` that ``check()`` accepts and
    token arrays that are flat (a 2-D array would be read as one short sequence)."""
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig (e.g. TrainConfig(max_steps=100)), "
                          f"got {type(cfg).__name__}")
    for name, tokens in (("train_tokens", train_tokens), ("val_tokens", val_tokens)):
        shape = getattr(tokens, "shape", None)
        if shape is not None and len(shape) != 1:
            raise DataError(f"{name} must be one flat sequence of token ids, got shape {tuple(shape)} "
                            "(flatten it, e.g. tokens.reshape(-1))")
    cfg.check()


# Fields set only in a --config file (no flag of their own): errors name them as the file does.
CONFIG_FILE_ONLY = frozenset({"betas", "sample_prompt", "sample_tokens", "sample_temperature", "sample_top_k",
                              "log_every", "extra"})


def flag(field_name: str) -> str:
    """How a user sets a ``TrainConfig`` field: its flag (``keep_last`` -> ``--keep-last``), or
    ``train.betas`` for a field only a --config file sets."""
    if field_name in CONFIG_FILE_ONLY:
        return f"train.{field_name}"
    return "--" + field_name.replace("_", "-")
