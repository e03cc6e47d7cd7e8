"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status it uses.

Every failure a client can cause is one of these, so the official SDKs raise their own typed exceptions
(`openai.BadRequestError`, `NotFoundError`, `AuthenticationError`…) with our message in them.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tunelab.core.files import StorageError


class APIError(Exception):
    """An error response: HTTP `status` and OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


UNION_BRANCH = re.compile(r"^(int|float|str|bool|list|dict|none|function-\w+|constrained-\w+|.*[\[(].*)$")


class RequestError(ValueError):
    """Raised while a request body is checked (requests.py) where the message is ours, in the words `tunelab
    train` uses for the same setting; `param` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def not_found(kind: str, identifier: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such {kind} object: {identifier}", param=param, code=None)


def row_or_404(store, table: str, identifier: str, pattern, kind: str, param: str, project: str):
    """The row of `table` with this id in this project; 404 in OpenAI's words when there is none — the same
    404 when it is another project's, so an id says nothing about what other projects hold. The id is
    matched against its `pattern` before any lookup, so no malformed client string reaches the database."""
    rows = store.execute(f"SELECT rowid, * FROM {table} WHERE id = ? AND project_id = ?",
                         (identifier, project)) if pattern.match(identifier) else []
    if not rows:
        raise not_found(kind, identifier, param=param)
    return rows[0]


def invalid_request(problem: dict) -> APIError:
    """OpenAI's 400 for the first problem pydantic found in a request, `param` naming the field."""
    where = _field_path(problem["loc"])
    cause = (problem.get("ctx") or {}).get("error")
    if isinstance(cause, RequestError):
        return APIError(400, str(cause), param=cause.param, code="invalid_value")
    if problem["type"] == "json_invalid" or (problem["type"] == "missing" and not where):
        return APIError(400, "We could not parse the JSON body of your request. The API expects a JSON object; "
                        "what was sent was " + ("empty" if problem["type"] == "missing" else "not valid JSON") + ".")
    if not where:
        return APIError(400, f"The request body must be a JSON object ({problem['msg'].lower()}).")
    if problem["type"] == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {where}", param=where,
                        code="unknown_parameter")
    if problem["type"] == "missing":
        return APIError(400, f"{where}: required", param=where, code="missing_required_parameter")
    return APIError(400, f"{where}: {problem['msg'].removeprefix('Value error, ')}", param=where, code="invalid_value")


def _field_path(loc) -> str:
    """A field's path as OpenAI's `param` writes it (`method.supervised.hyperparameters`): pydantic's location
    without where it was found (body, query) or the names it gives a union's branches (the tag of a
    discriminated union repeats the field after it; a plain union's branch is named by its type)."""
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header", "form")]
    kept = [part for index, part in enumerate(parts)
            if not (index + 1 < len(parts) and parts[index + 1] == part) and not UNION_BRANCH.match(part)]
    return ".".join(kept)


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Our errors, FastAPI's request validation and Starlette's HTTP errors, all in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, error: APIError):
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, error: RequestValidationError):
        return error_response(invalid_request(error.errors()[0]))

    @app.exception_handler(StorageError)
    async def _storage(_request: Request, error: StorageError):  # the server's disk: the client can only retry
        return error_response(APIError(507, f"The server cannot store this: its data directory's disk "
                                       f"{error.condition} ({error.strerror.lower()}). Free space on the server, "
                                       "then retry.",
                                       type="server_error", code="insufficient_storage"))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception):  # a bug: still OpenAI's shape, and logged
        return error_response(APIError(500, f"The server had an error while processing your request "
                                       f"({type(error).__name__}); its log has the details", type="server_error",
                                       code="server_error"))

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, error: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}
        return error_response(APIError(error.status_code, str(error.detail), code=codes.get(error.status_code)))
