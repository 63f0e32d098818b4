"""Page writes by a prefill node's attention-TP followers.

Each follower holds its share of the KV heads in its own pools, registered with its own transfer engine, so
its share of a chunk's pages must leave from its process. The node process builds the follower's plan (its
regions are in the node's layout) and sends it as a `Write`; the follower's `serve_writes` thread runs it on
`TransferWorkers` and answers `Written` with the result once nothing of the plan moves any more. On the node,
`RankWriters.writer(rank)` offers the same `submit` / `cancel` as `TransferWorkers`, so a request's writes on
every rank are awaited, failed and drained alike.

On CUDA a `Write` leaves only once the chunk's ready event on the node's (rank 0's) stream has completed: that
forward's last all-reduce has then completed, which every follower joins only after writing the chunk's K/V on
its own device, so the follower's copy can never read pages its forward has not written yet (the follower
may still be launching that forward when the node's chunk event arrives). Commands reach the followers in the
order they were given, cancels included."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Write:
    rid: str
    seq: int  # the node's id of this write, echoed in `Written`
    target: str  # the destination's transfer session
    plan: object  # TransferPlan


@dataclass(frozen=True)
class CancelWrites:
    """Drop the unsent batches of rid's writes (started ones end on their own)."""

    rid: str


@dataclass(frozen=True)
class Written:
    rank: int
    seq: int
    result: object  # TransferResult


def serve_writes(rank: int, engine, inbox, outbox, num_threads: int = 2) -> threading.Thread:
    """Follower: a daemon thread running the node's writes on this rank's transfer engine."""
    from pdpair.transfer import TransferWorkers

    workers = TransferWorkers(engine, num_threads=num_threads)

    def run() -> None:
        while (cmd := inbox.get()) is not None:
            if isinstance(cmd, CancelWrites):
                workers.cancel(cmd.rid)
                continue
            fut = workers.submit(cmd.rid, cmd.target, cmd.plan)
            fut.add_done_callback(lambda f, seq=cmd.seq: outbox.put(Written(rank, seq, f.result())))
        workers.shutdown(wait=True)

    t = threading.Thread(target=run, name=f"rank{rank}-writes", daemon=True)
    t.start()
    return t


class _Writer:
    """One follower's writes, as the node sees them."""

    def __init__(self, owner: RankWriters, rank: int, inbox) -> None:
        self.owner, self.rank, self.inbox = owner, rank, inbox

    def submit(self, rid: str, target: str, plan, ready: object | None = None) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        seq = self.owner.track(fut)
        self.owner.post(self.inbox, Write(rid, seq, target, plan), ready)
        return fut

    def cancel(self, rid: str) -> None:
        self.owner.post(self.inbox, CancelWrites(rid))


class RankWriters:
    """Node process: the followers' write queues (rank -> inbox) and one thread collecting their answers."""

    def __init__(self, inboxes: dict[int, object], outbox) -> None:
        self._writers = {r: _Writer(self, r, q) for r, q in inboxes.items()}
        self._outbox = outbox
        self._futures: dict[int, Future] = {}
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._posts: queue.SimpleQueue = queue.SimpleQueue()  # (ready, inbox, command), in order
        self._post_lock = threading.Lock()
        self._waiting_posts = 0  # commands queued behind a ready event
        threading.Thread(target=self._collect, name="rank-writes", daemon=True).start()
        threading.Thread(target=self._post, name="rank-write-posts", daemon=True).start()

    def post(self, inbox, cmd, ready: object | None = None) -> None:
        """Hand cmd to a follower once `ready` (a CUDA event, or None) has completed, after every earlier one
        (at once when nothing waits before it)."""
        with self._post_lock:
            if ready is None and not self._waiting_posts:
                inbox.put(cmd)
                return
            self._waiting_posts += 1
            self._posts.put((ready, inbox, cmd))

    def _post(self) -> None:
        while True:
            ready, inbox, cmd = self._posts.get()
            if ready is not None:
                ready.synchronize()
            with self._post_lock:
                inbox.put(cmd)
                self._waiting_posts -= 1

    def writer(self, rank: int) -> _Writer:
        return self._writers[rank]

    def cancel(self, rid: str) -> None:
        for w in self._writers.values():
            w.cancel(rid)

    def track(self, fut: Future) -> int:
        with self._lock:
            seq = next(self._seq)
            self._futures[seq] = fut
        return seq

    def _collect(self) -> None:
        while True:
            msg = self._outbox.get()
            if not isinstance(msg, Written):
                logger.debug("ignored rank message %r", msg)
                continue
            with self._lock:
                fut = self._futures.pop(msg.seq, None)
            if fut is not None:
                fut.set_result(msg.result)
