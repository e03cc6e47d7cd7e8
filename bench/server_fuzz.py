"""`tunelab serve` fuzzed by schemathesis, longer than the test suite does it.

    .venv/bin/python bench/server_fuzz.py [--examples 100] [--seed 19]

Starts a real server on the tests' tiny model (built here), fetches its own OpenAPI schema (behind the key)
and runs schemathesis's every phase against it (the project routes with a project key, the admin routes with
the admin key) and against OpenAI's published spec
(tests/server/openai_api/, with the four contradictions named in tests/reliability/fuzzing.py mended).
Prints, per schema: requests sent, responses by class, server errors (target 0), failed checks (target 0),
error bodies not in OpenAI's shape (target 0) and latency percentiles; then the database's integrity check.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100, help="cases per operation and phase")
    parser.add_argument("--seed", type=int, default=19)
    arguments = parser.parse_args()

    import httpx2 as httpx

    from tests.conftest import EXAMPLES, build_tiny_model, read_jsonl
    from tests.reliability.fuzzing import fuzz, openai_spec_as_served
    from tests.serving import API_KEY, Server, integrity_check

    with tempfile.TemporaryDirectory(prefix="server-fuzz-") as scratch:
        scratch = Path(scratch)
        corpus = [m["content"] for c in read_jsonl(EXAMPLES / "train.jsonl") for m in c["messages"]]
        model = build_tiny_model(scratch / "tiny-model", corpus)
        admin_key = "sk-admin-bench-0123456789"
        server = Server(scratch / "data", "--alias", f"gpt-4o-mini-2024-07-18={model}", "--dtype", "fp32",
                        "--max-upload-mb", "1", "--admin-key", admin_key)
        try:
            own = scratch / "own.json"
            own.write_bytes(httpx.get(f"{server.base_url}/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}).content)
            root = server.base_url.removesuffix("/v1")
            admin = "^/v1/organization"
            for label, schema, base_url, key, paths, skip in (
                    ("own schema", own, root, API_KEY, None, admin),
                    ("own schema, admin routes", own, root, admin_key, admin, None),
                    ("OpenAI's spec", openai_spec_as_served(scratch / "openai.json"), server.base_url, API_KEY, None, None)):
                figures = fuzz(schema, base_url, key, arguments.examples, arguments.seed, scratch / "reports",
                               label.split()[0].lower() + ("-admin" if paths else ""), paths=paths, skip=skip)
                figures.schema = label
                print(figures.line(), flush=True)
                bodies = {operation: count for operation, count in figures.per_operation.items()
                          if operation.startswith("POST") and ("chat" in operation or operation.endswith("/jobs"))}
                if bodies:
                    print("  requests with a body:", bodies, flush=True)
                for body in figures.error_bodies_not_openai_shaped[:5]:
                    print("  not OpenAI's shape:", body)
                if figures.exit_code:
                    print(figures.output_tail)
        finally:
            server.stop()
        print("database integrity_check:", integrity_check(scratch / "data"))


if __name__ == "__main__":
    main()
