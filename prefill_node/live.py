"""LiveRequests: the prefill requests this node is working on, for `Abort`.

Each live request runs as one task. `abort(rid)` cancels that task once (never while it cleans up, so the
cleanup that waits for in-flight writes cannot be cut short) and waits until it ended, when no write of
it can still land. Finished requests leave their outcome behind for a while (did a write fail, so that
the decode side must quarantine), and an abort for a request not seen yet leaves a tombstone, so that a
Prefill arriving after its own Abort is refused before it writes anything.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from pdpair.node.expiring import ExpiringMap

logger = logging.getLogger(__name__)

REMEMBER_S = 600.0  # outcomes and tombstones: far longer than any Abort takes to arrive
REMEMBER_MAX = 65536


class AbortedEarly(Exception):
    """A Prefill whose Abort arrived first."""


class NotYours(Exception):
    """An Abort from a decode node that did not register the request."""


@dataclass(eq=False)
class Live:
    rid: str
    decode_node_id: str
    task: asyncio.Task | None = None
    cleaning: bool = False  # the task is cleaning up: never cancel it now
    cancelled: bool = False
    transfer_failed: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def cancel(self) -> None:
        if self.task is not None and not (self.cleaning or self.cancelled or self.task.done()):
            self.cancelled = True
            self.task.cancel()


@dataclass(frozen=True)
class AbortOutcome:
    found: bool
    transfer_failed: bool


class LiveRequests:
    def __init__(self) -> None:
        self._live: dict[str, Live] = {}
        self._outcomes: ExpiringMap[tuple[str, bool]] = ExpiringMap(REMEMBER_S, REMEMBER_MAX)
        self._tombstones: ExpiringMap[str] = ExpiringMap(REMEMBER_S, REMEMBER_MAX)

    def open(self, rid: str, decode_node_id: str) -> Live:
        """Raises AbortedEarly when this decode node aborted rid before it arrived."""
        if self._tombstones.get(rid) == decode_node_id:
            self._tombstones.pop(rid)
            raise AbortedEarly(rid)
        live = self._live[rid] = Live(rid, decode_node_id)
        return live

    def close(self, live: Live) -> None:
        """The request ended: nothing of it is in flight any more."""
        self._live.pop(live.rid, None)
        self._outcomes.put(live.rid, (live.decode_node_id, live.transfer_failed))
        live.ended.set()

    async def abort(self, rid: str, decode_node_id: str) -> AbortOutcome:
        """Cancel rid (if live) and return once no write of it can still land."""
        live = self._live.get(rid)
        if live is not None:
            if live.decode_node_id != decode_node_id:
                raise NotYours(rid)
            live.cancel()
            await live.ended.wait()
            return AbortOutcome(True, live.transfer_failed)
        done = self._outcomes.get(rid)
        if done is not None:
            if done[0] != decode_node_id:
                raise NotYours(rid)
            return AbortOutcome(True, done[1])
        self._tombstones.put(rid, decode_node_id)
        return AbortOutcome(False, False)

    def __len__(self) -> int:
        return len(self._live)
