"""Run settings: YAML has exactly the CLI's fields, flags override, `auto` resolves per dataset."""

import pytest

from tunelab.core.settings import TrainConfig, resolve_hyperparameters


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
    assert (hyper.n_epochs, hyper.batch_size, hyper.learning_rate_multiplier) == (3, 4, 1.0)  # 40 steps an epoch
    assert [resolve_hyperparameters(TrainConfig(data="x"), n).batch_size for n in (20, 48, 96, 192, 5000)] == \
        [1, 2, 4, 8, 8]
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
    from tunelab.core.presets import list_presets

    presets = list_presets()
    assert {"default", "llama-3.2-1b", "qwen2.5-0.5b", "gemma-3-1b", "mistral-7b-qlora"} <= {p.name for p in presets}
    for preset in presets:
        assert preset.description, preset.name
        assert preset.licence != "unknown" and preset.parameters_billion > 0, preset.name  # what users choose by
        TrainConfig.from_sources(preset=preset.name, data="x.jsonl")  # raises on any bad field


def test_migration_suggests_the_largest_permissive_preset_that_fits_the_device():
    from tunelab.remote.migrate import suggest_open_model

    chosen = {(device, gib): suggest_open_model("gpt-4o-mini-2024-07-18", device, gib).preset
              for device, gib in [("cpu", None), ("cuda", 8), ("cuda", 24), ("cuda", 80)]}
    assert {key: preset.name for key, preset in chosen.items()} == {
        ("cpu", None): "qwen2.5-0.5b", ("cuda", 8): "qwen2.5-0.5b",  # Apache-2.0 beats the larger Gemma/Llama 1B
        ("cuda", 24): "qwen2.5-7b-qlora", ("cuda", 80): "qwen2.5-7b-qlora"}
    assert all(preset.permissive for preset in chosen.values())
    reason = suggest_open_model("gpt-4o", "cuda", 24).reason
    assert "Apache-2.0" in reason and "mistral-7b-qlora (7.25B, Apache-2.0)" in reason and "--to" in reason


@pytest.mark.parametrize("text, message", [
    ("lora_r: sixteen\n", "lora_r: must be a whole number ≥ 1 (got 'sixteen')"),
    ("adapter: qdora\n", "adapter: must be one of lora, dora, qlora, full"),
    ("method: reinforce\n", "method: must be one of supervised, dpo"),
    ("beta: 3\n", "beta: must be a number above 0, at most 2, or 'auto'"),
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
    assert resolve_hyperparameters(TrainConfig(data="x", adapter="full"), 160).learning_rate == 2e-5
    assert resolve_hyperparameters(TrainConfig(data="x", method="dpo"), 160).learning_rate == pytest.approx(2e-5)


def test_the_old_spelling_of_the_adapter_is_still_taken_and_noted(tmp_path):
    """`method: qlora` came before `adapter:` (method is now OpenAI's method.type); a run's old config.yaml must
    still resume, and a user is told the new spelling."""
    path = tmp_path / "old.yaml"
    path.write_text("method: full\nlora_r: 8\n")
    config = TrainConfig.from_sources(path, method="dpo")
    assert (config.method, config.adapter, config.lora_r) == ("dpo", "full", 8)  # the file's full is kept
    assert config.notes and "`adapter: full`" in config.notes[0] and str(path) in config.notes[0]
    assert TrainConfig(data="x", method="qlora").adapter == "qlora"
    with pytest.raises(ValueError, match="give the weights that train as adapter only"):
        TrainConfig.from_sources(None, method="full", adapter="lora")


@pytest.mark.slow
def test_every_setting_has_a_flag_and_every_flag_a_setting():
    import os
    import re
    import subprocess
    import sys

    from typer.testing import CliRunner

    from tunelab.cli.app import app

    shown = CliRunner().invoke(app, ["train", "--help"], terminal_width=400)
    flags = set(re.findall(r"(?<![\w-])--([a-z][a-z-]*)", shown.stdout)) - {"install-completion", "show-completion"}
    own = {"config", "preset", "resume", "quiet", "json", "help", "remote", "api-key", "plan", "memory", "plan-device"}
    negations = {f"no-{name}" for name in ("gradient-checkpointing", "fsdp")}
    other_spellings = {"from"}  # of --from-run
    assert flags - own - other_spellings - negations == {name.replace("_", "-") for name in TrainConfig.model_fields}
    for name in ("lora_dropout", "target_modules", "warmup_ratio", "lr_scheduler", "weight_decay", "max_grad_norm"):
        assert name in TrainConfig.model_fields  # what users of other trainers expect to set
    assert "[default: linear]" in shown.stdout and "[default: 16]" in shown.stdout  # defaults from the model


@pytest.mark.parametrize("flags, message", [
    ({"n_epochs": "three"}, "--n-epochs: must be a whole number ≥ 1 or 'auto' (got 'three')"),
    ({"lr_scheduler": "step"}, "--lr-scheduler: must be one of linear, cosine, constant (got 'step')"),
    ({"warmup_ratio": "1"}, "--warmup-ratio: must be a fraction from 0 up to (not including) 1"),
    ({"suffix": "x" * 65}, "--suffix: must be 1 to 64 characters"),
])
def test_bad_flags_name_the_flag(flags, message):
    with pytest.raises(ValueError) as caught:
        TrainConfig.from_sources(**flags)
    assert message in str(caught.value)


def test_flags_given_as_text_are_typed_and_a_preset_error_names_the_preset(tmp_path):
    config = TrainConfig.from_sources(n_epochs="3", learning_rate_multiplier="0.5", batch_size="auto",
                                      gradient_checkpointing=True, data="x.jsonl")
    assert (config.n_epochs, config.learning_rate_multiplier, config.batch_size) == (3, 0.5, "auto")
    path = tmp_path / "run.yaml"
    path.write_text("lora_r: '16'\n")  # a file's values must have their types: text is not a number
    with pytest.raises(ValueError, match=r"lora_r: must be a whole number ≥ 1 \(got '16'\)"):
        TrainConfig.from_yaml(path)


def test_learning_rate_schedules():
    from tunelab.train.schedule import learning_rate_factor, warmup_steps

    total, warmup = 100, warmup_steps(100, 0.1)
    assert warmup == 10 and warmup_steps(5, 0.1) == 1 and warmup_steps(30, 0.1) == 3
    for scheduler in ("linear", "cosine", "constant"):
        factors = [learning_rate_factor(step, total, warmup, scheduler) for step in range(total)]
        assert factors[:10] == [(step + 1) / 10 for step in range(10)]  # the same warmup for all
        assert factors[10] == 1.0
    linear = [learning_rate_factor(step, total, warmup, "linear") for step in range(total)]
    cosine = [learning_rate_factor(step, total, warmup, "cosine") for step in range(total)]
    assert linear[55] == pytest.approx(0.5) and cosine[55] == pytest.approx(0.5)  # both halfway at mid-decay
    assert cosine[30] > linear[30] and cosine[80] < linear[80]  # cosine decays late, then fast
    assert linear[-1] == pytest.approx(1 / 90) and cosine[-1] < 0.001
    assert learning_rate_factor(99, total, warmup, "constant") == 1.0


def test_a_migration_reads_matches_only_when_interval_and_test_agree():
    from tunelab.remote.migrate import comparison_reading

    # (diff, CI low, CI high, p, n, higher is better) → reading; diff is local − hosted
    cases = {(-7.5, -12.9, -2.9, 0.0768, 16, True): "may fall short of",  # interval and test disagree
             (-3.0, -5.9, -0.2, 0.0213, 16, True): "falls short of",
             (4.0, 1.0, 7.0, 0.01, 16, True): "beats",
             (1.2, -4.4, 6.9, 0.607, 16, None): "matches",
             (5.0, 2.0, 8.0, 0.001, 16, None): "differs from",
             (50.0, 40.0, 60.0, 0.0625, 4, True): "cannot be told apart from"}
    assert {case: comparison_reading(*case) for case in cases} == cases
