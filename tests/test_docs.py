"""The documentation: the README stays a front door, and the MkDocs site builds strictly (a broken link or a
page missing from the navigation fails it), with its reference pages generated from the code."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = str(Path(sys.executable).parent / "mkdocs")
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}


def build(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MKDOCS, "build", "--strict", "--site-dir", str(site)], cwd=project, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **QUIET})


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme and "## Install" in readme
    assert ".venv/bin/tunelab demo" not in readme  # one way to call it, said once: activate the venv


@pytest.mark.slow
def test_the_site_builds_strictly_with_generated_references(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "tunelab data convert" in cli and "--metadata-column" in cli and "Examples:" in cli
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text(encoding="utf-8")
    assert "--lora-r" in settings and "early_stopping_patience" in settings


@pytest.mark.slow
def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    page = copy / "docs" / "guide" / "train.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    result = build(copy, tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stderr
