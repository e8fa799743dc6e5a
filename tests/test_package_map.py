"""Each stage's ``__init__`` docstring is its map (ARCHITECTURE.md): it names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", ["data", "model", "generate", "train", "finetune", "explain", "serve"])
def test_each_stage_docstring_names_every_module(stage):
    package = ROOT / "gptsmith" / stage
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""
    named = set(re.findall(r"`+(\w+)`+", docstring))
    modules = {path.stem for path in package.glob("*.py")} - {"__init__"}
    assert modules <= named, f"gptsmith/{stage}/__init__.py does not name {sorted(modules - named)}"
