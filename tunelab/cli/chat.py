"""`tunelab chat`: a fine-tuned run, any model or an exported GGUF, with the chat template it was trained
with; one message (`--once`, for scripts) or a terminal session that reads a message, streams the reply and
keeps the conversation.

    tunelab chat runs/ftjob-… --once "My order hasn't arrived."
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
from typing import Literal, Optional

import typer

from tunelab.cli.common import examples, fail, first_line
from tunelab.cli.console import console
from tunelab.core.files import write_text_atomically
from tunelab.runs.rundir import RunDir

EXAMPLES = examples("tunelab chat runs/ftjob-abc123",
                    "tunelab chat runs/ftjob-abc123 --once \"Where is my order?\"",
                    "tunelab chat runs/ftjob-abc123 --base --once \"Where is my order?\"",
                    "tunelab chat runs/ftjob-abc123/export/model.gguf")


def chat(
    model: Optional[str] = typer.Argument(None, metavar="RUN", help="A run directory, a model ('default', a directory, a hub id) or a .gguf file."),
    message: Optional[str] = typer.Argument(None, metavar="[MESSAGE]", help="One message to answer (as --once)."),
    model_option: Optional[str] = typer.Option(None, "--model", "-m", hidden=True),
    once: Optional[str] = typer.Option(None, "--once", metavar="TEXT", help="Answer this one message on stdout and exit (for scripts)."),
    system: Optional[str] = typer.Option(None, "--system", metavar="TEXT", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", metavar="N", help="Token limit per reply."),
    base: bool = typer.Option(False, "--base", help="With a run directory: answer with the base model (adapter off)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, metavar="X", help="0: greedy; above 0, sampled."),
    seed: int = typer.Option(42, "--seed", metavar="N", help="Seed for sampled replies."),
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = typer.Option("auto", "--dtype", help="Number format in transformers: auto (the run's; bf16 on a CPU or GPU with bf16 units). A GGUF in llama.cpp computes as its file says."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", metavar="FILE", help="A Jinja chat template file, for a model that has none of its own."),
) -> None:
    """Chat with a fine-tuned run, any model, or an exported GGUF, using the chat template it was trained with;
    replies stream as they are made. Without a message: an interactive session (/help lists its commands)."""
    if model and model_option:
        message, model = model, model_option  # `chat --model RUN "message"`
    model = model or model_option
    if not model:
        fail("give the run (or model) to chat with: tunelab chat RUN", 2)
    text = once if once is not None else message
    from tunelab.models.resolve import ModelNotFound, check_model

    try:
        check_model(model)  # a mistyped run or model is said at once
    except ModelNotFound as error:
        fail(str(error))
    from tunelab.models.precision import requested_dtype

    try:
        number_format = requested_dtype(dtype)
    except ValueError as error:
        fail(str(error))
    chat_model = _chat_model(model, base, temperature, seed, chat_template, number_format)
    if text is not None:
        reply_once(chat_model, ([{"role": "system", "content": system}] if system else [])
                   + [{"role": "user", "content": text}], max_new_tokens)
        if chat_model.last.finish_reason == "length":
            console.print(f"[yellow](stopped at the {max_new_tokens}-token limit)[/]")
        return
    run_session(chat_model, system, max_new_tokens,
                lambda note: console.print(note, markup=False, highlight=False, soft_wrap=True))


def _chat_model(model: str, base: bool, temperature: float, seed: Optional[int], chat_template: Optional[Path],
                dtype=None):
    """llama.cpp for a .gguf when it is installed; transformers otherwise."""
    from tunelab.models.chat import LlamaCppChat, TransformersChat, llama_cpp_installed

    if model.endswith(".gguf") and Path(model).is_file() and llama_cpp_installed():
        if base or chat_template:
            fail("--base and --chat-template apply to runs and Hugging Face models, not to a GGUF file")
        try:
            return LlamaCppChat(model, temperature, seed)
        except ValueError as error:
            fail(str(error))
    if base and not RunDir(model).is_finished():
        fail(f"--base: {model} is not a finished run directory, so there is no fine-tune to switch off")
    loaded = load_model_for_use(model, chat_template, dtype)
    if base and loaded.fully_fine_tuned:
        fail(f"--base: {model} is a full fine-tune (every weight changed), so there is no adapter to switch off; "
             f"chat with its base model instead: tunelab chat {loaded.base_name if loaded.base_name != 'gemma-3-270m' else 'default'}")
    return TransformersChat(loaded, use_adapter=not base, temperature=temperature, seed=seed)


def load_model_for_use(model: str, chat_template: Optional[Path] = None, dtype=None):
    """A run directory or model spec loaded for generation, or a clear error naming it."""
    from tunelab.conversation.templates import MissingChatTemplate
    from tunelab.models.generate import load_for_generation

    try:
        return load_for_generation(model, chat_template=chat_template and str(chat_template), dtype=dtype)
    except (FileNotFoundError, MissingChatTemplate) as error:
        fail(str(error))
    except OSError as error:  # a damaged model directory, a hub that fails mid-download
        fail(f"{model}: cannot load this model ({first_line(error)}); give a run directory, 'default', a model "
             "directory or a .gguf file")

HELP = ("Enter sends · end a line with \\ to continue it · \"\"\" starts and ends a block\n"
        "/reset clears the conversation · /system TEXT sets the system prompt (/system alone removes it)\n"
        "/save FILE appends the conversation to FILE as chat JSONL · /exit (or Ctrl-D) leaves")


def reply_once(chat, messages: list[dict], max_new_tokens: int, out=None) -> str:
    """Stream one reply to `out` (standard output as it is when called) as it is made; returns its text."""
    out = out or sys.stdout
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
