"""Decode-node managers without a model: prealloc (FIFO wait for pages), transfers, running streams."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from pdpair.decode_node.prealloc import PreallocManager
from pdpair.decode_node.running import RunningManager
from pdpair.decode_node.transfers import TransferManager, nothing_sent
from pdpair.proto import pdpair_pb2 as pb


class _Req:
    def __init__(self, rid: str, pages: int) -> None:
        self.rid, self.pages = rid, pages


class _Pool:
    """preallocate(): pages from a counter, None when they do not fit, ValueError for impossible requests."""

    def __init__(self, free: int) -> None:
        self.free, self.next = free, 0

    def preallocate(self, req):
        if req.pages > 100:
            raise ValueError("prompt needs more pages than the pool has")
        if req.pages > self.free:
            return None
        self.free -= req.pages
        ids = np.arange(self.next, self.next + req.pages)
        self.next += req.pages
        return {"kv": ids}


def test_prealloc_serves_in_order_without_overtaking():
    m, pool, got = PreallocManager(), _Pool(free=5), {}
    for rid, n in [("a", 3), ("b", 4), ("c", 1)]:
        m.add(_Req(rid, n), lambda items, rid=rid: got.__setitem__(rid, items))
    assert m.poll(pool.preallocate) == 1  # b does not fit; c must not overtake it
    assert list(got) == ["a"] and got["a"]["kv"].tolist() == [0, 1, 2] and len(m) == 2
    pool.free += 3  # a finished
    assert m.poll(pool.preallocate) == 2
    assert got["b"]["kv"].tolist() == [3, 4, 5, 6] and got["c"]["kv"].tolist() == [7]
    assert len(m) == 0


def test_prealloc_hands_back_errors_and_supports_removal():
    m, pool, got = PreallocManager(), _Pool(free=0), {}
    m.add(_Req("huge", 1000), lambda items: got.__setitem__("huge", items))
    m.add(_Req("x", 1), lambda items: got.__setitem__("x", items))
    with pytest.raises(ValueError, match="already waits"):
        m.add(_Req("x", 1), lambda items: None)
    assert m.poll(pool.preallocate) == 1
    assert isinstance(got["huge"], ValueError) and "x" not in got
    assert m.remove("x") and not m.remove("x") and len(m) == 0


def test_transfer_manager_and_quarantine_policy():
    t = TransferManager()
    t.begin("r", "p:1", {"kv": np.arange(5)})
    with pytest.raises(ValueError):
        t.begin("r", "p:1", {"kv": np.arange(1)})
    assert len(t) == 1 and t.num_items == 5
    assert t.end("r").prefill_addr == "p:1" and t.end("r") is None
    # no write can have started after these answers: free at once
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                 grpc.StatusCode.FAILED_PRECONDITION):
        assert nothing_sent(code)
    assert nothing_sent(grpc.StatusCode.UNAVAILABLE, pb.PREFILL_DRAINING)  # a draining node refuses up front
    # a write may have started after these: only the prefill node's Abort can tell
    for code in (grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                 grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
        assert not nothing_sent(code)


def test_running_manager_times_first_and_later_tokens():
    now = [10.0]
    ttft, itl = [], []
    m = RunningManager(on_ttft=ttft.append, on_itl=itl.append, clock=lambda: now[0])
    m.start("r", prompt_tokens=7)
    now[0] = 10.5
    m.tokens("r", 1)
    now[0] = 10.7
    m.tokens("r", 2)  # two tokens arriving together share the 0.2 s gap
    now[0] = 10.8
    s = m.tokens("r", 1)
    assert ttft == [pytest.approx(0.5)] and itl == pytest.approx([0.1, 0.1, 0.1])
    assert s.output_tokens == 4 and s.ttft == pytest.approx(0.5)
    assert len(m) == 1 and m.finish("r").prompt_tokens == 7 and len(m) == 0
    with pytest.raises(ValueError):
        m.start("q", 1)
        m.start("q", 1)
