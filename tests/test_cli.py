"""The command line: help for every command, and clear failures."""

import subprocess
import sys

import pytest

COMMANDS = ["train", "eval", "chat", "demo", "data"]


def tunelab(*args):
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command():
    result = tunelab("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS + ["data validate"])
def test_every_command_has_help(command):
    result = tunelab(*command.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and "--help" in result.stdout


def test_train_with_bad_data_exits_1_naming_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = tunelab("train", "--data", str(bad), "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert f"{bad}:1: messages: no assistant message" in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_without_data_says_so():
    result = tunelab("train")
    assert result.returncode == 1 and "--data is required" in result.stderr
