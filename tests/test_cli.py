"""The command line: help for every command, and clear failures."""

import os
import subprocess
import sys

import pytest

from tests.conftest import run_cli

COMMANDS = ["train", "eval", "chat", "serve", "demo", "data", "presets"]


def tunelab(*args):
    """The command in-process, its output as text (the one test that needs a real process starts its own)."""
    result = run_cli(*args)
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def test_top_level_help_lists_every_command():
    result = tunelab("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS + ["data validate", "data render", "presets copy"])
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


def test_presets_list_and_copy(tmp_path):
    listed = tunelab("presets", "list")
    assert listed.returncode == 0 and "qwen2.5-0.5b" in listed.stdout and "llama-3.1-8b-qlora" in listed.stdout
    target = tmp_path / "mine.yaml"
    copied = tunelab("presets", "copy", "qwen2.5-0.5b", str(target))
    assert copied.returncode == 0 and "Qwen/Qwen2.5-0.5B-Instruct" in target.read_text()
    again = tunelab("presets", "copy", "qwen2.5-0.5b", str(target))
    assert again.returncode == 1 and "--force" in again.stderr
    unknown = tunelab("presets", "copy", "gpt-5", str(tmp_path / "x.yaml"))
    assert unknown.returncode == 1 and "no preset named 'gpt-5'" in unknown.stderr


def test_data_render_marks_exactly_the_assistant_replies(tmp_path, tiny_model_dir):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, '
                    '{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}, '
                    '{"role": "assistant", "content": "Goodbye.", "weight": 0}]}\n')
    result = tunelab("data", "render", str(data), "--model", str(tiny_model_dir), "--plain")
    assert result.returncode == 0, result.stderr
    header, body = result.stdout.split("\n", 1)
    assert header.startswith(f"--- {data}:1 ·") and "trained" in header
    # The first reply and its end-of-turn marker are trained; the weight-0 reply is context only.
    assert "⟦Hello!<end_of_turn>\n⟧" in body and "⟦" not in body.split("⟧", 1)[1]
    assert "Goodbye." in body
    missing = tunelab("data", "render", str(data), "--model", str(tiny_model_dir), "--line", "7")
    assert missing.returncode == 1 and f"{data}:7: no conversation on that line" in missing.stderr


@pytest.mark.slow
def test_serve_refuses_to_listen_beyond_loopback_without_tls_or_a_key(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != "TUNELAB_API_KEY"}
    serve = [sys.executable, "-m", "tunelab.cli", "serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]
    plain = subprocess.run([*serve, "--api-key", "k"], capture_output=True, text=True, timeout=120, env=environment)
    assert plain.returncode == 1 and "sends keys over the network; give --tls-cert and --tls-key" in plain.stderr
    keyless = subprocess.run([*serve, "--insecure-http"], capture_output=True, text=True, timeout=120, env=environment)
    assert keyless.returncode == 1 and "--host 0.0.0.0: listening beyond this machine needs keys" in keyless.stderr
    half = subprocess.run([*serve, "--tls-cert", __file__], capture_output=True, text=True, timeout=120, env=environment)
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr
    assert not (tmp_path / "tunelab.db").exists()
