"""OpenAI-style API errors and the gRPC status → HTTP status mapping."""

from __future__ import annotations

import logging
import re

import grpc
import msgspec

logger = logging.getLogger(__name__)

# host:port, [v6]:port: what a node's error details may carry and clients must not see
_ADDRESS = re.compile(r"\[[0-9A-Fa-f:.]+\](:\d+)?|\b(?:\d{1,3}\.){3}\d{1,3}(:\d+)?|\b[\w.-]+:\d{2,5}\b")
_GENERIC = {
    429: "the serving nodes are overloaded; retry later",
    503: "no node could serve the request now",
    504: "the request timed out",
}
_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class ApiError(Exception):
    """An error the HTTP edge answers with `status` and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> ErrorBody:
        kind = _ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return ErrorBody(ErrorDetail(message=self.message, type=kind, param=self.param, code=self.code))

    def to_json(self) -> bytes:
        return msgspec.json.encode(self.body())


def http_status_for(code: grpc.StatusCode) -> int:
    """INVALID_ARGUMENT 400, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, others 500."""
    return _GRPC_TO_HTTP.get(code, 500)


def scrub(text: str) -> str:
    """`text` with network addresses replaced by "<node>"."""
    return _ADDRESS.sub("<node>", text)


def from_rpc_error(err: grpc.aio.AioRpcError, node: str, rid: str) -> ApiError:
    """The client's view of a failed node call: the request's own faults keep their details (addresses
    scrubbed), node failures get a generic message with the request id; the details go to the log."""
    code = err.code()
    status = http_status_for(code)
    details = err.details() or code.name
    logger.warning("rid=%s node %s: %s: %s", rid, node, code.name, details)
    if status == 400:
        message = scrub(details)
    else:
        message = f"{_GENERIC.get(status, 'the serving nodes failed the request')} (request id {rid})"
    return ApiError(status, message, code=code.name.lower())
