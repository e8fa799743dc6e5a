"""The README's commands are the ones the project really has.

A new user copies commands from README.md; these tests keep them honest: the two start-here
commands exist as Makefile targets, CI runs exactly the test command, and every ``gptsmith VERB``
in a README code block is a verb the CLI knows, with ``--help`` that works.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gptsmith.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_blocks(text: str) -> list[str]:
    """Shell code blocks (untagged, ``bash`` or ``sh``), in order."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for lang, body in blocks if lang in ("", "bash", "sh")]


def _readme_verbs() -> set[str]:
    verbs = set()
    for block in _code_blocks(README):
        verbs.update(re.findall(r"(?:^|\s|-m )gptsmith ([a-z][a-z-]*)", block))
    return verbs


def test_start_here_commands_are_makefile_targets_and_ci_runs_the_test_command():
    first_block = _code_blocks(README)[0]
    assert "make run" in first_block and "make test" in first_block
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "make test" in ci_lines


def test_make_run_uses_only_documented_verbs():
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    used = set(re.findall(r"gptsmith ([a-z][a-z-]*)", run_recipe))
    assert used, "make run calls no gptsmith command"
    assert used <= _readme_verbs()


def test_every_verb_in_the_readme_exists():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    known = set(subparsers.choices)
    verbs = _readme_verbs()
    assert {"train", "generate", "prepare", "info", "convert", "finetune", "classify", "ask", "explain",
            "serve"} <= verbs
    assert verbs <= known, f"README mentions unknown verbs: {sorted(verbs - known)}"


@pytest.mark.parametrize("verb", sorted(_readme_verbs()))
def test_help_of_each_readme_verb_works(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: gptsmith" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["console-script", "python-m"])
def test_console_script_runs(how):
    # The interpreter running the tests (the venv's), never whatever `python` is first on PATH.
    script = Path(sys.executable).with_name("gptsmith")
    if how == "console-script" and not script.exists():
        pytest.skip(f"no console script beside {sys.executable} (package not installed with pip)")
    command = [str(script)] if how == "console-script" else [sys.executable, "-m", "gptsmith"]
    result = subprocess.run(command + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "generate" in result.stdout


def _python_blocks(text: str) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for lang, body in blocks if lang == "python"]


def test_readme_python_examples_import_what_exists():
    """Every ``from gptsmith... import`` in a README Python example names a real module and name."""
    imports = [line.strip() for block in _python_blocks(README) for line in block.splitlines()
               if re.match(r"\s*(from gptsmith[\w.]* import|import gptsmith)", line)]
    assert imports, "the README has Python examples"
    for statement in imports:
        statement = statement.split("#")[0].strip()
        if statement.endswith("("):  # a multi-line import: check its module at least
            statement = statement[: -len(" import (")].replace("from ", "import ")
        exec(statement, {})  # raises ImportError if a path or a name is wrong
