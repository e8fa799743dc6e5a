"""``python -m benchmarks budget --set``: the recipe's variants, checked before anything trains."""

import pytest

from benchmarks.budget import candidate_configs, main
from gptsmith.errors import ConfigError
from gptsmith.train.recipes import get_recipe


def test_set_changes_the_recipe_model_and_train_fields():
    recipe = get_recipe("tinyshakespeare")
    model_cfg, train_cfg = candidate_configs("recipe", "tinyshakespeare",
                                             {"lr": 3e-3, "drop_rate": 0.3, "model.n_layers": 6})
    assert (train_cfg.lr, model_cfg.drop_rate, model_cfg.n_layers) == (3e-3, 0.3, 6)
    assert train_cfg.batch_size == recipe["train"]["batch_size"]  # the rest is the recipe's
    base_model, base_train = candidate_configs("recipe", "tinyshakespeare")
    assert base_train.lr == recipe["train"]["lr"] and base_model.n_layers != 6


def test_set_does_not_change_the_nanogpt_candidate():
    _, train_cfg = candidate_configs("nanogpt", "tinyshakespeare", {"lr": 3e-3})
    assert train_cfg.lr == 1e-3


@pytest.mark.parametrize("change, message", [
    ({"foo": 1}, "no model or train config field 'foo'"),
    ({"model.lr": 1}, "no model or train config field 'lr'"),
    ({"context_length": 64}, "write model.context_length or train.context_length"),
])
def test_set_names_a_field_of_one_config(change, message):
    with pytest.raises(ConfigError, match=message):
        candidate_configs("recipe", "tinyshakespeare", change)


@pytest.mark.parametrize("change, message", [
    ("lr=abc", "--lr must be a finite number"),
    ("drop_rate=2", "drop_rate must be a number in"),
    ("lr", "expected FIELD=VALUE"),
])
def test_bad_set_fails_before_training(change, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--set", change, "--minutes", "0.01"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_exponent_floats_read_as_numbers_in_set_and_config_files(tmp_path):
    from gptsmith.config import load_config_file, parse_assignments

    assert parse_assignments(["lr=3e-3", "min_lr=1E-5", "n_layers=6", "data=notes"]) == {
        "lr": 3e-3, "min_lr": 1e-5, "n_layers": 6, "data": "notes"}
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 3e-4\n  weight_decay: .1\n", encoding="utf-8")
    assert load_config_file(path) == {"train": {"lr": 3e-4, "weight_decay": 0.1}}
    _, train_cfg = candidate_configs("recipe", "tinyshakespeare", parse_assignments(["lr=3e-3"]))
    train_cfg.check()  # the documented example: a float, not the string '3e-3'
