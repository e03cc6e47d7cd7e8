"""The request bodies the server takes, as typed models: FastAPI checks every body against them before a
handler runs, and `/v1/openapi.json` describes each from them.

    CreateJobRequest     POST /v1/fine_tuning/jobs (OpenAI's fields, its three methods, tunelab's extension)
    ChatRequest          POST /v1/chat/completions

Shapes follow OpenAI's (openai-python `types/fine_tuning/job_create_params.py`,
`types/chat/completion_create_params.py`). A hyperparameter or training setting is typed and checked by the
settings model the CLI and YAML files use (core/settings.py), so a request is refused with the words
`tunelab train` would use. A body that does not fit is OpenAI's 400 with `param` naming the field
(errors.py); what needs the server's state (does the file exist, does the model) is the handler's to check.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from tunelab.core.settings import (AUTO, EXTENSION_SETTINGS, OPENAI_HYPERPARAMETERS, AutoCount, AutoRate, TrainConfig,
                                   job_extension_spelling, parsed_values)
from tunelab.server.errors import RequestError

MAX_COMPLETION_TOKENS = 4096


class Closed(BaseModel):
    """A part of a request whose fields are all known: an unknown one is refused, as OpenAI refuses it."""

    model_config = ConfigDict(extra="forbid")


# --- fine-tuning jobs ----------------------------------------------------------------------------------------

class SupervisedHyperparameters(Closed):
    """OpenAI's three; each a value or "auto" (null is auto too)."""

    n_epochs: AutoCount | None = None
    batch_size: AutoCount | None = None
    learning_rate_multiplier: AutoRate | None = None

    @model_validator(mode="before")
    @classmethod
    def _as_settings(cls, given):
        """Checked by TrainConfig first, so the message is `tunelab train`'s ("must be a whole number ≥ 1…")."""
        if isinstance(given, dict):
            known = {name: value for name, value in given.items() if name in OPENAI_HYPERPARAMETERS and value is not None}
            try:
                parsed_values(known, lambda name: f"hyperparameters.{name}")
            except ValueError as error:
                raise RequestError(str(error), "hyperparameters") from None
        return given

    def chosen(self) -> dict:
        """Every one of the three, `auto` where not given."""
        return {name: AUTO if getattr(self, name) is None else getattr(self, name) for name in OPENAI_HYPERPARAMETERS}


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Annotated[float, Field(gt=0, le=2)] | Literal["auto"] | None = None


class ReinforcementHyperparameters(SupervisedHyperparameters):
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None  # taken; no local model reasons
    compute_multiplier: Annotated[float, Field(ge=0.00001, le=10)] | Literal["auto"] | None = None
    eval_interval: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    eval_samples: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None


class SupervisedSettings(Closed):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoSettings(Closed):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementSettings(Closed):
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters | None = None


class SupervisedMethod(Closed):
    type: Literal["supervised"]
    supervised: SupervisedSettings | None = None


class DpoMethod(Closed):
    type: Literal["dpo"]
    dpo: DpoSettings | None = None


class ReinforcementMethod(Closed):
    type: Literal["reinforcement"]
    reinforcement: ReinforcementSettings


Method = Annotated[SupervisedMethod | DpoMethod | ReinforcementMethod, Field(discriminator="type")]


class WandbSettings(Closed):
    project: Annotated[str, Field(min_length=1)]
    name: str | None = None
    entity: str | None = None
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = None


class WandbIntegration(Closed):
    type: Literal["wandb"]
    wandb: WandbSettings


def _optional(name: str):
    """A TrainConfig setting as an optional request field: its type and rule, its description."""
    field = TrainConfig.model_fields[name]
    return Annotated[(field.annotation, *field.metadata)], Field(None, description=field.description)


# tunelab's extension: any setting of `tunelab train` beyond OpenAI's fields (job_settings.py), and a preset.
TunelabSettings = create_model(
    "TunelabSettings", __base__=Closed,
    preset=(str | None, Field(None, description="A bundled preset (tunelab presets list) the settings start from.")),
    **{name: _optional(name) for name in EXTENSION_SETTINGS})


class CreateJobRequest(Closed):
    """POST /v1/fine_tuning/jobs."""

    model: Annotated[str, Field(min_length=1, description="The base model: a name this server answers to.")]
    training_file: Annotated[str, Field(min_length=1)]
    validation_file: str | None = None
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = Field(
        None, description="Deprecated by OpenAI in favour of method.supervised.hyperparameters; still taken.")
    suffix: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None
    integrations: list[WandbIntegration] | None = None
    tunelab: TunelabSettings | None = Field(  # type: ignore[valid-type]
        None, description="tunelab's training settings beyond OpenAI's fields (the SDK's `extra_body`).")

    @field_validator("tunelab", mode="before")
    @classmethod
    def _extension(cls, given):
        """Checked as `tunelab train` checks settings, with its words; OpenAI's own fields are refused here."""
        if given is None:
            return None
        if not isinstance(given, dict):
            raise RequestError("tunelab: must be an object of training settings, e.g. "
                               '{"adapter": "qlora", "lora_r": 8}', "tunelab")
        given = job_extension_spelling(given, "tunelab")
        for name in given:
            if name in OPENAI_HYPERPARAMETERS:
                raise RequestError(f"tunelab.{name}: set it in hyperparameters, OpenAI's own field", f"tunelab.{name}")
            if name not in EXTENSION_SETTINGS and name != "preset":
                raise RequestError(f"tunelab.{name}: not a setting a job can take; these are: "
                                   + ", ".join(EXTENSION_SETTINGS + ("preset",)), f"tunelab.{name}")
        settings = {name: value for name, value in given.items() if name != "preset"}
        try:
            parsed_values(settings, lambda name: f"tunelab.{name}")
        except ValueError as error:
            raise RequestError(str(error), f"tunelab.{str(error).split(':')[0].removeprefix('tunelab.')}") from None
        return given

    @property
    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    def hyperparameters_chosen(self) -> dict:
        """The method's hyperparameters, or the deprecated top-level ones: all three, `auto` where not given
        (and a dpo job's beta)."""
        method_settings = getattr(self.method, self.method.type, None) if self.method else None
        given = (method_settings.hyperparameters if method_settings else None) or self.hyperparameters
        chosen = (given or SupervisedHyperparameters()).chosen()
        if self.method_type == "dpo":
            beta = getattr(given, "beta", None)
            chosen["beta"] = AUTO if beta is None else beta
        if self.method_type == "reinforcement":
            for name in ("compute_multiplier", "eval_interval", "eval_samples"):
                value = getattr(given, name, None)
                chosen[name] = AUTO if value is None else value
            chosen["reasoning_effort"] = getattr(given, "reasoning_effort", None) or "default"
        return chosen


# --- chat completions ----------------------------------------------------------------------------------------

class StreamOptions(BaseModel):
    include_usage: bool | None = None


class ChatRequest(BaseModel):
    """POST /v1/chat/completions. Fields OpenAI has and this server does not use (penalties, logit_bias,
    response_format, user, …) are accepted and have no effect; `logprobs` is refused rather than ignored."""

    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[dict[str, Any]], Field(min_length=1, description="OpenAI's chat messages; checked as "
                                                    "training data is (roles, content, tool calls).")]
    tools: list[dict[str, Any]] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_COMPLETION_TOKENS)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_COMPLETION_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=8)] | None = None
    stop: Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]],
                                                           Field(max_length=4)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: Literal[False] | None = Field(None, description="Not served yet: true is refused.")

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
