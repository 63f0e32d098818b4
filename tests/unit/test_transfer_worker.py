"""Worker pool around an in-process engine: completion, batching, failure, cancellation."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _transfer_fixtures import MemmoveEngine
from pdpair.transfer import MemoryLayout, MemoryRegion, TransferEngine, TransferWorkers, build_plan

ITEM = 64


def pools(n_items: int = 64):
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, n_items * ITEM, dtype=np.uint8)
    dst = np.zeros(n_items * ITEM, dtype=np.uint8)

    def lay(node: str, buf: np.ndarray) -> MemoryLayout:
        return MemoryLayout(
            node, node, "tcp", 1, "fp", (MemoryRegion("kv", buf.ctypes.data, ITEM, n_items, "u8"),)
        )

    return src, dst, lay("p", src), lay("d", dst)


def fragmented_plan(src_l, dst_l, n: int = 20):
    # every other source item → n entries of one item each
    return build_plan(src_l, dst_l, {"kv": (np.arange(0, 2 * n, 2), np.arange(n))})


def items(buf: np.ndarray, ids) -> np.ndarray:
    return buf.reshape(-1, ITEM)[ids]


@pytest.mark.timeout(30)
def test_plan_lands_in_batches():
    src, dst, src_l, dst_l = pools()
    eng, peer = MemmoveEngine(), MemmoveEngine()
    assert isinstance(eng, TransferEngine)
    peer.register(list(dst_l.regions))
    eng.register(list(src_l.regions))
    workers = TransferWorkers(eng, num_threads=2, batch_entries=3)
    plan = fragmented_plan(src_l, dst_l)
    res = workers.submit("r1", peer.session_id, plan).result(timeout=10)
    assert res.ok and res.error is None
    assert (res.nbytes, res.entries, res.batches) == (20 * ITEM, 20, 7)
    assert np.array_equal(items(dst, np.arange(20)), items(src, np.arange(0, 40, 2)))
    assert not items(dst, np.arange(20, 64)).any()
    empty = workers.submit("r2", peer.session_id, build_plan(src_l, dst_l, {}))
    assert empty.result(timeout=1).ok and empty.result().batches == 0
    workers.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        workers.submit("r3", peer.session_id, plan)


@pytest.mark.timeout(30)
def test_cancel_drops_not_yet_started_batches():
    src, dst, src_l, dst_l = pools()
    gate = threading.Event()
    eng, peer = MemmoveEngine(gate=gate), MemmoveEngine()
    eng.register(list(src_l.regions))
    peer.register(list(dst_l.regions))
    workers = TransferWorkers(eng, num_threads=1, batch_entries=4)
    fut = workers.submit("r1", peer.session_id, fragmented_plan(src_l, dst_l))  # 5 batches
    other = workers.submit("r2", peer.session_id, build_plan(src_l, dst_l, {"kv": ([50], [50])}))
    assert eng.started.acquire(timeout=5)  # batch 0 of r1 is in flight, blocked on the gate
    assert workers.cancel("r1") == 4
    assert workers.cancel("r1") == 0
    assert not fut.done()  # a batch is still in flight: nothing may be reused yet
    gate.set()
    res = fut.result(timeout=10)
    assert not res.ok and "cancelled with 4 batches unsent" in res.error
    assert res.cancelled and not res.needs_quarantine  # every started write completed
    assert (res.batches, res.entries, res.nbytes) == (1, 4, 4 * ITEM)
    assert np.array_equal(items(dst, np.arange(4)), items(src, [0, 2, 4, 6]))
    assert not items(dst, np.arange(4, 20)).any()  # the cancelled batches never ran
    assert other.result(timeout=10).ok  # other requests are unaffected
    assert eng.calls == 2
    workers.shutdown()


@pytest.mark.timeout(30)
def test_cancel_before_start_resolves_at_once():
    src, dst, src_l, dst_l = pools()
    gate = threading.Event()
    eng, peer = MemmoveEngine(gate=gate), MemmoveEngine()
    eng.register(list(src_l.regions))
    peer.register(list(dst_l.regions))
    workers = TransferWorkers(eng, num_threads=1, batch_entries=100)
    blocker = workers.submit("a", peer.session_id, fragmented_plan(src_l, dst_l, 1))
    assert eng.started.acquire(timeout=5)
    fut = workers.submit("b", peer.session_id, fragmented_plan(src_l, dst_l, 3))
    assert workers.cancel("b") == 1
    res = fut.result(timeout=1)  # nothing of it in flight: resolved without waiting for the worker
    assert not res.ok and res.batches == 0 and res.nbytes == 0
    gate.set()
    assert blocker.result(timeout=10).ok
    workers.shutdown()
    assert eng.calls == 1


@pytest.mark.timeout(30)
def test_failed_batch_fails_request_and_skips_the_rest():
    src, dst, src_l, dst_l = pools()
    eng, peer = MemmoveEngine(fail_batches={1}), MemmoveEngine()
    eng.register(list(src_l.regions))
    peer.register(list(dst_l.regions))
    workers = TransferWorkers(eng, num_threads=1, batch_entries=5)
    res = workers.submit("r1", peer.session_id, fragmented_plan(src_l, dst_l)).result(timeout=10)
    assert not res.ok and "call 1" in res.error
    assert not res.cancelled and res.needs_quarantine
    assert (res.batches, res.nbytes) == (2, 5 * ITEM)
    assert eng.calls == 2  # batches 2 and 3 were not attempted
    assert workers.cancel("r1") == 0
    workers.shutdown()


@pytest.mark.timeout(30)
def test_engine_exception_becomes_failed_result():
    class Broken(MemmoveEngine):
        def write(self, target_session, plan):
            raise ValueError("source entry 0 is outside the registered regions")

    _, _, src_l, dst_l = pools()
    workers = TransferWorkers(Broken(), num_threads=1)
    res = workers.submit("r1", "nowhere", fragmented_plan(src_l, dst_l)).result(timeout=10)
    assert not res.ok and "ValueError" in res.error
    workers.shutdown()


@pytest.mark.timeout(30)
def test_shutdown_cancels_queued_work():
    src, dst, src_l, dst_l = pools()
    gate = threading.Event()
    eng, peer = MemmoveEngine(gate=gate), MemmoveEngine()
    eng.register(list(src_l.regions))
    peer.register(list(dst_l.regions))
    workers = TransferWorkers(eng, num_threads=1, batch_entries=2)
    fut = workers.submit("r1", peer.session_id, fragmented_plan(src_l, dst_l, 6))
    assert eng.started.acquire(timeout=5)
    threading.Timer(0.2, gate.set).start()
    workers.shutdown(wait=True)
    res = fut.result(timeout=5)
    assert not res.ok and "cancelled with 2 batches unsent" in res.error
    assert res.batches == 1 and res.nbytes == 2 * ITEM and eng.calls == 1
    assert np.array_equal(items(dst, [0, 1]), items(src, [0, 2])) and not items(dst, np.arange(2, 6)).any()


@pytest.mark.timeout(30)
def test_in_flight_failure_after_cancel_still_needs_quarantine():
    src, dst, src_l, dst_l = pools()
    gate = threading.Event()
    eng, peer = MemmoveEngine(gate=gate, fail_batches={0}), MemmoveEngine()
    eng.register(list(src_l.regions))
    peer.register(list(dst_l.regions))
    workers = TransferWorkers(eng, num_threads=1, batch_entries=4)
    fut = workers.submit("r1", peer.session_id, fragmented_plan(src_l, dst_l))
    assert eng.started.acquire(timeout=5)
    assert workers.cancel("r1") == 4
    gate.set()
    res = fut.result(timeout=10)
    assert not res.ok and "call 0" in res.error
    assert not res.cancelled and res.needs_quarantine
    workers.shutdown()


@pytest.mark.timeout(30)
def test_a_failed_write_stops_the_requests_other_plans():
    """Chunk plans of one request queue separately: once one write fails, the request's later plans send
    nothing more (each frozen-peer write would cost a full transfer timeout) and report a cancel, not a
    failure of their own; other requests are untouched."""
    src, dst, src_l, dst_l = pools()
    gate = threading.Event()
    eng, peer = MemmoveEngine(gate=gate, fail_batches={0}), MemmoveEngine()
    peer.register(list(dst_l.regions))
    eng.register(list(src_l.regions))
    workers = TransferWorkers(eng, num_threads=1, batch_entries=5)
    first = workers.submit("r", peer.session_id, fragmented_plan(src_l, dst_l, n=5))
    later = workers.submit("r", peer.session_id, fragmented_plan(src_l, dst_l, n=20))
    other = workers.submit("o", peer.session_id, fragmented_plan(src_l, dst_l, n=5))
    gate.set()  # every plan is queued before the first write runs (and fails)
    a, b, c = (f.result(timeout=10) for f in (first, later, other))
    assert a.needs_quarantine
    assert b.cancelled and not b.needs_quarantine and b.batches == 0
    assert c.ok
    workers.shutdown()


class _Gate:
    """Stands in for a chunk's CUDA event: the source items are written only when the gate opens."""

    def __init__(self, src: np.ndarray, ids, fill: np.ndarray) -> None:
        self.opened = threading.Event()
        self.src, self.ids, self.fill = src, ids, fill

    def synchronize(self) -> None:
        self.opened.wait(10)
        self.src.reshape(-1, ITEM)[self.ids] = self.fill  # the forward that wrote the items has run


@pytest.mark.timeout(30)
def test_writes_wait_for_the_chunk_ready_mark():
    """A plan's batches move only after its ready mark completes, so they carry what the forward wrote."""
    src, dst, src_l, dst_l = pools()
    eng, peer = MemmoveEngine(), MemmoveEngine()
    peer.register(list(dst_l.regions))
    eng.register(list(src_l.regions))
    workers = TransferWorkers(eng, num_threads=2, batch_entries=3)
    written = np.full((20, ITEM), 7, dtype=np.uint8)
    gate = _Gate(src, np.arange(0, 40, 2), written)
    fut = workers.submit("r1", peer.session_id, fragmented_plan(src_l, dst_l), ready=gate)
    assert not fut.done() and not items(dst, np.arange(20)).any()  # nothing moved before the mark
    gate.opened.set()
    res = fut.result(timeout=10)
    assert res.ok and res.batches == 7
    assert np.array_equal(items(dst, np.arange(20)), written)
    workers.shutdown()
