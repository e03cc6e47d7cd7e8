"""Templates in graders' strings, as OpenAI's graders guide documents them.

`{{ namespace.path }}`: the namespace is `item` (the training line without `messages` and `tools`, or the
item given to graders/run) or `sample` (the reply being graded); the path goes into nested objects with dots
and into lists with `[N]` or `.N` (`{{item.fields.price}}`, `{{sample.output_tools[0].function.name}}`).
The sample's variables:

    output_text    the reply's text (its content: without tool calls; "" when it is only calls)
    output_json    the reply parsed as JSON, when the whole reply is one JSON value
    output_tools   the reply's tool calls, OpenAI-shaped ({id, type, function: {name, arguments}})

A string is put in as it is; anything else as JSON (`{"a": 1}`, `2.5`, `true`, `null`). A path that is not
there is an error (`invalid_variable_error`), and so is `output_json` when the reply is not JSON
(`sample_parse_error`): the grader gives 0 with the error in its metadata, as OpenAI's does, rather than
grading an empty string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_STEP = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")
NAMESPACES = ("item", "sample")
_NOT_JSON = object()


@dataclass(frozen=True)
class Sample:
    """The reply a grader grades."""

    output_text: str
    output_tools: list[dict] = field(default_factory=list)
    model: str | None = None  # the model that wrote it, when known (metadata.sampled_model_name)

    @property
    def output_json(self):
        """The reply as one JSON value, or _NOT_JSON."""
        try:
            return json.loads(self.output_text)
        except (json.JSONDecodeError, ValueError):
            return _NOT_JSON

    @classmethod
    def of(cls, reply) -> "Sample":
        """The sample a generated reply (models/generate.py's Generation) is."""
        return cls(reply.message_text, reply.tool_calls)

    def namespace(self) -> dict:
        """The `sample` namespace, and what a python grader's `grade(sample, item)` gets."""
        parsed = self.output_json
        return {"output_text": self.output_text, "output_json": None if parsed is _NOT_JSON else parsed,
                "output_tools": self.output_tools}


class TemplateError(ValueError):
    """A template that cannot be filled for this sample and item; `kind` is OpenAI's error flag."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind  # "invalid_variable_error" or "sample_parse_error"


def render(template: str, sample: Sample, item: dict) -> str:
    """The template with every `{{…}}` filled in."""
    return _TEMPLATE.sub(lambda match: _as_text(resolve(match.group(1), sample, item)), template)


def variables(template: str) -> list[str]:
    return [match.group(1) for match in _TEMPLATE.finditer(template)]


def check_variables(template: str, where: str) -> None:
    """Refuse a reference outside the two namespaces before anything runs (the rest depends on the data)."""
    for reference in variables(template):
        namespace = reference.split(".", 1)[0].split("[", 1)[0]
        if namespace not in NAMESPACES:
            raise ValueError(f"{where}: {{{{{reference}}}}} is in no namespace; templates read item.… or sample.…")


def resolve(reference: str, sample: Sample, item: dict) -> Any:
    steps = [(name, index) for name, index in _STEP.findall(reference)]
    if not steps or not steps[0][0] or steps[0][0] not in NAMESPACES:
        raise TemplateError(f"{{{{{reference}}}}}: templates read item.… or sample.…", "invalid_variable_error")
    namespace = steps[0][0]
    value: Any = item if namespace == "item" else sample.namespace()
    if namespace == "sample" and len(steps) > 1 and steps[1][0] == "output_json" and sample.output_json is _NOT_JSON:
        raise TemplateError(f"{{{{{reference}}}}}: the reply is not JSON", "sample_parse_error")
    walked = namespace
    for name, index in steps[1:]:
        key: Any = name if name else int(index)
        if isinstance(value, dict) and isinstance(key, str) and key in value:
            value = value[key]
        elif isinstance(value, list) and _index(key, len(value)) is not None:
            value = value[_index(key, len(value))]
        else:
            raise TemplateError(f"{{{{{reference}}}}}: {walked} has no {key!r}", "invalid_variable_error")
        walked += f".{key}" if isinstance(key, str) else f"[{key}]"
    return value


def _index(key, length: int) -> int | None:
    if isinstance(key, str):
        key = int(key) if key.lstrip("-").isdigit() else None
    if key is None or not -length <= key < length:
        return None
    return key


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
