"""`/v1/models`: the models this server answers to — base models by their aliases, and (with jobs) fine-tunes.

    tunelab serve --alias gpt-4o-mini-2024-07-18=default

An alias maps a model name a client asks for (often an OpenAI one, in code written for OpenAI) to a local
base model spec ('default', a directory, a .gguf file). Every base model is listed under its own name and
each of its aliases.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.server.auth import project_of
from tunelab.server.errors import APIError

router = APIRouter()


def model_object(name: str, created: int, owned_by: str, base_model: str | None = None) -> dict:
    """OpenAI's model object; `base_model` (tunelab's addition) is the local model a name stands for."""
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by,
            **({"base_model": base_model} if base_model else {})}


def base_models(request: Request) -> dict[str, str]:
    """Every model name a client may use for a base model → the local model spec it means."""
    aliases = request.app.state.settings.aliases
    return {"default": "default", **{spec: spec for spec in aliases.values()}, **aliases}


def resolve_base(request: Request, name: str, param: str = "model") -> str:
    """The local model spec for a requested base model name; OpenAI's model_not_found otherwise."""
    known = base_models(request)
    if name not in known:
        raise APIError(404, f"The model '{name}' does not exist or you do not have access to it. Available: "
                       + ", ".join(sorted(known)) + " (map another name with `tunelab serve --alias NAME=MODEL`)",
                       param=param, code="model_not_found")
    return known[name]


def fine_tuned_models(request: Request, name: str | None = None) -> list[dict]:
    """The fine-tuned models of the request's project (of succeeded jobs, not deleted), as model objects."""
    rows = request.app.state.store.execute(
        "SELECT fine_tuned_model, finished_at, base_model FROM jobs WHERE status = 'succeeded' AND model_deleted = 0 "
        "AND project_id = ?" + (" AND fine_tuned_model = ?" if name else "") + " ORDER BY finished_at",
        (project_of(request), name) if name else (project_of(request),))
    return [model_object(row["fine_tuned_model"], row["finished_at"], "user", row["base_model"]) for row in rows]


@router.get("/models")
async def list_models(request: Request) -> dict:
    started = request.app.state.started
    return {"object": "list", "data": [model_object(name, started, "tunelab", spec if spec != name else None)
                                       for name, spec in base_models(request).items()] + fine_tuned_models(request)}


@router.get("/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> dict:
    found = fine_tuned_models(request, model)
    if found:
        return found[0]
    resolve_base(request, model)
    return model_object(model, request.app.state.started, "tunelab")


@router.delete("/models/{model:path}")
async def delete_model(request: Request, model: str) -> dict:
    """A fine-tuned model stops being served (its run directory stays, as the job's record)."""
    if fine_tuned_models(request, model):
        request.app.state.store.execute("UPDATE jobs SET model_deleted = 1 WHERE fine_tuned_model = ? AND project_id = ?",
                                        (model, project_of(request)))
        return {"id": model, "object": "model", "deleted": True}
    resolve_base(request, model)
    raise APIError(400, f"{model} is a base model; only fine-tuned models can be deleted", param="model",
                   code="invalid_value")
