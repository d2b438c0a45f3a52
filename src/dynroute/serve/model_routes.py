"""``POST /v1/completions`` and ``POST /v1/chat/completions`` of ``dynroute serve``.

Each prompt (a string, a list of strings answered together, or token ids) becomes an
engine :class:`~dynroute.serve.engine.Job`; the event loop awaits its future or, streaming,
sends each new piece of text as an event framed by the endpoint's :class:`Frames`.

Bad input costs its sender a 4xx and no one else anything: a request is checked before
it reaches a batch (body size, number of prompts, prompt characters before tokenizing,
token ids in the vocabulary), tokenized off the event loop, and an unexpected error is a
500 in OpenAI's error format with a generic message (the traceback goes to the log).
What a request may ask for is :class:`ModelLimits` (``app.state.model_limits``).
"""

from __future__ import annotations

import asyncio
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from dynroute.serve.engine import Completion, GenerationEngine, Job
from dynroute.serve.errors import INTERNAL_ERROR, ApiError, LimitedRequest
from dynroute.serve.loading import ServedModel
from dynroute.serve.schemas import (
    DONE,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationParams,
    Usage,
    error_body,
    new_id,
    now,
    sse,
)
from dynroute.serve.state import engine_of, served_model

__all__ = [
    "DEFAULT_CHAT_TOKENS",
    "ChatFrames",
    "CompletionFrames",
    "Frames",
    "GuardedRoute",
    "ModelLimits",
    "router",
]

log = logging.getLogger(__name__)

try:
    from jinja2 import TemplateError
except ImportError:  # jinja2 is optional; without it transformers renders no chat template

    class TemplateError(Exception):  # type: ignore[no-redef]
        """Never raised: stands for jinja2's when jinja2 is not installed."""


#: chat answers default to the rest of the context, at most this many tokens
DEFAULT_CHAT_TOKENS = 256
#: what a client is told of an unexpected error (the details go to the server's log)


@dataclass(frozen=True)
class ModelLimits:
    """What one request to ``dynroute serve`` may ask for.

    Attributes:
        max_body_bytes: largest request body (more: 413).
        max_prompts: most prompts in one ``/v1/completions`` request (more: 400).
        request_timeout_s: longest a generation may take (longer: cancelled, a 504; a
            stream ends with an error event instead); None: no limit.
        max_prompt_tokens: most tokens in one prompt (more: 400; a text is first checked on
            its length, so one far too long is refused before it is tokenized).
        max_tokens_cap: most ``max_tokens`` one request may ask for (more: 400; a chat
            request without ``max_tokens`` gets at most this many).

    Example:
        >>> ModelLimits().max_body_bytes, ModelLimits(max_prompts=4).max_prompts
        (1000000, 4)
    """

    max_body_bytes: int = 1_000_000
    max_prompts: int = 64
    request_timeout_s: float | None = None
    max_prompt_tokens: int | None = None
    max_tokens_cap: int | None = None


def limits_of(request: Request) -> ModelLimits:
    """The app's :class:`ModelLimits` (``app.state.model_limits``; else the defaults)."""
    limits = getattr(request.app.state, "model_limits", None)
    return limits if isinstance(limits, ModelLimits) else ModelLimits()


class GuardedRoute(APIRoute):
    """A route that reads at most ``max_body_bytes`` of a body and answers an unexpected
    error as a generic 500 in OpenAI's format (its traceback goes to the log)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            limited = LimitedRequest(request, limits_of(request).max_body_bytes)
            try:
                await limited.body()  # a 413 here, not FastAPI's "error parsing the body"
                return await handler(limited)
            except (ApiError, HTTPException, RequestValidationError):
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                return ApiError(500, INTERNAL_ERROR, kind="server_error").response()

        return guarded


router = APIRouter(route_class=GuardedRoute)


@router.post("/v1/completions", response_model=None)
async def completions(req: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    served, engine, limits = served_model(request), engine_of(request), limits_of(request)
    check_model(served, req.model)
    prompts = req.prompts()
    check_prompts(served, prompts, limits)
    check_max_tokens(req.max_tokens, limits)
    if req.stream and len(prompts) > 1:
        raise ApiError(400, "stream=true takes one prompt, not a list", param="prompt")
    ids, echoes = await run_in_threadpool(tokenize_prompts, served, prompts, req.echo)
    jobs = [make_job(served, i, req, req.stop_list(), limits) for i in ids]
    frames = CompletionFrames(served.name, new_id("cmpl"), echo=echoes[0] if req.echo else None)
    if req.stream:
        return stream_job(engine, jobs[0], frames, req.include_usage, limits.request_timeout_s)
    results = await run_jobs(request, engine, jobs)
    return JSONResponse(frames.answer(echoes, results))


@router.post("/v1/chat/completions", response_model=None)
async def chat(req: ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    served, engine, limits = served_model(request), engine_of(request), limits_of(request)
    check_model(served, req.model)
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    chars = sum(len(m["content"]) for m in messages)
    if chars > prompt_chars_cap(served, limits):  # the server's cap first
        raise over_token_cap(limits, f"{chars:,} characters", "messages")
    if chars > served.max_prompt_chars:
        raise too_many_chars(served, chars, "messages")
    check_max_tokens(req.max_tokens, limits)
    try:
        ids = await run_in_threadpool(served.chat_ids, messages)
    except TemplateError as err:  # the template's own check, e.g. roles must alternate
        raise ApiError(
            400, f"the model's chat template refuses these messages: {err}", param="messages"
        ) from None
    job = make_job(served, ids, req, req.stop_list() + served.chat_stops(), limits)
    frames = ChatFrames(served.name, new_id("chatcmpl"))
    if req.stream:
        return stream_job(engine, job, frames, req.include_usage, limits.request_timeout_s)
    (done,) = await run_jobs(request, engine, [job])
    return JSONResponse(frames.answer(done))


def check_prompts(
    served: ServedModel, prompts: Sequence[str | list[int]], limits: ModelLimits
) -> None:
    """400 unless there are at most ``limits.max_prompts`` prompts, each text short enough
    to fit the context untokenized and each token id in the vocabulary."""
    if len(prompts) > limits.max_prompts:
        raise ApiError(
            400,
            f"prompt holds {len(prompts)} prompts; this server takes at most "
            f"{limits.max_prompts} per request: send the rest in further requests",
            param="prompt",
        )
    for prompt in prompts:
        if isinstance(prompt, str):
            if len(prompt) > prompt_chars_cap(served, limits):  # the server's cap first
                raise over_token_cap(limits, f"{len(prompt):,} characters", "prompt")
            if len(prompt) > served.max_prompt_chars:
                raise too_many_chars(served, len(prompt), "prompt")
            continue
        if limits.max_prompt_tokens is not None and len(prompt) > limits.max_prompt_tokens:
            raise over_token_cap(limits, f"{len(prompt):,} tokens", "prompt")
        bad = next((t for t in prompt if not 0 <= t < served.vocab_size), None)
        if bad is not None:
            raise ApiError(
                400,
                f"prompt holds token id {bad}, outside this model's vocabulary "
                f"(0 to {served.vocab_size - 1})",
                param="prompt",
            )


def prompt_chars_cap(served: ServedModel, limits: ModelLimits) -> float:
    """Characters beyond which a text has more than ``limits.max_prompt_tokens`` tokens
    for sure (each token covers at most the longest vocabulary entry's characters)."""
    if limits.max_prompt_tokens is None:
        return float("inf")
    longest = max(served.max_prompt_chars // max(served.context_length, 1), 1)
    return limits.max_prompt_tokens * longest


def over_token_cap(limits: ModelLimits, size: str, param: str) -> ApiError:
    return ApiError(
        400,
        f"the {param} is {size}; this server takes at most {limits.max_prompt_tokens:,} "
        "prompt tokens per prompt (--max-prompt-tokens): shorten it",
        param=param,
        code="prompt_too_long",
    )


def check_max_tokens(max_tokens: int | None, limits: ModelLimits) -> None:
    """400 when ``max_tokens`` is over ``limits.max_tokens_cap``."""
    cap = limits.max_tokens_cap
    if max_tokens is not None and cap is not None and max_tokens > cap:
        raise ApiError(
            400,
            f"max_tokens is {max_tokens:,}; this server generates at most {cap:,} tokens "
            "per request (--max-tokens-cap): ask for fewer",
            param="max_tokens",
            code="max_tokens_too_large",
        )


def too_many_chars(served: ServedModel, chars: int, param: str) -> ApiError:
    return ApiError(
        400,
        f"the {param} is {chars:,} characters; this model's context of "
        f"{served.context_length} tokens holds at most {served.max_prompt_chars:,}: "
        "shorten it",
        param=param,
        code="context_length_exceeded",
    )


def tokenize_prompts(
    served: ServedModel, prompts: Sequence[str | list[int]], echo: bool
) -> tuple[list[list[int]], list[str]]:
    """``(token ids, echoed text)`` of each prompt (text ``""`` unless ``echo``); slow on
    long texts, so the routes call it off the event loop."""
    ids = [p if isinstance(p, list) else served.encode(p) for p in prompts]
    echoes = [
        (served.tokenizer.decode(p) if isinstance(p, list) else p) if echo else "" for p in prompts
    ]
    return ids, echoes


@dataclass
class Frames:
    """The bodies of one answer (an endpoint's subclass says what its chunks carry).

    A stream sends ``opening()`` unless None, ``piece(text)`` per new text, ``ending``,
    ``usage`` when the client asked for it, then ``[DONE]``.
    """

    model: str
    id: str
    created: int = field(default_factory=now)
    chunk: ClassVar[str]  # the ``object`` of a streamed chunk

    def body(self, choices: list[Any], obj: str | None = None, **extra: Any) -> dict[str, Any]:
        head = {"id": self.id, "object": obj or self.chunk, "created": self.created}
        return {**head, "model": self.model, "choices": choices, **extra}

    @staticmethod
    def choice(finish: str | None, index: int = 0, **content: Any) -> dict[str, Any]:
        return {"index": index, **content, "finish_reason": finish, "logprobs": None}

    def opening(self) -> dict[str, Any] | None:
        return None

    def piece(self, text: str) -> dict[str, Any]:
        raise NotImplementedError

    def ending(self, done: Completion) -> dict[str, Any]:
        raise NotImplementedError

    def usage(self, done: Completion) -> dict[str, Any]:
        return self.body([], usage=usage_of(done))


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


def check_model(served: ServedModel, name: str) -> None:
    """Raise a 404 unless ``name`` is the served model's."""
    if name != served.name:
        raise ApiError(
            404,
            f"model {name!r} does not exist; this server serves {served.name!r}",
            param="model",
            code="model_not_found",
        )


def make_job(
    served: ServedModel,
    ids: list[int],
    req: GenerationParams,
    stops: list[str],
    limits: ModelLimits | None = None,
) -> Job:
    """A job completing ``ids`` with the request's settings (a 400 for an empty prompt,
    one over ``limits.max_prompt_tokens`` or one that leaves no room for ``max_tokens``)."""
    limits = limits or ModelLimits()
    if not ids:
        raise ApiError(400, "the prompt is empty (0 tokens)", param="prompt")
    if limits.max_prompt_tokens is not None and len(ids) > limits.max_prompt_tokens:
        raise over_token_cap(limits, f"{len(ids):,} tokens", "prompt")
    room = served.context_length - len(ids)
    default = min(DEFAULT_CHAT_TOKENS, room, limits.max_tokens_cap or room)
    wanted = req.max_tokens if req.max_tokens is not None else default
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


def usage_of(done: Completion) -> dict[str, Any]:
    return Usage.of(done.prompt_tokens, done.completion_tokens).model_dump()


async def run_jobs(request: Request, engine: GenerationEngine, jobs: list[Job]) -> list[Completion]:
    """The jobs' completions (a failure in the model is a 500; the engine logs why). A
    client that leaves first cancels them (each stops at its next step, freeing its batch
    slot); past the request timeout they are cancelled and the answer is a 504."""
    answers = asyncio.gather(*(asyncio.wrap_future(engine.submit(j)) for j in jobs))
    left = asyncio.ensure_future(client_left(request))
    timeout = limits_of(request).request_timeout_s
    try:
        await asyncio.wait({answers, left}, timeout=timeout, return_when=FIRST_COMPLETED)
    finally:
        left.cancel()
    if answers.done():
        try:
            return answers.result()
        except Exception as err:
            raise ApiError(500, INTERNAL_ERROR, kind="server_error") from err
    for job in jobs:
        job.cancelled.set()
    answers.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved"
    if not left.cancelled() and left.done():
        raise ApiError(499, "the client closed the connection", code="client_closed_request")
    raise ApiError(
        504,
        f"the generation took longer than this server's --request-timeout of {timeout:g} s; "
        "ask for fewer tokens (max_tokens), or retry",
        kind="timeout_error",
        code="request_timeout",
    )


async def client_left(request: Request) -> None:
    """Return once the client has closed its connection (the body is read already, so the
    only message left to receive is ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def stream_job(
    engine: GenerationEngine,
    job: Job,
    frames: Frames,
    include_usage: bool,
    timeout_s: float | None = None,
) -> StreamingResponse:
    """Stream the job's text as it is generated, framed by ``frames``, then ``[DONE]``
    (past ``timeout_s``: cancelled, and an error event ends the stream)."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    job.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    done = asyncio.wrap_future(engine.submit(job))
    # Scheduled after every on_text of this job (same thread, FIFO), so it comes last.
    done.add_done_callback(lambda _: pieces.put_nowait(None))
    return StreamingResponse(
        events(job, pieces, done, frames, include_usage, timeout_s),
        media_type="text/event-stream",
    )


async def events(
    job: Job,
    pieces: asyncio.Queue[str | None],
    done: asyncio.Future[Completion],
    frames: Frames,
    include_usage: bool,
    timeout_s: float | None = None,
) -> AsyncIterator[str]:
    """The events of :func:`stream_job` (``pieces`` ends with None once ``done`` is)."""
    deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
    try:
        first = frames.opening()
        if first is not None:
            yield sse(first)
        while True:
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            try:
                text = await asyncio.wait_for(pieces.get(), left)
            except TimeoutError:
                message = f"the generation took longer than --request-timeout {timeout_s:g} s"
                yield sse(error_body(message, "timeout_error", code="request_timeout"))
                return
            if text is None:
                break
            yield sse(frames.piece(text))
        try:
            result = done.result()
        except Exception:
            yield sse(error_body(INTERNAL_ERROR, "server_error"))
            return
        yield sse(frames.ending(result))
        if include_usage:
            yield sse(frames.usage(result))
        yield DONE
    finally:
        job.cancelled.set()  # the client left: stop generating for it
