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


def test_preset_then_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: train.jsonl\nlora_r: 8\n")
    config = TrainConfig.from_sources(path, preset="qwen2.5-0.5b", max_length=512)
    assert config.model == "Qwen/Qwen2.5-0.5B-Instruct"  # from the preset
    assert config.lora_r == 8  # the file overrides the preset
    assert config.max_length == 512  # a flag overrides both
    assert config.micro_batch_size == 8


def test_every_bundled_preset_is_a_valid_config():
    from tunelab.presets import list_presets

    presets = list_presets()
    assert {"default", "llama-3.2-1b", "qwen2.5-0.5b", "gemma-3-1b", "mistral-7b-qlora"} <= {p.name for p in presets}
    for preset in presets:
        assert preset.description, preset.name
        TrainConfig.from_sources(preset=preset.name, data="x.jsonl")  # raises on any bad field


@pytest.mark.parametrize("text, message", [
    ("lora_r: sixteen\n", "lora_r: must be a whole number (got 'sixteen')"),
    ("method: qdora\n", "method: must be one of lora, dora, qlora, full"),
    ("batch_size: 0\n", "batch_size: must be a whole number ≥ 1 or 'auto'"),
    ("validation_split: 1.5\n", "validation_split: must be a fraction"),
    ("- data\n", "expected a mapping of settings"),
])
def test_bad_settings_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        TrainConfig.from_yaml(path)
    assert str(caught.value).startswith(str(path)) and message in str(caught.value)


def test_micro_batches_accumulate_to_the_batch_and_full_uses_a_lower_rate():
    hyper = resolve_hyperparameters(TrainConfig(data="x", batch_size=8, micro_batch_size=3), 160)
    assert (hyper.batch_size, hyper.micro_batch_size, hyper.accumulation_steps) == (8, 3, 3)
    assert resolve_hyperparameters(TrainConfig(data="x", method="full"), 160).learning_rate == 2e-5
