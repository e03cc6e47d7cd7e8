"""The dashboard's security, over real HTTP and in a real browser: no page or asset without a session, the
session cookie's flags, the key never in a URL, page, script or script-readable storage, CSRF tokens and
other origins refused, and sessions that end — at sign-out, and when their key is revoked."""

import json
import threading
import time
from contextlib import contextmanager
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from playwright.sync_api import expect

from tests.dashboard.conftest import sign_in
from tests.serving import API_KEY
from tunelab.server.dashboard import STATIC
from tunelab.server.projects import create_key, create_project, revoke_key
from tunelab.server.store import Store

PAGES = ["/jobs", "/jobs/new", "/jobs/ftjob-000000000000000000000000", "/files", "/files/file-000000000000000000000000"]
ASSETS = sorted(str(path.relative_to(STATIC)) for path in STATIC.rglob("*") if path.is_file())


def base_of(server) -> str:
    return f"http://127.0.0.1:{server.port}"


@contextmanager
def signed_in(server, key: str = API_KEY):
    """An HTTP client holding a session cookie, as a browser would after signing in."""
    with httpx.Client(base_url=base_of(server), follow_redirects=False) as client:
        answer = client.post("/login", data={"key": key, "next": "/jobs"}, headers={"Origin": base_of(server)})
        assert answer.status_code == 303 and answer.headers["location"] == "/jobs"
        yield client


def csrf_of(client: httpx.Client) -> str:
    page = client.get("/jobs").text
    return page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def test_no_page_or_asset_without_a_session(dashboard_server):
    assert len(ASSETS) >= 8 and "vendor/uPlot.iife.min.js" in ASSETS
    with httpx.Client(base_url=base_of(dashboard_server), follow_redirects=False) as anonymous:
        for path in PAGES:
            answer = anonymous.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"] == f"/login?next={path}"
        for asset in ASSETS:
            answer = anonymous.get(f"/static/{asset}")
            assert answer.status_code == 401 and "Sign in" in answer.text, asset
        assert anonymous.get("/v1/fine_tuning/jobs/events/stream").status_code == 401
        login = anonymous.get("/login")
        assert login.status_code == 200 and 'type="password"' in login.text
        assert "frame-ancestors 'none'" in login.headers["content-security-policy"]
    with signed_in(dashboard_server) as client:
        for path in PAGES:
            answer = client.get(path)
            assert answer.status_code == 200 and "script-src 'self'" in answer.headers["content-security-policy"], path
        for asset in ASSETS:
            assert client.get(f"/static/{asset}").status_code == 200, asset
        assert client.get("/static/../dashboard.py").status_code == 404


def test_the_session_cookie_is_httponly_strict_and_the_key_goes_nowhere(dashboard_server):
    with httpx.Client(base_url=base_of(dashboard_server), follow_redirects=False) as client:
        wrong = client.post("/login", data={"key": "sk-wrong-key"}, headers={"Origin": base_of(dashboard_server)})
        assert wrong.status_code == 401 and "not valid" in wrong.text and "set-cookie" not in wrong.headers
        answer = client.post("/login", data={"key": API_KEY, "next": "https://elsewhere.example/"},
                             headers={"Origin": base_of(dashboard_server)})
        assert answer.status_code == 303 and answer.headers["location"] == "/jobs"  # never off this server
        cookie = answer.headers["set-cookie"]
        flags = {flag.strip().split("=")[0].lower(): flag.strip() for flag in cookie.split(";")[1:]}
        assert set(flags) >= {"httponly", "samesite", "path", "max-age"} and "secure" not in flags  # plain HTTP
        assert flags["samesite"].lower() == "samesite=strict" and flags["path"] == "Path=/"
        token = cookie.split(";")[0].split("=", 1)[1]
        assert API_KEY not in cookie and len(token) >= 43
    rows = Store(dashboard_server.data_dir).execute("SELECT * FROM browser_sessions")
    assert rows and all(token not in json.dumps(dict(row)) and API_KEY not in json.dumps(dict(row)) for row in rows)


def test_changes_need_the_csrf_token_and_this_origin(dashboard_server, tmp_path, support_conversations):
    client = openai.OpenAI(base_url=dashboard_server.base_url, api_key=API_KEY, max_retries=0)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:12]))
    job = client.fine_tuning.jobs.create(training_file=client.files.create(file=path.open("rb"), purpose="fine-tune").id,
                                         model="gpt-4o-mini-2024-07-18", hyperparameters={"n_epochs": 50})
    deadline = time.monotonic() + 30
    while client.fine_tuning.jobs.retrieve(job.id).status == "validating_files" and time.monotonic() < deadline:
        time.sleep(0.1)
    client.fine_tuning.jobs.pause(job.id)
    resume = f"/v1/fine_tuning/jobs/{job.id}/resume"
    with signed_in(dashboard_server) as browser:
        token = csrf_of(browser)
        assert browser.get(f"/v1/fine_tuning/jobs/{job.id}").json()["status"] == "paused"  # reading needs no token
        missing = browser.post(resume)
        assert missing.status_code == 403 and missing.json()["error"]["code"] == "csrf_token_missing"
        assert browser.post(resume, headers={"X-CSRF-Token": "not-the-token"}).status_code == 403
        other_origin = browser.post(resume, headers={"X-CSRF-Token": token, "Origin": "http://127.0.0.1:9"})
        assert other_origin.status_code == 403 and other_origin.json()["error"]["code"] == "cross_origin_request"
        assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"  # none of them did anything
        assert browser.post(resume, headers={"X-CSRF-Token": token}).json()["status"] == "queued"
    client.fine_tuning.jobs.cancel(job.id)


@pytest.fixture()
def other_site(tmp_path, dashboard_server):
    """A page of another origin (another port of the same host, which browsers count as the same site) whose
    form posts to the dashboard's sign-out as soon as it loads."""
    (tmp_path / "attack.html").write_text(
        f'<form id="f" method="post" action="{base_of(dashboard_server)}/logout">'
        '<input name="csrf_token" value="guessed"></form><script>document.getElementById("f").submit()</script>')
    server = HTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/attack.html"
    server.shutdown()


@pytest.mark.slow
def test_in_a_browser_the_key_is_nowhere_and_another_sites_form_is_refused(browser, dashboard_server, other_site):
    context = browser.new_context()
    page = context.new_page()
    seen_urls, scripts, script_texts = [], [], []
    page.on("request", lambda request: seen_urls.append(request.url))
    page.on("response", lambda response: scripts.append(response) if response.request.resource_type == "script" else None)
    base = base_of(dashboard_server)
    sign_in(page, base)
    page.wait_for_load_state("networkidle")
    script_texts.extend(response.text() for response in scripts)
    scripts.clear()
    for path in PAGES[:2] + ["/files"]:
        page.goto(f"{base}{path}")
        page.wait_for_load_state("networkidle")
        assert API_KEY not in page.content()
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
        assert page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"
        script_texts.extend(response.text() for response in scripts)  # read before the next page
        scripts.clear()
    assert seen_urls and not [url for url in seen_urls if API_KEY in url]
    assert len(script_texts) >= 6 and all(API_KEY not in text for text in script_texts)

    # Another origin's form post arrives with the cookie (same site) but is refused; the session stands.
    answer = page.goto(other_site)
    page.wait_for_url(f"{base}/logout")
    assert page.locator("body").inner_text().count("cross_origin_request") == 1
    page.goto(f"{base}/jobs")
    expect(page.get_by_role("heading", name="Fine-tuning jobs")).to_be_visible()
    assert answer is not None

    # Signing out ends the session: the same cookie opens nothing any more.
    cookie = next(c["value"] for c in context.cookies() if c["name"] == "tunelab_session")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{base}/login")
    with httpx.Client(base_url=base, cookies={"tunelab_session": cookie}, follow_redirects=False) as replay:
        assert replay.get("/jobs").status_code == 303
        assert replay.get("/v1/fine_tuning/jobs").status_code == 401
    context.close()


def test_revoking_a_key_ends_its_sessions(dashboard_server):
    store = Store(Path(dashboard_server.data_dir))
    project = create_project(store, "dashboard-team")
    key, token = create_key(store, project.id, name="browser")
    with signed_in(dashboard_server, token) as browser:
        assert browser.get("/v1/fine_tuning/jobs").json()["data"] == []  # the team's own project: empty
        assert "dashboard-team" in browser.get("/jobs").text
        revoke_key(store, key["id"])
        refused = browser.get("/v1/fine_tuning/jobs")
        assert refused.status_code == 401 and "sign in again" in refused.json()["error"]["message"]
        assert browser.get("/jobs").status_code == 303
