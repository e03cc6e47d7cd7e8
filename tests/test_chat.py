"""`tunelab chat`: one reply for scripts (`--once`, on a run and on an exported GGUF), and an interactive
session driven through a real terminal (a pty): replies stream, /reset forgets, /save writes chat JSONL."""

import json
import sys

import pexpect
import pytest

from tests.conftest import run_cli, train_tiny_run
from tunelab.models.chat import TransformersChat
from tunelab.models.generate import generate_replies, load_for_generation

pytestmark = pytest.mark.slow  # trains a tiny run; the interactive session starts the CLI in a terminal


@pytest.fixture(scope="module")
def run(tmp_path_factory, support_conversations):
    return train_tiny_run(tmp_path_factory.mktemp("chat"), support_conversations, n_epochs=2, seed=5)


def tunelab(*arguments, env: dict | None = None):
    """The command in-process (the interactive session below runs in a real process and terminal)."""
    return run_cli(*arguments, env=env, text=True)


def test_a_streamed_reply_comes_in_pieces_and_equals_the_batch_reply(run):
    loaded = load_for_generation(str(run), device="cpu", dtype=__import__("torch").float32)
    messages = [{"role": "user", "content": "Where is my order?"}]
    chat = TransformersChat(loaded)
    pieces = list(chat.stream(messages, max_new_tokens=24))
    assert len(pieces) > 3  # token by token, not all at once
    assert "".join(pieces).strip() == chat.last.text == generate_replies(loaded, [messages], max_new_tokens=24)[0].text


def test_once_answers_from_a_run_and_from_its_gguf_alike(run, tmp_path):
    from_run = tunelab("chat", str(run), "--once", "Where is my order?", "--max-new-tokens", "16", "--dtype", "fp32")
    assert from_run.returncode == 0, from_run.stderr
    exported = tunelab("export", str(run), "--format", "gguf", "--dtype", "f32", "--prompts", str(run.parent / "train.jsonl"),
                       "--verify-prompts", "3", "--json")
    assert exported.returncode == 0, exported.stderr
    gguf = json.loads(exported.stdout)["path"]
    # The GGUF is converted into the model cache on first use: a cache of this test's own, not the user's.
    from_gguf = tunelab("chat", gguf, "--once", "Where is my order?", "--max-new-tokens", "16", "--dtype", "fp32",
                        env={"TUNELAB_CACHE": str(tmp_path / "cache")})
    assert from_gguf.returncode == 0, from_gguf.stderr
    assert [path.name for path in (tmp_path / "cache" / "models").glob("run-f32-*") if path.is_dir()]
    # The same reply, from llama.cpp when installed, else from transformers' GGUF loader. The run stops on
    # the vocabulary's <eos> as well as <end_of_turn>; llama.cpp does too, but a GGUF's EOS slot holds
    # <end_of_turn>, so transformers may write on past an <eos> the untrained tiny model emits: the GGUF's
    # reply starts with the run's.
    assert from_run.stdout.strip() and from_gguf.stdout.startswith(from_run.stdout.rstrip("\n"))


def test_an_interactive_session_in_a_terminal_streams_resets_and_saves(run, tmp_path):
    saved = tmp_path / "conversations.jsonl"
    session = pexpect.spawn(sys.executable, ["-m", "tunelab.cli", "chat", str(run), "--max-new-tokens", "12",
                                             "--system", "Be brief."],
                            cwd=str(tmp_path), env={**__import__("os").environ, "XDG_STATE_HOME": str(tmp_path)},
                            encoding="utf-8", timeout=240, dimensions=(40, 200))
    session.expect("you> ")
    session.sendline("Where is my order?")
    session.expect("you> ")  # the reply streamed, then the prompt again
    first_reply = session.before
    session.sendline(f"/save {saved}")
    session.expect(r"\(saved 3 messages to .*\)")
    session.expect("you> ")
    session.sendline("/reset")
    session.expect(r"\(conversation cleared\)")
    session.expect("you> ")
    session.sendline("A second line \\")  # continues on the next line
    session.expect(r"\.\.\. ")
    session.sendline("of the same message")
    session.expect("you> ")
    session.sendline(f"/save {saved}")
    session.expect(r"\(saved 3 messages")
    session.sendline("/exit")
    session.expect(pexpect.EOF)
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [[m["role"] for m in line["messages"]] for line in lines] == [["system", "user", "assistant"]] * 2
    assert lines[0]["messages"][1]["content"] == "Where is my order?"
    assert lines[1]["messages"][1]["content"] == "A second line \nof the same message"  # the reset dropped turn one
    assert lines[0]["messages"][2]["content"] in first_reply.replace("\r\n", "\n")
    assert (tmp_path / "tunelab" / "chat_history").is_file()  # arrow-key history kept for the next session
