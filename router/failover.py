"""Blame for a Generate that failed before its first token: which node, eject it or not, retry or not.

The decode node names the failing side in the trailing metadata key `FAILURE_METADATA_KEY` (a
`pdpair_pb2.FailureSide` name). UNAVAILABLE without it means the decode node itself could not be reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from pdpair.proto import FAILURE_METADATA_KEY
from pdpair.proto import pdpair_pb2 as pb


@dataclass(frozen=True)
class Verdict:
    side: str | None  # "prefill" | "decode" | None: not a node's fault (e.g. a bad request)
    eject: bool = False  # out of the health view until a Stats poll brings it back
    retry: bool = False  # worth one more try on a pair without the blamed node
    overloaded: bool = False

    @property
    def blamed(self) -> bool:
        return self.side is not None


NO_BLAME = Verdict(None)
_BY_SIDE = {
    pb.PREFILL_UNAVAILABLE: Verdict("prefill", eject=True, retry=True),
    pb.PREFILL_DRAINING: Verdict("prefill", eject=True, retry=True),
    pb.PREFILL_OVERLOADED: Verdict("prefill", retry=True, overloaded=True),
    pb.TRANSFER_FAILED: Verdict("prefill", eject=True, retry=True),
    pb.PREFILL_FAILED: Verdict("prefill", eject=True, retry=True),
    pb.DECODE_OVERLOADED: Verdict("decode", retry=True, overloaded=True),
    pb.DECODE_DRAINING: Verdict("decode", eject=True, retry=True),
}


def failure_side(err: grpc.aio.AioRpcError) -> int | None:
    """The FailureSide value the decode node attached, or None (absent or unknown name)."""
    for key, value in err.trailing_metadata() or ():
        if key == FAILURE_METADATA_KEY:
            name = value.decode() if isinstance(value, bytes) else value
            return pb.FailureSide.Value(name) if name in pb.FailureSide.keys() else None
    return None


def judge(err: grpc.aio.AioRpcError) -> Verdict:
    side = failure_side(err)
    if side in _BY_SIDE:
        return _BY_SIDE[side]
    if err.code() == grpc.StatusCode.UNAVAILABLE:  # the decode node refused the connection or is gone
        return Verdict("decode", eject=True, retry=True)
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Verdict("decode", retry=True, overloaded=True)
    return NO_BLAME
