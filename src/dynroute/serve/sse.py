"""Server-sent events as the OpenAI API streams them: ``data: {json}`` frames, then
``data: [DONE]``. Written by the model server, read and rewritten by the proxy.

Example:
    >>> sse({"a": 1})
    'data: {"a":1}\\n\\n'
    >>> sse_data('data: {"a":1}'), sse_data(": keep-alive")
    ('{"a":1}', None)
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DONE", "sse", "sse_data"]

#: the last frame of every stream
DONE = "data: [DONE]\n\n"


def sse(obj: Any) -> str:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def sse_data(line: str) -> str | None:
    """The payload of one ``data:`` line of a stream (None for any other line)."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()
