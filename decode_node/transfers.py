"""TransferManager: requests whose prompt pages a prefill node is writing into our pools."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from pdpair.proto import pdpair_pb2 as pb

# Answers after which no write of the request can have started: its pages may be freed at once.
# Any other ending (aborted, cancelled, timed out, peer gone) may leave a write landing later.
NOTHING_SENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                          grpc.StatusCode.FAILED_PRECONDITION})


@dataclass(eq=False)
class Transfer:
    rid: str
    prefill_addr: str
    items: dict[str, np.ndarray]
    started: float = field(default_factory=time.perf_counter)

    @property
    def num_items(self) -> int:
        return sum(len(v) for v in self.items.values())


def nothing_sent(code: grpc.StatusCode, side: int = pb.FAILURE_UNSPECIFIED) -> bool:
    """After a failed Prefill call: did the prefill node refuse it before any write could start?
    (A draining node refuses new work up front.) Otherwise only the node's Abort can tell."""
    return code in NOTHING_SENT or side == pb.PREFILL_DRAINING


class TransferManager:
    def __init__(self) -> None:
        self._active: dict[str, Transfer] = {}

    def begin(self, rid: str, prefill_addr: str, items: dict[str, np.ndarray]) -> Transfer:
        if rid in self._active:
            raise ValueError(f"request id {rid!r} is already transferring")
        t = self._active[rid] = Transfer(rid, prefill_addr, items)
        return t

    def end(self, rid: str) -> Transfer | None:
        return self._active.pop(rid, None)

    def __len__(self) -> int:
        return len(self._active)

    @property
    def num_items(self) -> int:
        return sum(t.num_items for t in self._active.values())
