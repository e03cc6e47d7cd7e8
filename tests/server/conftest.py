"""A real `tunelab serve` process for the server tests, and the official openai client pointed at it."""

import json
import os
import socket
import subprocess
import sys
import time

import httpx2 as httpx  # the HTTP client the openai package is built on
import pytest

API_KEY = "sk-test-tunelab-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, data_dir, *arguments: str):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir),
             "--api-key", API_KEY, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(os.environ, TUNELAB_API_KEY=""))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
            if self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"tunelab serve did not start: {self.process.stdout.read().decode()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("serve"), "--alias", "gpt-4o-mini-2024-07-18=default",
                     "--max-upload-mb", "1")
    yield running
    running.stop()


@pytest.fixture()
def recorder():
    from tests.server.openapi import Recorder

    return Recorder()


@pytest.fixture()
def client(server, recorder):
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0,
                         http_client=httpx.Client(event_hooks={"response": [recorder]}))


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_model_dir):
    """A server whose base model is the tests' tiny model (fast to train and to answer)."""
    running = Server(tmp_path_factory.mktemp("serve-tiny"), "--alias", f"gpt-4o-mini-2024-07-18={tiny_model_dir}")
    yield running
    running.stop()


@pytest.fixture()
def tiny_client(tiny_server, recorder):
    import openai

    return openai.OpenAI(base_url=tiny_server.base_url, api_key=API_KEY, max_retries=0,
                         http_client=httpx.Client(event_hooks={"response": [recorder]}))


def upload(client, tmp_path, conversations, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    return client.files.create(file=path.open("rb"), purpose="fine-tune")
