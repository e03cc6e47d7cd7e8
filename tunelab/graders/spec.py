"""The grader JSON, as OpenAI shapes it (openai-python `types/graders/*.py`), checked before anything runs.

    string_check     input, reference, operation: eq | ne | like | ilike
    text_similarity  input, reference, evaluation_metric: cosine | fuzzy_match | bleu | gleu | meteor | rouge_1 … rouge_5 | rouge_l
    score_model      model, input (messages with templates), range (default [0, 1]), sampling_params
    label_model      model, input, labels, passing_labels
    python           source defining `grade(sample, item) -> float`, image_tag (taken, not used)
    multi            graders, calculate_output (a formula over the sub-graders' names)

OpenAI's sources disagree on `multi.graders`: one grader in the SDK's types, a list in the spec's example, an
object keyed by name in the reinforcement guide. All three are taken; each becomes a name → grader map (a
listed grader is known by its `name`), and `calculate_output` refers to those names. A grader that does not
fit is refused with the path of the field (`grader.graders.price.operation: …`), as the server's 400 names it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from tunelab.graders.formula import Formula, FormulaError

SIMILARITY_METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
                      "rouge_5", "rouge_l")
MAX_PYTHON_SOURCE = 256 * 1024  # OpenAI's limit on a python grader's source


class GraderSpecError(ValueError):
    """A grader that cannot run as given; `param` is the field's path (`grader.graders.price.operation`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class _Grader(BaseModel):
    # Evals' graders carried a pass mark; it is taken (a report can use it) and has no effect on the reward.
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1)]
    pass_threshold: float | None = None


class StringCheck(_Grader):
    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarity(_Grader):
    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: Literal[SIMILARITY_METRICS]  # type: ignore[valid-type]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["input_text", "output_text"]
    text: str


class GraderMessage(BaseModel):
    """A message to the grading model; its text may hold templates. Images and audio are refused: no local
    model here reads them."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "developer"]
    content: str | TextPart | list[TextPart]
    type: Literal["message"] | None = None

    def text(self) -> str:
        parts = self.content if isinstance(self.content, list) else [self.content]
        return "".join(part if isinstance(part, str) else part.text for part in parts)


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    max_completions_tokens: Annotated[int, Field(ge=1, le=32768)] | None = None
    reasoning_effort: str | None = None  # taken; a local model has no reasoning effort to set


class ScoreModel(_Grader):
    type: Literal["score_model"]
    model: Annotated[str, Field(min_length=1)]
    input: Annotated[list[GraderMessage], Field(min_length=1)]
    range: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.0, 1.0]
    sampling_params: SamplingParams | None = None

    @field_validator("range")
    @classmethod
    def _ordered(cls, given):
        if given[0] >= given[1]:
            raise ValueError(f"must be [low, high] with low < high (got {given})")
        return given


class LabelModel(_Grader):
    type: Literal["label_model"]
    model: Annotated[str, Field(min_length=1)]
    input: Annotated[list[GraderMessage], Field(min_length=1)]
    labels: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=2)]
    passing_labels: Annotated[list[str], Field(min_length=1)]
    sampling_params: SamplingParams | None = None

    @model_validator(mode="after")
    def _passing_are_labels(self):
        unknown = [label for label in self.passing_labels if label not in self.labels]
        if unknown:
            raise ValueError(f"passing_labels must be among labels; not: {', '.join(unknown)}")
        return self


class Python(_Grader):
    type: Literal["python"]
    source: Annotated[str, Field(min_length=1, max_length=MAX_PYTHON_SOURCE)]
    image_tag: str | None = None  # OpenAI's sandbox image; the sandbox here runs this environment's Python


SingleGrader = Annotated[Union[StringCheck, TextSimilarity, ScoreModel, LabelModel, Python], Field(discriminator="type")]


class Multi(_Grader):
    type: Literal["multi"]
    graders: dict[str, SingleGrader]
    calculate_output: Annotated[str, Field(min_length=1)]

    @field_validator("graders", mode="before")
    @classmethod
    def _by_name(cls, given):
        """One grader, a list of them, or an object keyed by name: each a name → grader map."""
        if isinstance(given, dict) and "type" in given and isinstance(given.get("type"), str):
            given = [given]
        if isinstance(given, list):
            named = {}
            for index, grader in enumerate(given):
                name = grader.get("name") if isinstance(grader, dict) else None
                if not isinstance(name, str) or not name:
                    raise ValueError(f"[{index}] needs a name: calculate_output refers to sub-graders by name")
                if name in named:
                    raise ValueError(f"two sub-graders are named {name!r}; calculate_output could not tell them apart")
                named[name] = grader
            return named
        return given

    @field_validator("graders")
    @classmethod
    def _some(cls, given):
        if not given:
            raise ValueError("give at least one grader")
        return given

    @field_validator("calculate_output")
    @classmethod
    def _formula_names_graders(cls, given, info: ValidationInfo):
        if "graders" in info.data:  # else the graders were refused, and that is the error to report
            try:
                Formula(given, names=set(info.data["graders"]))
            except FormulaError as error:
                raise ValueError(str(error)) from None
        return given


Grader = Annotated[Union[StringCheck, TextSimilarity, ScoreModel, LabelModel, Python, Multi], Field(discriminator="type")]
GRADER_TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")
_GRADER = TypeAdapter(Grader)


def parse_grader(given: Any, where: str = "grader") -> StringCheck | TextSimilarity | ScoreModel | LabelModel | Python | Multi:
    """The grader, checked; GraderSpecError names the first field that does not fit."""
    if not isinstance(given, dict):
        raise GraderSpecError(f"{where}: must be a grader object with a type ({', '.join(GRADER_TYPES)})", where)
    if given.get("type") not in GRADER_TYPES:
        raise GraderSpecError(f"{where}.type: must be one of {', '.join(GRADER_TYPES)} (got {given.get('type')!r})",
                              f"{where}.type")
    try:
        return _GRADER.validate_python(given)
    except ValidationError as error:
        problem = error.errors()[0]
        path = ".".join([where, *_field_path(problem["loc"])])
        message = problem["msg"].removeprefix("Value error, ")
        raise GraderSpecError(f"{path}: {message}", path) from None


def read_grader_file(path) -> StringCheck | TextSimilarity | ScoreModel | LabelModel | Python | Multi:
    """A grader from a JSON file (OpenAI's grader object, or `{"grader": …}` as a job's method carries it);
    errors name the file and the field."""
    from pathlib import Path

    from tunelab.core.files import input_file_problem

    path = Path(path)
    problem = input_file_problem(path)
    if problem:
        raise GraderSpecError(f"{path}: {problem}", "grader")
    try:
        given = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GraderSpecError(f"{path}: not a JSON grader ({error})", "grader") from None
    if isinstance(given, dict) and set(given) == {"grader"}:
        given = given["grader"]
    try:
        return parse_grader(given)
    except GraderSpecError as error:
        raise GraderSpecError(f"{path}: {error}", error.param) from None


def _field_path(loc) -> list[str]:
    """Pydantic's location without the union's branch names (a grader type, or `str` / `list[…]`)."""
    branches = set(GRADER_TYPES) | {"str", "TextPart", "list[TextPart]", "function-after[_ordered(), list[float]]"}
    return [str(part) for part in loc if str(part) not in branches and not str(part).startswith(("list[", "function-"))]


def grading_models(grader) -> list[str]:
    """The models a grader asks (its score_model and label_model graders'), in order, once each."""
    graders = list(grader.graders.values()) if isinstance(grader, Multi) else [grader]
    return list(dict.fromkeys(g.model for g in graders if isinstance(g, (ScoreModel, LabelModel))))
