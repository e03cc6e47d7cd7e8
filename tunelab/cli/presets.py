"""`tunelab presets`: the bundled training presets — list them, copy one to edit.

    tunelab presets list [--json]
    tunelab presets copy qwen2.5-7b-qlora my-run.yaml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.common import CONTEXT, examples, fail, out, say

presets_app = typer.Typer(help="Bundled training presets: list them, copy one to edit.", no_args_is_help=True,
                          context_settings=CONTEXT, rich_markup_mode=None,
                          epilog=examples("tunelab presets list", "tunelab presets copy qwen2.5-7b-qlora run.yaml"))


@presets_app.command("list", epilog=examples("tunelab presets list", "tunelab presets list --json"))
def presets_list(as_json: bool = typer.Option(False, "--json", help="Print the presets and their settings as JSON.")) -> None:
    """The bundled presets, with their model, method, size and licence."""
    from rich.table import Table

    from tunelab.core.presets import list_presets

    presets = list_presets()
    if as_json:
        print(json.dumps([{"name": p.name, "description": p.description, "licence": p.licence,
                           "parameters_billion": p.parameters_billion, "settings": p.settings} for p in presets], indent=2))
        return
    wide = out.width >= 140  # names are copied from this table: they are never cut; the description
    table = Table(box=None)   # (what hardware it fits) is shown when there is room for it
    table.add_column("preset", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for header in ("adapter", "size", "licence") + (("description",) if wide else ()):
        table.add_column(header)
    for preset in presets:
        table.add_row(preset.name, str(preset.settings.get("model", "")), str(preset.settings.get("adapter", "lora")),
                      f"{preset.parameters_billion:g}B", preset.licence, *([preset.description] if wide else []))
    out.print(table)
    say("Use one: tunelab train --preset NAME --data FILE, or copy it to edit: tunelab presets copy NAME FILE")


@presets_app.command("copy", epilog=examples("tunelab presets copy qwen2.5-7b-qlora run.yaml",
                                             "tunelab train run.yaml --data data/train.jsonl"))
def presets_copy(
    name: str = typer.Argument(..., metavar="NAME", help="Preset name (see `tunelab presets list`)."),
    destination: Optional[Path] = typer.Argument(None, metavar="[FILE]", help="Where to write it (default NAME.yaml)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing file."),
) -> None:
    """Copy a preset to a YAML file you can edit and pass to `tunelab train FILE`."""
    from tunelab.core.files import write_text_atomically
    from tunelab.core.presets import preset_path

    try:
        source = preset_path(name)
    except ValueError as error:
        fail(str(error))
    destination = destination or Path(f"{name}.yaml")
    if destination.exists() and not force:
        fail(f"{destination} already exists; pass --force to replace it")
    write_text_atomically(destination, source.read_text(encoding="utf-8"))
    say(f"{destination}: copied preset {name}; train with `tunelab train {destination} --data FILE`")
