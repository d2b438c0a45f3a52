"""OpenAI-style error responses for both the model server and the routing proxy.

Every error a client sees is ``{"error": {"message", "type", "param", "code"}}`` with a
4xx/5xx status: a malformed body (bad JSON, a missing or ill-typed field) is a 400, as
OpenAI answers it, not FastAPI's default 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dynroute.serve.schemas import error_body

__all__ = ["ApiError", "install_error_handlers", "validation_message"]


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
        self.status, self.message, self.kind, self.param, self.code = (
            status,
            message,
            kind,
            param,
            code,
        )

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


def install_error_handlers(app: FastAPI) -> None:
    """Answer validation errors, HTTP errors and :class:`ApiError` in OpenAI's format."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors())
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)
