"""The commands the CLI prints for the user to run next are quoted for the shell: a run directory
with a space or a quote in its name still gives a command that works when pasted."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import SimpleNamespace

from training_helpers import train_args, write_cli_inputs

from gptsmith.cli import main, train_cmds
from gptsmith.cli.shell import command_line
from gptsmith.train.checkpointing import no_checkpoint_message
from gptsmith.train.run_dir import resume_advice


def hinted_command(text: str, label: str) -> list[str]:
    """The words of the command that follows ``label`` on its line, as a shell reads them."""
    line = next(line for line in text.splitlines() if label in line)
    return shlex.split(line.split(label, 1)[1].rstrip(")"))


def test_command_line_quotes_only_what_the_shell_would_split_or_expand():
    assert command_line("gptsmith", "generate", "--checkpoint", Path("runs/main"), "The module") == \
        "gptsmith generate --checkpoint runs/main 'The module'"
    odd = ["runs/my run", "it's", "$HOME", "a;b", "*", ""]
    assert shlex.split(command_line("gptsmith", *odd)) == ["gptsmith", *odd]


def test_train_hints_run_as_printed_for_an_out_with_a_space(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, config = write_cli_inputs(tmp_path)
    out = tmp_path / "my runs" / "it's one"
    assert main(train_args(corpus, config, out, "--max-steps", "2")) == 0
    generate = hinted_command(capsys.readouterr().out, "generate with: ")
    assert generate[:4] == ["gptsmith", "generate", "--checkpoint", str(out)] and len(generate) == 5
    assert main([*generate[1:], "--max-new-tokens", "2"]) == 0  # the hint, pasted, works
    capsys.readouterr()

    stopped = SimpleNamespace(stopped="interrupted", step=2, last_checkpoint=out / "checkpoints" / "x")
    assert train_cmds._report(stopped, out, None) == 130
    resume = hinted_command(capsys.readouterr().out, "continue with: ")
    assert resume == ["gptsmith", "train", "--resume", str(out)]
    assert hinted_command(resume_advice(out), "continue with: ") == resume  # after Ctrl-C, from the library
    assert main([*resume[1:], "--max-steps", "3", "--no-progress"]) == 0
    assert "`gptsmith train --out 'my run' --overwrite`" in no_checkpoint_message(Path("my run"))


def test_a_run_directory_starting_with_a_dash_is_hinted_as_a_path_not_a_flag(tmp_path, monkeypatch, capsys):
    assert command_line("gptsmith", "train", "--resume", Path("-run")) == "gptsmith train --resume ./-run"
    assert "`gptsmith train --out ./-run --overwrite`" in no_checkpoint_message(Path("-run"))
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, config = write_cli_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = train_args(corpus, config, "OUT", "--max-steps", "2")
    argv[argv.index("--out"):argv.index("OUT") + 1] = ["--out=-run"]  # `--out -run` reads as two flags
    assert main(argv) == 0
    generate = hinted_command(capsys.readouterr().out, "generate with: ")
    assert generate[:4] == ["gptsmith", "generate", "--checkpoint", "./-run"]
    assert main([*generate[1:], "--max-new-tokens", "2"]) == 0  # the hint, pasted, works
