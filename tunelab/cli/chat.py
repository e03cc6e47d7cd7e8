"""`tunelab chat`'s terminal session: read a message, stream the reply, keep the conversation.

    you> Where is my order?
    It left our warehouse on Monday…
    you> /save good-answers.jsonl        # the conversation as one chat JSONL line, ready to train on
    you> /reset

Input: Enter sends; a line ending in a backslash continues on the next line, and a block between two lines
of three double quotes is sent whole. Arrow keys recall earlier input (readline, kept across sessions in
$XDG_STATE_HOME/tunelab/chat_history). Commands: /reset, /system TEXT, /save FILE, /help, /exit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tunelab.core.files import write_text_atomically

HELP = ("Enter sends · end a line with \\ to continue it · \"\"\" starts and ends a block\n"
        "/reset clears the conversation · /system TEXT sets the system prompt (/system alone removes it)\n"
        "/save FILE appends the conversation to FILE as chat JSONL · /exit (or Ctrl-D) leaves")


def reply_once(chat, messages: list[dict], max_new_tokens: int, out=sys.stdout) -> str:
    """Stream one reply to `out` as it is made; returns its text."""
    for piece in chat.stream(messages, max_new_tokens):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return chat.last.text


def run_session(chat, system: str | None, max_new_tokens: int, notify) -> None:
    """The interactive loop; `notify(text)` shows the session's own messages (not the model's)."""
    _use_readline()
    messages: list[dict] = []
    notify(f"chatting with the model; /help for commands\n{HELP}")
    while True:
        try:
            text = _read_message()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text.strip():
            continue
        if text.startswith("/"):
            command, _, argument = text.strip().partition(" ")
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                messages = []
                notify("(conversation cleared)")
            elif command == "/system":
                system = argument.strip() or None
                notify(f"(system prompt {'set' if system else 'removed'})")
            elif command == "/save":
                if not argument.strip():
                    notify("(/save needs a file name)")
                    continue
                saved = _save(Path(argument.strip()).expanduser(), _with_system(system, messages))
                notify(f"(saved {saved} messages to {argument.strip()})")
            elif command == "/help":
                notify(HELP)
            else:
                notify(f"(unknown command {command}; /help lists them)")
            continue
        messages.append({"role": "user", "content": text})
        try:
            reply = reply_once(chat, _with_system(system, messages), max_new_tokens)
        except KeyboardInterrupt:  # stop this reply, keep the session
            messages.pop()
            notify("\n(reply stopped)")
            continue
        messages.append({"role": "assistant", "content": reply})
        if chat.last.finish_reason == "length":
            notify(f"(stopped at the {max_new_tokens}-token limit)")


def _with_system(system: str | None, messages: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + messages


def _read_message() -> str:
    first = input("you> ")
    if first.strip() == '"""':
        lines = []
        while (line := input("... ")).strip() != '"""':
            lines.append(line)
        return "\n".join(lines)
    lines = [first]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input("... "))
    return "\n".join(lines)


def _save(path: Path, messages: list[dict]) -> int:
    """Append the conversation to `path` as one JSONL line, writing a new file and renaming it over the old,
    so an interrupted save loses nothing that was there."""
    if not any(message["role"] == "assistant" for message in messages):
        return 0
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    if before and not before.endswith("\n"):
        before += "\n"
    write_text_atomically(path, before + json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return len(messages)


def _use_readline() -> None:
    """Arrow keys and history for input(), kept in a file between sessions (best effort)."""
    try:
        import atexit
        import readline
    except ImportError:
        return
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "tunelab"
    history = state / "chat_history"
    try:
        state.mkdir(parents=True, exist_ok=True)
        if history.is_file():
            readline.read_history_file(history)
    except OSError:
        return
    readline.set_history_length(1000)
    atexit.register(lambda: _write_history(readline, history))


def _write_history(readline, history: Path) -> None:
    try:
        readline.write_history_file(history)
    except OSError:
        pass
