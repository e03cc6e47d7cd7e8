"""A job's event stream as a script reads it: every event once, in order, each with an id; a client that
reconnects with Last-Event-ID gets exactly what it missed; the stream ends once the job has finished."""

import json

import httpx2 as httpx
import openai

from tests.dashboard.test_job_flow import wait_until
from tests.serving import API_KEY


def read_stream(url: str, last_event_id: str | None = None) -> list[tuple[str, str, dict]]:
    """(event, id, data) of every message until the server ends the stream."""
    headers = {"Authorization": f"Bearer {API_KEY}", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    messages, fields = [], {}
    with httpx.stream("GET", url, headers=headers, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    messages.append((fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":") and ": " in line:
                name, value = line.split(": ", 1)
                fields[name] = value
    return messages


def test_a_reconnecting_client_gets_exactly_what_it_missed(dashboard_server, support_conversations, tmp_path):
    client = openai.OpenAI(base_url=dashboard_server.base_url, api_key=API_KEY, max_retries=0)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:12]))
    job = client.fine_tuning.jobs.create(training_file=client.files.create(file=path.open("rb"), purpose="fine-tune").id,
                                         model="gpt-4o-mini-2024-07-18", hyperparameters={"n_epochs": 2})
    wait_until(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "succeeded", timeout=120, what="the job")
    url = f"{dashboard_server.base_url}/fine_tuning/jobs/{job.id}/events/stream"

    whole = read_stream(url)
    assert whole[0][0] == "job" and whole[0][2]["status"] == "succeeded" and whole[-1][0] == "end"
    events = [(event_id, data) for kind, event_id, data in whole if kind == "job_event"]
    listed = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    assert sorted(data["id"] for _, data in events) == sorted(e.id for e in listed)  # every event, once
    steps = sum(e.type == "metrics" for e in listed)
    assert [data["data"]["step"] for _, data in events if data["type"] == "metrics"] == list(range(1, steps + 1))
    assert all("learning_rate" in data["data"] for _, data in events if data["type"] == "metrics")
    ids = [event_id for event_id, _ in events]
    assert len(set(ids)) == len(ids) and all(event_id for event_id in ids)

    middle = len(events) // 2
    rest = [(event_id, data) for kind, event_id, data in read_stream(url, ids[middle - 1]) if kind == "job_event"]
    assert rest == events[middle:]  # exactly the ones after the last id seen, none again
    assert [kind for kind, _, _ in read_stream(url, whole[-1][1])] == ["job", "end"]  # nothing missed: nothing sent
    assert read_stream(url, "not-an-id")[1:] == whole[1:]  # an id it never gave: from the start

    project = read_stream_until(f"{dashboard_server.base_url}/fine_tuning/jobs/events/stream", job.id)
    assert {"Created fine-tuning job", "The job has successfully completed"} <= {m.split(":")[0] for m in project}


def read_stream_until(url: str, job_id: str) -> list[str]:
    """The project's stream (which never ends) read until the job's completion has come by."""
    seen = []
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["job_id"] == job_id:
                    seen.append(event["message"])
                    if event["message"].startswith("The job has successfully completed"):
                        return seen
    return seen
