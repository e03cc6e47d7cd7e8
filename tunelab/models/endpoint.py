"""Chat models behind an OpenAI-compatible API (`MODEL@URL`, or `MODEL` for OpenAI itself), and how replies
are chosen (`Decoding`): what evaluation's `--compare` and `--judge` and the graders' `score_model` ask.

The client retries 429 and 5xx with backoff itself; what still fails is an EndpointError naming the model,
the URL and the server's own message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tunelab.models.generate import Generation

ENDPOINT_CONCURRENCY = 8


@dataclass(frozen=True)
class Decoding:
    """How replies are chosen: greedy at temperature 0 (the default), else sampled (nucleus with top_p < 1)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def describe(self) -> str:
        if self.temperature <= 0:
            return "greedy"
        return f"sampled: temperature {self.temperature:g}" + (f", top_p {self.top_p:g}" if self.top_p < 1 else "") + \
            f", seed {self.seed}"


class EndpointError(RuntimeError):
    """An OpenAI-compatible endpoint refused or failed a request (after the client's retries)."""


class Endpoint:
    """A chat model behind an OpenAI-compatible API: `MODEL@URL` (`URL` like http://host:8000/v1), or `MODEL`
    for OpenAI itself. The key comes from OPENAI_API_KEY; a local server may need none."""

    def __init__(self, spec: str, timeout: float = 600.0):
        import openai

        self.model, _, url = spec.partition("@")
        self.url = url or "https://api.openai.com/v1"
        if not self.model:
            raise ValueError(f"{spec!r}: name the model, as MODEL@URL")
        key = os.environ.get("OPENAI_API_KEY")
        if not key and not url:
            raise ValueError(f"{spec}: set OPENAI_API_KEY to ask OpenAI (or give the endpoint as MODEL@URL)")
        # 429 and 5xx are retried with backoff by the client itself.
        self.client = openai.OpenAI(base_url=self.url, api_key=key or "none", max_retries=4, timeout=timeout)

    def reply(self, messages: list[dict], tools: list[dict] | None, max_tokens: int,
              decoding: Decoding = Decoding()) -> Generation:
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, max_completion_tokens=max_tokens,
                temperature=decoding.temperature, seed=decoding.seed,
                **({"top_p": decoding.top_p} if decoding.top_p < 1 else {}), **({"tools": tools} if tools else {}))
        except openai.APIStatusError as error:
            raise EndpointError(f"{self.model}@{self.url}: HTTP {error.status_code}: {_message(error)}") from None
        except openai.APIConnectionError as error:
            raise EndpointError(f"{self.model}@{self.url}: cannot connect ({error})") from None
        choice = response.choices[0]
        calls = [{"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                 for c in choice.message.tool_calls or []]
        content = choice.message.content
        written = [f"{c['function']['name']}({c['function']['arguments']})" for c in calls]
        usage = response.usage
        return Generation(text="\n".join(p for p in (content or "", *written) if p), finish_reason=choice.finish_reason,
                          completion_tokens=usage.completion_tokens if usage else 0, tool_calls=calls,
                          content=content, prompt_tokens=usage.prompt_tokens if usage else 0)


def _message(error) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    return (body.get("error") or body).get("message") if isinstance(body.get("error") or body, dict) else str(error)
