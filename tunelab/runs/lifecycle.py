"""A fine-tuning job's statuses and the moves between them: one table for local runs and server jobs.

    validating_files → queued → running → succeeded | failed | cancelled
                                running ↔ paused        (resumed through queued on a server)
    cancel from any status that has not finished

A server job moves only as TRANSITIONS says (server/lifecycle.py makes every move, atomically, with its
event). A resumed job goes back through `queued` on a server because it waits for a free training slot like
any other; a local run has no queue, so `tunelab train --resume` moves it from `paused` to `running`.

Moves that exist only for local runs, LOCAL_RESTARTS: a local run that failed (out of memory, a full disk)
is its owner's to resume from its last checkpoint once the cause is fixed, and so is one that says
`cancelled` (what earlier versions wrote for a run stopped with Ctrl-C, now `paused`). A server job that
failed or was cancelled stays so, as at OpenAI: a client starts a new job.

A new job method (DPO, reinforcement) adds a trainer, never a status.
"""

from __future__ import annotations

STATUSES = ("validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled")
FINISHED = frozenset({"succeeded", "failed", "cancelled"})

TRANSITIONS: dict[str, frozenset[str]] = {
    "validating_files": frozenset({"queued", "failed", "cancelled"}),
    "queued": frozenset({"running", "paused", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "paused"}),
    "paused": frozenset({"queued", "running", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
LOCAL_RESTARTS = frozenset({("failed", "running"), ("cancelled", "running")})
# `running` → `running`: a run whose process died (killed, the machine restarted) is started again from its
# last checkpoint; its record still says running, and nothing about the job's state changes.
RESTARTS = frozenset({("running", "running")})


class IllegalTransition(ValueError):
    """A job asked to move where the table does not allow from where it is. `sources`: the statuses it could
    have left (the table's, or fewer where the caller narrowed them); `action`: the word for the move
    ("resumed" for paused → queued), its status by default."""

    def __init__(self, job_id: str, current: str, wanted: str, sources: frozenset[str] | None = None,
                 action: str | None = None):
        self.job_id, self.current, self.wanted = job_id, current, wanted
        action = action or wanted
        sources = sorted(sources_of(wanted) if sources is None else sources, key=STATUSES.index)
        if current in FINISHED:
            why = f"Job {job_id} has already {current}; a finished job cannot be {action}"
        else:
            why = f"Job {job_id} is {current}; " + (f"only a {' or '.join(sources)} job can be {action}"
                                                     if sources else f"no job can be {action}")
        super().__init__(why)


def sources_of(status: str) -> frozenset[str]:
    """The statuses a job may leave to become `status`."""
    return frozenset(source for source, targets in TRANSITIONS.items() if status in targets)


def allowed(current: str, wanted: str, local: bool = False) -> bool:
    return (wanted in TRANSITIONS[current] or (current, wanted) in RESTARTS
            or (local and (current, wanted) in LOCAL_RESTARTS))


def check(job_id: str, current: str, wanted: str, local: bool = False) -> None:
    """IllegalTransition unless a job may move from `current` to `wanted`."""
    if current not in TRANSITIONS:
        raise ValueError(f"{job_id}: unknown status {current!r}")
    if not allowed(current, wanted, local):
        raise IllegalTransition(job_id, current, wanted)
