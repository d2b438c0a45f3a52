"""``POST /v1/chat/completions`` of the model server: the chat prompt, one answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from dynroute.serve.engine import Completion
from dynroute.serve.model_routes.generation import (
    Frames,
    check_model,
    make_job,
    run_job,
    stream_job,
    usage_of,
)
from dynroute.serve.schemas import ChatCompletionRequest, new_id
from dynroute.serve.state import engine_of, served_model

__all__ = ["ChatFrames", "router"]

router = APIRouter()


class ChatFrames(Frames):
    """A ``chat.completion``, or its chunks.

    Example:
        >>> frames = ChatFrames("tiny", "chatcmpl-1")
        >>> frames.opening()["choices"][0]["delta"], frames.piece("x")["object"]
        ({'role': 'assistant', 'content': ''}, 'chat.completion.chunk')
    """

    chunk = "chat.completion.chunk"

    def opening(self) -> dict[str, Any]:
        return self.body([self.choice(None, delta={"role": "assistant", "content": ""})])

    def piece(self, text: str) -> dict[str, Any]:
        return self.body([self.choice(None, delta={"content": text})])

    def ending(self, done: Completion) -> dict[str, Any]:
        return self.body([self.choice(done.finish_reason, delta={})])

    def answer(self, done: Completion) -> dict[str, Any]:
        message = {"role": "assistant", "content": done.text}
        choice = self.choice(done.finish_reason, message=message)
        return self.body([choice], "chat.completion", usage=usage_of(done))


@router.post("/v1/chat/completions", response_model=None)
async def chat(req: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    served, engine = served_model(request), engine_of(request)
    check_model(served, req.model)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    job = make_job(served, served.chat_ids(messages), req, req.stop_list() + served.chat_stops())
    frames = ChatFrames(served.name, new_id("chatcmpl"))
    if req.stream:
        return stream_job(engine, job, frames, req.include_usage)
    return JSONResponse(frames.answer(await run_job(engine, job)))
