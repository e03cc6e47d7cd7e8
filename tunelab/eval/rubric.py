"""A house-style rubric written as YAML: checks a reply must pass.

Each check is a regular expression, a prefix/suffix, a sentence limit, or "quote what the prompt gave" (an
order number), optionally applying only when the prompt matches a pattern. A reply's score is the share of
applicable checks it passed. Users write one per task; the demo's is `tunelab/examples/support/rubric.yaml`.
Every pattern is compiled when the rubric is read, so a typo is reported before any generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.conversation.schema import content_text
from tunelab.core.files import read_yaml_file

CHECK_KINDS = ("starts_with", "ends_with", "regex", "not_regex", "max_sentences", "quotes_from_prompt")
_SENTENCE_END = re.compile(r"[.?!](?:\s+|$)")


@dataclass
class RubricCheck:
    """One rule of a rubric. Exactly one of the CHECK_KINDS fields is set."""

    id: str
    description: str
    kind: str
    value: object
    when_prompt_matches: str | None = None  # the check applies only if the last user message matches
    unless_prompt_matches: str | None = None  # …and not if the whole prompt matches this
    strip: list[str] = field(default_factory=list)  # patterns removed before counting sentences

    def applies(self, prompt_text: str, last_user_text: str) -> bool:
        if self.kind == "quotes_from_prompt" and not re.search(self.value, prompt_text):
            return False  # nothing in the prompt to quote
        if self.when_prompt_matches and not re.search(self.when_prompt_matches, last_user_text, re.I):
            return False
        if self.unless_prompt_matches and re.search(self.unless_prompt_matches, prompt_text, re.I):
            return False
        return True

    def passes(self, reply: str, prompt_text: str = "") -> bool:
        if self.kind == "starts_with":
            return re.match(self.value, reply) is not None
        if self.kind == "ends_with":
            return reply.rstrip().endswith(self.value)
        if self.kind == "regex":
            return re.search(self.value, reply, re.I) is not None
        if self.kind == "not_regex":
            return re.search(self.value, reply, re.I) is None
        if self.kind == "max_sentences":
            body = reply
            for pattern in self.strip:
                body = re.sub(pattern, "", body)
            return len(_SENTENCE_END.findall(body.strip() + " ")) <= int(self.value)
        if self.kind == "quotes_from_prompt":  # e.g. an order number the customer gave must be repeated
            return any(found in reply for found in re.findall(self.value, prompt_text))
        raise ValueError(f"unknown check kind {self.kind}")


@dataclass
class RubricScore:
    score: float  # 0..1: share of applicable checks passed
    checks: dict[str, bool]  # check id → passed, for the checks that applied


class RubricScorer:
    """Scores replies against a YAML rubric (see `tunelab/examples/support/rubric.yaml`)."""

    name = "rubric"

    def __init__(self, title: str, checks: list[RubricCheck]):
        self.title = title
        self.checks = checks

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RubricScorer":
        """Read and check a rubric, before any generation: every pattern must compile. Errors name the
        file, the check and the field (ValueError)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such rubric file" if not path.exists() else f"{path}: not a regular file")
        raw = read_yaml_file(path) or {}
        if not isinstance(raw, dict) or not isinstance(raw.get("checks") or [], list):
            raise ValueError(f"{path}: a rubric is a mapping with a `checks` list (see tunelab/examples/support/rubric.yaml)")
        checks = []
        for index, item in enumerate(raw.get("checks") or []):
            kinds = [k for k in CHECK_KINDS if isinstance(item, dict) and k in item]
            if not isinstance(item, dict) or "id" not in item or len(kinds) != 1:
                raise ValueError(f"{path}: checks[{index}]: needs an `id` and exactly one of {', '.join(CHECK_KINDS)}")
            check = RubricCheck(
                id=str(item["id"]), description=item.get("description", item["id"]), kind=kinds[0],
                value=item[kinds[0]], when_prompt_matches=item.get("when_prompt_matches"),
                unless_prompt_matches=item.get("unless_prompt_matches"), strip=item.get("strip", []),
            )
            _check_patterns(check, f"{path}: checks[{index}] ({check.id})")
            checks.append(check)
        if not checks:
            raise ValueError(f"{path}: the rubric has no checks")
        return cls(raw.get("name", path.stem), checks)

    def score(self, prompt: list[dict], reply: str) -> RubricScore:
        prompt_text = "\n".join(content_text(m.get("content")) or "" for m in prompt)
        last_user = next((content_text(m.get("content")) or "" for m in reversed(prompt) if m["role"] == "user"), "")
        results = {c.id: c.passes(reply, prompt_text) for c in self.checks if c.applies(prompt_text, last_user)}
        return RubricScore(sum(results.values()) / max(len(results), 1), results)


def _check_patterns(check: RubricCheck, where: str) -> None:
    """Compile every regular expression of a check now, so a typo is found before hours of generation."""
    patterns = {"when_prompt_matches": check.when_prompt_matches, "unless_prompt_matches": check.unless_prompt_matches}
    if check.kind in ("starts_with", "regex", "not_regex", "quotes_from_prompt"):
        patterns[check.kind] = check.value
    if not isinstance(check.strip, list):
        raise ValueError(f"{where}: strip: must be a list of patterns")
    patterns.update({f"strip[{i}]": pattern for i, pattern in enumerate(check.strip)})
    for field_name, pattern in patterns.items():
        if pattern is None and field_name in ("when_prompt_matches", "unless_prompt_matches"):
            continue  # optional; the check's own pattern (`regex: null`) is not
        if not isinstance(pattern, str):
            raise ValueError(f"{where}: {field_name}: must be a regular expression (text), got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{where}: {field_name}: not a valid regular expression ({error}): {pattern!r}") from None
    if check.kind == "max_sentences" and (not isinstance(check.value, int) or isinstance(check.value, bool)):
        raise ValueError(f"{where}: max_sentences: must be a whole number, got {check.value!r}")
    if check.kind == "ends_with" and not isinstance(check.value, str):
        raise ValueError(f"{where}: ends_with: must be text, got {check.value!r}")
