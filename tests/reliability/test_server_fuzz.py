"""The server fuzzed by schemathesis against its own schema and OpenAI's: no 5xx, every response as its
schema says, every error in OpenAI's shape."""

import httpx2 as httpx
import pytest

from tests.reliability.fuzzing import fuzz, openai_spec_as_served
from tests.serving import API_KEY, Server

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
EXAMPLES = 25  # per operation and phase; bench/reliability.py runs more


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory, tiny_model_dir):
    running = Server(tmp_path_factory.mktemp("fuzzed"), "--alias", f"gpt-4o-mini-2024-07-18={tiny_model_dir}",
                     "--dtype", "fp32", "--max-upload-mb", "1")
    yield running
    running.stop()


@pytest.mark.parametrize("which", ["own", "openai"])
def test_fuzzing_finds_no_server_error_and_no_schema_violation(fuzzed_server, tmp_path, which):
    if which == "own":
        schema = tmp_path / "own.json"
        schema.write_bytes(httpx.get(f"{fuzzed_server.base_url}/openapi.json",
                                     headers={"Authorization": f"Bearer {API_KEY}"}).content)
        base_url = fuzzed_server.base_url.removesuffix("/v1")
    else:
        schema, base_url = openai_spec_as_served(tmp_path / "openai.json"), fuzzed_server.base_url
    figures = fuzz(schema, base_url, API_KEY, EXAMPLES, seed=19, out=tmp_path, label=which)
    print(figures.line())
    assert figures.requests > 500, figures.output_tail
    assert figures.server_errors == 0 and figures.check_failures == 0, figures.output_tail
    assert figures.exit_code == 0, figures.output_tail
    assert figures.error_bodies_not_openai_shaped == []
    if which == "own":  # every body is described, so each is fuzzed in depth (before the typed models: 3 and 14)
        assert figures.per_operation["POST /v1/chat/completions"] > 100, figures.per_operation
        assert figures.per_operation["POST /v1/fine_tuning/jobs"] > 100, figures.per_operation
