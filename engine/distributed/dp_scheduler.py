"""`DPScheduler`: a node's scheduler under DP attention, as the node's engine thread sees it.

DP rank 0's Scheduler runs in the node process; the other DP leaders run theirs in their own processes
(`RankLoop`). New requests go to the DP rank with the fewest outstanding tokens. Every `step()` is one
collective iteration shared with the other leaders (the scheduler step with its forward slots, planned
from one gather of every leader's stop/work flags and token counts), and it also returns the events the other DP ranks sent.

Remote prefills (a decode node's preallocated pages) also go to the DP rank with the fewest outstanding
tokens. On DP rank d > 0 preallocation is asynchronous: `preallocate` sends a `Prealloc` and answers None
until the leader's `Preallocated` arrives (picked up by `step`), so the engine thread never waits on
another leader. Activation, abort and quarantine (`detach`) go to the owning DP rank. Everything else
(stats, validation) is DP rank 0's.
"""

from __future__ import annotations

import logging
import queue
import threading

from pdpair.engine.distributed.rank_loop import IDLE_WAIT_S, send_waking
from pdpair.engine.distributed.rank_messages import (
    Abort,
    Activate,
    Closed,
    Events,
    Prealloc,
    Preallocated,
    RankStats,
    Ready,
    Submit,
)
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
        self._remote_held: dict[int, dict] = {}  # DP rank -> {kind: items its quarantine holds}
        self._asked: dict[str, int] = {}  # rid -> the DP rank (>= 1) asked to preallocate it, not answered yet
        self._answers: dict[str, Preallocated] = {}  # answers not yet taken by `preallocate`
        self.remote_prefills = [0] * dp_size  # remote prefills activated per DP rank
        # set by the thread that steps this scheduler whenever it has a command for it (EngineThread.call):
        # an idle step's wait ends then, instead of after IDLE_WAIT_S
        self.idle_event = threading.Event()

    def __getattr__(self, name: str):  # DP rank 0's scheduler for everything that is not routed
        return getattr(self.inner, name)

    def has_work(self) -> bool:
        """Always: every engine-thread iteration must take part in the leaders' step gather."""
        return True

    def submit(self, req: Request, prefill_only: bool = False) -> None:
        if prefill_only:
            raise ValueError("prefill-only requests are not served by a DP-attention node")
        if req.rid in self._cost:
            raise ValueError(f"request id {req.rid!r} is already in flight")
        self.inner.validator.check(req)
        d = self._least_loaded()
        if d == 0:
            self.inner.submit(req)
        send_waking(self.inboxes, d, Submit(req.rid, tuple(req.input_ids), req.sampling))
        self._charge(req, d)

    def abort(self, rid: str) -> bool:
        d = self.dp_rank_of(rid)
        self._forget(rid)
        if d != 0:
            self.inboxes[d].put(Abort(rid))
            return True
        return self.inner.abort(rid)

    # -- remote prefill: pages from a prefill node ------------------------------------------------------
    def preallocate(self, req: Request) -> dict | None:
        """Destination items on the least loaded DP rank (see `dp_rank_of`), or None until they are ready."""
        asked = self._asked.get(req.rid)
        if asked is None:
            if req.rid in self._cost:
                raise ValueError(f"request id {req.rid!r} is already in flight")
            self.inner.validator.check(req)
            d = self._least_loaded()
            if d == 0:
                items = self.inner.preallocate(req)
                if items is not None:
                    self._charge(req, 0)
                return items
            self.inboxes[d].put(Prealloc(req.rid, tuple(req.input_ids), req.sampling))
            self._asked[req.rid] = d
            self._charge(req, d)
            return None
        answer = self._answers.pop(req.rid, None)
        if answer is None:
            return None
        del self._asked[req.rid]
        if answer.error is not None:
            self._settle(req.rid)
            raise ValueError(answer.error)
        req.shared_pages = answer.shared_pages
        return answer.items

    def dp_rank_of(self, rid: str) -> int:
        """The DP rank that holds (or was asked to hold) rid; 0 for a request this scheduler does not know."""
        owner = self._cost.get(rid)
        return owner[0] if owner is not None else 0

    def cancel_prealloc(self, rid: str) -> None:
        """rid stopped waiting for its pages: withdraw a preallocation asked of another DP rank."""
        if rid in self._asked:
            self.abort(rid)

    def activate(self, rid: str, first_token: int) -> None:
        d = self.dp_rank_of(rid)
        if d == 0:
            self.inner.activate(rid, first_token)
        else:
            self.inner.validator.check_token(first_token)  # every DP rank serves the same vocabulary
        send_waking(self.inboxes, d, Activate(rid, int(first_token)))
        self.remote_prefills[d] += 1

    def detach(self, rid: str) -> dict:
        """DP rank 0: its items, for the caller to free or quarantine. Another DP rank quarantines the
        request's pages itself (they are its pools), so nothing comes back."""
        d = self.dp_rank_of(rid)
        if d == 0:
            self._forget(rid)
            return self.inner.detach(rid)
        self._forget(rid)
        self.inboxes[d].put(Abort(rid, hold=True))
        return {}

    def rank_quarantined(self) -> dict[int, dict]:
        """DP rank (>= 1) -> {kind: items} its quarantine holds (the latest it reported)."""
        return dict(self._remote_held)

    def step(self) -> list:
        _, work, events = self.runner.iterate(self.inner, False)
        if not work and self.idle_event.wait(IDLE_WAIT_S):
            self.idle_event.clear()
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

    def _least_loaded(self) -> int:
        return min(range(len(self.load)), key=lambda i: (self.load[i], i))

    def _charge(self, req: Request, d: int) -> None:
        cost = req.prompt_len + req.sampling.max_new_tokens
        self._cost[req.rid] = (d, cost)
        self.load[d] += cost
        logger.debug("request %s -> DP rank %d (loads %s)", req.rid, d, self.load)

    def _forget(self, rid: str) -> None:
        self._asked.pop(rid, None)
        self._answers.pop(rid, None)
        self._settle(rid)

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
                self._remote_held[msg.dp_rank] = msg.quarantined or {}
            elif isinstance(msg, Preallocated):
                if self._asked.get(msg.rid) == msg.dp_rank:  # else withdrawn: its Abort follows the Prealloc
                    self._answers[msg.rid] = msg
            elif not isinstance(msg, Ready | Closed):
                logger.warning("unexpected message from a DP rank: %r", msg)
