"""Registers a servicer's methods with a grpc.aio server, parsing requests at our edge: a malformed
protobuf body answers INVALID_ARGUMENT naming the method (gRPC's own deserializer answers UNKNOWN). A request
with a `rid` binds it for the log lines of its handler (pdpair.logfmt)."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import grpc
from google.protobuf import message as pb_message
from google.protobuf.message_factory import GetMessageClass
from pdpair.proto import pdpair_pb2 as pb

from pdpair.logfmt import bind_rid

logger = logging.getLogger(__name__)


def _parser(method) -> Any:
    cls = GetMessageClass(method.input_type)

    def parse(raw: bytes):
        msg = cls()
        msg.ParseFromString(raw)
        return msg

    return parse


async def _parse(raw: bytes, parse, name: str, context):
    try:
        request = parse(raw)
    except pb_message.DecodeError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: malformed request message: {exc}")
    bind_rid(getattr(request, "rid", ""))
    return request


def _handler(fn, parse, name: str):
    """The method's handler on raw bytes: a coroutine (streamed answers via context.write) or an async
    generator, like the servicer method it wraps."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(raw: bytes, context):
            async for item in fn(await _parse(raw, parse, name, context), context):
                yield item

        return stream

    @functools.wraps(fn)
    async def handler(raw: bytes, context):
        return await fn(await _parse(raw, parse, name, context), context)

    return handler


def add_service(server: grpc.aio.Server, servicer: Any, service: str) -> str:
    """Add every method of `service` (a service name in pdpair.proto) implemented by `servicer`; returns the
    full service name (for the health service)."""
    desc = pb.DESCRIPTOR.services_by_name[service]
    handlers = {}
    for m in desc.methods:
        fn = getattr(servicer, m.name)
        make = grpc.unary_stream_rpc_method_handler if m.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[m.name] = make(_handler(fn, _parser(m), m.name), request_deserializer=None,
                                response_serializer=GetMessageClass(m.output_type).SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(desc.full_name, handlers),))
    return desc.full_name
