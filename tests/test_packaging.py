"""The built package carries what the commands need: the demo's example data, presets and price table, so
`tunelab demo` works from an installed wheel and not only from a source checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts subprocesses

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_wheel_runs_the_demo_s_data_step_outside_the_checkout(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "wheel").glob("tunelab-*.whl"))
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(installed)
    for name in ("train.jsonl", "test.jsonl", "rubric.yaml"):
        assert f"tunelab/examples/support/{name}" in names
    assert "tunelab/core/presets/default.yaml" in names and "tunelab/data/openai_prices.yaml" in names

    # From an unrelated directory, with only the installed copy of tunelab importable.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = ("import tunelab.cli.demo as demo; print(demo.EXAMPLE_DIR); "
              "print(demo._validate_example_data(demo.EXAMPLE_DIR / 'train.jsonl', demo.EXAMPLE_DIR / 'test.jsonl'))")
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 "PYTHONNOUSERSITE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    example_dir, count = result.stdout.split()[-2:]
    assert example_dir.startswith(str(installed)) and count == "160"
