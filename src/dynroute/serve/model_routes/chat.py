"""``POST /v1/chat/completions`` of the model server: the chat prompt, one answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from dynroute.serve.engine import Completion
from dynroute.serve.model_routes.generation import (
    check_model,
    make_job,
    run_job,
    stream_job,
    usage_of,
)
from dynroute.serve.model_routes.state import engine_of, served_model
from dynroute.serve.schemas import ChatCompletionRequest, new_id, now

__all__ = ["ChatFrames", "router"]

router = APIRouter()

CHUNK = "chat.completion.chunk"


@dataclass
class ChatFrames:
    """The bodies of one chat answer, whole (``chat.completion``) or streamed.

    Example:
        >>> frames = ChatFrames("tiny")
        >>> frames.opening()["choices"][0]["delta"], frames.piece("x")["object"]
        ({'role': 'assistant', 'content': ''}, 'chat.completion.chunk')
    """

    model: str
    id: str = field(default_factory=lambda: new_id("chatcmpl"))
    created: int = field(default_factory=now)

    def body(self, choices: list[dict[str, Any]], obj: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    @staticmethod
    def delta(content: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}

    def opening(self) -> dict[str, Any]:
        return self.body([self.delta({"role": "assistant", "content": ""}, None)], CHUNK)

    def piece(self, text: str) -> dict[str, Any]:
        return self.body([self.delta({"content": text}, None)], CHUNK)

    def ending(self, done: Completion) -> dict[str, Any]:
        return self.body([self.delta({}, done.finish_reason)], CHUNK)

    def usage(self, done: Completion) -> dict[str, Any]:
        return self.body([], CHUNK, usage=usage_of(done))

    def answer(self, done: Completion) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "finish_reason": done.finish_reason,
            "logprobs": None,
        }
        return self.body([choice], "chat.completion", usage=usage_of(done))


@router.post("/v1/chat/completions", response_model=None)
async def chat(req: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    served, engine = served_model(request), engine_of(request)
    check_model(served, req.model)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    job = make_job(served, served.chat_ids(messages), req, req.stop_list() + served.chat_stops())
    frames = ChatFrames(served.name)
    if req.stream:
        return stream_job(engine, job, frames, req.include_usage)
    return JSONResponse(frames.answer(await run_job(engine, job)))
