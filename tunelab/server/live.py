"""Server-sent events: a job's events as they happen, and every job change of a project — tunelab's addition
to OpenAI's API, which the dashboard watches and any script can too.

    GET /v1/fine_tuning/jobs/{id}/events/stream   every event of the job, oldest first, then each new one
    GET /v1/fine_tuning/jobs/events/stream             each new job event of the project (created, status changes…)

    curl -N -H "Authorization: Bearer $KEY" http://127.0.0.1:8000/v1/fine_tuning/jobs/ftjob-…/events/stream

Each message is `event: job_event` with a `fine_tuning.job.event` as its data (metrics events carry the
step's figures and its learning rate; the server's own events — created, validated, each status change —
say `"data": {"by": "server"}`), and an `id`: the position after it. A client that reconnects sends the last id it saw as
`Last-Event-ID` (browsers' EventSource does so by itself) and gets exactly what it missed — positions are
made of what is stored (the database's event rows, the lines of the run's events.jsonl), so this holds
across a server restart too. A client that cannot set headers (a page reopening a stream it closed) passes
the id as `?last_event_id=`; the header wins when both are sent. A job's stream without an id starts at the
job's first event; the project's stream starts at the present (`Last-Event-ID: 0` replays the project's
whole history) with an `event: ready` whose id is that position, so a reconnect misses nothing. A job's stream also sends `event: job` (the `fine_tuning.job` object) when it
starts and whenever the job's status changes, and `event: end` once the job has finished and its last
events are sent; then it closes.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunelab.runs.lifecycle import FINISHED
from tunelab.runs.rundir import RunDir
from tunelab.server.auth import project_of
from tunelab.server.jobs import job_object, job_row

POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 15  # a comment line, so proxies and browsers keep an idle stream open
RETRY_MILLISECONDS = 1000  # how soon a browser reconnects
SETTLE_SECONDS = 5  # a job's process may still write its last events just after the job finished

router = APIRouter(include_in_schema=False)  # server-sent events, which OpenAPI does not describe: docs/reference/api.md


def message(kind: str, data: dict, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def sent_event_id(request: Request) -> str | None:
    return request.headers.get("last-event-id") or request.query_params.get("last_event_id")


def _positions(last_event_id: str | None, parts: int) -> list[int]:
    """A Last-Event-ID back as its positions; anything malformed starts from the beginning."""
    pieces = (last_event_id or "").split("-")
    if len(pieces) != parts or not all(piece.isdigit() for piece in pieces):
        return [0] * parts
    return [int(piece) for piece in pieces]


class JobEvents:
    """What of one job's events a stream has sent: the last database event row, and the lines (and bytes) of
    the run's events.jsonl."""

    def __init__(self, store, job_id: str, last_event_id: str | None):
        self.store, self.job_id = store, job_id
        self.run = RunDir(store.run_dir(job_id))
        self.row, self.lines = _positions(last_event_id, 2)
        self.offset: int | None = None  # bytes of events.jsonl read; found again from `lines` when None

    @property
    def position(self) -> str:
        return f"{self.row}-{self.lines}"

    def new(self) -> list[tuple[dict, str]]:
        """Events written since the last call, each with the position after it."""
        found = []
        for row in self.store.execute("SELECT rowid, * FROM job_events WHERE job_id = ? AND rowid > ? ORDER BY rowid",
                                      (self.job_id, self.row)):
            self.row = row["rowid"]
            found.append(({"object": "fine_tuning.job.event", "id": row["id"], "created_at": row["created_at"],
                           "level": row["level"], "message": row["message"], "data": {"by": "server"},
                           "type": "message"}, self.position))
        for event in self._new_run_events():
            self.lines += 1
            if "status" not in event.get("data", {}):  # the job's statuses are the server's own events
                found.append((event, self.position))
        return found

    def _new_run_events(self) -> list[dict]:
        path = self.run.events_file
        if not path.is_file():
            return []
        with path.open("rb") as file:
            if self.offset is None:
                self.offset = self._offset_of_line(file, self.lines)
            elif self.offset > path.stat().st_size:  # the run started over (a job restarted before it trained)
                self.offset, self.lines = 0, 0
            file.seek(self.offset)
            data = file.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete)
        return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]

    def _offset_of_line(self, file, lines: int) -> int:
        """The byte offset after the first `lines` lines; when the file has fewer, its run started over
        since that position was given, and everything in it is new."""
        offset, counted = 0, 0
        for line in file:
            if counted == lines or not line.endswith(b"\n"):
                break
            offset, counted = offset + len(line), counted + 1
        if counted < lines:
            offset, counted = 0, 0
        self.lines = counted
        return offset


@router.get("/fine_tuning/jobs/{job_id}/events/stream")
async def stream_job_events(request: Request, job_id: str):
    row = job_row(request, job_id)
    store = request.app.state.store
    cursor = JobEvents(store, row["id"], sent_event_id(request))

    def poll():  # one trip to a worker thread per poll: the job's row and its new events
        return store.execute("SELECT rowid, * FROM jobs WHERE id = ?", (row["id"],))[0], cursor.new()

    async def stream():
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        status, finished_seen, quiet_since = None, None, time.monotonic()
        while True:
            current, new = await run_in_threadpool(poll)
            if current["status"] != status:
                status = current["status"]
                yield message("job", await run_in_threadpool(job_object, store, current))
            for event, position in new:
                yield message("job_event", event, position)
                quiet_since = time.monotonic()
            if status in FINISHED:
                finished_seen = finished_seen or time.monotonic()
                if time.time() - (current["finished_at"] or 0) > SETTLE_SECONDS or \
                        time.monotonic() - finished_seen > SETTLE_SECONDS:
                    yield message("end", {"status": status}, cursor.position)
                    return
            if time.monotonic() - quiet_since > HEARTBEAT_SECONDS:
                yield ": still here\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)

    return _event_stream(stream())


@router.get("/fine_tuning/jobs/events/stream")
async def stream_project_events(request: Request):
    """The server's own events of every job of the project (created, validated, started, paused, finished…):
    what a list of jobs needs to stay current."""
    store, project = request.app.state.store, project_of(request)
    resumed = sent_event_id(request)
    (after,) = _positions(resumed, 1)

    async def stream():
        nonlocal after
        yield f"retry: {RETRY_MILLISECONDS}\n\n"
        if resumed is None:  # a new client: what happens from now on (it has just read the list)
            after = (await run_in_threadpool(
                store.execute, "SELECT COALESCE(MAX(e.rowid), 0) AS last FROM job_events e JOIN jobs j ON j.id = e.job_id "
                "WHERE j.project_id = ?", (project,)))[0]["last"]  # the project's own: ids say nothing of others
            yield message("ready", {}, str(after))  # its id is where a reconnecting client resumes
        quiet_since = time.monotonic()
        while True:
            rows = await run_in_threadpool(
                store.execute, "SELECT e.rowid, e.* FROM job_events e JOIN jobs j ON j.id = e.job_id "
                "WHERE j.project_id = ? AND e.rowid > ? ORDER BY e.rowid", (project, after))
            for event in rows:
                after = event["rowid"]
                yield message("job_event", {"object": "fine_tuning.job.event", "id": event["id"],
                                            "job_id": event["job_id"], "created_at": event["created_at"],
                                            "level": event["level"], "message": event["message"], "data": {},
                                            "type": "message"}, str(after))
                quiet_since = time.monotonic()
            if time.monotonic() - quiet_since > HEARTBEAT_SECONDS:
                yield ": still here\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)

    return _event_stream(stream())


def _event_stream(body) -> StreamingResponse:
    # No buffering by proxies (nginx honours X-Accel-Buffering), no caching.
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
