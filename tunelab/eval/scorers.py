"""Scorers: one interface, each turning a system's replies to the held-out prompts into per-example scores.

A scorer has a `name`, a `label` for the report, a direction (`higher_is_better`: True, False, or None for
a measurement with no better side, such as length), whether its scores are pass/fail (`binary`, which
selects McNemar's test), and whether they lie in [0, 1] (`fraction`: shown as 0–100 in the report).
`score(items, replies)` returns one value per example, or None where the scorer does not apply to that
example (decided by the example alone, so systems are always compared on the same examples).

| name | what it measures | library |
|---|---|---|
| exact_match | the reply equals the reference (whitespace normalised) | — |
| rubric | share of the rubric's applicable checks passed | (rubric.py) |
| rouge_l | ROUGE-L F1 against the reference | rouge-score |
| chrf | chrF against the reference, 0–1 | sacrebleu |
| semantic_similarity | cosine similarity of MiniLM embeddings, clipped at 0 | sentence-transformers |
| json_valid | the reply is one JSON value (nothing around it) | json |
| json_schema | the reply is JSON and satisfies the schema (`--schema`, or one inferred from the references) | jsonschema |
| tool_call | on examples offering tools: the calls made equal the reference's (names and arguments) | — |
| ended_turn | the reply ended by itself, not at the token limit | — |
| length | reply length in tokens | — |

| grader | the reward of one of OpenAI's graders (`--grader FILE`): string_check, text_similarity, score_model, label_model, python (sandboxed), multi | graders/ |

The model-graded scorers (`judge`, `pairwise`) live in judge.py: they need an endpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.eval.items import Item
from tunelab.eval.rubric import RubricScorer
from tunelab.models.generate import Generation

LOCAL_SCORERS = ("exact_match", "rubric", "rouge_l", "chrf", "semantic_similarity", "json_valid", "json_schema",
                 "tool_call", "ended_turn", "length")


@dataclass
class Scores:
    values: list[float | None]  # per example; None: not applicable to that example
    details: list[dict | None] = field(default_factory=list)  # per example, shown beside the reply


class Scorer:
    name = ""
    label = ""
    higher_is_better: bool | None = True
    binary = False
    fraction = True

    def score(self, items: list[Item], replies: list[Generation]) -> Scores:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "higher_is_better": self.higher_is_better,
                "binary": self.binary, "fraction": self.fraction}


class ExactMatch(Scorer):
    name, label, binary = "exact_match", "exact match", True

    def score(self, items, replies):
        return Scores([float(_normalise(r.text) == _normalise(i.reference)) for i, r in zip(items, replies)])


def _normalise(text: str) -> str:
    return " ".join(text.split())


class Rubric(Scorer):
    name = "rubric"

    def __init__(self, path: str | Path):
        self.rubric = RubricScorer.from_yaml(path)
        self.path = str(path)
        self.label = f"score on the {self.rubric.title} rubric"

    def score(self, items, replies):
        results = [self.rubric.score(i.prompt, r.text) for i, r in zip(items, replies)]
        return Scores([s.score for s in results], [{"checks": s.checks} for s in results])

    def describe(self) -> dict:
        return super().describe() | {"path": self.path, "title": self.rubric.title,
                                     "checks": [{"id": c.id, "description": c.description} for c in self.rubric.checks]}


class RougeL(Scorer):
    name, label = "rouge_l", "ROUGE-L F1"

    def __init__(self):
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def score(self, items, replies):
        return Scores([self.scorer.score(i.reference, r.text)["rougeL"].fmeasure for i, r in zip(items, replies)])


class ChrF(Scorer):
    name, label = "chrf", "chrF"

    def __init__(self):
        from sacrebleu.metrics import CHRF

        self.metric = CHRF()

    def score(self, items, replies):
        return Scores([self.metric.sentence_score(r.text, [i.reference]).score / 100 for i, r in zip(items, replies)])


class SemanticSimilarity(Scorer):
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2, shipped inside a PyPI package, so it works
    offline) between reply and reference, clipped at 0: the text_similarity grader's `cosine` (graders/)."""

    name, label = "semantic_similarity", "similarity to reference"

    def score(self, items, replies):
        from tunelab.graders.similarity import cosine_similarities

        return Scores([max(0.0, v) for v in cosine_similarities([r.text for r in replies], [i.reference for i in items])])


class GraderScore(Scorer):
    """OpenAI's grader over each reply (graders/): its reward, with the errors a reply met beside it. A reply
    the grader failed on scores 0, as in training, and is counted in the details."""

    def __init__(self, path: str | Path, grader_url: str | None = None):
        from tunelab.graders.grade import Grading
        from tunelab.graders.model import GradingModels
        from tunelab.graders.spec import LabelModel, StringCheck, read_grader_file

        self.path = str(path)
        self.spec = read_grader_file(path)
        self.grading = Grading(self.spec, models=GradingModels(endpoint_url=grader_url))
        self.name = "grader"
        self.label = f"grader {self.spec.name!r} ({self.spec.type})"
        self.binary = isinstance(self.spec, (StringCheck, LabelModel))
        self.fraction = self.spec.type in ("string_check", "label_model", "text_similarity") or \
            (self.spec.type == "score_model" and self.spec.range == [0.0, 1.0])

    def score(self, items, replies):
        from tunelab.graders.templates import Sample

        samples = [Sample.of(reply) for reply in replies]
        graded = self.grading.grade(samples, [i.fields for i in items])
        details = [{"reward": g.reward, **({"sub_rewards": g.sub_rewards} if g.sub_rewards else {}),
                    **({"errors": sorted(g.errors), "details": g.details} if g.failed else {})} for g in graded]
        return Scores([g.reward for g in graded], details)

    def describe(self) -> dict:
        return super().describe() | {"path": self.path, "grader": self.spec.model_dump(exclude_none=True)}


def parse_json_reply(text: str):
    """The reply as one JSON value, or raise ValueError: a program reading the reply would call json.loads."""
    return json.loads(text.strip())


class JsonValid(Scorer):
    name, label, binary = "json_valid", "valid JSON", True

    def score(self, items, replies):
        values, details = [], []
        for reply in replies:
            try:
                parse_json_reply(reply.text)
                values.append(1.0)
                details.append(None)
            except ValueError as error:
                values.append(0.0)
                details.append({"error": str(error)})
        return Scores(values, details)


class JsonSchema(Scorer):
    name, label, binary = "json_schema", "schema-valid JSON", True

    def __init__(self, schema: dict, source: str):
        from jsonschema import Draft202012Validator

        self.schema, self.source = schema, source
        self.validator = Draft202012Validator(schema)

    @classmethod
    def from_file(cls, path: str | Path) -> "JsonSchema":
        from jsonschema import Draft202012Validator, SchemaError

        path = Path(path)
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ValueError(f"{path}: cannot read the schema ({error.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            raise ValueError(f"{path}: {where}: not a valid JSON Schema ({error.message})") from None
        return cls(schema, str(path))

    @classmethod
    def inferred(cls, items: list[Item], data_path: str) -> "JsonSchema":
        """The schema the references share: their keys, which keys every one has, and each value's type."""
        values = []
        for item in items:
            try:
                values.append(parse_json_reply(item.reference_content))
            except ValueError:
                raise ValueError(f"{data_path}: line {item.line}: the reference reply is not JSON, so no schema can "
                                 f"be inferred for json_schema; pass one with --schema") from None
        return cls(infer_schema(values), f"inferred from the {len(values)} reference replies")

    def score(self, items, replies):
        values, details = [], []
        for reply in replies:
            try:
                errors = sorted(self.validator.iter_errors(parse_json_reply(reply.text)), key=lambda e: e.path)
            except ValueError:
                values.append(0.0)
                details.append({"error": "not JSON"})
                continue
            values.append(float(not errors))
            details.append({"error": f"{'/'.join(map(str, errors[0].absolute_path)) or '(top)'}: {errors[0].message}"}
                           if errors else None)
        return Scores(values, details)

    def describe(self) -> dict:
        return super().describe() | {"schema": self.schema, "source": self.source}


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object", type(None): "null"}[type(value)]


def infer_schema(values: list) -> dict:
    """A JSON Schema that all `values` satisfy: object keys present in every value are required, no other
    keys are allowed, and each key's type is the union of the types seen (integer and number merge)."""
    types = {_json_type(v) for v in values}
    if types >= {"integer", "number"}:
        types.discard("integer")
    schema: dict = {"type": sorted(types)[0] if len(types) == 1 else sorted(types)}
    objects = [v for v in values if isinstance(v, dict)]
    if objects:
        keys = sorted({k for o in objects for k in o})
        schema["properties"] = {k: infer_schema([o[k] for o in objects if k in o]) for k in keys}
        schema["required"] = [k for k in keys if all(k in o for o in objects)]
        schema["additionalProperties"] = False
    elements = [e for v in values if isinstance(v, list) for e in v]
    if elements:
        schema["items"] = infer_schema(elements)
    return schema


class ToolCall(Scorer):
    """On examples that offer tools: 1 when the reply's calls equal the reference's — the same function names
    with the same arguments (compared as JSON values, in any order) — including making no call when the
    reference makes none."""

    name, label, binary = "tool_call", "right tool call", True

    def score(self, items, replies):
        values, details = [], []
        for item, reply in zip(items, replies):
            if not item.tools and not item.reference_calls:
                values.append(None)
                details.append(None)
                continue
            made = sorted(_canonical(c["function"]["name"], _loaded(c["function"]["arguments"])) for c in reply.tool_calls)
            wanted = sorted(_canonical(name, arguments) for name, arguments in item.reference_calls)
            values.append(float(made == wanted))
            details.append(None if made == wanted else {"made": made, "wanted": wanted})
        return Scores(values, details)


def _loaded(arguments):
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        return arguments


def _canonical(name: str, arguments) -> str:
    return f"{name}({json.dumps(arguments, sort_keys=True, ensure_ascii=False)})"


class EndedTurn(Scorer):
    name, label, binary = "ended_turn", "turns ended by the model", True

    def score(self, items, replies):
        return Scores([float(r.finish_reason != "length") for r in replies])


class Length(Scorer):
    name, label, higher_is_better, fraction = "length", "reply tokens", None, False

    def score(self, items, replies):
        return Scores([float(r.completion_tokens) for r in replies])


_WORDS = re.compile(r"\w+")


def choose_scorers(names: list[str] | None, items: list[Item], data_path: str, rubric: str | None = None,
                   schema: str | None = None, grader: str | None = None, grader_url: str | None = None) -> list[Scorer]:
    """The scorers named, or those the data and options call for: the grader and the rubric when given;
    json_valid and json_schema when the references are JSON (or a schema is given); tool_call when examples
    offer tools; exact_match for short answers (labels, numbers); the text-overlap and similarity scorers
    for free text; ended_turn and length always. A file of tasks has no reference replies: only the grader
    (which it needs) and the reference-free scorers."""
    graded = [GraderScore(grader, grader_url)] if grader else []
    if not any(i.reference for i in items):
        if not grader:
            raise ValueError(f"{data_path}: its examples have no reference replies (reinforcement tasks): give "
                             "--grader FILE to score the replies")
        names = [n for n in (names or ["ended_turn", "length"]) if n in ("ended_turn", "length")]
    if names is None:
        names = ["rubric"] if rubric else []
        json_references = all(is_json(i.reference_content) for i in items) and any(i.reference_content for i in items)
        if schema or json_references:
            names += ["json_valid", "json_schema"]
        if any(i.tools or i.reference_calls for i in items):
            names.append("tool_call")
        if not json_references:
            if sum(len(_WORDS.findall(i.reference)) for i in items) <= 5 * len(items):
                names.append("exact_match")
            names += ["semantic_similarity", "rouge_l", "chrf"]
        names += ["ended_turn", "length"]
    unknown = [n for n in names if n not in LOCAL_SCORERS]
    if unknown:
        raise ValueError(f"--scorers: unknown scorer {', '.join(unknown)} (known: {', '.join(LOCAL_SCORERS)}; "
                         f"judge and pairwise come with --judge)")
    if "rubric" in names and not rubric:
        raise ValueError("--scorers rubric needs --rubric FILE")
    made = {"exact_match": ExactMatch, "rouge_l": RougeL, "chrf": ChrF, "semantic_similarity": SemanticSimilarity,
            "json_valid": JsonValid, "tool_call": ToolCall, "ended_turn": EndedTurn, "length": Length}
    scorers = graded
    for name in dict.fromkeys(names):
        if name == "rubric":
            scorers.append(Rubric(rubric))
        elif name == "json_schema":
            scorers.append(JsonSchema.from_file(schema) if schema else JsonSchema.inferred(items, data_path))
        else:
            scorers.append(made[name]())
    return scorers


def is_json(text: str) -> bool:
    """Whether the text, whitespace aside, is one JSON value."""
    try:
        parse_json_reply(text)
        return True
    except ValueError:
        return False
