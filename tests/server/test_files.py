"""`/v1/files` and `/v1/models` through the official openai client against a real `tunelab serve` process."""

import json
import time

import httpx2 as httpx  # the HTTP client the openai package is built on
import openai
import pytest

from tests.server.conftest import API_KEY

# A server process (started once for the module): the fast tier's HTTP route tests.


@pytest.fixture()
def training_file(tmp_path, support_conversations):
    path = tmp_path / "train data.jsonl"  # clients send names with spaces
    path.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:12]))
    return path


def test_upload_list_retrieve_download_delete(client, recorder, training_file):
    uploaded = client.files.create(file=training_file.open("rb"), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed" and uploaded.purpose == "fine-tune"
    assert (uploaded.filename, uploaded.bytes) == ("train data.jsonl", training_file.stat().st_size)
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")

    listed = client.files.list()
    assert [f.id for f in listed.data][:2] == [other.id, uploaded.id]  # newest first
    assert [f.id for f in client.files.list(purpose="fine-tune").data] == [uploaded.id]
    first_page = client.files.list(limit=1, order="asc")
    assert first_page.has_more and len(first_page.data) == 1
    after = client.files.list(limit=1, order="asc", after=first_page.data[0].id).data
    assert after and after[0].id != first_page.data[0].id

    assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
    assert client.files.content(uploaded.id).read() == training_file.read_bytes()
    assert client.files.delete(other.id).deleted
    with pytest.raises(openai.NotFoundError, match=other.id):
        client.files.retrieve(other.id)
    assert recorder.check_all() >= 8  # every JSON response above conforms to OpenAI's spec


def test_a_malformed_upload_is_a_400_naming_the_line(client, recorder, tmp_path, support_conversations):
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps(c) for c in support_conversations[:3]]
    lines.insert(1, json.dumps({"messages": [{"role": "user", "content": "hi"}]}))  # no assistant reply
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=bad.open("rb"), purpose="fine-tune")
    error = caught.value.body
    assert caught.value.status_code == 400 and error["code"] == "invalid_file_format" and error["param"] == "file"
    assert "bad.jsonl, line 2: messages: no assistant message" in error["message"]
    with pytest.raises(openai.BadRequestError, match="Must be .jsonl"):
        client.files.create(file=("train.csv", b"a,b\n"), purpose="fine-tune")
    assert not [f for f in client.files.list().data if f.filename in ("bad.jsonl", "train.csv")]
    recorder.check_all()


def test_a_data_check_of_another_shape_names_the_conversion_by_the_file_s_own_name(server, tmp_path):
    """The dashboard's check before upload: an Alpaca file is named as such, with the command that converts it
    under the name it was sent with, not the server's path to its copy."""
    alpaca = b"".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word}!"}).encode() + b"\n"
                      for word in ("hi", "bye"))
    response = httpx.post(f"{server.base_url}/tunelab/data/check", headers={"Authorization": f"Bearer {API_KEY}"},
                          files={"file": ("theirs.jsonl", alpaca)}, data={"model": "default"}, timeout=60)
    assert response.status_code == 200, response.text
    hints = [f for f in response.json()["findings"] if f["code"] == "other_format"]
    assert [(f["line"], f["message"]) for f in hints] == [(1, "this line is Alpaca data, not chat JSONL; convert the "
                                                           "file first: tunelab data convert theirs.jsonl --out "
                                                           "theirs.chat.jsonl")]
    # Uploaded for fine-tuning through the SDK: refused, with the same words.
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, http_client=httpx.Client())
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("their data.jsonl", alpaca), purpose="fine-tune")
    assert caught.value.body["message"].endswith("[missing_messages_list] (and 1 more problem(s)); this line is "
                                                 "Alpaca data, not chat JSONL; convert the file first: tunelab data "
                                                 "convert 'their data.jsonl' --out 'their data.chat.jsonl'")


def test_over_the_cap_is_413_and_nothing_is_stored(client, recorder, server):
    before = len(client.files.list().data)
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", b"x" * (2 * 2**20)), purpose="fine-tune")  # the cap is 1 MB
    assert caught.value.status_code == 413 and caught.value.body["code"] == "file_too_large"
    # Without a declared length (chunked, as the Node SDK sends): counted as it arrives, refused all the same.
    head = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    chunks = (head if index == 0 else b"x" * 65536 for index in range(41))
    streamed = httpx.post(f"{server.base_url}/files", content=chunks, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413
    assert len(client.files.list().data) == before
    recorder.check_all()


def test_other_bodies_have_their_own_cap_and_uploads_their_own_queue(client, recorder, server):
    import threading

    from tunelab.server.app import MAX_CONCURRENT_UPLOADS, MAX_JSON_BYTES

    headers = {"Authorization": f"Bearer {API_KEY}"}
    oversized = {"model": "default", "messages": [{"role": "user", "content": "x" * (MAX_JSON_BYTES + 1)}]}
    refused = httpx.post(f"{server.base_url}/chat/completions", json=oversized, headers=headers, timeout=60)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"

    # Uploads that hold their slot: the body's first bytes, then nothing until released.
    release = threading.Event()

    def held_body():
        yield b"--b\r\n"
        release.wait(30)
        yield b"--b--\r\n"

    def held_upload(answers):
        answers.append(httpx.post(f"{server.base_url}/files", content=held_body(), timeout=60,
                                  headers=headers | {"Content-Type": "multipart/form-data; boundary=b"}).status_code)

    answers: list[int] = []
    holders = [threading.Thread(target=held_upload, args=(answers,)) for _ in range(MAX_CONCURRENT_UPLOADS)]
    for holder in holders:
        holder.start()
    time.sleep(1.5)  # all of them in progress
    with pytest.raises(openai.RateLimitError, match="uploads are in progress"):
        client.files.create(file=("one-more.jsonl", b"{}\n"), purpose="fine-tune")
    release.set()
    for holder in holders:
        holder.join(30)
    assert answers == [400] * MAX_CONCURRENT_UPLOADS  # each held body ended without a file part
    assert client.files.create(file=("after.jsonl", b"{}\n"), purpose="batch").status == "processed"
    recorder.check_all()


def test_every_route_but_health_wants_the_key(server, recorder):
    anonymous = openai.OpenAI(base_url=server.base_url, api_key="sk-wrong", max_retries=0,
                              http_client=httpx.Client(event_hooks={"response": [recorder]}))
    for call in (anonymous.files.list, anonymous.models.list, lambda: anonymous.files.retrieve("file-abc")):
        with pytest.raises(openai.AuthenticationError) as caught:
            call()
        assert caught.value.body["code"] == "invalid_api_key"
    assert httpx.get(f"http://127.0.0.1:{server.port}/health").json() == {"status": "ok"}
    recorder.check_all()


def test_models_and_aliases(client, recorder):
    names = [m.id for m in client.models.list().data]
    assert "default" in names and "gpt-4o-mini-2024-07-18" in names
    assert client.models.retrieve("gpt-4o-mini-2024-07-18").id == "gpt-4o-mini-2024-07-18"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-5-turbo")
    assert caught.value.body["code"] == "model_not_found" and "gpt-4o-mini-2024-07-18" in caught.value.body["message"]
    with pytest.raises(openai.NotFoundError, match="No such File object"):
        client.files.retrieve("file-x;DROP TABLE files")  # ids are checked by pattern before any lookup
    recorder.check_all()


def test_paths_that_try_to_leave_the_api_find_nothing(server):
    for path in ("/files/..%2F..%2Ftunelab.db/content", "/files/%2e%2e/content", "/files/file-..%2Ftunelab.db"):
        answer = httpx.get(server.base_url + path, headers={"Authorization": f"Bearer {API_KEY}"})
        assert answer.status_code == 404 and answer.json()["error"]["message"], path
