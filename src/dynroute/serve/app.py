"""The OpenAI-compatible HTTP app of ``dynroute serve``: one model, four routes.

``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions``, streaming (server-sent events: ``data: {chunk}`` lines,
then ``data: [DONE]``) or not, each answer with its ``usage`` token counts. Generation
runs on a :class:`~dynroute.serve.engine.GenerationEngine` (micro-batching); the event
loop only parses, validates and streams.

Example:
    >>> from dynroute.serve.app import sse
    >>> sse({"a": 1})
    'data: {"a":1}\\n\\n'
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from dynroute.serve.engine import Completion, GenerationEngine, Job
from dynroute.serve.errors import ApiError, install_error_handlers
from dynroute.serve.loading import ServedModel
from dynroute.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationParams,
    Usage,
    error_body,
    new_id,
    now,
)

__all__ = ["DONE", "create_app", "sse"]

DONE = "data: [DONE]\n\n"
#: chat answers default to the rest of the context, at most this many tokens
DEFAULT_CHAT_TOKENS = 256


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying ``obj`` as compact JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def create_app(served: ServedModel, *, max_batch: int = 8, wait_ms: float = 5.0) -> FastAPI:
    """The app serving ``served`` (its engine starts and stops with the app's lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = GenerationEngine(
            served.model,
            served.tokenizer,
            pad_batching=served.pad_batching,
            max_batch=max_batch,
            wait_ms=wait_ms,
        )
        app.state.engine = engine
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close)

    app = FastAPI(title=f"dynroute serve: {served.name}", lifespan=lifespan)
    install_error_handlers(app)
    created = now()

    def check_model(name: str) -> None:
        if name != served.name:
            raise ApiError(
                404,
                f"model {name!r} does not exist; this server serves {served.name!r}",
                param="model",
                code="model_not_found",
            )

    def make_job(
        ids: list[int], req: GenerationParams, max_tokens: int | None, stops: list[str]
    ) -> Job:
        if not ids:
            raise ApiError(400, "the prompt is empty (0 tokens)", param="prompt")
        room = served.context_length - len(ids)
        wanted = max_tokens if max_tokens is not None else min(DEFAULT_CHAT_TOKENS, room)
        if room < 1 or wanted > room:
            raise ApiError(
                400,
                f"this model's maximum context length is {served.context_length} tokens; "
                f"you requested {len(ids) + max(wanted, 1)} ({len(ids)} in the prompt, "
                f"{max(wanted, 1)} for the completion): shorten the prompt or lower max_tokens",
                param="max_tokens" if room >= 1 else "messages",
                code="context_length_exceeded",
            )
        return Job(
            ids,
            max_tokens=wanted,
            temperature=req.temperature or 0.0,
            top_p=req.top_p if req.top_p is not None else 1.0,
            stops=stops,
        )

    async def run(job: Job) -> Completion:
        try:
            return await asyncio.wrap_future(app.state.engine.submit(job))
        except Exception as err:
            raise ApiError(500, f"generation failed: {err}", kind="server_error") from err

    def stream(
        job: Job,
        chunk: Callable[[str], dict[str, Any]],
        final: Callable[[Completion], dict[str, Any]],
        usage: Callable[[Completion], dict[str, Any]] | None,
        first: dict[str, Any] | None = None,
    ) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        job.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
        done = asyncio.wrap_future(app.state.engine.submit(job))
        # Scheduled after every on_text of this job (same thread, FIFO), so it comes last.
        done.add_done_callback(lambda _: pieces.put_nowait(None))

        async def events() -> AsyncIterator[str]:
            try:
                if first is not None:
                    yield sse(first)
                while (text := await pieces.get()) is not None:
                    yield sse(chunk(text))
                try:
                    result = done.result()
                except Exception as err:
                    yield sse(error_body(f"generation failed: {err}", "server_error"))
                    return
                yield sse(final(result))
                if usage is not None:
                    yield sse(usage(result))
                yield DONE
            finally:
                job.cancelled.set()  # the client left: stop generating for it

        return StreamingResponse(events(), media_type="text/event-stream")

    def usage_of(c: Completion) -> dict[str, Any]:
        return Usage.of(c.prompt_tokens, c.completion_tokens).model_dump()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": served.name, "batching": dict(app.state.engine.stats)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": served.name,
                    "object": "model",
                    "created": created,
                    "owned_by": "dynroute",
                    "max_model_len": served.context_length,
                }
            ],
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest) -> JSONResponse | StreamingResponse:
        check_model(req.model)
        prompts = req.prompts()
        if req.stream and len(prompts) > 1:
            raise ApiError(400, "stream=true takes one prompt, not a list", param="prompt")
        jobs = [
            make_job(
                p if isinstance(p, list) else served.encode(p), req, req.max_tokens, req.stop_list()
            )
            for p in prompts
        ]
        echoes = [
            (served.tokenizer.decode(p) if isinstance(p, list) else p) if req.echo else ""
            for p in prompts
        ]
        rid, stamp = new_id("cmpl"), now()

        def body(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": stamp,
                "model": served.name,
                "choices": choices,
                **extra,
            }

        def choice(text: str, finish: str | None, index: int = 0) -> dict[str, Any]:
            return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}

        if req.stream:
            return stream(
                jobs[0],
                lambda t: body([choice(t, None)]),
                lambda c: body([choice("", c.finish_reason)]),
                (lambda c: body([], usage=usage_of(c))) if req.include_usage else None,
                first=body([choice(echoes[0], None)]) if req.echo else None,
            )
        results = await asyncio.gather(*(run(j) for j in jobs))
        prompt_tokens = sum(c.prompt_tokens for c in results)
        completion_tokens = sum(c.completion_tokens for c in results)
        return JSONResponse(
            body(
                [
                    choice(e + c.text, c.finish_reason, i)
                    for i, (e, c) in enumerate(zip(echoes, results, strict=True))
                ],
                usage=Usage.of(prompt_tokens, completion_tokens).model_dump(),
            )
        )

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest) -> JSONResponse | StreamingResponse:
        check_model(req.model)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        job = make_job(
            served.chat_ids(messages), req, req.max_tokens, req.stop_list() + served.chat_stops()
        )
        rid, stamp = new_id("chatcmpl"), now()

        def body(choices: list[dict[str, Any]], obj: str, **extra: Any) -> dict[str, Any]:
            return {
                "id": rid,
                "object": obj,
                "created": stamp,
                "model": served.name,
                "choices": choices,
                **extra,
            }

        def delta(content: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}

        chunk = "chat.completion.chunk"
        if req.stream:
            return stream(
                job,
                lambda t: body([delta({"content": t}, None)], chunk),
                lambda c: body([delta({}, c.finish_reason)], chunk),
                (lambda c: body([], chunk, usage=usage_of(c))) if req.include_usage else None,
                first=body([delta({"role": "assistant", "content": ""}, None)], chunk),
            )
        c = await run(job)
        message = {"role": "assistant", "content": c.text}
        return JSONResponse(
            body(
                [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": c.finish_reason,
                        "logprobs": None,
                    }
                ],
                "chat.completion",
                usage=usage_of(c),
            )
        )

    return app
