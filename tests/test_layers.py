"""The shape of the code as a contract: each layer imports only those below it, and only the command line
draws on the terminal (import-linter, configured in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first, so the package analysed is the one under `root` even where another is installed.
    return subprocess.run([LINT_IMPORTS, "--no-logo", "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_layers_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Each layer imports only the layers below it KEPT" in result.stdout
    assert "Only the command line draws on the terminal KEPT" in result.stdout


@pytest.mark.parametrize(("module", "added_import", "broken"), [
    ("core/files.py", "import tunelab.train.local", "tunelab.core.files -> tunelab.train.local"),
    ("conversation/reader.py", "from tunelab.data import validate", "tunelab.conversation.reader -> tunelab.data.validate"),
    ("models/precision.py", "import rich.console", "tunelab.models.precision -> rich"),
])
def test_an_import_against_the_layers_breaks_the_build(tmp_path, module, added_import, broken):
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "tunelab", copy / "tunelab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    target = copy / "tunelab" / module
    target.write_text(target.read_text() + f"\n{added_import}  # a lower layer reaching up\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout[-3000:]


def layer_lists() -> dict[str, list[list[str]]]:
    """The layers as the contract states them, and as the package docstring and the development docs list
    them (each line's leading `name/` words, top to bottom)."""
    import re
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    stated = [sorted(part.strip().removeprefix("tunelab.") for part in layer.split("|")) for layer in contract]

    def listed(text: str) -> list[list[str]]:
        rows = re.findall(r"^ *((?:[a-z]+/ *)+) {2,}", text, flags=re.M)
        return [sorted(name.strip("/") for name in row.split()) for row in rows]

    import tunelab

    return {"pyproject.toml": stated, "tunelab/__init__.py": listed(tunelab.__doc__),
            "docs/development.md": listed((ROOT / "docs" / "development.md").read_text())}


def test_the_layer_lists_match_the_contract():
    lists = layer_lists()
    assert lists["tunelab/__init__.py"] == lists["pyproject.toml"], lists
    assert lists["docs/development.md"] == lists["pyproject.toml"], lists
    assert sorted(p.name for p in (ROOT / "tunelab").iterdir() if (p / "__init__.py").is_file()) == \
        sorted(name for layer in lists["pyproject.toml"] for name in layer)
