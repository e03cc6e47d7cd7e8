"""A job's event stream as a script reads it: every event once, in order, each with an id; a client that
reconnects with Last-Event-ID gets exactly what it missed; the stream ends once the job has finished."""

import json

import httpx2 as httpx
import openai
from playwright.sync_api import expect

from tests.dashboard.browser import set_tab_hidden
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
    by_query = read_stream(f"{url}?last_event_id={ids[middle - 1]}")  # a page reopening a stream cannot set headers
    assert [(event_id, data) for kind, event_id, data in by_query if kind == "job_event"] == events[middle:]

    # The project's stream: from the present for a new client (it has just read the list), with the
    # position as its first id; from the start with Last-Event-ID 0.
    project_url = f"{dashboard_server.base_url}/fine_tuning/jobs/events/stream"
    history = read_project_stream(project_url, "0", until=lambda event: event["job_id"] == job.id and
                                  event["message"].startswith("The job has successfully completed"))
    assert {"Created fine-tuning job", "The job has successfully completed"} <= \
        {event["message"].split(":")[0] for _, _, event in history if event["job_id"] == job.id}
    ready = read_project_stream(project_url, None, until=lambda event: True)
    assert ready[0][0] == "ready" and int(ready[0][1]) >= int(history[-1][1])
    later = client.fine_tuning.jobs.create(training_file=job.training_file, model="gpt-4o-mini-2024-07-18",
                                           hyperparameters={"n_epochs": 1})
    new = read_project_stream(project_url, ready[0][1], until=lambda event: event["job_id"] == later.id)
    assert new[0][2]["job_id"] == later.id  # the next event after the ready's id is the new job's, nothing older
    client.fine_tuning.jobs.cancel(later.id)  # it has served its purpose


def read_project_stream(url: str, last_event_id: str | None, until) -> list[tuple[str, str, dict]]:
    """The project's stream (which never ends) read until `until(data)` holds for a message."""
    headers = {"Authorization": f"Bearer {API_KEY}", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    messages, fields = [], {}
    with httpx.stream("GET", url, headers=headers, timeout=30) as response:
        for line in response.iter_lines():
            if line == "" and "data" in fields:
                messages.append((fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])))
                if until(messages[-1][2]):
                    return messages
                fields = {}
            elif not line.startswith(":") and ": " in line:
                name, value = line.split(": ", 1)
                fields[name] = value
    return messages


def test_tabs_in_the_background_let_their_streams_go_so_a_seventh_tab_loads(browser, page):
    """A browser keeps six connections to one server; each open dashboard tab follows a stream. Tabs in the
    background close theirs and reopen them, from the last id, when shown again."""
    tabs = [page]
    set_tab_hidden(page, True)
    expect(page.locator("#live")).to_contain_text("Paused while this tab is in the background")
    for _ in range(7):
        tab = page.context.new_page()
        tab.goto(f"{page.base}/jobs", timeout=15_000)  # with six streams held, the seventh would wait forever
        expect(tab.locator("#live")).to_contain_text("Live", timeout=15_000)
        set_tab_hidden(tab, True)
        tabs.append(tab)
    set_tab_hidden(page, False)
    expect(page.locator("#live")).to_contain_text("Live: updates appear as they happen")
    assert page.console.errors == []
