"""A DP leader's loop: commands from the node's front door in, scheduler steps, events out."""

from __future__ import annotations

import logging
import queue
import time

from pdpair.engine.distributed.rank_messages import (
    Abort,
    Activate,
    Closed,
    Events,
    Prealloc,
    RankStats,
    Stop,
    Submit,
    Wake,
)
from pdpair.engine.distributed.rank_remote import LeaderPages
from pdpair.engine.distributed.rank_runner import RankRunner
from pdpair.engine.events import StepEvent
from pdpair.engine.request import Request
from pdpair.engine.scheduler import Scheduler

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.01  # how long leaders wait for commands when no DP rank has work
STATS_EVERY_S = 0.1  # how often a leader reports its queues and pool


def send_waking(inboxes, d: int, cmd) -> None:
    """Put `cmd` in DP leader d's inbox (`inboxes`: DP rank -> queue; d may have none: this process's own
    leader) and a `Wake` in every other leader's. `cmd` gives d work; the others may be in their idle wait
    (up to IDLE_WAIT_S), and d's next step gather waits for them."""
    for rank, q in inboxes.items():
        q.put(cmd if rank == d else Wake())


class RankLoop:
    """Every leader runs the same number of iterations: each is one scheduler step (when this leader has work)
    with its two collective forward slots, the first of which also gathers every leader's stop and work flags
    (`RankRunner.iterate`); the leaders stop after the iteration in which one of them said stop."""

    def __init__(self, dp_rank: int, scheduler: Scheduler, runner: RankRunner, inbox, outbox,
                 quarantine_seconds: float = 70.0) -> None:
        self.dp_rank = dp_rank
        self.scheduler = scheduler
        self.runner = runner
        self.inbox = inbox
        self.outbox = outbox
        self._stop = False
        self.requests = 0  # submitted to this DP rank
        self._stats_at = 0.0
        self.remote = LeaderPages(dp_rank, scheduler, outbox, quarantine_seconds)

    def run(self) -> None:
        while True:
            self._drain(timeout=None)
            self.remote.poll()
            stop, work, events = self.runner.iterate(self.scheduler, self._stop)
            if events:
                self.outbox.put(Events(self.dp_rank, events))
            if stop:
                break
            self._report()
            if not work:
                self._drain(timeout=IDLE_WAIT_S)
        self.runner.stop_followers()
        r = self.runner
        self.outbox.put(Closed(self.dp_rank, r.idle_forwards, r.idle_seconds, r.graph_replays, r.iterations,
                               r.sync.gathers, r.gather_seconds))
        logger.info("DP rank %d stopped: %d requests, %d idle forwards, %.3f s; %d remote prefills", self.dp_rank,
                    self.requests, self.runner.idle_forwards, self.runner.idle_seconds, self.remote.served)

    def _report(self) -> None:
        now = time.monotonic()
        if now - self._stats_at >= STATS_EVERY_S:
            self._stats_at = now
            self.outbox.put(RankStats(self.dp_rank, self.scheduler.stats(), self.remote.quarantined()))

    def _drain(self, timeout: float | None) -> None:
        """Apply queued commands; with a timeout, wait that long for the first one."""
        while True:
            try:
                cmd = self.inbox.get(timeout=timeout) if timeout else self.inbox.get_nowait()
            except queue.Empty:
                return
            timeout = None
            self._apply(cmd)

    def _apply(self, cmd) -> None:
        if isinstance(cmd, Wake):
            pass  # ends the idle wait; the next iteration steps
        elif isinstance(cmd, Stop):
            self._stop = True
        elif isinstance(cmd, Abort):
            if self.remote.abort(cmd):
                self.outbox.put(Events(self.dp_rank, [StepEvent(cmd.rid, [], "abort")]))
        elif isinstance(cmd, Submit):
            self.requests += 1
            try:
                self.scheduler.submit(Request(cmd.rid, list(cmd.input_ids), cmd.sampling))
            except ValueError as exc:
                logger.warning("DP rank %d refused %s: %s", self.dp_rank, cmd.rid, exc)
                self.outbox.put(Events(self.dp_rank, [StepEvent(cmd.rid, [], "error")]))
        elif isinstance(cmd, Prealloc):
            self.requests += 1
            self.remote.prealloc(cmd)
        elif isinstance(cmd, Activate):
            self.remote.activate(cmd)
        else:
            raise TypeError(f"unknown rank command {type(cmd).__name__}")
