"""RpcError: a gRPC status to answer with, raised inside servicer logic and turned into context.abort at
the edge, so the logic never calls context.abort from inside its own try blocks."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import grpc

logger = logging.getLogger(__name__)


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message


def rpc_edge(fn: Callable) -> Callable:
    """Wrap a unary grpc.aio handler: RpcError -> context.abort(code, message)."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except RpcError as err:
            logger.debug("%s -> %s", fn.__name__, err)
            await context.abort(err.code, err.message)

    return wrapper
