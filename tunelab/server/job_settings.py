"""What a server job trains with beyond OpenAI's three hyperparameters: tunelab's extension of the job
request, and the preset the server was started with for each base model.

    client.fine_tuning.jobs.create(
        training_file=file.id, model="gpt-4o-mini-2024-07-18", hyperparameters={"n_epochs": 2},
        extra_body={"tunelab": {"adapter": "qlora", "lora_r": 8, "micro_batch_size": 2,
                                "gradient_checkpointing": True}})

    tunelab serve --alias gpt-4o-mini-2024-07-18=/models/llama-3.1-8b \\
                  --job-preset gpt-4o-mini-2024-07-18=llama-3.1-8b-qlora

A job's settings, each source overriding the one before: a preset (the request's `tunelab.preset`, else the
server's for that base model), then the request's other `tunelab` settings, then OpenAI's hyperparameters.
The official SDK sends `extra_body` as top-level keys of the request, so code written for OpenAI needs no
change and code that wants more adds one argument. The `tunelab` object takes any setting of `tunelab
train` (core/settings.py EXTENSION_SETTINGS) under its YAML name; what OpenAI's own fields carry (files,
model, suffix, seed, n_epochs, batch_size, learning_rate_multiplier) is set there, and paths on the
server's disk are never taken. A preset's `model` is left out: the job's base is the request's `model`.

The settings chosen are stored with the job and returned in its object under `tunelab` (with the preset's
name); the run's config.yaml holds every setting the run used.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.core.settings import (AUTO, EXTENSION_SETTINGS, OPENAI_HYPERPARAMETERS, TrainConfig,
                                   job_extension_spelling, parsed_values, read_settings_file)


class JobSettingsError(ValueError):
    """A `tunelab` extension the server cannot take; `param` names the field at fault."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def load_job_presets(entries: list[str], aliases: dict[str, str]) -> dict[str, dict]:
    """`--job-preset BASE=PRESET` entries → {base model spec: {"preset": name, **settings}}.

    BASE is a name the server answers to (an alias or a base model spec); PRESET a bundled preset's name or
    a YAML file of settings. Raises ValueError naming the entry at fault."""
    from tunelab.core.presets import preset_path

    presets = {}
    known = {"default", *aliases, *aliases.values()}
    for entry in entries:
        base, _, preset = entry.partition("=")
        if not base or not preset:
            raise ValueError(f"--job-preset {entry!r}: expected BASE=PRESET, e.g. "
                             "gpt-4o-mini-2024-07-18=llama-3.1-8b-qlora or default=my-settings.yaml")
        if base not in known:
            raise ValueError(f"--job-preset {entry!r}: the server answers to no base model {base!r}; it answers to "
                             f"{', '.join(sorted(known))} (add one with --alias NAME=MODEL)")
        path = Path(preset) if preset.endswith((".yaml", ".yml")) else preset_path(preset)
        try:
            settings = read_settings_file(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"--job-preset {entry!r}: {error}") from None
        settings.pop("model", None)
        settings = job_extension_spelling(settings, path)
        outside = sorted(set(settings) - set(EXTENSION_SETTINGS) - set(OPENAI_HYPERPARAMETERS))
        if outside:
            raise ValueError(f"--job-preset {entry!r}: {', '.join(outside)} cannot be set by a preset for server "
                             "jobs (each job names its own files, suffix and seed)")
        try:
            TrainConfig.model_validate(settings)
        except ValueError as error:
            raise ValueError(f"--job-preset {entry!r}: {error}") from None
        presets[aliases.get(base, base)] = {"preset": preset, **settings}
    return presets


def job_extension(extension: dict | None, base_model: str, server_presets: dict[str, dict], hyperparameters: dict,
                  has_validation_file: bool) -> dict:
    """The settings a job will train with beyond OpenAI's fields: {"preset": name or None, **settings}, from
    the request's `tunelab` object (its settings checked one by one already: requests.py), checked together
    with the hyperparameters as one run's settings."""
    from tunelab.core.presets import preset_path

    requested = dict(extension or {})
    preset = requested.pop("preset", None)
    if preset is not None:
        try:
            preset_path(preset)
        except ValueError as error:
            raise JobSettingsError(f"tunelab.preset: {error}", "tunelab.preset") from None
    if preset is not None:
        chosen = {"preset": preset, **{name: value for name, value in read_settings_file(preset_path(preset)).items()
                                       if name != "model"}}
    else:
        chosen = dict(server_presets.get(base_model) or {"preset": None})
    chosen.update(requested)
    # The preset's epochs, batch and rate give way to those the request set in OpenAI's fields.
    for name, value in hyperparameters.items():
        if value != AUTO:
            chosen.pop(name, None)
    settings = {name: value for name, value in chosen.items() if name != "preset"}
    uri = settings.get("mlflow_tracking_uri")
    if uri and not str(uri).startswith(("http://", "https://")):
        raise JobSettingsError("tunelab.mlflow_tracking_uri: a server job reports to an MLflow server's URL "
                               "(http:// or https://); leave it out to log into the job's own run directory",
                               "tunelab.mlflow_tracking_uri")
    try:  # the rules between settings (validation_split and a validation file exclude each other)
        parsed_values({**hyperparameters, **settings, "data": "training_file",
                       "validation": "validation_file" if has_validation_file else None}, lambda name: f"tunelab.{name}")
    except ValueError as error:
        raise JobSettingsError(str(error).removeprefix("settings: "), "tunelab") from None
    return chosen
