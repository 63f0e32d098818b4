"""RpcError: a gRPC status to answer with, raised inside servicer logic and turned into context.abort at
the edge, so the logic never calls context.abort from inside its own try blocks. An error may blame a
side (`pdpair_pb2.FailureSide`), sent as trailing metadata so that routers and decode nodes can fail over."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import grpc
from pdpair.proto import FAILURE_METADATA_KEY
from pdpair.proto import pdpair_pb2 as pb

logger = logging.getLogger(__name__)


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, side: int = pb.FAILURE_UNSPECIFIED) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message, self.side = code, message, side


def failure_side(err: grpc.aio.AioRpcError) -> int:
    """The FailureSide a peer's error named in its trailing metadata (FAILURE_UNSPECIFIED if none)."""
    for key, value in err.trailing_metadata() or ():
        if key == FAILURE_METADATA_KEY:
            try:
                return pb.FailureSide.Value(value)
            except ValueError:
                return pb.FAILURE_UNSPECIFIED
    return pb.FAILURE_UNSPECIFIED


async def abort_with(context, err: RpcError) -> None:
    """context.abort with err's status, naming its side in the trailing metadata."""
    if err.side != pb.FAILURE_UNSPECIFIED:
        context.set_trailing_metadata(((FAILURE_METADATA_KEY, pb.FailureSide.Name(err.side)),))
    await context.abort(err.code, err.message)


def rpc_edge(fn: Callable) -> Callable:
    """Wrap a unary grpc.aio handler: RpcError -> context.abort(code, message) (+ the failure side)."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except RpcError as err:
            logger.debug("%s -> %s", fn.__name__, err)
            await abort_with(context, err)

    return wrapper
