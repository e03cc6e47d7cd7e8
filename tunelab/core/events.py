"""Events: how library code reports progress, messages and metrics without printing.

    events = Events(sink)                       # the caller chooses where they go
    events.message("Loaded gemma-3-270m in 2.1 s", model_load_seconds=2.1)
    with events.progress("train", total=60) as bar:
        bar.advance(loss="2.314", speed="512")

Library functions take an `events` argument and default to `NO_EVENTS`, which drops everything: a library
call prints nothing unless its caller asked. The command line passes a sink that draws rich progress bars
and lines (`tunelab/cli/console.py`); a run's job record writes the OpenAI-shaped events of its
`events.jsonl` itself (`tunelab/runs/record.py`); the server will store them in SQLite. Several jobs in
one process each get their own sink, so nothing is shared but the sink's target.

A sink is anything with `emit(event)`. Events are plain data, so a sink can serialise them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

MESSAGE, WARNING, PROGRESS = "message", "warning", "progress"


@dataclass(frozen=True)
class Event:
    """One thing that happened. `kind` is MESSAGE, WARNING or PROGRESS; `data` holds its figures."""

    kind: str
    text: str = ""
    data: dict = field(default_factory=dict)


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...


class Events:
    """What library code holds: a few verbs over a sink (None: events are dropped)."""

    def __init__(self, sink: EventSink | None = None):
        self.sink = sink

    def emit(self, kind: str, text: str = "", **data) -> None:
        if self.sink is not None:
            self.sink.emit(Event(kind, text, data))

    def message(self, text: str, **data) -> None:
        self.emit(MESSAGE, text, **data)

    def warning(self, text: str, **data) -> None:
        self.emit(WARNING, text, **data)

    def progress(self, task: str, total: int | None, completed: int = 0, description: str | None = None,
                 unit: str = "steps", transient: bool = False) -> "Progress":
        """A progress bar for `task` (e.g. "train", "generate"), `completed` of `total` `unit`s done.

        `transient`: the bar is of no interest once finished (a sink may remove it).
        """
        return Progress(self, task, total, completed, description or task, unit, transient)


class Progress:
    """One task's progress: every change is an event with the task, the counts and any fields to show.

    A context manager: leaving it (normally or by an error) sends the final event, with `finished` True,
    so a sink can close its bar.
    """

    def __init__(self, events: Events, task: str, total: int | None, completed: int, description: str, unit: str,
                 transient: bool):
        self.events, self.task, self.total, self.completed, self.description = events, task, total, completed, description
        self.kind = {"unit": unit, "transient": transient}
        self.fields: dict = {}
        self._update(finished=False)

    def advance(self, steps: int = 1, **fields) -> None:
        """`steps` more done; `fields` are figures to show beside the bar (loss, speed…)."""
        self.update(self.completed + steps, **fields)

    def update(self, completed: int, **fields) -> None:
        """`completed` done in all."""
        self.completed = completed
        self.fields.update(fields)
        self._update(finished=False)

    def close(self) -> None:
        self._update(finished=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *_exception) -> None:
        self.close()

    def _update(self, finished: bool) -> None:
        self.events.emit(PROGRESS, self.description, task=self.task, completed=self.completed, total=self.total,
                         finished=finished, **self.kind, **self.fields)


NO_EVENTS = Events(None)
