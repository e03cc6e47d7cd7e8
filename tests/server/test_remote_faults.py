"""How `tunelab jobs` and `train --remote` behave when the remote misbehaves. The misbehaving remote is a
small real HTTP server in this file (busy, failing, dropping connections, reporting a failed job); the
client is our own CLI with the official openai client inside, unpatched."""

import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import run_cli

JOB = {"object": "fine_tuning.job", "id": "ftjob-abc", "created_at": 1, "model": "gpt-4o-mini-2024-07-18",
       "organization_id": "org", "status": "running", "training_file": "file-1", "validation_file": None,
       "hyperparameters": {"n_epochs": 1}, "seed": 0, "fine_tuned_model": None, "trained_tokens": None,
       "finished_at": None, "result_files": [], "error": None}


class Remote:
    """Answers GET requests from `script`: a list of (status, body, headers) used in order (the last one
    repeats), or "drop" to close the connection without answering. Counts the requests per path."""

    def __init__(self, scripts: dict[str, list]):
        self.scripts, self.requests = scripts, {}
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                count = remote.requests[path] = remote.requests.get(path, 0) + 1
                script = remote.scripts[path]
                answer = script[min(count, len(script)) - 1]
                if answer == "drop":
                    self.connection.shutdown(2)
                    return
                status, body, headers = answer
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *arguments):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def tunelab(*arguments):
    """The CLI in an empty directory (no runs/ of its own to list beside the server's jobs), with no key;
    in-process, as a process of its own would add only its imports."""
    with tempfile.TemporaryDirectory() as empty:
        return run_cli(*arguments, cwd=Path(empty), env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}, text=True)


FAST_RETRY = {"retry-after-ms": "10"}  # the openai client honours it, so retries take milliseconds here
EMPTY = {"object": "list", "data": [], "has_more": False}


@pytest.fixture()
def remote():
    started = []
    yield lambda scripts: started.append(Remote(scripts)) or started[-1]
    for server in started:
        server.close()


def test_busy_and_failing_servers_are_retried_then_reported_plainly(remote):
    busy = remote({"/v1/fine_tuning/jobs": [(429, {"error": {"message": "Rate limit"}}, FAST_RETRY)] * 2
                   + [(200, {"object": "list", "data": [JOB], "has_more": False}, {})]})
    listed = tunelab("jobs", "list", "--remote", busy.url, "--api-key", "k", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["data"][0]["id"] == "ftjob-abc"
    assert busy.requests["/v1/fine_tuning/jobs"] == 3  # two 429s retried, then the answer

    down = remote({"/v1/fine_tuning/jobs": [(503, {"error": {"message": "Upstream is down"}}, FAST_RETRY)]})
    failed = tunelab("jobs", "list", "--remote", down.url, "--api-key", "k")
    assert failed.returncode == 1 and "HTTP 503: Upstream is down" in failed.stderr
    assert "Traceback" not in failed.stderr and down.requests["/v1/fine_tuning/jobs"] == 5  # 1 + 4 retries


def test_a_refused_key_and_a_missing_one_say_what_to_do(remote):
    refusing = remote({"/v1/fine_tuning/jobs": [(401, {"error": {"message": "Incorrect API key"}}, {})]})
    refused = tunelab("jobs", "list", "--remote", refusing.url, "--api-key", "wrong")
    assert refused.returncode == 1 and "the API key was refused (401)" in refused.stderr
    assert refusing.requests["/v1/fine_tuning/jobs"] == 1  # a 401 is not retried
    for asked in (["jobs", "show", "ftjob-abc"], ["jobs", "list", "--openai"], ["jobs", "watch", "ftjob-abc"], ["migrate", "openai"]):
        missing = tunelab(*asked)  # OpenAI itself (or a job id that is no local run): needs a key
        assert missing.returncode == 1 and "set OPENAI_API_KEY" in missing.stderr, missing.stderr
        assert "Traceback" not in missing.stderr


def test_watch_reconnects_after_the_connection_drops_and_shows_a_failed_jobs_error(remote):
    failed_job = dict(JOB, status="failed", error={"code": "invalid_training_file", "message": "Line 3 is not JSON",
                                                   "param": "training_file"})
    flaky = remote({
        # 6 dropped connections: more than the client's own 4 retries, so the watch itself reconnects.
        "/v1/fine_tuning/jobs/ftjob-abc": ["drop"] * 6 + [(200, failed_job, {})],
        "/v1/fine_tuning/jobs/ftjob-abc/events": [(200, EMPTY, {})],
    })
    watched = tunelab("jobs", "watch", "ftjob-abc", "--remote", flaky.url, "--api-key", "k")
    assert watched.returncode == 0, watched.stderr
    assert "lost the connection" in watched.stderr and "reconnected" in watched.stderr
    assert "ftjob-abc: failed (invalid_training_file: Line 3 is not JSON; param: training_file)" in watched.stdout
