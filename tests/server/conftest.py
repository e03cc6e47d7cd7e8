"""A real `tunelab serve` process for the server tests, and the official openai client pointed at it."""

import json

import httpx2 as httpx  # the HTTP client the openai package is built on
import pytest

from tests.serving import API_KEY, Server  # noqa: F401 (the server tests import API_KEY from here)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # fp32, so a greedy reply batched with others is the same as one alone (bf16 rounds with the batch); the
    # origin-code test serves the same model in the machine's own format.
    running = Server(tmp_path_factory.mktemp("serve"), "--alias", "gpt-4o-mini-2024-07-18=default",
                     "--max-upload-mb", "1", "--dtype", "fp32")
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
    running = Server(tmp_path_factory.mktemp("serve-tiny"), "--alias", f"gpt-4o-mini-2024-07-18={tiny_model_dir}",
                     "--dtype", "fp32")  # replies compared with local fp32 generation
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
