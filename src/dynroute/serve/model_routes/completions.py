"""``POST /v1/completions`` of the model server: one prompt streamed, or several answered.

``prompt`` is a string, a list of strings (one choice each, generated together) or a
list of token ids; ``echo`` puts the prompt before the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from dynroute.serve.engine import Completion
from dynroute.serve.errors import ApiError
from dynroute.serve.model_routes.generation import (
    Frames,
    check_model,
    make_job,
    run_job,
    stream_job,
)
from dynroute.serve.schemas import CompletionRequest, Usage, new_id
from dynroute.serve.state import engine_of, served_model

__all__ = ["CompletionFrames", "router"]

router = APIRouter()


@dataclass
class CompletionFrames(Frames):
    """A ``text_completion``, whole or streamed (``echo``: the prompt, streamed first).

    Example:
        >>> frames = CompletionFrames("tiny", "cmpl-1")
        >>> frames.piece("x")["choices"][0]["text"], frames.opening()
        ('x', None)
    """

    echo: str | None = None
    chunk = "text_completion"

    def opening(self) -> dict[str, Any] | None:
        return None if self.echo is None else self.body([self.choice(None, text=self.echo)])

    def piece(self, text: str) -> dict[str, Any]:
        return self.body([self.choice(None, text=text)])

    def ending(self, done: Completion) -> dict[str, Any]:
        return self.body([self.choice(done.finish_reason, text="")])

    def answer(self, echoes: Sequence[str], results: Sequence[Completion]) -> dict[str, Any]:
        """The whole answer: one choice per prompt, usage summed over them."""
        prompt_tokens = sum(c.prompt_tokens for c in results)
        completion_tokens = sum(c.completion_tokens for c in results)
        return self.body(
            [
                self.choice(c.finish_reason, i, text=e + c.text)
                for i, (e, c) in enumerate(zip(echoes, results, strict=True))
            ],
            usage=Usage.of(prompt_tokens, completion_tokens).model_dump(),
        )


@router.post("/v1/completions", response_model=None)
async def completions(req: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    served, engine = served_model(request), engine_of(request)
    check_model(served, req.model)
    prompts = req.prompts()
    if req.stream and len(prompts) > 1:
        raise ApiError(400, "stream=true takes one prompt, not a list", param="prompt")
    jobs = [
        make_job(served, p if isinstance(p, list) else served.encode(p), req, req.stop_list())
        for p in prompts
    ]
    echoes = [
        (served.tokenizer.decode(p) if isinstance(p, list) else p) if req.echo else ""
        for p in prompts
    ]
    frames = CompletionFrames(served.name, new_id("cmpl"), echo=echoes[0] if req.echo else None)
    if req.stream:
        return stream_job(engine, jobs[0], frames, req.include_usage)
    results = await asyncio.gather(*(run_job(engine, j) for j in jobs))
    return JSONResponse(frames.answer(echoes, results))
