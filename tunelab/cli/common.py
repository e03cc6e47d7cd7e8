"""What every command shares: where output goes, how a command fails, its exit codes, and help-screen parts.

The conventions (docs/reference/conventions.md says them to users):
- results go to stdout (`out`), progress and diagnostics to stderr (`console`), so `tunelab … > file` and
  `tunelab … | grep` get the result, and `--json` on stdout is the result alone;
- exit codes: 0 done, 1 bad input or a failed check, 2 a usage error (a flag or argument), 3 a bug in
  tunelab, 130 interrupted;
- an error is one line, `error: WHERE: what is wrong — what to do`, naming the file, line, flag or setting.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from tunelab.cli.console import console

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# Results: plain text on stdout (no colour when piped), never wrapped, so a line can be grepped whole.
out = Console(emoji=False, highlight=False, soft_wrap=True)

# Every command's help screen: -h as well as --help, and click's own layout (wrapped at word boundaries
# to the terminal, at most 80 columns) rather than boxed panels.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 80}


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """Stop the command with one unwrapped line on stderr (`file:line: field: problem` stays whole)."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """A warning line on stderr; the command goes on."""
    console.print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def examples(*lines: str) -> str:
    """A help screen's closing examples, kept as written (click rewraps paragraphs not marked with \\b)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def say(text: str) -> None:
    """One plain result line on stdout."""
    out.print(text, markup=False)


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
