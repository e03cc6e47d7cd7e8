"""`tunelab serve` under heavy use: 20 jobs submitted and cancelled at once, 50 chat streams at once with
every fifth client hanging up midway — no 5xx, every job and stream ends properly, the server still quick
afterwards, the database intact."""

import httpx2 as httpx
import pytest

from tests.reliability.load import chat_streams, job_burst
from tests.serving import API_KEY, Server, integrity_check

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def loaded_server(tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("loaded")
    running = Server(data_dir, "--alias", f"{MODEL}={tiny_model_dir}", "--dtype", "fp32")
    running.data_dir = data_dir
    yield running
    running.stop()


def test_twenty_jobs_submitted_and_cancelled_at_once(loaded_server, support_conversations):
    import json

    body = "".join(json.dumps(c) + "\n" for c in support_conversations[:12]).encode()
    uploaded = httpx.post(f"{loaded_server.base_url}/files", headers={"Authorization": f"Bearer {API_KEY}"},
                          files={"file": ("train.jsonl", body)}, data={"purpose": "fine-tune"}, timeout=60).json()
    figures = job_burst(loaded_server.base_url, API_KEY, uploaded["id"], MODEL, jobs=20)
    print(figures.line())
    assert figures.server_errors == 0 and figures.other_errors == [], figures.line()
    assert figures.notes["created"] == 20 and figures.notes["listed"] == 20
    assert integrity_check(loaded_server.data_dir) == "ok"


def test_fifty_chat_streams_with_clients_hanging_up(loaded_server):
    figures = chat_streams(loaded_server.base_url, API_KEY, MODEL, streams=50, disconnect_every=5)
    print(figures.line())
    assert figures.server_errors == 0 and figures.other_errors == [], figures.line()
    assert figures.notes["completed"] == 40 and figures.notes["hung_up"] == 10
    assert figures.notes["plain_request_after_s"] < 5
