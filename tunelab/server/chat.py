"""`/v1/chat/completions`: answers from base models, their aliases and this server's fine-tunes.

    client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "…"}])

A fine-tuned model is found by the name its job reported (`ft:…`); its run directory holds the adapter and
the chat template it was trained with, so the prompt is rendered exactly as in training. A checkpoint
(`ft:…:ckpt-step-N`, as `/checkpoints` lists them) is the model rebuilt as training built it, with the
checkpoint's weights. Models are loaded
on demand and the last few kept (MODEL_CACHE); generation runs in a thread, one request at a time, so the
server keeps answering other routes meanwhile. `stream=True` sends OpenAI's server-sent chunks; in this
version a reply is generated whole and then sent, not token by token.

Not yet: batching concurrent requests into shared generation steps, and `logprobs`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict

import torch
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from tunelab.conversation.schema import ROLES, content_text
from tunelab.core.settings import TrainConfig
from tunelab.models.generate import LoadedModel, generate_replies, load_for_generation
from tunelab.models.precision import best_device
from tunelab.runs.rundir import RunDir
from tunelab.server.errors import APIError
from tunelab.server.jobs import model_name
from tunelab.server.models import resolve_base
from tunelab.server.store import new_id

MODEL_CACHE = 2  # models kept loaded
MAX_COMPLETION_TOKENS = 4096
CHECKPOINT_MODEL = re.compile(r"^(?P<model>ft:.+):ckpt-step-(?P<step>\d+)$")

router = APIRouter()
_loaded: OrderedDict = OrderedDict()
_generation = threading.Lock()  # one generation at a time: the model and its adapter state are shared


def fine_tuned_run(store, name: str):
    """The run directory of this server's fine-tuned model `name`, or None."""
    rows = store.execute("SELECT id FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded' "
                         "AND model_deleted = 0", (name,))
    return store.run_dir(rows[0]["id"]) if rows else None


def checkpoint_path(store, name: str):
    """(job row, checkpoint directory) for a checkpoint model name `ft:…:ckpt-step-N`, or None."""
    match = CHECKPOINT_MODEL.match(name)
    if not match:
        return None
    for row in store.execute("SELECT * FROM jobs WHERE started_at IS NOT NULL AND model_deleted = 0"):
        if model_name(store, row) == match.group("model"):
            path = RunDir(store.run_dir(row["id"])).checkpoints_dir / f"step-{int(match.group('step')):06d}"
            return (row, path) if (path / "state.json").is_file() else None
    return None


def _load_checkpoint(store, row, path, name: str) -> LoadedModel:
    """The job's model as training built it, holding the checkpoint's trained weights."""
    from safetensors.torch import load_file

    from tunelab.models.resolve import load_tokenizer, resolve_model
    from tunelab.train.methods import load_trainable_state, trainable_model

    run = RunDir(store.run_dir(row["id"]))
    device = best_device()
    settings = dict(run.settings(), dtype="auto" if device == "cuda" else "fp32")  # CPUs generate in fp32
    config = TrainConfig.model_validate(settings)
    resolved = resolve_model(config.model)
    model = trainable_model(resolved, config, device)
    load_trainable_state(model, load_file(path / "trainable.safetensors"))
    return LoadedModel(model.eval(), load_tokenizer(str(run.tokenizer_dir)), resolved.name, name,
                       fully_fine_tuned=config.method == "full")


def _model_for(request: Request, name: str):
    store = request.app.state.store
    checkpoint = checkpoint_path(store, name)
    run = None if checkpoint else fine_tuned_run(store, name)
    spec = f"{checkpoint[1]}" if checkpoint else str(run) if run else resolve_base(request, name)
    if spec not in _loaded:
        _loaded[spec] = _load_checkpoint(store, *checkpoint, name) if checkpoint else load_for_generation(spec)
        while len(_loaded) > MODEL_CACHE:
            _loaded.popitem(last=False)
    _loaded.move_to_end(spec)
    return _loaded[spec]


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages: must be a non-empty list of messages", param="messages", code="invalid_value")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise APIError(400, f"messages[{index}].role: must be one of {sorted(ROLES)}", param=f"messages[{index}]",
                           code="invalid_value")
        if content_text(message.get("content")) is None and not message.get("tool_calls"):
            raise APIError(400, f"messages[{index}].content: must be text or a list of text parts",
                           param=f"messages[{index}].content", code="invalid_value")
    return messages


def _number(body: dict, name: str, default, low, high):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise APIError(400, f"{name}: must be a number from {low} to {high}", param=name, code="invalid_value")
    return value


@router.post("/chat/completions")
async def create_chat_completion(request: Request):
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise APIError(400, "model: required", param="model", code="missing_required_parameter")
    messages = _messages(body)
    max_tokens = int(_number(body, "max_completion_tokens", None, 1, MAX_COMPLETION_TOKENS)
                     or _number(body, "max_tokens", 256, 1, MAX_COMPLETION_TOKENS))
    temperature = _number(body, "temperature", 1.0, 0, 2)
    top_p = _number(body, "top_p", 1.0, 0, 1)
    choices = int(_number(body, "n", 1, 1, 8))
    seed = body.get("seed")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise APIError(400, "stop: up to 4 non-empty strings", param="stop", code="invalid_value")
    loaded = await run_in_threadpool(_model_for, request, body["model"])

    def generate():
        with _generation:
            if isinstance(seed, int):
                torch.manual_seed(seed)
            return generate_replies(loaded, [messages] * choices, max_new_tokens=max_tokens,
                                    tools=[body.get("tools")] * choices, temperature=temperature, top_p=top_p)

    generations = await run_in_threadpool(generate)
    completion_id, created = new_id("chatcmpl-"), int(time.time())
    shaped = [_choice(index, generation, stops) for index, generation in enumerate(generations)]
    usage = {"prompt_tokens": generations[0].prompt_tokens,
             "completion_tokens": sum(g.completion_tokens for g in generations)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_chunks(completion_id, created, body["model"], shaped, usage, include_usage),
                                 media_type="text/event-stream")
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": body["model"],
            "choices": shaped, "usage": usage}


def _choice(index: int, generation, stops: list[str]) -> dict:
    content, finish_reason = generation.content if generation.tool_calls else generation.text, generation.finish_reason
    for stop in stops:
        if content and stop in content:
            content, finish_reason = content[:content.index(stop)], "stop"
    message = {"role": "assistant", "content": content, "refusal": None}
    if generation.tool_calls:
        message["tool_calls"] = generation.tool_calls
    return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": None}


def _chunks(completion_id, created, model, choices, usage, include_usage):
    def chunk(choice_list, **extra):
        return "data: " + json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                      "model": model, "choices": choice_list, **extra}) + "\n\n"

    for choice in choices:
        message = choice["message"]
        yield chunk([{"index": choice["index"], "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        delta = {"content": message["content"]}
        if message.get("tool_calls"):
            delta["tool_calls"] = [dict(call, index=k) for k, call in enumerate(message["tool_calls"])]
        yield chunk([{"index": choice["index"], "delta": delta, "finish_reason": None}])
        yield chunk([{"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]}])
    if include_usage:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"
