"""One grader over samples: each sample's reward, its sub-rewards and OpenAI's metadata.

A grader never raises for a sample: what goes wrong is a flag in `metadata.errors`, as OpenAI's graders
report it (`invalid_variable_error` for a template naming what is not there, `sample_parse_error` for
`output_json` of a reply that is not JSON, `python_grader_runtime_error` with its traceback,
`python_grader_server_error` with its type for the sandbox's own limits, `model_grader_parse_error`,
`model_grader_server_error`, `formula_parse_error`), and the reward is 0. A human-readable line for each
error is in `metadata.details` (tunelab's addition: OpenAI's flags do not say which variable was missing).

Samples are graded in batches: a python grader's samples in one sandbox, a model grader's prompts in one
batched generation (or concurrent requests), cosine similarities in one embedding pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tunelab.graders.formula import Formula, FormulaError, FormulaEvaluationError
from tunelab.graders.model import GradingModels, ParseError, read_label, read_score
from tunelab.graders.sandbox import PythonSandbox
from tunelab.graders.similarity import cosine_similarities, similarity
from tunelab.graders.spec import LabelModel, Multi, Python, ScoreModel, StringCheck, TextSimilarity, parse_grader
from tunelab.graders.templates import Sample, TemplateError, render

ERROR_FLAGS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
               "model_grader_server_error", "other_error", "python_grader_runtime_error", "python_grader_server_error",
               "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error")


@dataclass
class Graded:
    """One sample's grade."""

    reward: float
    name: str
    type: str
    errors: set[str] = field(default_factory=set)
    details: list[str] = field(default_factory=list)
    sub_rewards: dict[str, float] = field(default_factory=dict)
    execution_time: float = 0.0
    sampled_model_name: str | None = None
    token_usage: dict[str, dict] = field(default_factory=dict)  # per grading model
    python_runtime_details: str | None = None
    python_server_error_type: str | None = None
    model_server_details: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def to_openai(self) -> dict:
        """POST /v1/fine_tuning/alpha/graders/run's answer (openai-python `GraderRunResponse`)."""
        errors = {flag: flag in self.errors for flag in ERROR_FLAGS}
        errors |= {"python_grader_runtime_error_details": self.python_runtime_details,
                   "python_grader_server_error_type": self.python_server_error_type,
                   "model_grader_server_error_details": self.model_server_details}
        total_tokens = sum(usage["total_tokens"] for usage in self.token_usage.values())
        return {"reward": self.reward, "sub_rewards": dict(self.sub_rewards),
                "metadata": {"name": self.name, "type": self.type, "errors": errors,
                             "execution_time": round(self.execution_time, 4),
                             "sampled_model_name": self.sampled_model_name, "scores": dict(self.sub_rewards),
                             "token_usage": total_tokens if self.token_usage else None, "details": list(self.details)},
                "model_grader_token_usage_per_model": {model: dict(usage) for model, usage in self.token_usage.items()}}

    def fail(self, flag: str, detail: str) -> "Graded":
        self.reward = 0.0
        self.errors.add(flag)
        self.details.append(f"{self.name}: {detail}")
        return self


class Grading:
    """A checked grader, ready to grade; `models` answers model graders, `sandbox` runs python graders."""

    def __init__(self, grader, models: GradingModels | None = None, sandbox: PythonSandbox | None = None):
        self.spec = grader if not isinstance(grader, dict) else parse_grader(grader)
        self.models = models or GradingModels()
        self.sandbox = sandbox or PythonSandbox()

    def grade(self, samples: list[Sample], items: list[dict]) -> list[Graded]:
        started = time.monotonic()
        graded = self._grade(self.spec, samples, items)
        each = (time.monotonic() - started) / max(1, len(samples))
        for result, sample in zip(graded, samples):
            result.execution_time = result.execution_time or each
            result.sampled_model_name = sample.model
        return graded

    def grade_one(self, sample: Sample, item: dict) -> Graded:
        return self.grade([sample], [item])[0]

    def _grade(self, spec, samples: list[Sample], items: list[dict]) -> list[Graded]:
        if isinstance(spec, Multi):
            return self._multi(spec, samples, items)
        grade = {StringCheck: self._string_check, TextSimilarity: self._text_similarity, Python: self._python,
                 ScoreModel: self._model, LabelModel: self._model}[type(spec)]
        return grade(spec, samples, items)

    @staticmethod
    def _string_check(spec: StringCheck, samples, items) -> list[Graded]:
        results = []
        for sample, item in zip(samples, items):
            result = Graded(0.0, spec.name, spec.type)
            try:
                given, reference = render(spec.input, sample, item), render(spec.reference, sample, item)
            except TemplateError as error:
                results.append(result.fail(error.kind, str(error)))
                continue
            result.reward = float({"eq": given == reference, "ne": given != reference, "like": reference in given,
                                   "ilike": reference.lower() in given.lower()}[spec.operation])
            results.append(result)
        return results

    @staticmethod
    def _text_similarity(spec: TextSimilarity, samples, items) -> list[Graded]:
        results, pairs = [], []
        for sample, item in zip(samples, items):
            result = Graded(0.0, spec.name, spec.type)
            try:
                pairs.append((result, render(spec.input, sample, item), render(spec.reference, sample, item)))
            except TemplateError as error:
                result.fail(error.kind, str(error))
            results.append(result)
        if spec.evaluation_metric == "cosine" and pairs:
            for (result, _, _), value in zip(pairs, cosine_similarities([p[1] for p in pairs], [p[2] for p in pairs])):
                result.reward = value
        else:
            for result, given, reference in pairs:
                result.reward = float(similarity(spec.evaluation_metric, given, reference))
        return results

    def _python(self, spec: Python, samples, items) -> list[Graded]:
        outcomes = self.sandbox.grade(spec.source, [(sample.namespace(), item) for sample, item in zip(samples, items)])
        results = []
        for outcome in outcomes:
            result = Graded(0.0, spec.name, spec.type, execution_time=outcome.seconds)
            if outcome.score is not None:
                result.reward = outcome.score
            elif outcome.runtime_error is not None:
                result.fail("python_grader_runtime_error", outcome.runtime_error)
                result.python_runtime_details = outcome.details
            else:
                result.fail("python_grader_server_error", outcome.details)
                result.python_server_error_type = outcome.server_error
                if outcome.server_error == "timeout":
                    result.errors.add("unresponsive_reward_error")
            results.append(result)
        return results

    def _model(self, spec: ScoreModel | LabelModel, samples, items) -> list[Graded]:
        results, asked, conversations = [], [], []
        for sample, item in zip(samples, items):
            result = Graded(0.0, spec.name, spec.type)
            try:
                conversations.append([{"role": message.role, "content": render(message.text(), sample, item)}
                                      for message in spec.input])
                asked.append(result)
            except TemplateError as error:
                result.fail(error.kind, str(error))
            results.append(result)
        if not conversations:
            return results
        for result, completion in zip(asked, self.models.complete_many(spec.model, conversations, spec.sampling_params)):
            if completion.error is not None:
                result.fail("model_grader_server_error", completion.error)
                result.model_server_details = completion.error
                continue
            result.token_usage = {spec.model: {"prompt_tokens": completion.prompt_tokens,
                                               "completion_tokens": completion.completion_tokens,
                                               "total_tokens": completion.prompt_tokens + completion.completion_tokens,
                                               "cached_tokens": 0}}
            try:
                if isinstance(spec, ScoreModel):
                    result.reward = read_score(completion.text, *spec.range)
                else:
                    result.reward = float(read_label(completion.text, spec.labels) in spec.passing_labels)
            except ParseError as error:
                result.fail("model_grader_parse_error", str(error))
        return results

    def _multi(self, spec: Multi, samples, items) -> list[Graded]:
        formula = Formula(spec.calculate_output, names=set(spec.graders))
        by_grader = {name: self._grade(sub, samples, items) for name, sub in spec.graders.items()}
        results = []
        for index in range(len(samples)):
            parts = {name: graded[index] for name, graded in by_grader.items()}
            result = Graded(0.0, spec.name, spec.type, sub_rewards={name: part.reward for name, part in parts.items()})
            for part in parts.values():
                result.errors |= part.errors
                result.details += part.details
                result.python_runtime_details = result.python_runtime_details or part.python_runtime_details
                result.python_server_error_type = result.python_server_error_type or part.python_server_error_type
                result.model_server_details = result.model_server_details or part.model_server_details
                for model, usage in part.token_usage.items():
                    result.token_usage[model] = {key: result.token_usage.get(model, {}).get(key, 0) + value
                                                 for key, value in usage.items()}
            try:
                result.reward = formula(result.sub_rewards)
            except FormulaError as error:
                result.fail("formula_parse_error", str(error))
            except FormulaEvaluationError as error:
                result.fail("other_error", str(error))
            results.append(result)
        return results
