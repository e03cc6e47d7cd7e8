"""The server against hostile requests, over real HTTP: every route but /health wants the key (the route
table is walked, so a new route cannot slip through), ids that try to leave the data directory, malformed
and oversized multipart bodies, and slow clients — never a 5xx, never a file outside its place, and the
database intact afterwards."""

import re
import socket
import threading
import time

import httpx2 as httpx
import pytest

from tests.serving import API_KEY, Server, integrity_check

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN_KEY = "sk-admin-test-9876543210"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def key_for(path: str) -> dict:
    """The admin routes take the admin key, every other route a project's."""
    return ADMIN if path.startswith("/v1/organization") else AUTH


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("hostile")
    running = Server(data_dir, "--alias", f"gpt-4o-mini-2024-07-18={tiny_model_dir}", "--dtype", "fp32",
                     "--max-upload-mb", "1", "--admin-key", ADMIN_KEY)
    running.data_dir = data_dir
    yield running
    running.stop()


def routes():
    """(method, path) for every route the application serves, from its own table (routers included with a
    prefix are walked into, however this FastAPI version keeps them)."""
    import tempfile
    from pathlib import Path

    from fastapi import FastAPI

    from tunelab.server.app import ServerSettings, create_app

    def walk(table, prefix=""):
        for route in table:
            if hasattr(route, "original_router"):  # a router included with a prefix
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
            else:
                yield from ((method, prefix + route.path) for method in getattr(route, "methods", None) or ()
                            if method != "HEAD")

    with tempfile.TemporaryDirectory() as scratch:
        app = create_app(ServerSettings(data_dir=Path(scratch), api_key="k"))
        while not isinstance(app, FastAPI):  # inside the ASGI wrappers (limits, audit log)
            app = app.app
        return sorted(set(walk(app.routes)))


def api_routes():
    """The routes a key opens (under /v1) and /health; the dashboard's pages take a session instead."""
    return [(method, path) for method, path in routes() if path.startswith("/v1/") or path == "/health"]


def filled(path: str) -> str:
    return (path.replace("{file_id}", "file-abc").replace("{job_id}", "ftjob-abc")
            .replace("{model:path}", "gpt-4o-mini-2024-07-18").replace("{model}", "gpt-4o-mini-2024-07-18")
            .replace("{project_id}", "proj_default").replace("{key_id}", "key_abc")
            .replace("{evaluation_id}", "eval_abc").replace("{export_id}", "export_abc")
            .replace("{name:path}", "app.js"))


def test_every_route_but_health_refuses_a_missing_or_wrong_key(hostile_server):
    table = api_routes()
    assert len(table) >= 18 and ("GET", "/health") in table
    bad_keys = [{}, {"Authorization": "Bearer"}, {"Authorization": "Bearer sk-wrong"},
                {"Authorization": f"Bearer {API_KEY[:-1]}"}, {"Authorization": f"Basic {API_KEY}"},
                {"Authorization": API_KEY}, {"Authorization": f"Bearer {API_KEY}x"}]
    checked = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{hostile_server.port}", timeout=30) as client:
        for method, path in table:
            # A project's key is a wrong key on the admin routes, and the admin key on the others.
            wrong = {"Authorization": f"Bearer {ADMIN_KEY if key_for(path) is AUTH else API_KEY}"}
            for headers in [*bad_keys, wrong]:
                answer = client.request(method, filled(path), headers=headers)
                if path == "/health":
                    assert answer.status_code == 200
                else:
                    assert answer.status_code == 401, (method, path, headers, answer.text)
                    assert answer.json()["error"]["code"] == "invalid_api_key"
                checked += 1
    assert checked == len(table) * (len(bad_keys) + 1)
    # The dashboard's pages and assets take a session, never a key: with any header they send a browser to
    # sign in (pages) or refuse (assets); signing in with a wrong key opens nothing.
    pages = [(method, path) for method, path in routes() if (method, path) not in table]
    assert len(pages) >= 10
    with httpx.Client(base_url=f"http://127.0.0.1:{hostile_server.port}", timeout=30) as client:
        for method, path in pages:
            for headers in [*bad_keys, AUTH]:
                answer = client.request(method, filled(path), headers=headers)
                if path == "/login":
                    assert answer.status_code == 200 if method == "GET" else 401, (method, path, answer.status_code)
                    assert "set-cookie" not in answer.headers
                elif path.startswith("/static/"):
                    assert answer.status_code == 401, (method, path, answer.status_code)
                elif path == "/":
                    assert answer.status_code == 303 and answer.headers["location"] == "/jobs"
                else:
                    assert answer.status_code == 303 and answer.headers["location"].startswith("/login"), (method, path)


TRAVERSALS = ["..%2F..%2Ftunelab.db", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "file-..%2F..%2Ftunelab.db",
              "..", "%2F", "%00", "file-abc%00.jsonl", "ftjob-abc%2F..%2F..", "x" * 5000, "%C0%AE%C0%AE%2F",
              "%252e%252e%252f", "\u202e".encode().decode("latin-1")]


def test_ids_that_try_to_leave_the_data_directory_find_nothing(hostile_server):
    templates = [path for method, path in api_routes() if "{" in path]
    with httpx.Client(base_url=f"http://127.0.0.1:{hostile_server.port}", timeout=30) as client:
        for method, path in api_routes():
            if "{" not in path:
                continue
            for hostile in TRAVERSALS:
                url = re.sub(r"\{[a-z_]+(:path)?\}", lambda _: hostile, path)
                answer = client.request(method, url, headers=key_for(path))
                assert answer.status_code in (400, 404), (method, url, answer.status_code, answer.text)
                assert answer.json()["error"]["message"]
                assert "root:" not in answer.text and "SQLite format" not in answer.text
    assert templates
    # The dashboard's assets, to a signed-in browser: a name that leaves the folder finds nothing.
    with httpx.Client(base_url=f"http://127.0.0.1:{hostile_server.port}", timeout=30) as browser:
        signed_in = browser.post("/login", data={"key": API_KEY}, headers={"Origin": str(browser.base_url).rstrip("/")})
        assert signed_in.status_code == 303
        assert browser.get("/static/app.js").status_code == 200
        for hostile in [*TRAVERSALS, "..%2Fdashboard.py", "%2e%2e/%2e%2e/store.py", "vendor/..%2F..%2Fsessions.py"]:
            answer = browser.get(f"/static/{hostile}")
            assert "import" not in answer.text and "SQLite format" not in answer.text, hostile
            if answer.request.url.path.startswith("/static/"):  # not folded away by the client (`..`)
                assert answer.status_code == 404, (hostile, answer.status_code)
    _database_intact(hostile_server)
    assert httpx.get(f"{hostile_server.base_url}/models", headers=AUTH).status_code == 200


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


GOOD_LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there."}]}\n'
MALFORMED_UPLOADS = {
    "no boundary in the header": (b"--x\r\n\r\n", "multipart/form-data"),
    "a boundary that never appears": (multipart([("file", "a.jsonl", GOOD_LINE)]), "multipart/form-data; boundary=zzz"),
    "cut off in the middle": (multipart([("file", "a.jsonl", GOOD_LINE * 10), ("purpose", None, b"fine-tune")])[:90],
                              "multipart/form-data; boundary=b0undary"),
    "no file part": (multipart([("purpose", None, b"fine-tune")]), "multipart/form-data; boundary=b0undary"),
    "no purpose": (multipart([("file", "a.jsonl", GOOD_LINE)]), "multipart/form-data; boundary=b0undary"),
    "json instead of multipart": (b'{"file": "x", "purpose": "fine-tune"}', "application/json"),
    "a purpose that is binary": (multipart([("file", "a.jsonl", GOOD_LINE), ("purpose", None, b"\xff\xfe\x00")]),
                                 "multipart/form-data; boundary=b0undary"),
    "a header line of 100 kB": (b"--b0undary\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\nx\r\n--b0undary--\r\n",
                                "multipart/form-data; boundary=b0undary"),
    "a thousand empty parts": (multipart([("purpose", None, b"")] * 1000), "multipart/form-data; boundary=b0undary"),
    "over the 1 MB cap": (multipart([("file", "a.jsonl", GOOD_LINE * 20_000), ("purpose", None, b"fine-tune")]),
                          "multipart/form-data; boundary=b0undary"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_UPLOADS))
def test_a_malformed_upload_is_refused_cleanly_and_leaves_nothing(hostile_server, case):
    body, content_type = MALFORMED_UPLOADS[case]
    files_dir = hostile_server.data_dir / "files"
    before = sorted(files_dir.iterdir()) if files_dir.is_dir() else []
    answer = httpx.post(f"{hostile_server.base_url}/files", content=body, timeout=60,
                        headers=AUTH | {"Content-Type": content_type})
    assert 400 <= answer.status_code < 500, (case, answer.status_code, answer.text)
    assert answer.json()["error"]["message"]
    after = sorted(files_dir.iterdir()) if files_dir.is_dir() else []
    assert after == before  # nothing stored, no temporary left behind


def test_a_file_name_is_never_a_path(hostile_server):
    body = multipart([("file", "../../../escaped.jsonl", GOOD_LINE * 12), ("purpose", None, b"fine-tune")])
    answer = httpx.post(f"{hostile_server.base_url}/files", content=body, timeout=60,
                        headers=AUTH | {"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert answer.status_code == 200, answer.text
    stored = answer.json()
    assert stored["filename"] == "../../../escaped.jsonl"  # kept as the client's label, as OpenAI does
    assert not list(hostile_server.data_dir.parent.rglob("escaped.jsonl"))
    assert (hostile_server.data_dir / "files" / stored["id"]).read_bytes() == GOOD_LINE * 12  # stored by its id


def test_slow_clients_do_not_hold_up_the_others(hostile_server):
    """Ten connections that trickle their request a byte at a time, and one that stops mid-body, while
    ordinary requests keep their usual latency."""
    stop = threading.Event()

    def trickle(request: bytes):
        with socket.create_connection(("127.0.0.1", hostile_server.port), timeout=30) as connection:
            for byte in request:
                if stop.is_set():
                    return
                try:
                    connection.send(bytes([byte]))
                except OSError:  # the server gave up on us: allowed
                    return
                time.sleep(0.2)

    slow_get = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\r\n".encode()
    slow_upload = (f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: "
                   "multipart/form-data; boundary=b0undary\r\nContent-Length: 100000\r\n\r\n").encode() + GOOD_LINE
    trickles = [threading.Thread(target=trickle, args=(slow_get if n % 2 else slow_upload,), daemon=True)
                for n in range(10)]
    for thread in trickles:
        thread.start()
    time.sleep(1)
    latencies = []
    with httpx.Client(base_url=hostile_server.base_url, headers=AUTH, timeout=10) as client:
        for _ in range(20):
            started = time.monotonic()
            assert client.get("/models").status_code == 200
            latencies.append(time.monotonic() - started)
    stop.set()
    for thread in trickles:
        thread.join(30)
    assert max(latencies) < 2.0, latencies


def _database_intact(server) -> None:
    assert integrity_check(server.data_dir) == "ok"
