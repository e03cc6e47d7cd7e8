"""Run settings: YAML has exactly the CLI's fields, flags override, `auto` resolves per dataset."""

import pytest

from tunelab.config import TrainConfig, resolve_hyperparameters


def test_yaml_settings_with_flag_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: train.jsonl\nn_epochs: 5\nlora_r: 8\n")
    config = TrainConfig.from_yaml(path, n_epochs=2, seed=None)
    assert (config.data, config.n_epochs, config.lora_r, config.seed) == ("train.jsonl", 2, 8, 42)


def test_unknown_yaml_setting_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: a.jsonl\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['epochs'\]"):
        TrainConfig.from_yaml(path)


def test_auto_hyperparameters():
    hyper = resolve_hyperparameters(TrainConfig(data="x"), n_examples=160)
    assert (hyper.n_epochs, hyper.batch_size, hyper.learning_rate_multiplier) == (3, 8, 1.0)
    assert resolve_hyperparameters(TrainConfig(data="x"), n_examples=20).batch_size == 2
    assert resolve_hyperparameters(TrainConfig(data="x", learning_rate_multiplier=2), 160).learning_rate == 4e-4
