"""Shared helpers for the configuration dataclasses.

Each concern has its own dataclass next to the code that uses it (``GPTConfig`` in
``model/gpt.py``, ``TrainConfig`` in ``train/config.py``, ``GenerationConfig`` in ``generate/config.py``).
This module holds the one way to build any of them from a dict, a YAML/JSON file, or command-line overrides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gptsmith.errors import ConfigError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML's safe loader reading ``3e-4`` as the float everyone means (YAML 1.1 wants ``3.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """``text`` parsed as YAML by the one loader of every config value (files and ``--set``)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def parse_assignments(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """``["qkv_bias=false", "n_layers=6"]`` -> ``{"qkv_bias": False, "n_layers": 6}`` (YAML values)."""
    values = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field.strip():
            raise ConfigError(f"{flag} {pair!r}: expected FIELD=VALUE, e.g. {flag} qkv_bias=false")
        try:
            values[field.strip()] = load_yaml(value)
        except yaml.YAMLError:
            raise ConfigError(f"{flag} {pair!r}: cannot read the value {value!r}") from None
    return values


def check_number(label: str, value: object, *, whole: bool = False, minimum: float = 0,
                 above: bool = False) -> None:
    """Raise ``ConfigError`` unless ``value`` is a finite number (an integer with ``whole``; numpy's
    scalars count) that is at least ``minimum`` (more than it, with ``above``). ``label`` names it
    in the message as the user set it: a flag (``--lr``) or a keyword (``batch_size``)."""
    kinds = numbers.Integral if whole else numbers.Real
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if above else value < minimum):
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{label} must be {kind} {'>' if above else '>='} {minimum:g}, got {value!r}")


def check_fraction(label: str, value: object) -> None:
    """Raise ``ConfigError`` unless ``value`` is a number strictly between 0 and 1 (a share of a corpus)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value < 1
    if not ok:
        raise ConfigError(f"{label} must be more than 0 and less than 1, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON file into a dict."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory (pass a .yaml or .json file)")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass an existing .yaml or .json file)")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else load_yaml(text)
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse config file {path}{_parse_error_place(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of names to values")
    return data


def _parse_error_place(exc: Exception) -> str:
    """' at line L, column C: problem' of a JSON or YAML parse error (1-based, as editors count)."""
    if isinstance(exc, json.JSONDecodeError):
        return f" at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    mark = getattr(exc, "problem_mark", None)  # yaml's MarkedYAMLError; 0-based
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return f": {problem}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def check_fields(cls: type, data: dict[str, Any], *, source: str = "config") -> None:
    """Raise ``ConfigError`` for keys of ``data`` that are not fields of dataclass ``cls``, listing
    the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) in {source}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error that lists the known ones."""
    check_fields(cls, data, source=source)
    return cls(**data)


def replace(instance: T, *, source: str = "overrides", **overrides: Any) -> T:
    """Return a copy of dataclass ``instance`` with ``overrides`` applied (``None`` values skipped)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    merged = {**dataclasses.asdict(instance), **values}  # type: ignore[call-overload]
    return from_dict(type(instance), merged, source=source)


def to_dict(instance: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(instance)
