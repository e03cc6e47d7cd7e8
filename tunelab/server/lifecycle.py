"""Every change of a server job's status, made here and only here.

    move(store, job_id, "paused", "Job paused", leaving=("queued", "running"))

A move is one transaction: the UPDATE names the statuses the job may leave (the lifecycle table's,
runs/lifecycle.py, narrowed by `leaving`), so of two moves racing on one job (a cancel, a pause, the
worker recording completion) exactly one happens; the other finds the job moved and gets
IllegalTransition naming where it is now. The move's event and anything recorded with it (a completed
job's result files) are written in the same transaction, so a crash leaves all or none.
"""

from __future__ import annotations

import json
import time

from tunelab.runs import lifecycle
from tunelab.runs.lifecycle import IllegalTransition

__all__ = ["IllegalTransition", "fail", "move"]


def move(store, job_id: str, to: str, event: str, *, level: str = "info", leaving: tuple[str, ...] | None = None,
         columns: dict | None = None, also: tuple[tuple[str, tuple], ...] = (), action: str | None = None) -> None:
    """Move the job to status `to` from any status the table allows (those in `leaving` only, when given),
    setting `columns` too (`finished_at` is set on finishing, `started_at` on first running); write `event`
    and run the `also` statements in the same transaction. IllegalTransition if the job is elsewhere (its
    message names the move as `action`, the new status by default)."""
    sources = sorted(lifecycle.sources_of(to) & set(leaving or lifecycle.STATUSES))
    changes = dict(columns or {})
    if to in lifecycle.FINISHED:
        changes.setdefault("finished_at", int(time.time()))
    assignments = "".join(f", {name} = ?" for name in changes)
    if to == "running":
        assignments += ", started_at = COALESCE(started_at, ?)"
    parameters = [to, *changes.values(), *([int(time.time())] if to == "running" else [])]
    with store.transaction() as db:
        moved = db.execute(f"UPDATE jobs SET status = ?{assignments} WHERE id = ? "
                           f"AND status IN ({', '.join('?' * len(sources))})", (*parameters, job_id, *sources)).rowcount
        if not moved:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            raise IllegalTransition(job_id, row["status"] if row else "missing", to, frozenset(sources), action)
        store.job_event(job_id, event, level=level, db=db)
        for sql, statement_parameters in also:
            db.execute(sql, statement_parameters)


def fail(store, job_id: str, code: str, message: str, param: str | None = None,
         leaving: tuple[str, ...] | None = None) -> bool:
    """Fail the job with OpenAI's error object; False (and nothing changed) if it had already moved on —
    cancelled by its client, say — since then."""
    try:
        move(store, job_id, "failed", f"Job failed: {message}", level="error", leaving=leaving,
             columns={"error": json.dumps({"code": code, "message": message, "param": param})})
    except IllegalTransition:
        return False
    return True
