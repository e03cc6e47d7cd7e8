"""`/v1/chat/completions`: answers from base models, their aliases and this server's fine-tunes.

    client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "…"}])

A fine-tuned model is found by the name its job reported (`ft:…`); its run directory holds the adapter and
the chat template it was trained with, so the prompt is rendered exactly as in training. A checkpoint
(`ft:…:ckpt-step-N`, as `/checkpoints` lists them) is the model rebuilt as training built it, with the
checkpoint's weights. Models are loaded on demand and the last few kept (`tunelab serve --max-models`, 2
by default): the least recently used model no request is using is closed when another must be loaded, so a
request never loses its model mid-reply (beyond the limit for as long as all are busy).

All LoRA fine-tunes of one base model are served from one copy of it: each fine-tune's adapter is attached
to the base's generator (models/adapters.py), requests name their adapter, and requests to the base and to
any of its fine-tunes are generated in the same batches. A full fine-tune, a checkpoint, or an adapter the
per-token layers cannot apply (bias, modules_to_save, …) is a model of its own.

Concurrent requests are generated together, each joining the running batch at the next step
(models/serving.py: continuous batching), and `stream=True` sends each piece of text as it is made, in
OpenAI's server-sent chunks. A reply that may call tools is sent when it is complete, as one chunk with
its `tool_calls`: until then, text could still turn out to be the start of a call.

Not yet: `logprobs`, and a reproducible sample from `seed` (greedy replies, `temperature=0`, are).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import OrderedDict
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError
from starlette.concurrency import run_in_threadpool

from tunelab.conversation.render import render_prompt_ids
from tunelab.conversation.schema import prompt_errors
from tunelab.conversation.templates import stop_token_ids
from tunelab.core.settings import TrainConfig
from tunelab.models.adapters import why_not_shared
from tunelab.models.generate import LoadedModel, load_for_generation
from tunelab.models.precision import best_device, requested_dtype
from tunelab.models.resolve import load_tokenizer, resolve_model
from tunelab.models.serving import ContinuousGenerator, GenerationFailed, ReplyText, Sampling
from tunelab.runs.rundir import RunDir
from tunelab.server.auth import project_of
from tunelab.server.errors import APIError
from tunelab.server.jobs import model_name
from tunelab.server.models import resolve_base
from tunelab.server.requests import ChatRequest
from tunelab.server.store import new_id

ADAPTER_CACHE = 64  # fine-tunes kept attached to their bases (a few MB each)
CHECKPOINT_MODEL = re.compile(r"^(?P<model>ft:.+):ckpt-step-(?P<step>\d+)$")

router = APIRouter()
_generators: OrderedDict[str, ContinuousGenerator] = OrderedDict()
_loading = threading.Lock()  # one model loaded at a time: two first requests for it load it once


@dataclass(frozen=True)
class Served:
    """What answers a request: a generator, the adapter slot on it (None: the model as loaded), and the
    tokenizer and stop tokens of the model named (a fine-tune's own, with the template it was trained with)."""

    generator: ContinuousGenerator
    tokenizer: object
    stop_ids: list[int]
    adapter: int | None = None


_adapters: OrderedDict[str, tuple[str, Served]] = OrderedDict()  # run directory → (its base's key, served)


def fine_tuned_run(store, name: str, project: str):
    """The run directory of the project's fine-tuned model `name`, or None."""
    rows = store.execute("SELECT id FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded' "
                         "AND model_deleted = 0 AND project_id = ?", (name, project))
    return store.run_dir(rows[0]["id"]) if rows else None


def checkpoint_path(store, name: str, project: str):
    """(job row, checkpoint directory) for the project's checkpoint model name `ft:…:ckpt-step-N`, or None."""
    match = CHECKPOINT_MODEL.match(name)
    if not match:
        return None
    for row in store.execute("SELECT * FROM jobs WHERE started_at IS NOT NULL AND model_deleted = 0 "
                             "AND project_id = ?", (project,)):
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
                       fully_fine_tuned=config.adapter == "full")


def _served(request: Request, name: str) -> Served:
    """The model answering `name`, loaded if needed, held for one request: `_release` it when done."""
    store = request.app.state.store
    forced = requested_dtype(request.app.state.settings.dtype)
    keep = request.app.state.settings.max_models
    project = project_of(request)
    checkpoint = checkpoint_path(store, name, project)
    run = None if checkpoint else fine_tuned_run(store, name, project)
    with _loading:
        if checkpoint:
            served = _whole(_model(str(checkpoint[1]), lambda: _load_checkpoint(store, *checkpoint, name), keep))
        elif run and (str(run) in _adapters or _shares_its_base(RunDir(run))):
            served = _adapter_served(RunDir(run), forced, keep)
        elif run:
            served = _whole(_model(str(run), lambda: load_for_generation(str(run), dtype=forced), keep))
        else:
            spec = resolve_base(request, name)
            served = _whole(_model(_base_key(spec), lambda: load_for_generation(spec, dtype=forced), keep))
        served.generator.in_flight += 1
        return served


def _shares_its_base(run: RunDir) -> bool:
    return not run.is_full_fine_tune and why_not_shared(run.adapter_dir) is None


_base_keys: dict[str, str] = {}  # model spec → the key its generator is kept under


def _base_key(spec: str) -> str:
    """Keyed as a fine-tune's base is (the resolved model folder), so the base and its fine-tunes share one
    copy; a run directory aliased as a base (a fine-tune answering as a base model) is its own."""
    if spec not in _base_keys:
        _base_keys[spec] = str(Path(spec).resolve()) if RunDir(spec).is_finished() else str(resolve_model(spec).path)
    return _base_keys[spec]


def _whole(generator: ContinuousGenerator) -> Served:
    """A model answering as it was loaded (a base, a full fine-tune, a checkpoint)."""
    return Served(generator, generator.loaded.tokenizer, generator.stop_ids)


def _release(served: Served, keep: int) -> None:
    """The request `served` was held for has ended; models beyond `keep` that nobody uses are closed now."""
    with _loading:
        served.generator.in_flight -= 1
        _close_idle(keep)


def _model(key: str, load, keep: int) -> ContinuousGenerator:
    """The generator of the model `key`, loaded by `load()` if it is not; the least recently used models
    beyond `keep` that no request is using are closed, with the fine-tunes attached to them."""
    if key not in _generators:
        _generators[key] = ContinuousGenerator(load())
    _generators.move_to_end(key)
    _close_idle(keep, spare=key)
    return _generators[key]


def _close_idle(keep: int, spare: str | None = None) -> None:
    for key in list(_generators):
        if len(_generators) <= keep:
            return
        generator = _generators[key]
        if key != spare and generator.in_flight == 0:
            del _generators[key]
            generator.close()
            for run, (base_key, _served_run) in list(_adapters.items()):
                if base_key == key:
                    del _adapters[run]


def _adapter_served(run: RunDir, forced, keep: int) -> Served:
    """A LoRA fine-tune: its adapter attached to its base model's generator, loading the base if needed."""
    if str(run.path) in _adapters:  # attached already: its base is loaded (closing a base forgets its adapters)
        key, served = _adapters[str(run.path)]
        _generators.move_to_end(key)
        _adapters.move_to_end(str(run.path))
        return served
    settings = run.settings()
    four_bit = "qlora" in (settings.get("adapter"), settings.get("method")) and best_device() == "cuda"  # served on the base it trained on
    base = str(resolve_model(settings["model"]).path)
    key = base + (" in 4 bits" if four_bit else "")
    generator = _model(key, lambda: load_for_generation(base, dtype=forced, four_bit=four_bit), keep)
    tokenizer = load_tokenizer(str(run.tokenizer_dir))
    stop_ids = stop_token_ids(tokenizer, getattr(generator.loaded.model, "generation_config", None))
    served = Served(generator, tokenizer, stop_ids, generator.attach(run.adapter_dir))
    _adapters[str(run.path)] = (key, served)
    while len(_adapters) > ADAPTER_CACHE:
        _key, oldest = _adapters.popitem(last=False)[1]
        oldest.generator.detach(oldest.adapter)
    return served


@router.get("/tunelab/serving")
async def serving_state(request: Request) -> dict:
    """tunelab's own: the models loaded now, with the fine-tunes of the request's project attached to each
    (another project's are not named), their caches and steps."""
    own = {str(request.app.state.store.run_dir(row["id"])) for row in request.app.state.store.execute(
        "SELECT id FROM jobs WHERE project_id = ?", (project_of(request),))}
    with _loading:
        attached: dict[str, list[str]] = {}
        for run, (base_key, _served_run) in _adapters.items():
            if run in own:
                attached.setdefault(base_key, []).append(RunDir(run).job().get("fine_tuned_model") or run)
        models = [{
            "model": key, "device": generator.device,
            "dtype": str(next(generator.loaded.model.parameters()).dtype).removeprefix("torch."),
            "fine_tunes_attached": attached.get(key, []),
            "caches": {mode: {"kv_cache_tokens": size.kv_cache_tokens, "batch_tokens": size.batch_tokens}
                       for mode, size in generator.sizes.items()},
            "steps": generator.steps, "steps_with_several_adapters": generator.mixed_steps,
        } for key, generator in _generators.items()]
    return {"object": "tunelab.serving", "models": models}


def _messages(body: ChatRequest) -> list[dict]:
    """The request's messages, checked as the training format checks them (roles, text content, tool calls
    and their ids, tool definitions); the first problem is the 400."""
    problems = prompt_errors(body.messages, body.tools)
    if problems:
        _code, where, message = problems[0]
        raise APIError(400, f"{where}: {message}", param=where, code="invalid_value")
    return body.messages


@router.post("/chat/completions")
async def create_chat_completion(request: Request, body: ChatRequest):
    messages = _messages(body)
    max_tokens = body.max_completion_tokens or body.max_tokens or 256
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    choices, stops, tools = body.n or 1, body.stops, body.tools
    keep = request.app.state.settings.max_models
    served = await run_in_threadpool(_served, request, body.model)
    streamed = False
    try:
        tokenizer = served.tokenizer
        try:
            prompt_ids = await run_in_threadpool(render_prompt_ids, tokenizer, messages, tools)
        except (ValueError, TypeError, TemplateError) as error:  # the template's own checks (role order, …)
            raise APIError(400, f"messages: the model's chat template cannot render them: {error}",
                           param="messages", code="invalid_value") from None
        replies = [ReplyText(tokenizer, served.stop_ids, stops, len(prompt_ids)) for _ in range(choices)]
        sampling = Sampling(temperature, top_p)
        completion = {"id": new_id("chatcmpl-"), "created": int(time.time()), "model": body.model}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            pieces = _pieces(served, prompt_ids, max_tokens, sampling, replies, send_text=not tools)
            chunks = _released_after(_chunks(completion, pieces, replies, include_usage), served, keep)
            streamed = True
            return StreamingResponse(chunks, media_type="text/event-stream")
        try:
            async for _ in _pieces(served, prompt_ids, max_tokens, sampling, replies, send_text=False):
                pass
        except GenerationFailed as error:
            raise APIError(500, f"generation failed: {error}", type="server_error", code="server_error") from None
        shaped = [_choice(index, reply.finish()[1]) for index, reply in enumerate(replies)]
        return {**completion, "object": "chat.completion", "choices": shaped, "usage": _usage(replies)}
    finally:
        if not streamed:
            await run_in_threadpool(_release, served, keep)  # it waits for any model being loaded


async def complete(request: Request, model: str, messages: list[dict], max_tokens: int, temperature: float,
                   top_p: float):
    """One reply from a model this server answers to, as the request's project sees them (graders.py asks its
    grading models this way): the finished Generation. An unknown model is the same APIError as here."""
    keep = request.app.state.settings.max_models
    served = await run_in_threadpool(_served, request, model)
    try:
        prompt_ids = await run_in_threadpool(render_prompt_ids, served.tokenizer, messages, None)
        reply = ReplyText(served.tokenizer, served.stop_ids, [], len(prompt_ids))
        async for _ in _pieces(served, prompt_ids, max_tokens, Sampling(temperature, top_p), [reply], send_text=False):
            pass
        return reply.finish()[1]
    finally:
        await run_in_threadpool(_release, served, keep)


async def _released_after(chunks, served: Served, keep: int):
    """The stream's chunks; its model is released when the stream ends (or the client leaves)."""
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk
    finally:
        await run_in_threadpool(_release, served, keep)


async def _pieces(served: Served, prompt_ids, max_tokens, sampling, replies, send_text: bool):
    """Generate every reply at once; yield (choice index, new text) as text becomes safe to send, then
    (index, None) when that reply has ended. Leaving early cancels what is still being generated."""
    queue: asyncio.Queue = asyncio.Queue()

    async def generate(index: int, reply: ReplyText):
        try:
            async with aclosing(served.generator.tokens(prompt_ids, max_tokens, sampling, served.adapter,
                                                        served.stop_ids)) as tokens_so_far:
                async for tokens in tokens_so_far:
                    text = reply.update(tokens)
                    if text and send_text:
                        queue.put_nowait((index, text))
                    if reply.ended:
                        break
            queue.put_nowait((index, None))
        except Exception as error:  # handed to the consumer, which raises it in the request's own task
            queue.put_nowait((index, error))

    tasks = [asyncio.create_task(generate(index, reply)) for index, reply in enumerate(replies)]
    try:
        for _ in replies:
            while True:
                index, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                yield index, item
                if item is None:
                    break
    finally:
        for task in tasks:
            task.cancel()


def _usage(replies: list[ReplyText]) -> dict:
    generations = [reply.finish()[1] for reply in replies]
    usage = {"prompt_tokens": generations[0].prompt_tokens,
             "completion_tokens": sum(g.completion_tokens for g in generations)}
    return usage | {"total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}


def _choice(index: int, generation) -> dict:
    message = {"role": "assistant", "content": generation.content if generation.tool_calls else generation.text,
               "refusal": None}
    if generation.tool_calls:
        message["tool_calls"] = generation.tool_calls
    return {"index": index, "message": message, "finish_reason": generation.finish_reason, "logprobs": None}


async def _chunks(completion: dict, pieces, replies: list[ReplyText], include_usage: bool):
    def chunk(choice_list, **extra):
        return "data: " + json.dumps({**completion, "object": "chat.completion.chunk", "choices": choice_list,
                                      **extra}) + "\n\n"

    for index in range(len(replies)):
        yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    try:
        async with aclosing(pieces):
            async for index, text in pieces:
                if text is not None:
                    yield chunk([{"index": index, "delta": {"content": text}, "finish_reason": None}])
                    continue
                rest, generation = replies[index].finish()
                delta = {"content": generation.content} if generation.tool_calls else {"content": rest} if rest else {}
                if generation.tool_calls:
                    delta["tool_calls"] = [dict(call, index=k) for k, call in enumerate(generation.tool_calls)]
                if delta:
                    yield chunk([{"index": index, "delta": delta, "finish_reason": None}])
                yield chunk([{"index": index, "delta": {}, "finish_reason": generation.finish_reason}])
    except GenerationFailed as error:  # the status line is sent already: OpenAI's way is an error event
        yield "data: " + json.dumps(APIError(500, f"generation failed: {error}", type="server_error",
                                             code="server_error").body()) + "\n\n"
        return
    if include_usage:
        yield chunk([], usage=_usage(replies))
    yield "data: [DONE]\n\n"
