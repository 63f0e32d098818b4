"""The router's aiohttp application: routes, error middleware, health, models and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiohttp import web
from pdpair.router import openai_api, sse
from pdpair.router.auth import api_key_middleware
from pdpair.router.config import RouterConfig
from pdpair.router.errors import ApiError
from pdpair.router.metrics import CONTENT_TYPE
from pdpair.router.responses import ModelEntry, ModelList
from pdpair.router.state import STATE, RouterState

from pdpair.logfmt import bind_rid

logger = logging.getLogger(__name__)

_STARTED = int(time.time())
CLIENT_CLOSED = 499  # nginx's status for a request the client abandoned


def _error_response(err: ApiError) -> web.Response:
    return web.Response(status=err.status, body=err.to_json(), content_type="application/json")


def _http_message(exc: web.HTTPException, request: web.Request) -> str:
    if exc.status == 413:
        return f"request body larger than the limit of {request.app[STATE].config.max_body_bytes} bytes"
    return f"{exc.reason}: {request.method} {request.path}"


@web.middleware
async def _errors_and_metrics(request: web.Request, handler) -> web.StreamResponse:
    metrics = request.app[STATE].metrics
    bind_rid(uuid.uuid4().hex)  # this request's id: its job's rid and every log line on its path carry it
    endpoint = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        resp = await handler(request)
    except asyncio.CancelledError:  # the client went away (aiohttp handler cancellation)
        metrics.requests.labels(endpoint=endpoint, status=str(CLIENT_CLOSED)).inc()
        raise
    except ApiError as err:
        resp = _error_response(err)
    except web.HTTPException as exc:  # aiohttp's own (413 body too large, 404, 405): the OpenAI shape too
        resp = _error_response(ApiError(exc.status, _http_message(exc, request))) if exc.status >= 400 else exc
    except Exception:  # answer in the OpenAI shape, keep serving; the details go to the log only
        logger.exception("unhandled error on %s", request.path)
        resp = _error_response(ApiError(500, "internal error"))
    metrics.requests.labels(endpoint=endpoint, status=str(resp.status)).inc()
    if resp.status >= 400:
        metrics.errors.labels(code=str(resp.status)).inc()
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    nodes = {f"{n.role} {n.addr}": ("ok" if n.healthy else n.last_error) for n in state.pool.nodes}
    body = {"status": "ok" if state.ready() else "unavailable", "model_loaded": state.card is not None, "nodes": nodes}
    return web.Response(status=200 if state.ready() else 503, body=sse.encode(body), content_type="application/json")


async def models(request: web.Request) -> web.Response:
    _, card = request.app[STATE].require_model()
    body = ModelList([ModelEntry(id=card.model_id, created=_STARTED, max_model_len=card.context_length)])
    return web.Response(body=sse.encode(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.render(state.pool.nodes), headers={"Content-Type": CONTENT_TYPE})


async def _on_startup(app: web.Application) -> None:
    await app[STATE].start()


async def _on_cleanup(app: web.Application) -> None:
    await app[STATE].stop()


def build_app(config: RouterConfig) -> web.Application:
    middlewares = [_errors_and_metrics, *([api_key_middleware(config.api_keys)] if config.api_keys else [])]
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[STATE] = RouterState(config)
    app.router.add_post("/v1/chat/completions", openai_api.chat_completions)
    app.router.add_post("/v1/completions", openai_api.completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.on_startup.append(_on_startup)
    app.on_cleanup.append(_on_cleanup)
    return app
