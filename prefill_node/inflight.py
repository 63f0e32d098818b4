"""InflightManager: the transfer batches each request has submitted, their results and tallies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pdpair.node.tally import TransferTally


@dataclass(eq=False)
class RequestTransfers:
    rid: str
    pending: set = field(default_factory=set)
    tally: TransferTally = field(default_factory=TransferTally)
    error: str | None = None


class InflightManager:
    """Futures resolve to results with ok, nbytes, entries, batches, seconds, error (transfer.TransferResult)."""

    def __init__(self, on_result: Callable[[Any], None] | None = None) -> None:
        self._reqs: dict[str, RequestTransfers] = {}
        self._on_result = on_result

    def open(self, rid: str) -> RequestTransfers:
        if rid in self._reqs:
            raise ValueError(f"transfers of {rid!r} already tracked")
        rt = self._reqs[rid] = RequestTransfers(rid)
        return rt

    def add(self, rid: str, fut: asyncio.Future, items: int,
            kinds: dict[str, tuple[int, int, int]] | None = None) -> None:
        """`kinds`: per pool kind, (items, bytes, entries) the batch moves (TransferPlan.kind_totals)."""
        rt = self._reqs[rid]
        rt.pending.add(fut)
        fut.add_done_callback(lambda f: self._done(rt, f, items, kinds))

    def _done(self, rt: RequestTransfers, fut: asyncio.Future, items: int,
              kinds: dict[str, tuple[int, int, int]] | None = None) -> None:
        rt.pending.discard(fut)
        if fut.cancelled():
            rt.error = rt.error or "transfer cancelled"
            return
        exc = fut.exception()
        if exc is not None:
            rt.error = rt.error or f"transfer raised {exc!r}"
            return
        res = fut.result()
        if res.batches == 0 and res.cancelled:  # dropped by TransferWorkers.cancel before any batch ran
            return
        if self._on_result is not None:
            self._on_result(res)
        if res.needs_quarantine:  # a write failed: it may still land
            rt.error = rt.error or (res.error or "transfer failed")
            return
        rt.tally.add(items=items, nbytes=res.nbytes, entries=res.entries, batches=res.batches,
                     seconds=res.seconds, kinds=kinds)

    def failed(self, rid: str) -> str | None:
        return self._reqs[rid].error

    async def wait(self, rid: str) -> RequestTransfers:
        """Wait until every submitted batch of rid has ended (landed, failed or cancelled)."""
        rt = self._reqs[rid]
        while rt.pending:
            await asyncio.wait(list(rt.pending))
            await asyncio.sleep(0)  # let the done callbacks run
        return rt

    def close(self, rid: str) -> None:
        self._reqs.pop(rid, None)

    @property
    def num_requests(self) -> int:
        return len(self._reqs)

    @property
    def num_transferring(self) -> int:
        """Requests with at least one batch not yet ended."""
        return sum(1 for r in list(self._reqs.values()) if r.pending)  # list(): read from the engine thread

    @property
    def num_batches(self) -> int:
        return sum(len(r.pending) for r in list(self._reqs.values()))
