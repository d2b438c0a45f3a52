"""OpenAI-style errors for both apps: ``{"error": {"message", "type", "param", "code"}}``.

A malformed body (bad JSON, a missing or ill-typed field) is a 400, as OpenAI answers
it, not FastAPI's default 422; :func:`parse_body` gives the same 400s for a body read by
hand (the proxy forwards the raw JSON, unknown fields included).

Example:
    >>> import asyncio
    >>> from starlette.requests import Request
    >>> from dynroute.serve.schemas import CompletionRequest
    >>> async def receive():
    ...     return {"type": "http.request", "body": b'{"model": "m", "prompt": "x"}'}
    >>> request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    >>> raw, req = asyncio.run(parse_body(request, CompletionRequest))
    >>> raw["prompt"], req.max_tokens
    ('x', 16)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dynroute.serve.schemas import error_body

__all__ = [
    "INTERNAL_ERROR",
    "ApiError",
    "Body",
    "LimitedRequest",
    "install_error_handlers",
    "parse_body",
    "validation_message",
]

#: All a client learns of an unexpected error (its text and traceback go to the log only).
INTERNAL_ERROR = "the server failed on this request (an internal error; its log has the details)"

Body = TypeVar("Body", bound=BaseModel)


class ApiError(Exception):
    """An error to answer with ``status`` and OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code = param, code

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.kind, self.param, self.code), status_code=self.status
        )


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """``(one-line message, the field at fault)`` of pydantic/FastAPI validation errors."""
    first = errors[0] if errors else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    where = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    msg = first.get("msg", "invalid request")
    return (f"{where}: {msg}" if where else msg), where


class LimitedRequest(Request):
    """A request whose body is read at most ``limit`` bytes far (more: a 413, before a byte
    is read when its Content-Length says so)."""

    def __init__(self, request: Request, limit: int) -> None:
        super().__init__(request.scope, request.receive)
        self.limit = limit
        self.read: bytes | None = None

    def too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the request body is larger than this server's limit of {self.limit:,} bytes; "
            "send less (a shorter prompt, fewer prompts)",
            code="request_too_large",
        )

    async def body(self) -> bytes:
        if self.read is None:
            declared = self.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.limit:
                raise self.too_large()  # refused before a byte of it is read
            chunks, size = [], 0
            async for chunk in self.stream():
                size += len(chunk)
                if size > self.limit:
                    raise self.too_large()
                chunks.append(chunk)
            self.read = b"".join(chunks)
        return self.read


async def parse_body(request: Request, schema: type[Body]) -> tuple[dict[str, Any], Body]:
    """``(the JSON object as sent, the same validated by schema)``, or a 400 (413: over a
    :class:`LimitedRequest`'s limit)."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    except RecursionError:  # the JSON parser gave up, at ~1,000 levels
        raise ApiError(400, "the request body nests deeper than JSON can be read") from None
    except ValueError:  # json's own limit: an integer literal over 4,300 digits
        raise ApiError(400, "the request body holds a number with over 4,300 digits") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return body, schema.model_validate(body)
    except ValidationError as err:
        message, param = validation_message(err.errors())
        raise ApiError(400, message, param=param) from None


def install_error_handlers(app: FastAPI) -> None:
    """Answer validation errors, HTTP errors, :class:`ApiError` and any unexpected error
    (a generic 500, :data:`INTERNAL_ERROR`) in OpenAI's format."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after answering: uvicorn logs the traceback
        return JSONResponse(error_body(INTERNAL_ERROR, "server_error"), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)
