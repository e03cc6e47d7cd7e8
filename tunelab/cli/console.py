"""The one rich console every command prints through (stderr when stdout carries --json), and the sink that
draws library events on it: messages as lines, progress as live bars."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from tunelab.core.events import PROGRESS, WARNING, Event

console = Console(stderr=True, emoji=False)  # no emoji codes: "ft:gpt-4o-mini:org:…" holds ":m…:"-like runs


def mask_markup(runs: list[tuple[bool, str]]) -> str:
    """`trained_runs` of an example as rich markup: trained tokens green, context dim."""
    return "".join(f"[bold green]{escape(text)}[/]" if trained else f"[dim]{escape(text)}[/]" for trained, text in runs)


class ConsoleEvents:
    """An event sink for the terminal. `progress=False` (e.g. `--quiet`) keeps the lines, drops the bars."""

    def __init__(self, progress: bool = True):
        self.show_progress = progress
        self._bars: Progress | None = None
        self._tasks: dict[str, int] = {}

    def emit(self, event: Event) -> None:
        if event.kind == PROGRESS:
            if self.show_progress:
                self._draw(event)
        elif event.kind == WARNING:
            console.print(f"[yellow]{escape(event.text)}[/]", soft_wrap=True)
        else:
            console.print(escape(event.text), soft_wrap=True)

    def _draw(self, event: Event) -> None:
        data = dict(event.data)
        task, completed, total, finished, unit, transient = (
            data.pop(key) for key in ("task", "completed", "total", "finished", "unit", "transient"))
        counts = f"{completed / 1e6:.1f}/{(total or 0) / 1e6:.1f} MB" if unit == "bytes" else f"{completed}/{total or '?'}"
        status = " · ".join(f"{name} {value}" for name, value in data.items())
        if self._bars is None:
            if not console.is_terminal and transient:
                return  # a bar that would vanish anyway: nothing for a log file
            self._bars = Progress(TextColumn("[bold]{task.description}[/]"), BarColumn(), TextColumn("{task.fields[counts]}"),
                                  TextColumn("{task.fields[status]}"), TimeRemainingColumn(), console=console)
            self._bars.start()
        if task not in self._tasks:
            self._tasks[task] = self._bars.add_task(event.text, total=total, completed=completed, counts=counts,
                                                    status=status)
        self._bars.update(self._tasks[task], completed=completed, total=total, counts=counts, status=status)
        if finished:
            identifier = self._tasks.pop(task)
            if transient:
                self._bars.remove_task(identifier)
            if not self._tasks:  # the last bar stays on screen as it ended, unless transient
                self._bars.stop()
                self._bars = None
