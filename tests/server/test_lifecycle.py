"""One job lifecycle: every move the table forbids is refused and changes nothing, every move it allows is
made with exactly one event, and moves racing on one job from several connections (as the API's and the
worker's are) leave one outcome."""

import itertools
import json
import threading

import pytest

from tunelab.runs import lifecycle
from tunelab.server.lifecycle import IllegalTransition, move
from tunelab.server.store import Store, new_id


def _job(store: Store, status: str) -> str:
    job_id = new_id("ftjob-")
    store.execute("INSERT INTO jobs (id, created_at, model, base_model, training_file, seed, hyperparameters, status) "
                  "VALUES (?, 0, 'default', 'default', 'file-x', 0, '{}', ?)", (job_id, status))
    return job_id


def _state(store: Store, job_id: str) -> tuple[str, list[str]]:
    status = store.execute("SELECT status FROM jobs WHERE id = ?", (job_id,))[0]["status"]
    events = [row["message"] for row in store.execute("SELECT message FROM job_events WHERE job_id = ? "
                                                      "ORDER BY rowid", (job_id,))]
    return status, events


def test_every_move_is_made_or_refused_as_the_table_says(tmp_path):
    store = Store(tmp_path)
    refused = made = 0
    for current, wanted in itertools.product(lifecycle.STATUSES, repeat=2):
        job_id = _job(store, current)
        if wanted in lifecycle.TRANSITIONS[current]:
            move(store, job_id, wanted, f"moved to {wanted}")
            assert _state(store, job_id) == (wanted, [f"moved to {wanted}"])
            finished_at = store.execute("SELECT finished_at FROM jobs WHERE id = ?", (job_id,))[0][0]
            assert (finished_at is not None) == (wanted in lifecycle.FINISHED)
            made += 1
            continue
        with pytest.raises(IllegalTransition) as refusal:
            move(store, job_id, wanted, f"moved to {wanted}")
        assert _state(store, job_id) == (current, [])  # nothing changed, no event
        assert f"Job {job_id} " in str(refusal.value) and current in str(refusal.value)
        refused += 1
    assert (made, refused) == (15, 34)
    # The moves users name: a finished job stays finished, a running one is not resumed, cancel twice.
    finished = _job(store, "succeeded")
    with pytest.raises(IllegalTransition, match="has already succeeded; a finished job cannot be paused"):
        move(store, finished, "paused", "Job paused", leaving=("queued", "running"))
    running = _job(store, "running")
    with pytest.raises(IllegalTransition, match="is running; only a paused job can be resumed"):
        move(store, running, "queued", "Job resumed", leaving=("paused",), action="resumed")
    move(store, running, "cancelled", "Job cancelled")
    with pytest.raises(IllegalTransition, match="has already cancelled"):
        move(store, running, "cancelled", "Job cancelled")
    assert _state(store, running) == ("cancelled", ["Job cancelled"])


def test_a_local_run_may_restart_after_failing_and_a_server_job_may_not():
    assert lifecycle.allowed("failed", "running", local=True)
    assert not lifecycle.allowed("failed", "running")
    assert not lifecycle.allowed("succeeded", "running", local=True)


def test_cancel_pause_and_completion_at_once_leave_one_outcome_and_its_event(tmp_path):
    Store(tmp_path)  # created once; then each thread has its own connection, as the API and the worker do
    outcomes = {"cancelled": 0, "succeeded": 0}
    for _round in range(40):
        job_id = _job(Store(tmp_path), "running")
        result_file = new_id("file-")
        moves = {
            "cancelled": dict(event="Job cancelled"),
            "paused": dict(event="Job paused", leaving=("queued", "running")),
            "succeeded": dict(event="The job has successfully completed", leaving=("running",),
                              columns={"fine_tuned_model": "ft:x", "result_files": json.dumps([result_file])},
                              also=(("INSERT INTO files (id, bytes, created_at, filename, purpose, status) VALUES "
                                     "(?, 1, 0, 'results.csv', 'fine-tune-results', 'processed')", (result_file,)),)),
        }
        start, won, errors = threading.Barrier(len(moves)), [], []

        def attempt(to: str) -> None:
            store = Store(tmp_path)
            start.wait()
            try:
                move(store, job_id, to, **moves[to])
                won.append(to)
            except IllegalTransition as refusal:
                errors.append(refusal)

        threads = [threading.Thread(target=attempt, args=(to,)) for to in moves]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store = Store(tmp_path)
        status, events = _state(store, job_id)
        # One outcome: cancelled or succeeded, never both. A pause may come first (a paused job can still be
        # cancelled), never after; every move that was made has its one event, in order, and no other.
        assert status in ("cancelled", "succeeded") and won[-1] == status, won
        assert won in (["succeeded"], ["cancelled"], ["paused", "cancelled"]), won
        assert events == [moves[to]["event"] for to in won]
        assert len(errors) == len(moves) - len(won)
        stored = store.execute("SELECT id FROM files WHERE id = ?", (result_file,))
        assert bool(stored) == (status == "succeeded")  # a completion that lost recorded nothing
        outcomes[status] += 1
    assert sum(outcomes.values()) == 40
