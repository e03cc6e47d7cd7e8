"""Write the reference pages that come from the code itself, at `mkdocs build` time (mkdocs-gen-files):

- reference/cli.md: every command's own `-h` screen, walked from the root command;
- reference/settings.md: every training setting from the settings model (type, default, help);
- reference/presets.md: the bundled presets and their settings.
"""

from __future__ import annotations

import mkdocs_gen_files
import typer
from typer.testing import CliRunner

from tunelab.cli.app import app
from tunelab.core.presets import list_presets
from tunelab.core.settings import TrainConfig, field_choices, field_help


def command_paths() -> list[list[str]]:
    paths = []

    def walk(command, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, path + [name])

    walk(typer.main.get_command(app), [])
    return paths


def cli_page() -> str:
    runner = CliRunner()
    parts = ["# Command line\n",
             "Every command's help screen, as `tunelab COMMAND -h` prints it (this page is generated from it). "
             "The conventions all commands share — arguments, output streams, `--json`, exit codes — are on "
             "[Conventions and exit codes](conventions.md).\n"]
    for path in command_paths():
        shown = runner.invoke(app, [*path, "-h"], prog_name="tunelab", terminal_width=80).stdout
        title = " ".join(["tunelab", *path])
        parts.append(f"\n## `{title}`\n\n```text\n{shown.rstrip()}\n```\n")
    return "".join(parts)


def settings_page() -> str:
    rows = ["| setting | flag | values | default | what it does |", "|---|---|---|---|---|"]
    for name, field in TrainConfig.model_fields.items():
        text, default = field_help(name)
        choices = field_choices(name)
        values = " \\| ".join(choices) if choices else _kind(field.annotation)
        rows.append(f"| `{name}` | `--{name.replace('_', '-')}` | {values} | {f'`{default}`' if default else '—'} | {text} |")
    return ("# Training settings\n\n"
            "One typed model holds every training setting (`tunelab/core/settings.py`); this page is generated "
            "from it. The same names are flags (`--lora-r 8`), keys of a settings file (`lora_r: 8`, given as "
            "`tunelab train run.yaml`) and, for the three OpenAI hyperparameters, the API's "
            "`method.supervised.hyperparameters`. A preset, then the file, then flags: each overrides the one "
            "before, and an error names the setting and where it came from.\n\n" + "\n".join(rows) + "\n")


def _kind(annotation) -> str:
    text = str(annotation)
    if "Literal['auto']" in text:
        return "number or `auto`"
    return {"<class 'int'>": "whole number", "<class 'float'>": "number", "<class 'bool'>": "true or false",
            "<class 'str'>": "text"}.get(text, "text")


def presets_page() -> str:
    parts = ["# Presets\n\n",
             "Bundled starting points (`tunelab presets list`, `tunelab train --preset NAME`, "
             "`tunelab presets copy NAME FILE` to edit one); this page is generated from them.\n\n",
             "| preset | model | adapter | size | licence | for |\n|---|---|---|---|---|---|\n"]
    for preset in list_presets():
        settings = preset.settings
        parts.append(f"| `{preset.name}` | `{settings.get('model', '')}` | {settings.get('adapter', 'lora')} | "
                     f"{preset.parameters_billion:g}B | {preset.licence} | {preset.description} |\n")
    return "".join(parts)


for page, text in (("reference/cli.md", cli_page()), ("reference/settings.md", settings_page()),
                   ("reference/presets.md", presets_page())):
    with mkdocs_gen_files.open(page, "w") as file:
        file.write(text)
