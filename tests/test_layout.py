"""The package's layering (ARCHITECTURE.md) is enforced, and the public API is where the README says.

``lint-imports`` checks the contracts in pyproject.toml: each stage imports only the stages below
it (even inside a function), fine-tuning/explain/serving are independent, and no stage has an
import cycle. The scratch-copy tests prove the check can fail: an upward import or a cycle planted
in a copy of the package breaks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(),
                                reason="import-linter is not installed (the dev extra)")


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project)}  # find this copy of gptsmith before any other
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)


def scratch_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "gptsmith", project / "gptsmith", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    return project


def test_the_layering_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "planted", "contract"), [
    # an upward import hidden inside a function: data must never reach the CLI
    ("data/windows.py", "\n\ndef _upward():\n    from gptsmith.cli import main\n\n    return main\n",
     "Each stage imports only the stages below it BROKEN"),
    # a cycle inside a stage: the generation config must stay below the decoders that use it
    ("generate/config.py", "\n\nimport gptsmith.generate.generation  # noqa\n",
     "No import cycles inside a stage BROKEN"),
    # two top stages importing each other
    ("serve/__init__.py", "\nimport gptsmith.explain  # noqa\n",
     "Fine-tuning, explain and serving do not import each other BROKEN"),
])
def test_a_planted_violation_breaks_the_contracts(tmp_path, module, planted, contract):
    project = scratch_copy(tmp_path)
    assert lint_imports(project).returncode == 0  # the clean copy passes
    with open(project / "gptsmith" / module, "a", encoding="utf-8") as f:
        f.write(planted)
    result = lint_imports(project)
    assert result.returncode != 0
    assert contract in result.stdout


def test_the_public_api_is_importable_without_torch_until_used():
    code = ("import sys, gptsmith; assert 'torch' not in sys.modules, 'import gptsmith loaded torch'; "
            "print(','.join(gptsmith.__all__)); "
            "from gptsmith import GPTModel, generate, train; "
            "from gptsmith.generate.generation import generate as g; "
            "from gptsmith.train.run import train as t; "
            "import gptsmith.generate.chat, gptsmith.train.trainer; "  # importing submodules later
            "assert gptsmith.generate is g and gptsmith.train is t and generate is g")  # keeps the functions
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names = out.strip().split(",")
    for name in ("GPTConfig", "GPTModel", "get_tokenizer", "load_model", "generate", "stream_text",
                 "TrainConfig", "train", "ask", "finetune_classifier", "Classifier", "finetune_instruct"):
        assert name in names
    import gptsmith  # every listed name resolves to the object of its defining module

    for name in names:
        assert getattr(gptsmith, name) is not None

