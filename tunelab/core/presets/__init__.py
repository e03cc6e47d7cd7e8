"""Bundled run presets: YAML files holding TrainConfig fields for a model family, to start from.

    tunelab presets list
    tunelab presets copy qwen2.5-0.5b my-run.yaml     # then edit it and: tunelab train --config my-run.yaml
    tunelab train --preset qwen2.5-0.5b --data train.jsonl

A preset's first comment line is its description; `# licence: …` and `# parameters: 7.6B` lines under it
say what a user must know before choosing a model (and what `tunelab migrate` picks by). Presets set the
model and the settings that depend on its size (method, rank, micro-batch, checkpointing); data, epochs
and seeds stay the user's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    description: str
    settings: dict
    licence: str = "unknown"
    parameters_billion: float = 0.0

    @property
    def permissive(self) -> bool:
        """Whether the licence lets anyone use, change and ship the model without terms of its own."""
        return self.licence in PERMISSIVE_LICENCES


PERMISSIVE_LICENCES = {"Apache-2.0", "MIT"}


def list_presets() -> list[Preset]:
    presets = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text else ""
        description = first.lstrip("# ").strip() if first.startswith("#") else ""
        about = dict(re.findall(r"^# (licence|parameters): (.+?)\s*$", text, flags=re.MULTILINE))
        presets.append(Preset(path.stem, path, description, yaml.safe_load(text) or {},
                              licence=about.get("licence", "unknown"),
                              parameters_billion=float(about.get("parameters", "0B").rstrip("B"))))
    return presets


def preset_path(name: str) -> Path:
    """The YAML file of preset `name`; a clear error listing the presets when there is none."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file() or path.resolve().parent != PRESET_DIR:  # a name, not a path out of the presets
        names = ", ".join(p.name for p in list_presets())
        raise ValueError(f"no preset named {name!r}; presets: {names}")
    return path
