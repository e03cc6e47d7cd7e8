"""`/v1/fine_tuning/alpha/graders`: try a grader before training with it, as OpenAI's API does.

    client.fine_tuning.alpha.graders.validate(grader={...})            → {"grader": {...}} or a 400 naming the field
    client.fine_tuning.alpha.graders.run(grader={...}, model_sample="…", item={...})
                                                                     → {reward, sub_rewards, metadata, …}

A grader that runs and fails for this sample (a missing variable, a python grader that raises or runs out of
time) is a 200 whose `metadata.errors` says so, as at OpenAI; only a grader that does not fit its schema is
a 400. Model graders (`score_model`, `label_model`) ask the models this server answers to — bases, their
aliases and the project's fine-tunes — through its own chat machinery, in the request's project; a python
grader runs in the sandbox (graders/sandbox.py), which cannot see this server's data directory.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from tunelab.graders.grade import Grading
from tunelab.graders.model import Completion, GradingModels, decoding_of, with_system_role
from tunelab.graders.sandbox import PythonSandbox
from tunelab.graders.spec import GraderSpecError, parse_grader
from tunelab.graders.templates import Sample
from tunelab.server import chat
from tunelab.server.errors import APIError

router = APIRouter()


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grader: dict


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grader: dict
    model_sample: str
    item: object = None


def checked(grader: dict, where: str = "grader"):
    try:
        return parse_grader(grader, where)
    except GraderSpecError as error:
        raise APIError(400, str(error), param=error.param, code="invalid_value") from None


@router.post("/fine_tuning/alpha/graders/validate")
async def validate_grader(body: ValidateRequest) -> dict:
    """The grader as it was sent, once it is known to fit (a client reads back its own spelling of
    `multi.graders`, whichever of the three it used)."""
    checked(body.grader)
    return {"grader": body.grader}


@router.post("/fine_tuning/alpha/graders/run")
async def run_grader(request: Request, body: RunRequest) -> dict:
    grading = Grading(checked(body.grader), models=ServerModels(request, asyncio.get_running_loop()),
                      sandbox=server_sandbox(request))
    item = body.item if body.item is not None else {}
    graded = await run_in_threadpool(grading.grade_one, Sample(body.model_sample), item)
    return graded.to_openai()


def server_sandbox(request: Request) -> PythonSandbox:
    """A sandbox that, even where the data directory lies inside the Python installation, cannot see it."""
    return PythonSandbox(hidden=(request.app.state.settings.data_dir,))


class ServerModels(GradingModels):
    """Grading models are the server's own: asked on its event loop, from the grading thread."""

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self.request, self.loop = request, loop

    def complete_many(self, model: str, conversations: list[list[dict]], sampling) -> list[Completion]:
        decoding, max_tokens = decoding_of(sampling)
        asked = [asyncio.run_coroutine_threadsafe(self._ask(model, messages, decoding, max_tokens), self.loop)
                 for messages in conversations]
        return [future.result() for future in asked]

    async def _ask(self, model: str, messages: list[dict], decoding, max_tokens: int) -> Completion:
        try:
            reply = await chat.complete(self.request, model, with_system_role(messages), max_tokens,
                                        decoding.temperature, decoding.top_p)
        except APIError as error:
            return Completion(error=f"{model}: {error.message}")
        return Completion(reply.text, reply.prompt_tokens, reply.completion_tokens)
