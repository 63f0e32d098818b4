"""A DP leader's side of remote prefill: pages a prefill node writes into this DP rank's pools.

The node process sends `Prealloc` and picks the `Preallocated` answer up later (the engine thread never
waits on another leader). Preallocations are served in arrival order, each retried every iteration until
the pools hold it (no overtaking, as on the node). `Activate` joins a request whose pages landed; an
`Abort` with `hold` detaches its pages into this rank's quarantine (a failed write may still land in
them), from where they return to the pools after `quarantine_seconds`."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
from pdpair.engine.distributed.rank_messages import Abort, Activate, Events, Prealloc, Preallocated
from pdpair.engine.events import StepEvent
from pdpair.engine.request import Request
from pdpair.engine.scheduler import Scheduler

logger = logging.getLogger(__name__)


class LeaderPages:
    def __init__(self, dp_rank: int, scheduler: Scheduler, outbox, quarantine_seconds: float) -> None:
        from pdpair.transfer import Quarantine

        self.dp_rank = dp_rank
        self.scheduler = scheduler
        self.outbox = outbox
        self._waiting: OrderedDict[str, Request] = OrderedDict()
        pools = scheduler.resources.pools
        self.quarantine = Quarantine(quarantine_seconds,
                                     release=lambda kind, ids: pools.allocator(kind).free(np.asarray(ids, np.int32)))
        self.served = 0  # preallocations answered with items

    def prealloc(self, cmd: Prealloc) -> None:
        if cmd.rid in self._waiting:
            self._answer(cmd.rid, error=f"request id {cmd.rid!r} already waits for pages")
            return
        self._waiting[cmd.rid] = Request(cmd.rid, list(cmd.input_ids), cmd.sampling)

    def poll(self) -> None:
        """Every leader iteration: release due quarantine holds, then serve waiting preallocations in order."""
        self.quarantine.poll()
        while self._waiting:
            rid, req = next(iter(self._waiting.items()))
            try:
                items = self.scheduler.preallocate(req)
            except ValueError as exc:
                del self._waiting[rid]
                self._answer(rid, error=str(exc))
                continue
            if items is None:
                return
            del self._waiting[rid]
            self.served += 1
            self._answer(rid, {k: np.asarray(v, dtype=np.int64) for k, v in items.items()}, req.shared_pages)

    def activate(self, cmd: Activate) -> None:
        try:
            self.scheduler.activate(cmd.rid, cmd.first_token)
        except (KeyError, ValueError) as exc:  # aborted meanwhile, or checked on the node already
            logger.warning("DP rank %d cannot activate %s: %s", self.dp_rank, cmd.rid, exc)
            self.outbox.put(Events(self.dp_rank, [StepEvent(cmd.rid, [], "error")]))

    def abort(self, cmd: Abort) -> bool:
        """Drop the request wherever it is; with `hold`, quarantine its pages instead of freeing them."""
        if self._waiting.pop(cmd.rid, None) is not None:
            return True
        if not cmd.hold:
            return self.scheduler.abort(cmd.rid)
        try:
            items = self.scheduler.detach(cmd.rid)
        except KeyError:
            return False
        for kind, ids in items.items():
            self.quarantine.hold(kind, ids)
        logger.info("DP rank %d: quarantined the pages of %s", self.dp_rank, cmd.rid)
        return True

    def quarantined(self) -> dict[str, int]:
        return {kind: self.quarantine.num_held(kind) for kind in self.scheduler.resources.pools.kinds}

    def _answer(self, rid: str, items: dict | None = None, shared_pages: int = 0, error: str | None = None) -> None:
        self.outbox.put(Preallocated(self.dp_rank, rid, items, shared_pages, error))
