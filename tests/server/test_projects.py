"""A server a team shares: projects with their own keys, files, jobs and models, over real HTTP with the
official client; keys kept only as hashes and revoked at once; every route that takes an id answers another
project's id exactly as a missing one (the route table is walked, so a new route cannot slip through); the
limits; the audit log; and an upgrade of a data directory from before projects."""

import json
import re
import secrets
import sqlite3
import time
from urllib.parse import unquote

import httpx2 as httpx
import openai
import pytest

from tests.conftest import run_cli
from tests.server.conftest import upload
from tests.server.test_jobs import wait_until_finished
from tests.serving import API_KEY, Server
from tunelab.server.projects import KEY_PATTERN

pytestmark = pytest.mark.slow
ADMIN_KEY = "sk-admin-team-0123456789"
MODEL = "gpt-4o-mini-2024-07-18"


@pytest.fixture(scope="module")
def team_server(tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("team")
    running = Server(data_dir, "--alias", f"{MODEL}={tiny_model_dir}", "--dtype", "fp32", "--admin-key", ADMIN_KEY,
                     "--max-upload-mb", "1")
    running.data_dir = data_dir
    yield running
    running.stop()


def tunelab(server, *arguments: str) -> str:
    result = run_cli(*arguments, "--data-dir", str(server.data_dir))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def project_with_key(server, name: str, *limits: str) -> str:
    tunelab(server, "projects", "create", name, *limits)
    created = json.loads(tunelab(server, "keys", "create", "--project", name, "--name", "tests", "--json"))
    assert created["project"] == name and created["id"].startswith("key_")
    return created["key"]


def client_for(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


# --- keys --------------------------------------------------------------------------------------------------

def test_a_key_is_stored_only_as_a_hash_and_refused_as_soon_as_it_is_revoked(team_server, tmp_path):
    key = project_with_key(team_server, "keys-team")
    client = client_for(team_server, key)
    assert [m.id for m in client.models.list().data][:1] == ["default"]
    listed = json.loads(tunelab(team_server, "keys", "list", "--project", "keys-team", "--json"))["data"]
    assert len(listed) == 1 and listed[0]["last_used_at"] is not None and listed[0]["revoked_at"] is None
    assert listed[0]["redacted_value"] == f"sk-proj-…{key[-4:]}"
    # The database and its write-ahead log hold neither the key nor its secret part: only an argon2id hash.
    secret = KEY_PATTERN.match(key).group("secret")  # the secret itself may hold dashes
    for path in team_server.data_dir.glob("tunelab.db*"):
        stored = path.read_bytes()
        assert key.encode() not in stored and secret.encode() not in stored, path
    with sqlite3.connect(team_server.data_dir / "tunelab.db") as database:
        hashes = [row[0] for row in database.execute("SELECT hash FROM api_keys WHERE id = ?", (listed[0]["id"],))]
    assert hashes[0].startswith("$argon2id$")
    # A key with the right id and a wrong secret, or the key cut short, is refused.
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), key[:-4]):
        with pytest.raises(openai.AuthenticationError):
            client_for(team_server, wrong).models.list()
    tunelab(team_server, "keys", "revoke", listed[0]["id"])
    with pytest.raises(openai.AuthenticationError) as refused:  # the next request, on the running server
        client.models.list()
    assert refused.value.body["code"] == "invalid_api_key" and key not in str(refused.value.body)


def test_keys_are_compared_in_constant_time():
    import inspect

    from tunelab.server import auth, projects

    assert "hmac.compare_digest" in inspect.getsource(auth.require_project_key)
    assert "hmac.compare_digest" in inspect.getsource(auth.require_admin_key)
    assert "hmac.compare_digest" in inspect.getsource(projects.KeyChecker.identify)


def test_the_admin_routes_manage_projects_and_keys_with_the_admin_key_only(team_server):
    admin = httpx.Client(base_url=team_server.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    created = admin.post("/organization/projects", json={"name": "http-team", "limits": {"max_jobs": 3}}).json()
    assert created["object"] == "organization.project" and created["limits"]["max_jobs"] == 3
    key = admin.post(f"/organization/projects/{created['id']}/api_keys", json={"name": "ci"}).json()
    assert key["value"].startswith("sk-proj-") and key["redacted_value"].endswith(key["value"][-4:])
    listed = admin.get(f"/organization/projects/{created['id']}/api_keys").json()["data"]
    assert [k["id"] for k in listed] == [key["id"]] and "value" not in listed[0]
    assert client_for(team_server, key["value"]).files.list().data == []
    # The admin key is no project key, and a project key opens no admin route.
    with pytest.raises(openai.AuthenticationError):
        client_for(team_server, ADMIN_KEY).files.list()
    assert httpx.get(f"{team_server.base_url}/organization/projects",
                     headers={"Authorization": f"Bearer {key['value']}"}).status_code == 401
    deleted = admin.delete(f"/organization/projects/{created['id']}/api_keys/{key['id']}").json()
    assert deleted == {"object": "organization.project.api_key.deleted", "id": key["id"], "deleted": True}
    with pytest.raises(openai.AuthenticationError):
        client_for(team_server, key["value"]).files.list()
    assert admin.post("/organization/projects", json={"name": "http-team"}).status_code == 400  # taken
    assert admin.get("/organization/projects/proj_nothere").status_code == 404


# --- isolation ---------------------------------------------------------------------------------------------

def route_table():
    """(method, path) of every route a key opens, from the application's own table."""
    from tests.reliability.test_server_hostile import api_routes

    return api_routes()


def test_another_projects_objects_answer_exactly_as_missing_ones(team_server, tmp_path, support_conversations):
    alpha = client_for(team_server, project_with_key(team_server, "alpha"))
    beta_key = project_with_key(team_server, "beta")
    beta = client_for(team_server, beta_key)
    training = upload(alpha, tmp_path, support_conversations[:12], "alpha-secret-train.jsonl")
    job = wait_until_finished(alpha, alpha.fine_tuning.jobs.create(
        training_file=training.id, model=MODEL, suffix="alpha", hyperparameters={"n_epochs": 1, "batch_size": 4}).id)
    assert job.status == "succeeded", job.error
    checkpoint = alpha.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    assert alpha.chat.completions.create(model=job.fine_tuned_model, max_tokens=4,
                                         messages=[{"role": "user", "content": "hi"}]).choices

    ask_alpha = lambda path, body: httpx.post(f"{team_server.base_url}{path}", json=body, timeout=60,  # noqa: E731
                                              headers={"Authorization": f"Bearer {alpha.api_key}"}).json()["id"]
    evaluation = ask_alpha("/tunelab/evaluations", {"model": job.fine_tuned_model, "file": training.id, "limit": 2,
                                                   "max_new_tokens": 4, "forgetting": "off"})
    export = ask_alpha("/tunelab/exports", {"model": job.fine_tuned_model, "format": "merged"})
    theirs = {"file_id": training.id, "job_id": job.id, "model": job.fine_tuned_model, "evaluation_id": evaluation,
              "export_id": export}
    missing = {"file_id": "file-" + secrets.token_hex(12), "job_id": "ftjob-" + secrets.token_hex(12),
               "model": f"ft:{MODEL}:tunelab:alpha:{secrets.token_hex(4)}", "evaluation_id": "eval_" + secrets.token_hex(12),
               "export_id": "export_" + secrets.token_hex(12)}
    table = [(method, path) for method, path in route_table() if "{" in path and not path.startswith("/v1/organization")]
    names = {name.split(":")[0] for _, path in table for name in re.findall(r"\{([^}]+)\}", path)}
    assert names == set(theirs), f"a route takes an id this test does not know: {names - set(theirs)}"

    def ask(method: str, path: str, ids: dict) -> tuple[int, str]:
        url = re.sub(r"\{([a-z_]+)(:path)?\}", lambda m: ids[m.group(1)], path).removeprefix("/v1")
        answer = httpx.request(method, team_server.base_url + url, headers={"Authorization": f"Bearer {beta_key}"},
                               timeout=60, **({"json": {}} if method == "POST" else {}))
        text = answer.text
        for name, value in ids.items():
            text = text.replace(value, f"<{name}>")
        return answer.status_code, text

    compared = 0
    for method, path in table:
        assert ask(method, path, theirs) == ask(method, path, missing), (method, path)
        compared += 1
    assert compared >= 10
    # Lists show only the project's own; a model of alpha, or its checkpoint, is not beta's to chat with.
    assert beta.files.list().data == [] and beta.fine_tuning.jobs.list().data == []
    for listing in ("/tunelab/evaluations", "/tunelab/exports"):
        assert httpx.get(f"{team_server.base_url}{listing}", headers={"Authorization": f"Bearer {beta_key}"}).json()["data"] == []
    assert job.fine_tuned_model not in {m.id for m in beta.models.list().data}
    for name in (job.fine_tuned_model, checkpoint):
        with pytest.raises(openai.NotFoundError) as theirs_refused:
            beta.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.NotFoundError) as missing_refused:
            beta.chat.completions.create(model=name + "0", messages=[{"role": "user", "content": "hi"}])
        assert theirs_refused.value.body["message"].replace(name, "<m>") == \
            missing_refused.value.body["message"].replace(name + "0", "<m>")
    with pytest.raises(openai.BadRequestError, match="not a fine-tune file uploaded to this server"):
        beta.fine_tuning.jobs.create(training_file=training.id, model=MODEL)
    serving = httpx.get(f"{team_server.base_url}/tunelab/serving", headers={"Authorization": f"Bearer {beta_key}"}).text
    assert job.fine_tuned_model not in serving
    # What beta tried changed nothing of alpha's.
    assert alpha.files.retrieve(training.id).id == training.id
    assert alpha.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    assert job.fine_tuned_model in {m.id for m in alpha.models.list().data}

    # The hostile requests again, as beta, with alpha's ids bent every way: nothing of alpha's comes back.
    bent = [lambda i: i.upper(), lambda i: i + "/", lambda i: i + "%00", lambda i: i.replace("-", "%2D"),
            lambda i: " " + i, lambda i: i[:-1], lambda i: i + "' OR '1'='1", lambda i: "..%2F" + i]
    secrets_of_alpha = {training.id, job.id, job.fine_tuned_model, checkpoint, "alpha-secret-train.jsonl", evaluation, export,
                        *(f.id for f in alpha.files.list().data)}
    leaks, asked_count = [], 0
    for method, path in table:
        for bend in bent:
            asked = {name: bend(value) for name, value in theirs.items()}
            status, text = ask(method, path, asked)
            assert status < 500, (method, path, status, text)
            # What the request itself held may be echoed (a 404 names the id asked for); anything else is a leak.
            sent = unquote(" ".join(asked.values()))
            leaks += [(method, path, secret) for secret in secrets_of_alpha if secret in text and secret not in sent]
            asked_count += 1
    assert asked_count == len(table) * len(bent) and leaks == []


# --- limits ------------------------------------------------------------------------------------------------

def test_a_project_at_its_limits_is_refused_while_another_goes_on(team_server, tmp_path, support_conversations):
    limited = client_for(team_server, project_with_key(team_server, "limited", "--max-jobs", "1",
                                                       "--max-storage-gb", str(12_000 / 2**30)))
    other = client_for(team_server, project_with_key(team_server, "unlimited"))
    training = upload(limited, tmp_path, support_conversations[:12])
    first = limited.fine_tuning.jobs.create(training_file=training.id, model=MODEL, hyperparameters={"n_epochs": 1})
    with pytest.raises(openai.RateLimitError) as refused:
        limited.fine_tuning.jobs.create(training_file=training.id, model=MODEL)
    assert "1 fine-tuning jobs that have not finished, its limit is 1" in refused.value.body["message"]
    started = other.fine_tuning.jobs.create(training_file=upload(other, tmp_path, support_conversations[:12]).id,
                                            model=MODEL, hyperparameters={"n_epochs": 1})
    assert started.status == "validating_files"
    # Storage: what is stored plus the upload would pass the limit → 507, and nothing is kept.
    files_before = sorted(p.name for p in (team_server.data_dir / "files").iterdir())
    listed_before = [f.id for f in limited.files.list().data]
    with pytest.raises(openai.APIStatusError) as full:
        upload(limited, tmp_path, support_conversations[:60], "more.jsonl")
    assert full.value.status_code == 507 and full.value.body["code"] == "insufficient_storage"
    assert "more would pass its limit of 12,000 bytes" in full.value.body["message"]
    assert [f.id for f in limited.files.list().data] == listed_before
    assert sorted(p.name for p in (team_server.data_dir / "files").iterdir()) == files_before  # nor a temporary
    limited.fine_tuning.jobs.cancel(first.id)
    other.fine_tuning.jobs.cancel(started.id)
    # Once its job has finished (cancelled), the project may start another.
    assert limited.fine_tuning.jobs.create(training_file=training.id, model=MODEL).status == "validating_files"


def test_requests_per_minute_are_limited_per_key(team_server):
    key = project_with_key(team_server, "chatty", "--requests-per-minute", "5")
    second = json.loads(tunelab(team_server, "keys", "create", "--project", "chatty", "--json"))["key"]
    client = client_for(team_server, key)
    for _ in range(5):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as refused:
        client.models.list()
    assert refused.value.body["code"] == "rate_limit_exceeded" and "limit 5" in refused.value.body["message"]
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= 60
    assert client_for(team_server, second).models.list().data  # the project's other key has its own minute


# --- audit -------------------------------------------------------------------------------------------------

def test_a_scripted_session_leaves_one_audit_row_per_change_and_never_the_key(team_server, tmp_path,
                                                                                support_conversations):
    key = project_with_key(team_server, "audited")
    client = client_for(team_server, key)
    key_id = json.loads(tunelab(team_server, "keys", "list", "--project", "audited", "--json"))["data"][0]["id"]
    expected = []  # (action, status) of each state-changing request, in order
    training = upload(client, tmp_path, support_conversations[:12])                        # 1
    expected.append(("file.created", 200))
    client.files.list()                                                                      # 2
    client.files.retrieve(training.id)                                                       # 3
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")          # 4
    expected.append(("file.created", 200))
    client.files.delete(other.id)                                                            # 5
    expected.append(("file.deleted", 200))
    job = client.fine_tuning.jobs.create(training_file=training.id, model=MODEL)            # 6
    expected.append(("fine_tuning.job.created", 200))
    while client.fine_tuning.jobs.retrieve(job.id).status == "validating_files":             # 7 (until queued)
        time.sleep(0.2)
    client.fine_tuning.jobs.list()                                                           # 8
    client.fine_tuning.jobs.list_events(job.id)                                              # 9
    client.fine_tuning.jobs.pause(job.id)                                                    # 10
    expected.append(("fine_tuning.job.paused", 200))
    client.fine_tuning.jobs.resume(job.id)                                                   # 11
    expected.append(("fine_tuning.job.resumed", 200))
    client.fine_tuning.jobs.cancel(job.id)                                                   # 12
    expected.append(("fine_tuning.job.cancelled", 200))
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)                                               # 13
    expected.append(("fine_tuning.job.cancelled", 400))
    client.models.list()                                                                     # 14
    client.models.retrieve("default")                                                        # 15
    with pytest.raises(openai.BadRequestError):
        client.models.delete("default")                                                      # 16
    expected.append(("model.deleted", 400))
    with pytest.raises(openai.NotFoundError):
        client.files.delete("file-" + "0" * 24)                                              # 17
    expected.append(("file.deleted", 404))
    client.chat.completions.create(model="default", max_tokens=2,
                                   messages=[{"role": "user", "content": "hi"}])             # 18 (changes nothing)
    client.fine_tuning.jobs.checkpoints.list(job.id)                                         # 19
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(training_file=training.id, model=MODEL,
                                       hyperparameters={"n_epochs": 0})                      # 20
    expected.append(("fine_tuning.job.created", 400))

    rows = json.loads(tunelab(team_server, "audit", "--project", "audited", "--json"))["data"]
    assert [(row["type"], row["request"]["status"]) for row in reversed(rows)] == expected
    assert all(row["actor"]["api_key"]["id"] == key_id and row["project"]["name"] == "audited" for row in rows)
    assert {row["object_id"] for row in rows} >= {training.id, other.id, job.id}
    assert rows[0]["effective_at"] >= rows[-1]["effective_at"] >= int(time.time()) - 600
    # The key is in no row (nor its secret part), through the command line or the admin route.
    secret = KEY_PATTERN.match(key).group("secret")  # the secret itself may hold dashes
    by_route = httpx.get(f"{team_server.base_url}/organization/audit_logs", params={"limit": 100},
                         headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    with sqlite3.connect(team_server.data_dir / "tunelab.db") as database:
        everything = json.dumps(database.execute("SELECT * FROM audit_log").fetchall())
    for text in (json.dumps(rows), json.dumps(by_route), everything):
        assert key not in text and secret not in text
    # A refused key is recorded too, with no part of it.
    httpx.post(f"{team_server.base_url}/files", headers={"Authorization": "Bearer sk-proj-guess-123456"})
    newest = json.loads(tunelab(team_server, "audit", "-n", "1", "--json"))["data"][0]
    assert newest["request"]["status"] == 401 and newest["actor"] == {"type": "anonymous"}
    assert "guess" not in json.dumps(newest)


# --- upgrade -----------------------------------------------------------------------------------------------

def test_a_data_directory_from_before_projects_becomes_the_default_project(tmp_path, tiny_model_dir):
    from tunelab.server.store import MIGRATIONS

    data_dir = tmp_path / "old"
    data_dir.mkdir()
    (data_dir / "files").mkdir()
    (data_dir / "files" / "file-0123456789abcdef01234567").write_bytes(b"hello")
    with sqlite3.connect(data_dir / "tunelab.db") as database:  # what the server before projects left
        database.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at INTEGER)")
        for name, sql in MIGRATIONS[:5]:
            database.executescript(sql)
            database.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
        database.execute("INSERT INTO files (id, bytes, created_at, filename, purpose, status) VALUES "
                         "('file-0123456789abcdef01234567', 5, 1, 'notes.txt', 'user_data', 'processed')")
    server = Server(data_dir, "--alias", f"{MODEL}={tiny_model_dir}")
    try:
        old_key = client_for(server, API_KEY)
        assert [f.id for f in old_key.files.list().data] == ["file-0123456789abcdef01234567"]
        assert old_key.files.content("file-0123456789abcdef01234567").read() == b"hello"
        server.data_dir = data_dir
        newcomer = client_for(server, project_with_key(server, "newcomer"))
        assert newcomer.files.list().data == []
        with pytest.raises(openai.NotFoundError):
            newcomer.files.retrieve("file-0123456789abcdef01234567")
    finally:
        server.stop()
    with sqlite3.connect(data_dir / "tunelab.db") as database:
        assert "0006_projects" in {row[0] for row in database.execute("SELECT name FROM migrations")}


# --- the command line's errors -------------------------------------------------------------------------------

def test_the_commands_say_what_is_wrong_without_a_traceback(tmp_path):
    from tunelab.server.store import Store

    empty = tmp_path / "empty"
    empty.mkdir()
    Store(tmp_path / "data")
    data = ["--data-dir", str(tmp_path / "data")]
    cases = [
        (["keys", "list", "--data-dir", str(empty)], "no tunelab serve database here (tunelab.db)"),
        (["keys", "create", "--project", "nope", *data], "no project 'nope'; there are: default"),
        (["projects", "create", "bad/name", *data], "project name 'bad/name': 1 to 64 letters"),
        (["keys", "revoke", "key_nothere", *data], "no key 'key_nothere'"),
        (["projects", "archive", "default", *data], "the default project cannot be archived"),
        (["audit", "--project", "nope", *data], "no project 'nope'"),
    ]
    for arguments, message in cases:
        result = run_cli(*arguments)
        assert result.returncode == 1 and message in result.stderr.decode(), (arguments, result.stderr)
        assert b"Traceback" not in result.stderr
    assert json.loads(run_cli("projects", "list", "--json", *data).stdout)["data"][0]["name"] == "default"


def test_a_server_without_a_key_asks_for_keys_once_a_project_has_one(tmp_path):
    server = Server(tmp_path / "open", "--api-key", "")  # the last --api-key wins: none, so no key asked
    try:
        assert client_for(server, "anything").models.list().data
        key = project_with_key(server, "solo")
        with pytest.raises(openai.AuthenticationError):  # now every request needs a key
            client_for(server, "anything").models.list()
        assert client_for(server, key).files.list().data == []
        key_id = json.loads(tunelab(server, "keys", "list", "--project", "solo", "--json"))["data"][0]["id"]
        tunelab(server, "keys", "revoke", key_id)
        assert client_for(server, "anything").models.list().data  # no key left: open again (loopback only)
        with pytest.raises(openai.AuthenticationError):  # but the revoked key itself is refused
            client_for(server, key).models.list()
    finally:
        server.stop()


def test_a_migration_that_fails_is_named_and_leaves_the_database_as_it_was(tmp_path):
    from tunelab.server.store import MIGRATIONS, Store

    with sqlite3.connect(tmp_path / "tunelab.db") as database:
        database.execute("CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at INTEGER)")
        for name, sql in MIGRATIONS[:5]:
            database.executescript(sql)
            database.execute("INSERT INTO migrations VALUES (?, 0)", (name,))
        database.execute("CREATE TABLE projects (id TEXT)")  # in the way of 0006's own table
    with pytest.raises(sqlite3.OperationalError, match="migration 0006_projects failed: table projects already exists"):
        Store(tmp_path)
    with sqlite3.connect(tmp_path / "tunelab.db") as database:
        assert "0006_projects" not in {row[0] for row in database.execute("SELECT name FROM migrations")}
        assert "project_id" not in {row[1] for row in database.execute("PRAGMA table_info(files)")}
    result = run_cli("serve", "--data-dir", str(tmp_path), "--port", "1")
    assert result.returncode == 1 and b"migration 0006_projects failed" in result.stderr
