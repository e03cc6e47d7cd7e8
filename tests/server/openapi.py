"""Responses checked against OpenAI's published API (../shared/openai-api/, the spec cut to our endpoints).

A recorder collects every response a test's client received; `check_all` validates each JSON body
against the schema the spec gives for that path, method and status (error statuses the spec leaves
undocumented against its ErrorResponse).
"""

import json
import re
from pathlib import Path

import jsonschema

SPEC_FILE = Path(__file__).resolve().parent / "openai_api" / "openapi-fine-tuning-subset.json"
SPEC = json.loads(SPEC_FILE.read_text())


def _schema_for(method: str, path: str, status: int) -> dict:
    for template, operations in SPEC["paths"].items():
        pattern = "^/v1" + re.sub(r"\{[^}]+\}", "[^/]+(?:/[^/]+)*?" if "model" in template else "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            responses = operations[method.lower()]["responses"]
            response = responses.get(str(status)) or (responses.get("default") if status >= 400 else None)
            content = (response or {}).get("content", {}).get("application/json")
            if content:
                return content["schema"]
            if status >= 400:
                return {"$ref": "#/components/schemas/ErrorResponse"}
            raise AssertionError(f"the spec has no JSON schema for {method} {path} → {status}")
    raise AssertionError(f"{method} {path}: not in the spec")


def validate(method: str, path: str, status: int, body) -> None:
    schema = dict(_schema_for(method, path, status), components=SPEC["components"])
    jsonschema.Draft202012Validator(schema).validate(body)


class Recorder:
    """An httpx response hook: keeps (method, path, status, JSON body) of every JSON response."""

    def __init__(self):
        self.seen: list[tuple[str, str, int, object]] = []

    def __call__(self, response) -> None:
        response.read()
        if response.headers.get("content-type", "").startswith("application/json"):
            self.seen.append((response.request.method, response.request.url.path, response.status_code,
                              response.json()))

    def check_all(self) -> int:
        for method, path, status, body in self.seen:
            validate(method, path, status, body)
        return len(self.seen)
