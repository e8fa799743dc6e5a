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


def test_the_names_the_readme_says_import_gptsmith_gives_are_its_all():
    """The README lists `import gptsmith`'s names; a name added to __all__ is added there too."""
    import gptsmith

    listing = README.split("`import gptsmith` gives the names used most:", 1)[1]
    listing = listing.split("(`gptsmith.__all__`)")[0]
    listed = set(re.findall(r"`(\w+)`", listing))
    assert listed == set(gptsmith.__all__) - {"__version__"}


# The commands behind the error lines the README quotes: (argv, files to create first).
_QUOTED_ERRORS = {
    "prepare": (["prepare", "missing.txt"], []),
    "train": (["train", "--out", "notes.txt/run"], ["notes.txt"]),
    "generate": (["generate", "--checkpoint", "runs/main", "--max-new-tokens", "ten"], []),
}


def test_the_error_lines_the_readme_quotes_are_what_the_cli_prints(tmp_path, monkeypatch, capsys):
    """Each `gptsmith VERB: error: ...` the README shows is the line that command prints ((...) elides)."""
    quoted = [" ".join(q.split()) for q in re.findall(r"`(gptsmith [a-z]+: error: [^`]+)`", README)]
    assert sorted(q.split(":")[0].split()[1] for q in quoted) == sorted(_QUOTED_ERRORS)
    monkeypatch.chdir(tmp_path)
    for quote in quoted:
        argv, files = _QUOTED_ERRORS[quote.split(":")[0].split()[1]]
        for name in files:
            (tmp_path / name).write_text("a file, not a folder\n")
        try:  # a usage error exits from argparse; a library error is main's return value
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
        printed = capsys.readouterr().err.strip()
        assert status == 2
        assert re.fullmatch(re.escape(quote).replace(re.escape("(...)"), r"\(.*\)"), printed), printed
