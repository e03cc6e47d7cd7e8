"""schemathesis against a running `tunelab serve`: its own OpenAPI schema and OpenAI's, with the figures the
README quotes (used by tests/reliability/test_server_fuzz.py and bench/reliability.py).

The run is schemathesis's own command (`st run`), over real HTTP, with the checks that a response is not a
server error, that its JSON matches the schema for its status, and that its content type is the one
documented. Every request and response is recorded (HAR), so the figures are counted from what was sent,
and every error response is checked to be in OpenAI's error shape.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

OPENAI_SPEC = Path(__file__).resolve().parents[1] / "server" / "openai_api" / "openapi-fine-tuning-subset.json"
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


def openai_spec_as_served(out: Path) -> Path:
    """OpenAI's spec with the four places where it contradicts OpenAI's own API mended, each for a reason:
    the file object's `purpose` enum lacks `evals`, which the upload's enum has; an empty list has no first
    or last id, so those are null; `/pause` answers `status: "paused"` (the spec's own example), which the job
    status enum lacks; and a file's content is its bytes, not a JSON string."""
    spec = json.loads(OPENAI_SPEC.read_text())
    schemas = spec["components"]["schemas"]
    schemas["OpenAIFile"]["properties"]["purpose"]["enum"].append("evals")
    for name in ("first_id", "last_id"):
        schemas["ListFilesResponse"]["properties"][name]["type"] = ["string", "null"]
    schemas["FineTuningJob"]["properties"]["status"]["enum"].append("paused")
    content = spec["paths"]["/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    out.write_text(json.dumps(spec))
    return out


@dataclass
class FuzzFigures:
    schema: str
    exit_code: int
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # "2xx", "4xx", "5xx" → count
    per_operation: dict[str, int] = field(default_factory=dict)  # "POST /v1/fine_tuning/jobs" → requests sent
    server_errors: int = 0
    check_failures: int = 0  # schemathesis's failed checks (schema, content type, 5xx)
    error_bodies_not_openai_shaped: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95, p99, max
    output_tail: str = ""

    def line(self) -> str:
        return (f"{self.schema}: {self.requests} requests, {self.statuses}, server errors {self.server_errors}, "
                f"check failures {self.check_failures}, error bodies not in OpenAI's shape "
                f"{len(self.error_bodies_not_openai_shaped)}, latency ms {self.latency_ms}")


def fuzz(schema: Path, base_url: str, api_key: str, examples: int, seed: int, out: Path, label: str,
         paths: str | None = None, skip: str | None = None) -> FuzzFigures:
    """Run schemathesis's every phase (examples, coverage, fuzzing, stateful) with `examples` cases per
    operation (those whose path matches the regular expression `paths` and not `skip`, when given); count
    what it sent."""
    out.mkdir(parents=True, exist_ok=True)
    har, junit = out / f"{label}.har", out / f"{label}.xml"
    finished = subprocess.run(
        [str(Path(sys.executable).with_name("st")), "run", str(schema), "--url", base_url,
         "-H", f"Authorization: Bearer {api_key}", "-n", str(examples), "--seed", str(seed), "--checks", CHECKS,
         "--workers", "1", "--request-timeout", "60", "--no-color", "--report", "har,junit",
         "--report-har-path", str(har), "--report-junit-path", str(junit), "--generation-database", "none",
         *(["--include-path-regex", paths] if paths else []), *(["--exclude-path-regex", skip] if skip else [])],
        capture_output=True, text=True, timeout=1800, cwd=out)  # its cache folder goes there, not into the checkout
    figures = FuzzFigures(label, finished.returncode, output_tail=(finished.stdout + finished.stderr)[-4000:])
    entries = json.loads(har.read_text())["log"]["entries"] if har.is_file() else []
    times = sorted(entry["time"] for entry in entries)
    figures.requests = len(entries)
    operations = _operations(schema)
    for entry in entries:
        operation = _operation(operations, entry["request"]["method"], entry["request"]["url"])
        if operation:
            figures.per_operation[operation] = figures.per_operation.get(operation, 0) + 1
        status = entry["response"]["status"]
        kind = f"{status // 100}xx"
        figures.statuses[kind] = figures.statuses.get(kind, 0) + 1
        if status >= 400 and not _openai_error(entry["response"]["content"].get("text")):
            figures.error_bodies_not_openai_shaped.append(f"{entry['request']['method']} {entry['request']['url'][:120]} "
                                                          f"→ {status}")
    figures.server_errors = figures.statuses.get("5xx", 0)
    if times:
        quantiles = statistics.quantiles(times, n=100) if len(times) > 1 else times * 99
        figures.latency_ms = {"p50": round(quantiles[49], 1), "p95": round(quantiles[94], 1),
                              "p99": round(quantiles[98], 1), "max": round(times[-1], 1)}
    if junit.is_file():
        import xml.etree.ElementTree as ElementTree

        suites = ElementTree.parse(junit).getroot()
        figures.check_failures = sum(len(case.findall("failure")) + len(case.findall("error"))
                                     for case in suites.iter("testcase"))
    return figures


def _operations(schema: Path) -> list[tuple[str, str, re.Pattern]]:
    """(method, path template, pattern of its URLs' paths) for each operation the schema documents."""
    spec = json.loads(schema.read_text())
    prefix = "/v1" if "/files" in spec["paths"] else ""  # OpenAI's spec leaves /v1 to its servers' URL
    return [(method.upper(), prefix + template, re.compile(prefix + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"))
            for template, operations in spec["paths"].items() for method in operations]


def _operation(operations, method: str, url: str) -> str | None:
    path = "/" + url.split("?")[0].split("/", 3)[3]
    return next((f"{method} {template}" for verb, template, pattern in operations
                 if verb == method and pattern.match(path)), None)


def _openai_error(text: str | None) -> bool:
    try:
        error = json.loads(text or "").get("error")
    except (ValueError, AttributeError):
        return False
    return isinstance(error, dict) and isinstance(error.get("message"), str) and {"type", "param", "code"} <= set(error)
