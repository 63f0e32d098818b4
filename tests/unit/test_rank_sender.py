"""A prefill node's follower writes, without processes: the node's RankWriters hands plans to a follower's
serve_writes thread (queues stand in for the process queues) and each future resolves with that rank's
result; a failed write reports a result that needs quarantine; cancel drops unsent batches."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
from pdpair.engine.distributed.rank_sender import RankWriters, serve_writes
from pdpair.transfer import TransferPlan, TransferResult


class Engine:
    """Writes succeed except to the session "dead"; "slow" waits until released."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int]] = []
        self.started, self.release = threading.Event(), threading.Event()

    def write(self, target: str, plan: TransferPlan) -> TransferResult:
        if target == "slow":
            self.started.set()
            self.release.wait(10)
        self.writes.append((target, len(plan)))
        if target == "dead":
            return TransferResult(False, 0, 0, 1, 0.0, "peer gone")
        return TransferResult(True, plan.nbytes, len(plan), 1, 0.0)


def _wait(cond) -> None:
    deadline = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.001)


def _plan(n: int) -> TransferPlan:
    a = np.arange(n, dtype=np.uint64) * 64
    return TransferPlan(a, a + 4096, np.full(n, 64, dtype=np.uint64), np.ones(n, dtype=np.int64))


def test_follower_writes_resolve_the_nodes_futures_per_rank():
    engine, inbox, outbox = Engine(), queue.Queue(), queue.Queue()
    thread = serve_writes(1, engine, inbox, outbox, num_threads=1)
    writers = RankWriters({1: inbox}, outbox)
    w = writers.writer(1)
    ok, bad = w.submit("a", "peer", _plan(3)), w.submit("b", "dead", _plan(2))
    assert ok.result(10) == TransferResult(True, 3 * 64, 3, 1, 0.0)
    assert bad.result(10).needs_quarantine and bad.result().error == "peer gone"
    # one worker thread: the slow write holds it, so the next one of the same request is still queued
    first, queued = w.submit("c", "slow", _plan(1)), w.submit("c", "peer", _plan(4))
    assert engine.started.wait(10)
    writers.cancel("c")
    writers.cancel("none")  # taken from the queue only once the cancel of "c" has been applied
    _wait(inbox.empty)
    engine.release.set()
    assert first.result(10).ok
    dropped = queued.result(10)
    assert dropped.cancelled and dropped.batches == 0 and not dropped.needs_quarantine
    assert ("peer", 4) not in engine.writes
    inbox.put(None)
    thread.join(10)
    assert not thread.is_alive()


def test_a_write_waits_for_its_ready_event_and_nothing_overtakes_it():
    """A follower's Write leaves only when the chunk's ready event completes; later commands queue behind it."""
    from pdpair.engine.distributed.rank_sender import CancelWrites, Write

    class Gate:
        def __init__(self) -> None:
            self.open = threading.Event()

        def synchronize(self) -> None:
            self.open.wait(10)

    inbox, outbox, gate = queue.Queue(), queue.Queue(), Gate()
    w = RankWriters({1: inbox}, outbox).writer(1)
    w.submit("a", "peer", _plan(2), ready=gate)
    w.cancel("a")
    w.submit("b", "peer", _plan(1))
    time.sleep(0.2)
    assert inbox.empty()  # held behind the ready event, the cancel and the next write too
    gate.open.set()
    got = [inbox.get(timeout=5) for _ in range(3)]
    assert [type(c) for c in got] == [Write, CancelWrites, Write] and [c.rid for c in got] == ["a", "a", "b"]
    w.cancel("b")  # nothing waits any more: handed over at once
    assert isinstance(inbox.get_nowait(), CancelWrites)
