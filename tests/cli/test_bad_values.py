"""Values a user can type that no command may crash on: seeds out of range, non-finite split
fractions, absurd model sizes (each one line, exit status 2)."""

from __future__ import annotations

import pytest
from generation_helpers import tiny_model
from training_helpers import train_args, write_cli_inputs

from gptsmith.cli import main
from gptsmith.device import MAX_SEED, set_seed
from gptsmith.errors import ConfigError
from gptsmith.generate.generation import generate

SEED_RANGE = f"must be a whole number from 0 to {MAX_SEED}"


def one_error_line(capsys, verb: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"gptsmith {verb}: error: ") and err.count("\n") == 1, err
    return err.strip()


@pytest.mark.parametrize("seed", [-1, 2**32, 10**23])
def test_seeds_out_of_range_are_one_message_everywhere(seed, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPTSMITH_CACHE_DIR", str(tmp_path / "cache"))
    corpus, config = write_cli_inputs(tmp_path)
    assert main(train_args(corpus, config, tmp_path / "run", "--seed", str(seed))) == 2
    assert one_error_line(capsys, "train").endswith(f"--seed {SEED_RANGE}, got {seed}")
    assert not (tmp_path / "run").exists()
    assert main(["eval", "--preset", "tiny", "--seed", str(seed), "--data", str(corpus)]) == 2
    assert one_error_line(capsys, "eval").endswith(f"--seed {SEED_RANGE}, got {seed}")
    # the fine-tunes and explain say it before loading anything (the base named here does not exist)
    out = str(tmp_path / "out")
    for argv in (["finetune", "classify", "--model", "/nonexistent", "--data", str(corpus), "--out", out],
                 ["finetune", "instruct", "--model", "/nonexistent", "--data", str(corpus), "--out", out],
                 ["explain", "--model", "/nonexistent", "Hello"]):
        assert main([*argv, "--seed", str(seed)]) == 2
        assert one_error_line(capsys, " ".join(argv[:2]) if argv[0] == "finetune" else "explain").endswith(
            f"--seed {SEED_RANGE}, got {seed}")
        assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=f"seed {SEED_RANGE}, got {seed}"):
        set_seed(seed)
    with pytest.raises(ConfigError, match=f"seed {SEED_RANGE}, got {seed}"):
        generate(tiny_model(), [1, 2], 3, temperature=1.0, seed=seed)


def test_generate_checks_every_seed_of_its_samples(capsys):
    argv = ["generate", "--model", "/nonexistent", "--temperature", "1", "--num-samples", "2"]
    assert main([*argv, "--seed", str(10**23)]) == 2
    assert one_error_line(capsys, "generate").endswith(f"--seed {SEED_RANGE}, got {10**23}")
    assert main([*argv, "--seed", str(MAX_SEED)]) == 2  # the second sample's seed is MAX_SEED + 1
    assert one_error_line(capsys, "generate").endswith(
        f"--seed {MAX_SEED} with --num-samples 2 uses seeds up to {MAX_SEED + 1}; --seed {SEED_RANGE} "
        "(lower --seed)")


@pytest.mark.parametrize("split", ["nan,0.1,0.1", "0.8,inf,0.1", "0.8,0.1,-inf"])
def test_prepare_refuses_non_finite_split_fractions(split, capsys):
    assert main(["prepare", "--split", split]) == 2
    assert "must be finite" in one_error_line(capsys, "prepare")


def test_info_of_absurd_sizes_is_arithmetic_or_a_line(capsys):
    argv = ["info", "gpt2-xl", "--set", "n_layers=1000000000", "--set", "emb_dim=1000000000", "--set",
            "n_heads=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "parameters: 12,000,000,013,000,051,283,000,000,000 with the output head tied" in out
    assert "tok_emb.weight" in out and "50257 x 1000000000" in out
    assert main([*argv, "--json"]) == 0
