"""A grpc.aio server interceptor that binds each call's request id (the message's `rid`) for logging."""

from __future__ import annotations

import inspect

import grpc

from pdpair.logfmt import bind_rid


def _rid_of(request) -> str:
    return getattr(request, "rid", "") or ""


def _wrap_unary(behavior):
    async def call(request, context):
        bind_rid(_rid_of(request))
        return await behavior(request, context)
    return call


def _wrap_stream(behavior):
    if not inspect.isasyncgenfunction(behavior):
        return _wrap_unary(behavior)  # a coroutine that writes with context.write(): same shape as unary

    async def call(request, context):
        bind_rid(_rid_of(request))
        async for item in behavior(request, context):
            yield item
    return call


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Unary-request handlers get `bind_rid(request.rid)` before they run; streaming requests are untouched."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(_wrap_stream(handler.unary_stream),
                                                        handler.request_deserializer, handler.response_serializer)
        return handler
