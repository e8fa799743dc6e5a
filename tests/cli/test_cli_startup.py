"""What every verb shares before it does any work: help, version and usage errors without
importing torch; one --dtype spelling set for every verb."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gptsmith.cli import main

PROBE = """import sys
from gptsmith.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print("heavy modules:", sorted(m for m in ("torch", "numpy", "tiktoken") if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["train", "--help"], ["generate", "--help"],
                                  ["info", "--help"], ["prepare", "--help"], ["train", "--batch-size", "x"],
                                  ["generate", "--dtype", "fp64", "--model", "gpt2"], ["nonsense"]])
def test_help_version_and_usage_errors_do_not_import_torch(argv):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "heavy modules: []", proc.stdout + proc.stderr


def _every_verb() -> list[list[str]]:
    """Every sub-command the parser knows, nested ones (``finetune classify``) included."""
    import argparse

    from gptsmith.cli import build_parser

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append(prefix + [name])
                    found.extend(walk(sub, prefix + [name]))
        return found

    return walk(build_parser(), [])


def test_every_verb_help_imports_no_torch():
    verbs = _every_verb()
    assert {"train", "serve", "explain", "classify", "ask"} <= {v[0] for v in verbs}
    assert ["finetune", "classify"] in verbs and ["finetune", "instruct"] in verbs
    probe = "import sys\nfrom gptsmith.cli import main\n"
    for verb in verbs:
        probe += f"try:\n    main({verb + ['--help']!r})\nexcept SystemExit:\n    pass\n"
    probe += PROBE.split("pass\n", 1)[1]
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "heavy modules: []", proc.stderr


def _dtype_options() -> dict[str, object]:
    """Every verb's --dtype option (verb -> its argparse action), nested verbs included."""
    import argparse

    from gptsmith.cli import build_parser

    found = {}

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if "--dtype" in action.option_strings:
                found[" ".join(prefix)] = action
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, prefix + [name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize(("spelling", "canonical"), [
    ("float32", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), ("bfloat16", "bf16"), ("FP16", "fp16"),
    ("float16", "fp16")])
def test_every_verb_accepts_both_dtype_spellings(spelling, canonical):
    """README: --dtype takes fp32/bf16/fp16 or PyTorch's float32/bfloat16/float16 on every verb;
    the training verbs (no fp16) included."""
    import argparse

    options = _dtype_options()
    training = {"train", "finetune classify", "finetune instruct"}
    assert training | {"generate", "chat", "ask", "convert", "explain", "serve"} <= set(options)
    for verb, action in options.items():
        if canonical == "fp16" and verb in training:
            with pytest.raises(argparse.ArgumentTypeError, match="not supported for training"):
                action.type(spelling)
            continue
        value = action.type(spelling) if action.type else spelling
        assert value == canonical, verb
        assert action.choices is None or value in action.choices, verb


def test_train_refuses_fp16_and_names_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dtype", "fp16"])
    assert capsys.readouterr().err == ("gptsmith train: error: argument --dtype: fp16 is not supported "
                                       "for training (it needs a gradient scaler): use bf16 or fp32 (see "
                                       "gptsmith train --help)\n")
    with pytest.raises(SystemExit):
        main(["generate", "--model", "gpt2", "--dtype", "fp64"])
    assert ("--dtype: unknown dtype 'fp64' (choose from auto, fp32, bf16, fp16, int8; float32, bfloat16 "
            "and float16 work too)") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--model", "gpt2", "--dtype", "int8"])  # int8 is for the verbs that decode one text
    assert "--dtype: int8 is for decoding only: --dtype int8 in generate, chat and ask" in \
        capsys.readouterr().err


def test_progress_goes_to_stderr_as_plain_lines_when_it_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    from training_helpers import write_cli_inputs

    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, config = write_cli_inputs(tmp_path)
    argv = ["train", "--data", str(corpus), "--tokenizer", "simple", "--config", str(config), "--out",
            str(tmp_path / "run"), "--device", "cpu", "--max-steps", "20", "--eval-every", "20"]
    assert main(argv) == 0  # with its progress display
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err  # no bar frames in a log
    lines = [line for line in captured.err.splitlines() if line.startswith("step ")]
    assert [line.split(" |")[0] for line in lines] == [f"step {n}/20" for n in range(2, 21, 2)]
    assert "loss " in lines[-1] and "tok/s" in lines[-1]
    assert "done: 20 steps" in captured.out  # the log lines stay on stdout
    assert main(["prepare", str(corpus), "--tokenizer", "simple", "--out", str(tmp_path / "shard"),
                 "--force"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "shard written" in captured.out


@pytest.mark.parametrize(("argv", "what"), [
    (["generate", "--model", "/nonexistent", "caf\udce9"], "the prompt"),
    (["generate", "--model", "/nonexistent", "--stop", "\udcff", "hi"], "--stop"),
    (["chat", "--model", "/nonexistent", "--stop", "a\udcffb"], "--stop"),
    (["ask", "--model", "/nonexistent", "caf\udce9?"], "the question"),
    (["ask", "--model", "/nonexistent", "--input", "caf\udce9", "Fix it."], "--input"),
    (["explain", "--model", "/nonexistent", "caf\udce9"], "the text"),
    (["explain", "--model", "/nonexistent", "--words", "king,\udce9", "hi"], "--words"),
    (["explain", "--model", "/nonexistent", "--neighbours", "\udce9", "hi"], "--neighbours"),
    (["train", "--prompt", "\udce9t\udce9", "--data", "/nonexistent", "--out", "/nonexistent/r"], "--prompt"),
    (["classify", "--checkpoint", "/nonexistent", "ok", "caf\udce9"], "text 2 of the arguments"),
])
def test_text_in_argv_must_be_utf8_as_on_stdin(argv, what, capsys):
    """Linux hands undecodable argv bytes to Python as lone surrogates (surrogateescape)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: {what} is not UTF-8: byte 0x" in err
    assert err.strip().endswith("(convert it, e.g. `iconv -f latin1 -t utf-8`)")
