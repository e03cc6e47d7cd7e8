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


def _as_json_schema(node):
    """OpenAPI 3.0 leftovers in the spec, in JSON Schema 2020-12's terms: `exclusiveMinimum: true` beside
    `minimum: 0` means exclusiveMinimum 0 (2020-12 would read the `true` as the number 1), and
    `nullable: true` allows null."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _as_json_schema(value) for key, value in node.items()}
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True and bound in node:
            node[exclusive] = node.pop(bound)
        elif node.get(exclusive) is False:
            del node[exclusive]
    if node.pop("nullable", False) is True:  # 3.0's `nullable: true` is 2020-12's "or null"
        return {"anyOf": [node, {"type": "null"}]}
    return node


SPEC = _as_json_schema(json.loads(SPEC_FILE.read_text()))
# The spec's own example for /pause answers "status": "paused", a value its enum lacks; OpenAI's API does
# answer it, so the check follows the example.
SPEC["components"]["schemas"]["FineTuningJob"]["properties"]["status"]["enum"].append("paused")
# A list's `first_id` and `last_id` are typed as strings, but an empty list has neither: OpenAI's API (and
# its SDKs' own test fixtures) answer null there, as tunelab does.
for properties in (schema.get("properties", {}) for schema in SPEC["components"]["schemas"].values()):
    for bound in ("first_id", "last_id") if "first_id" in properties else ():
        properties[bound] = {"anyOf": [properties[bound], {"type": "null"}]}


def _schema_for(method: str, path: str, status: int, media: str = "application/json") -> dict:
    for template, operations in SPEC["paths"].items():
        pattern = "^/v1" + re.sub(r"\{[^}]+\}", "[^/]+(?:/[^/]+)*?" if "model" in template else "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            responses = operations[method.lower()]["responses"]
            response = responses.get(str(status)) or (responses.get("default") if status >= 400 else None)
            content = (response or {}).get("content", {}).get(media)
            if content:
                return content["schema"]
            if status >= 400:
                return {"$ref": "#/components/schemas/ErrorResponse"}
            raise AssertionError(f"the spec has no JSON schema for {method} {path} → {status}")
    raise AssertionError(f"{method} {path}: not in the spec")


def validate(method: str, path: str, status: int, body, media: str = "application/json") -> None:
    schema = dict(_schema_for(method, path, status, media), components=SPEC["components"])
    jsonschema.Draft202012Validator(schema).validate(body)


class Recorder:
    """An httpx response hook: keeps every JSON response, and every chunk of every server-sent stream."""

    def __init__(self):
        self.seen: list[tuple[str, str, int, object, str]] = []

    def __call__(self, response) -> None:
        media = response.headers.get("content-type", "").split(";")[0]
        where = (response.request.method, response.request.url.path, response.status_code)
        if media == "application/json":
            response.read()
            self.seen.append((*where, response.json(), media))
        elif media == "text/event-stream":
            response.read()
            for line in response.text.splitlines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    self.seen.append((*where, json.loads(line[6:]), media))

    def check_all(self) -> int:
        for method, path, status, body, media in self.seen:
            validate(method, path, status, body, media)
        return len(self.seen)
