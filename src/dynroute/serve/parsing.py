"""Reading a request body by hand, with the errors FastAPI's own validation gives.

The proxy reads bodies itself (it forwards the raw JSON, unknown fields included), so a
malformed body is refused here with the same 400s the model server answers.

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
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from dynroute.serve.errors import ApiError, validation_message

__all__ = ["parse_body"]

Body = TypeVar("Body", bound=BaseModel)


async def parse_body(request: Request, schema: type[Body]) -> tuple[dict[str, Any], Body]:
    """``(the JSON object as sent, the same validated by schema)``.

    Raises:
        ApiError: 400 for a body that is not JSON, not an object, or not valid.
    """
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    try:
        return body, schema.model_validate(body)
    except ValidationError as err:
        message, param = validation_message(err.errors())
        raise ApiError(400, message, param=param) from None
