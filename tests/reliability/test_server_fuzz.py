"""The server fuzzed by schemathesis against its own schema and OpenAI's: no 5xx, every response as its
schema says, every error in OpenAI's shape."""

import httpx2 as httpx
import pytest

from tests.reliability.fuzzing import fuzz, openai_spec_as_served
from tests.serving import API_KEY, Server

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
EXAMPLES = 25  # per operation and phase; bench/reliability.py runs more
ADMIN_KEY = "sk-admin-fuzz-0123456789"


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory, tiny_model_dir):
    running = Server(tmp_path_factory.mktemp("fuzzed"), "--alias", f"gpt-4o-mini-2024-07-18={tiny_model_dir}",
                     "--dtype", "fp32", "--max-upload-mb", "1", "--admin-key", ADMIN_KEY)
    yield running
    running.stop()


@pytest.mark.parametrize("which", ["own", "admin", "openai"])
def test_fuzzing_finds_no_server_error_and_no_schema_violation(fuzzed_server, tmp_path, which):
    """`own`: the routes a project key opens; `admin`: the admin routes (projects, keys, audit log), with the
    admin key; `openai`: OpenAI's spec of the same project routes."""
    key, paths = (ADMIN_KEY, "^/v1/organization") if which == "admin" else (API_KEY, None)
    skip = "^/v1/organization" if which == "own" else None  # the admin routes have their own run, with their key
    if which in ("own", "admin"):
        schema = tmp_path / "own.json"
        schema.write_bytes(httpx.get(f"{fuzzed_server.base_url}/openapi.json",
                                     headers={"Authorization": f"Bearer {API_KEY}"}).content)
        base_url = fuzzed_server.base_url.removesuffix("/v1")
    else:
        schema, base_url = openai_spec_as_served(tmp_path / "openai.json"), fuzzed_server.base_url
    figures = fuzz(schema, base_url, key, EXAMPLES, seed=19, out=tmp_path, label=which, paths=paths, skip=skip)
    print(figures.line())
    assert figures.requests > (200 if which == "admin" else 500), figures.output_tail
    assert figures.server_errors == 0 and figures.check_failures == 0, figures.output_tail
    assert figures.exit_code == 0, figures.output_tail
    assert figures.error_bodies_not_openai_shaped == []
    if which == "admin":  # the admin key reached every admin route, and not only to be refused
        assert len(figures.per_operation) >= 9 and figures.statuses.get("2xx", 0) > 50, (figures.per_operation,
                                                                                        figures.statuses)
    if which == "own":  # every body is described, so each is fuzzed in depth (before the typed models: 3 and 14)
        assert figures.per_operation["POST /v1/chat/completions"] > 100, figures.per_operation
        assert figures.per_operation["POST /v1/fine_tuning/jobs"] > 100, figures.per_operation
