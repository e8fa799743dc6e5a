"""Mistyped command lines: argparse's own errors are one line, `gptsmith VERB: error: MESSAGE (see
gptsmith VERB --help)`, exit status 2, like every other gptsmith error; --help is still the full help."""

from __future__ import annotations

import pytest

from gptsmith.cli import build_parser, main


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "usage:" not in captured.err, captured.err
    return captured.err.rstrip("\n")


@pytest.mark.parametrize("argv, line", [
    (["generate", "--model", "gpt2", "--max-new-tokens", "ten"],
     "gptsmith generate: error: argument --max-new-tokens: invalid int value: 'ten'"),
    (["generate", "The module"],
     "gptsmith generate: error: one of the arguments --checkpoint --model is required"),
    (["generate", "--model", "gpt2", "--bogus", "--frob"],
     "gptsmith generate: error: unrecognized arguments: --bogus --frob"),
    (["finetune", "classify", "--data", "d", "--out", "o", "--model", "gpt2", "--lora-rank", "x"],
     "gptsmith finetune classify: error: argument --lora-rank: invalid int value: 'x'"),
    (["finetune", "classify", "--model", "gpt2", "--bogus"],
     "gptsmith finetune classify: error: the following arguments are required: --data, --out"),
    (["train", "--temperature", "1"], "gptsmith train: error: unrecognized arguments: --temperature 1"),
])
def test_a_usage_error_is_one_line_naming_the_command_and_its_help(capsys, argv, line):
    verb = line.split(": error:")[0]
    assert _usage_error(capsys, argv) == f"{line} (see {verb} --help)"


def test_files_left_over_suggest_quoting_a_glob_the_shell_expanded(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text("text")
    for argv in (["prepare", "a.txt", "b.txt", "c.txt"], ["train", "--data", "a.txt", "b.txt", "c.txt"]):
        assert _usage_error(capsys, argv).endswith(
            "error: unrecognized arguments: b.txt c.txt; they are files: did the shell expand a glob? quote "
            f"it, e.g. 'notes/*.txt', or pass their folder (see gptsmith {argv[0]} --help)")


def test_an_unknown_command_points_to_the_top_level_help(capsys):
    line = _usage_error(capsys, ["genrate", "--model", "gpt2"])
    assert line.startswith("gptsmith: error: argument COMMAND: invalid choice: 'genrate' (choose from ")
    assert "'generate'" in line and line.endswith(" (see gptsmith --help)")


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["finetune", "classify", "--help"]])
def test_help_is_still_the_whole_help(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.startswith(f"usage: gptsmith {' '.join(argv[:-1])}".rstrip()) and out.count("\n") > 10
    assert "options:" in out and "-h, --help" in out


def test_the_parsed_arguments_carry_nothing_of_the_parser():
    args = build_parser().parse_args(["generate", "--model", "gpt2", "hi"])
    assert all(not name.startswith("_") for name in vars(args))  # commands save vars(args) as settings
    assert args.prompt == "hi" and args.model == "gpt2"


@pytest.mark.parametrize("argv", [[], ["finetune"]])
def test_a_missing_command_is_a_usage_error_with_the_help_on_stderr(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""  # a script that lost its verb fails
    assert captured.err.startswith(f"usage: gptsmith {' '.join(argv)}".rstrip())
    assert ("train" if not argv else "classify") in captured.err  # the commands to choose from
