"""The OpenAI-compatible generation endpoints: /v1/chat/completions and /v1/completions."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from pdpair.router import sse
from pdpair.router.errors import ApiError
from pdpair.router.generation import Delta, generate
from pdpair.router.job import GenerationJob, build_job
from pdpair.router.protocol import ChatCompletionRequest, CompletionRequest, decode_request
from pdpair.router.responses import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    Completion,
    CompletionChoice,
    Usage,
)
from pdpair.router.state import STATE, RouterState

logger = logging.getLogger(__name__)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, ChatCompletionRequest)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, CompletionRequest)


async def _serve(request: web.Request, kind: type) -> web.StreamResponse:
    state = request.app[STATE]
    req = decode_request(await request.read(), kind)
    tok, card = state.require_model()
    # copy_context: the worker thread sees this request's id (the job takes it as its rid)
    job = await asyncio.get_running_loop().run_in_executor(
        state.cpu_pool, contextvars.copy_context().run, build_job, req, tok, card)
    deltas = generate(job, state.pool, tok, state.metrics, state.config.request_timeout_s)
    try:
        if job.stream:
            return await _stream(request, state, job, card.model_id, deltas)
        return await _full(job, card.model_id, deltas)
    finally:
        await deltas.aclose()  # cancels the Generate call if it is still open


async def _full(job: GenerationJob, model: str, deltas: AsyncIterator[Delta]) -> web.Response:
    parts = [job.echo_text]
    last = None
    async for d in deltas:
        parts.append(d.text)
        last = d
    assert last is not None and last.finish_reason, "generate() ends with a finish delta"
    text = "".join(parts)
    usage = Usage.of(len(job.prompt_ids), last.completion_tokens)
    created = int(time.time())
    if job.kind == "chat":
        choice = ChatChoice(0, ChatMessageOut("assistant", text), last.finish_reason)
        body = ChatCompletion(job.response_id, "chat.completion", created, model, [choice], usage, last.info)
    else:
        choice = CompletionChoice(0, text, last.finish_reason)
        body = Completion(job.response_id, "text_completion", created, model, [choice], usage, last.info)
    return web.Response(body=sse.encode(body), content_type="application/json")


def _chunk(job: GenerationJob, model: str, created: int, text: str | None, finish: str | None = None, *,
           role: bool = False, empty: bool = False, usage: Usage | None = None, pdpair=None):
    """One stream chunk; `empty` gives the usage-only chunk (no choices) of stream_options.include_usage."""
    if job.kind == "chat":
        choices = [] if empty else [ChatChunkChoice(0, ChatDelta("assistant" if role else None, text), finish)]
        return ChatCompletionChunk(job.response_id, "chat.completion.chunk", created, model, choices, usage, pdpair)
    choices = [] if empty else [CompletionChoice(0, text or "", finish)]
    return Completion(job.response_id, "text_completion", created, model, choices, usage, pdpair)


async def _stream(
    request: web.Request, state: RouterState, job: GenerationJob, model: str, deltas: AsyncIterator[Delta]
) -> web.StreamResponse:
    # Wait for the first token before answering, so that failures up to then get a real HTTP status.
    d = await anext(deltas)
    resp = web.StreamResponse(headers=sse.HEADERS)
    await resp.prepare(request)
    created = int(time.time())
    try:
        if job.kind == "chat":
            await resp.write(sse.event(_chunk(job, model, created, "", role=True)))
        if job.echo_text:
            await resp.write(sse.event(_chunk(job, model, created, job.echo_text)))
        while d.finish_reason is None:
            if d.text:
                await resp.write(sse.event(_chunk(job, model, created, d.text)))
            d = await anext(deltas)
        if d.text:
            await resp.write(sse.event(_chunk(job, model, created, d.text)))
        await resp.write(sse.event(_chunk(job, model, created, None, d.finish_reason, pdpair=d.info)))
        if job.include_usage:
            usage = Usage.of(len(job.prompt_ids), d.completion_tokens)
            await resp.write(sse.event(_chunk(job, model, created, None, empty=True, usage=usage)))
        await resp.write(sse.DONE)
    except ApiError as err:  # after the 200 went out: report in-band, as OpenAI servers do
        logger.warning("rid=%s failed mid-stream: %s", job.rid, err.message)
        state.metrics.errors.labels(code=str(err.status)).inc()
        await resp.write(sse.event(err.body()))
        await resp.write(sse.DONE)
    except ConnectionResetError:
        logger.debug("rid=%s client went away mid-stream", job.rid)
    return resp
