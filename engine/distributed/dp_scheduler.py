"""`DPScheduler`: a node's scheduler under DP attention, as the node's engine thread sees it.

DP rank 0's Scheduler runs in the node process; the other DP leaders run theirs in their own processes
(`RankLoop`). New requests go to the DP rank with the fewest outstanding tokens. Every `step()` is one
collective iteration shared with the other leaders (a tick, then the scheduler step with its forward
slots when any DP rank has work), and it also returns the events the other DP ranks sent. Everything
else (preallocation for remote prefill, activation, stats, validation) is DP rank 0's.
"""

from __future__ import annotations

import logging
import queue
import time

from pdpair.engine.distributed.rank_loop import IDLE_WAIT_S, Abort, Closed, Events, RankStats, Ready, Submit
from pdpair.engine.distributed.rank_runner import RankRunner
from pdpair.engine.events import SchedulerStats, StepEvent
from pdpair.engine.request import Request
from pdpair.engine.scheduler import Scheduler

logger = logging.getLogger(__name__)


class DPScheduler:
    def __init__(self, inner: Scheduler, runner: RankRunner, inboxes: dict, outbox, dp_size: int) -> None:
        self.inner = inner
        self.runner = runner
        self.inboxes = inboxes  # DP rank (>= 1) -> its leader's command queue
        self.outbox = outbox
        self.load = [0] * dp_size  # outstanding tokens per DP rank
        self._cost: dict[str, tuple[int, int]] = {}  # rid -> (DP rank, tokens charged)
        self._remote_stats: dict[int, SchedulerStats] = {}  # the latest each other DP leader reported

    def __getattr__(self, name: str):  # DP rank 0's scheduler for everything that is not routed
        return getattr(self.inner, name)

    def has_work(self) -> bool:
        """Always: every engine-thread iteration must take part in the leaders' collective tick."""
        return True

    def submit(self, req: Request, prefill_only: bool = False) -> None:
        if prefill_only:
            raise ValueError("prefill-only requests are not served by a DP-attention node")
        if req.rid in self._cost:
            raise ValueError(f"request id {req.rid!r} is already in flight")
        self.inner.validator.check(req)
        d = min(range(len(self.load)), key=lambda i: (self.load[i], i))
        if d == 0:
            self.inner.submit(req)
        else:
            self.inboxes[d].put(Submit(req.rid, tuple(req.input_ids), req.sampling))
        cost = req.prompt_len + req.sampling.max_new_tokens
        self._cost[req.rid] = (d, cost)
        self.load[d] += cost
        logger.debug("request %s -> DP rank %d (loads %s)", req.rid, d, self.load)

    def abort(self, rid: str) -> bool:
        owner = self._cost.get(rid)
        if owner is not None and owner[0] != 0:
            self.inboxes[owner[0]].put(Abort(rid))
            self._settle(rid)
            return True
        self._settle(rid)
        return self.inner.abort(rid)

    def step(self) -> list:
        _, work = self.runner.tick(False, self.inner.has_work())
        events: list = []
        if work:
            events = self.inner.step()
            self.runner.end_step()
        else:
            time.sleep(IDLE_WAIT_S)
        events.extend(self._remote_events())
        for ev in events:
            if isinstance(ev, StepEvent) and ev.finish_reason is not None:
                self._settle(ev.rid)
        return events

    def stats(self) -> SchedulerStats:
        """Queues summed over every DP rank; the pool pages are DP rank 0's (see `rank_stats`)."""
        total = self.inner.stats()
        for s in self._remote_stats.values():
            total = SchedulerStats(total.waiting + s.waiting, total.prefilling + s.prefilling,
                                   total.running + s.running, total.held + s.held, total.prealloc + s.prealloc,
                                   total.free_pages, total.total_pages)
        return total

    def rank_stats(self) -> list[tuple[int, SchedulerStats]]:
        """(DP rank, its latest stats) for the other DP ranks, in rank order."""
        return sorted(self._remote_stats.items())

    def _settle(self, rid: str) -> None:
        owner = self._cost.pop(rid, None)
        if owner is not None:
            self.load[owner[0]] -= owner[1]

    def _remote_events(self) -> list:
        out: list = []
        while True:
            try:
                msg = self.outbox.get_nowait()
            except queue.Empty:
                return out
            if isinstance(msg, Events):
                out.extend(msg.events)
            elif isinstance(msg, RankStats):
                self._remote_stats[msg.dp_rank] = msg.stats
            elif not isinstance(msg, Ready | Closed):
                logger.warning("unexpected message from a DP rank: %r", msg)
