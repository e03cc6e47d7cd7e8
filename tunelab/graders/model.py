"""`score_model` and `label_model`: a model reads the rendered messages and answers a score or a label.

The grader's `model` is, in this order:
- `MODEL@URL`: a model behind any OpenAI-compatible endpoint (a `tunelab serve`, vLLM, Ollama, …);
- a finished run, a model directory or `default`: loaded here once, and asked locally;
- any other name: the endpoint given as `endpoint_url` (the server's own models, or `--grader-url`), else
  OpenAI itself when OPENAI_API_KEY is set, else a clear error.

OpenAI asks its grading model for structured output (`{"result": …}`); a local model or another endpoint
answers in text, so the answer is read as: a JSON object's `result` (or `score`); else a `Score: N` /
`Result: N` line; else the whole reply as a number; else the last number in the reply. A reply with none is
`model_grader_parse_error`, as is a score outside the grader's `range` — never guessed or clipped. A label is
the reply (or its JSON `result`) matching one of `labels`, ignoring case and surrounding punctuation.
"""

from __future__ import annotations

import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tunelab.models.endpoint import ENDPOINT_CONCURRENCY, Decoding, Endpoint, EndpointError

DEFAULT_MAX_TOKENS = 512
_LABELLED = re.compile(r"^\s*\**\s*(?:score|result|grade)\s*\**\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.I | re.M)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Completion:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # the model could not be asked (model_grader_server_error)


class GradingModels:
    """Answers grading prompts, local models loaded once and kept."""

    def __init__(self, endpoint_url: str | None = None, device: str | None = None, named: dict[str, str] | None = None):
        """`named`: the only models that may be asked, name → local model spec (a server job's grader names the
        server's models, resolved when the job was created); None: any, as the module says."""
        self.endpoint_url = endpoint_url
        self.device = device
        self.named = named
        self._local: dict[str, object] = {}
        self._lock = threading.Lock()

    def complete_many(self, model: str, conversations: list[list[dict]], sampling) -> list[Completion]:
        decoding, max_tokens = decoding_of(sampling)
        if self.named is not None:
            if model not in self.named:
                return [Completion(error=f"{model}: not a model this server answers to") for _ in conversations]
            return self._ask_locally(self.named[model], conversations, decoding, max_tokens)
        if "@" not in model and self.is_local(model):
            return self._ask_locally(model, conversations, decoding, max_tokens)
        try:
            endpoint = self.endpoint(model)
        except ValueError as error:
            return [Completion(error=str(error)) for _ in conversations]

        def ask(messages: list[dict]) -> Completion:
            try:
                reply = endpoint.reply(messages, None, max_tokens, decoding)
            except EndpointError as error:
                return Completion(error=str(error))
            return Completion(reply.content or reply.text, reply.prompt_tokens, reply.completion_tokens)

        with ThreadPoolExecutor(ENDPOINT_CONCURRENCY) as pool:
            return list(pool.map(ask, conversations))

    @staticmethod
    def is_local(model: str) -> bool:
        return model == "default" or Path(model).is_dir()

    def endpoint(self, model: str) -> Endpoint:
        if "@" in model:
            return Endpoint(model)
        if self.endpoint_url:
            return Endpoint(f"{model}@{self.endpoint_url}")
        if not os.environ.get("OPENAI_API_KEY"):
            raise ValueError(f"the grader's model {model!r} is not a local model, a run or MODEL@URL, and "
                             "OPENAI_API_KEY is not set to ask OpenAI")
        return Endpoint(model)

    def _ask_locally(self, model: str, conversations: list[list[dict]], decoding: Decoding,
                     max_tokens: int) -> list[Completion]:
        from tunelab.models.generate import generate_replies, load_for_generation

        with self._lock:  # one copy of a grading model, and one generation on it at a time
            if model not in self._local:
                self._local[model] = load_for_generation(model, device=self.device)
            replies = generate_replies(self._local[model], [with_system_role(messages) for messages in conversations],
                                       max_new_tokens=max_tokens, temperature=decoding.temperature,
                                       top_p=decoding.top_p, seed=decoding.seed)
        return [Completion(reply.text, reply.prompt_tokens, reply.completion_tokens) for reply in replies]


def decoding_of(sampling) -> tuple[Decoding, int]:
    """A grader's sampling_params as a Decoding and a token limit: greedy and DEFAULT_MAX_TOKENS unless set."""
    def given(name: str, default):
        value = getattr(sampling, name, None) if sampling else None
        return default if value is None else value

    return (Decoding(temperature=given("temperature", 0.0), top_p=given("top_p", 1.0), seed=given("seed", 0)),
            given("max_completions_tokens", DEFAULT_MAX_TOKENS))


def with_system_role(messages: list[dict]) -> list[dict]:
    """OpenAI's `developer` role is its newer name for `system`; chat templates know only the older one."""
    return [{**message, "role": "system" if message["role"] == "developer" else message["role"]} for message in messages]


class ParseError(ValueError):
    """The grading model's reply holds no readable score or label."""


def read_score(text: str, low: float, high: float) -> float:
    value = _json_result(text)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        labelled = _LABELLED.search(text)
        numbers = _NUMBER.findall(text)
        if labelled:
            value = float(labelled.group(1))
        elif _is_number(text.strip()):
            value = float(text.strip())
        elif numbers:
            value = float(numbers[-1])
        else:
            raise ParseError(f"no score in the grading model's reply: {text[:200]!r}")
    if not low <= value <= high:
        raise ParseError(f"the grading model answered {value:g}, outside the grader's range [{low:g}, {high:g}]")
    return float(value)


def read_label(text: str, labels: list[str]) -> str:
    value = _json_result(text)
    answer = value if isinstance(value, str) else text
    cleaned = answer.strip().strip(".,;:!\"'`*").strip().lower()
    for label in labels:
        if cleaned == label.lower():
            return label
    raise ParseError(f"the grading model's reply is none of the labels ({', '.join(labels)}): {text[:200]!r}")


def _json_result(text: str):
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        parsed = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    return parsed.get("result", parsed.get("score")) if isinstance(parsed, dict) else None


def _is_number(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+(?:\.\d+)?", text))
