"""OpenAI's wire format: request bodies (pydantic), ids, error JSON, server-sent events.

Only the fields dynroute acts on are typed; any other field an OpenAI client sends
(``user``, ``logit_bias``, ...) is accepted and ignored (``extra="allow"``), so official
clients work unchanged, and the proxy forwards those fields to its backends untouched.
A stream is ``data: {json}`` events, then ``data: [DONE]``. Text that is not valid
Unicode (a lone surrogate such as ``"\\ud800"``, which JSON can spell) is refused where a
field is read: no tokenizer or log can take it.

Example:
    >>> req = CompletionRequest.model_validate({"model": "m", "prompt": "def", "stop": "\\n"})
    >>> req.prompts(), req.stop_list(), req.max_tokens
    (['def'], ['\\n'], 16)
    >>> sse({"a": 1}), sse_data(": keep-alive")
    ('data: {"a":1}\\n\\n', None)
    >>> new_id("cmpl").startswith("cmpl-"), error_body("bad")["error"]["type"]
    (True, 'invalid_request_error')
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DONE",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "FeedbackRequest",
    "GenerationParams",
    "StreamOptions",
    "Usage",
    "error_body",
    "new_id",
    "now",
    "sse",
    "sse_data",
    "unicode_text",
]

#: OpenAI's default for /v1/completions; chat defaults to the rest of the context.
DEFAULT_COMPLETION_TOKENS = 16
#: the last event of every stream
DONE = "data: [DONE]\n\n"


def unicode_text(text: str) -> str:
    """``text``, or a ValueError naming its first lone surrogate (not encodable as UTF-8).

    Example:
        >>> unicode_text("héllo")
        'héllo'
        >>> unicode_text("a\\ud800")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: holds a lone surrogate (U+D800) at character 1; ...
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"holds a lone surrogate (U+{ord(text[err.start]):04X}) at character {err.start}; "
            "send valid Unicode text"
        ) from None
    return text


def _unicode_texts(value: Any) -> Any:
    """``value`` (a string, or a list) after :func:`unicode_text` of each string in it."""
    for item in [value] if isinstance(value, str) else value or []:
        if isinstance(item, str):
            unicode_text(item)
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class GenerationParams(BaseModel):
    """The fields both endpoints share (``temperature`` absent or 0: greedy; else sampled
    with ``temperature`` and nucleus ``top_p``)."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4 or any(not s for s in items):
            raise ValueError("stop takes at most 4 non-empty strings")
        return _unicode_texts(v)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(GenerationParams):
    """``POST /v1/completions``: ``prompt`` is a string, a list of strings (one choice
    each) or a list of token ids."""

    prompt: str | list[str] | list[int]
    echo: bool = False

    _prompt_text = field_validator("prompt")(_unicode_texts)

    @model_validator(mode="after")
    def _defaults(self) -> CompletionRequest:
        if self.max_tokens is None:
            self.max_tokens = DEFAULT_COMPLETION_TOKENS
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt is an empty list")
        return self

    def prompts(self) -> list[str] | list[list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]  # type: ignore[list-item]
        return list(self.prompt)  # type: ignore[arg-type]

    def prompt_text(self) -> str:
        """The text a query router sees: the prompt (a list: its items, one a line)."""
        return self.prompt if isinstance(self.prompt, str) else "\n".join(map(str, self.prompt))


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    @model_validator(mode="after")
    def _unicode_content(self) -> ChatMessage:
        unicode_text(self.text())
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(GenerationParams):
    """``POST /v1/chat/completions`` (``max_completion_tokens`` is read as ``max_tokens``)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _alias(self) -> ChatCompletionRequest:
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self

    def last_user_text(self) -> str:
        """The text a query router sees: the last user message (RouteLLM does the same)."""
        users = [m for m in self.messages if m.role == "user"]
        return (users[-1] if users else self.messages[-1]).text()


class FeedbackRequest(BaseModel):
    """The body of the proxy's ``POST /v1/feedback``: how good the answer ``id`` was.

    Example:
        >>> FeedbackRequest.model_validate({"id": "cmpl-1", "score": 0.25}).score
        0.25
        >>> FeedbackRequest.model_validate({"id": "cmpl-1", "score": 2})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        pydantic_core._pydantic_core.ValidationError: 1 validation error ...
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)  # the answer's id, as the proxy gave it
    score: float = Field(strict=False)  # 0: useless, 1: right
    model: str | None = Field(default=None, min_length=1, max_length=256)  # when not who answered

    @field_validator("score", mode="before")
    @classmethod
    def _score_in_unit_interval(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
            raise ValueError(f"must be a number from 0 to 1, got {json.dumps(v)[:40]}")
        return v


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


def new_id(prefix: str) -> str:
    """``cmpl-…`` / ``chatcmpl-…`` ids as OpenAI writes them."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def sse_data(line: str) -> str | None:
    """The payload of one ``data:`` line of a stream (None for any other line)."""
    return line[5:].strip() if line.startswith("data:") else None
