"""Remote prefill under DP attention, without processes: the node's DPScheduler asks other DP leaders for
pages asynchronously (None until their answer arrives) and routes activation, abort and quarantine to the
owning rank; a leader's LeaderPages serves preallocations in order and quarantines held pages itself."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest
from pdpair.engine.distributed.dp_scheduler import DPScheduler
from pdpair.engine.distributed.rank_messages import Abort, Activate, Events, Prealloc, Preallocated, Wake
from pdpair.engine.distributed.rank_remote import LeaderPages
from pdpair.engine.request import Request
from pdpair.engine.sampling import SamplingParams

VOCAB = 100


class Validator:
    def check(self, req) -> None:
        if not req.input_ids:
            raise ValueError("empty prompt")

    def check_token(self, tok: int) -> None:
        if not 0 <= tok < VOCAB:
            raise ValueError(f"token {tok} outside the vocabulary")


class Inner:
    """DP rank 0's scheduler: records what reaches it."""

    def __init__(self) -> None:
        self.validator = Validator()
        self.calls: list = []

    def preallocate(self, req):
        self.calls.append(("preallocate", req.rid))
        return {"kv": np.arange(1, 1 + len(req.input_ids))}

    def activate(self, rid, tok):
        self.calls.append(("activate", rid, tok))

    def abort(self, rid):
        self.calls.append(("abort", rid))
        return True

    def has_work(self) -> bool:
        return False


class Runner:
    def iterate(self, scheduler, stop):
        return False, False, []


def _req(rid: str, n: int = 10, new: int = 5) -> Request:
    return Request(rid, list(range(1, n + 1)), SamplingParams(max_new_tokens=new))


def _drain(q: queue.Queue) -> list:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_dp_rank_1_preallocates_asynchronously_and_owns_activation_and_quarantine():
    inner, inbox, outbox = Inner(), queue.Queue(), queue.Queue()
    dp = DPScheduler(inner, Runner(), {1: inbox}, outbox, 2)
    a = dp.preallocate(_req("a"))  # both idle: DP rank 0, at once
    assert a is not None and dp.dp_rank_of("a") == 0 and inner.calls == [("preallocate", "a")]
    b = _req("b")
    assert dp.preallocate(b) is None and dp.preallocate(b) is None  # asked once, then waits for the answer
    assert [type(m) for m in _drain(inbox)] == [Prealloc] and dp.dp_rank_of("b") == 1
    outbox.put(Preallocated(1, "b", {"kv": np.array([5, 6])}, shared_pages=1))
    dp.step()  # picks the answer up
    assert list(dp.preallocate(b)["kv"]) == [5, 6] and b.shared_pages == 1
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dp.activate("b", VOCAB)  # checked here: the leader must not be sent a bad token
    dp.activate("b", 7)
    dp.activate("a", 3)
    # "a" on DP rank 0 wakes leader 1, whose idle wait would hold rank 0's next step gather
    assert _drain(inbox) == [Activate("b", 7), Wake()] and inner.calls[-1] == ("activate", "a", 3)
    assert dp.remote_prefills == [1, 1]
    assert dp.detach("b") == {}  # DP rank 1 quarantines its own pages
    assert _drain(inbox) == [Abort("b", hold=True)] and dp.load == [15, 0]


def test_a_withdrawn_or_refused_preallocation_on_dp_rank_1_settles_its_load():
    inner, inbox, outbox = Inner(), queue.Queue(), queue.Queue()
    dp = DPScheduler(inner, Runner(), {1: inbox}, outbox, 2)
    dp.preallocate(_req("a"))
    c = _req("c")
    assert dp.preallocate(c) is None
    dp.cancel_prealloc("c")  # its waiter timed out or was cancelled
    assert [type(m) for m in _drain(inbox)] == [Prealloc, Abort] and dp.load == [15, 0]
    outbox.put(Preallocated(1, "c", {"kv": np.array([9])}))  # a late answer: the Abort behind it frees
    dp.step()
    assert dp.preallocate(_req("c")) is None  # the same id again: asked afresh, the stale answer is gone
    assert [type(m) for m in _drain(inbox)] == [Prealloc]
    outbox.put(Preallocated(1, "c", None, error="no room for the prompt"))
    dp.step()
    with pytest.raises(ValueError, match="no room"):
        dp.preallocate(_req("c"))
    assert dp.load == [15, 0] and dp.dp_rank_of("c") == 0


class Allocator:
    def __init__(self) -> None:
        self.freed: list[int] = []

    def free(self, ids) -> None:
        self.freed.extend(int(i) for i in ids)


class Pools:
    kinds = ("kv",)

    def __init__(self) -> None:
        self.kv = Allocator()

    def allocator(self, kind):
        return self.kv


class LeaderScheduler:
    """A DP leader's scheduler with room for `room` preallocations."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.resources = type("R", (), {"pools": Pools()})()
        self.held: dict[str, dict] = {}
        self.aborted: list[str] = []

    def preallocate(self, req):
        if len(req.input_ids) > 50:
            raise ValueError("prompt too long")
        if not self.room:
            return None
        self.room -= 1
        self.held[req.rid] = {"kv": np.array([len(self.held) + 1])}
        return self.held[req.rid]

    def activate(self, rid, tok):
        if rid not in self.held:
            raise KeyError(rid)

    def abort(self, rid):
        self.aborted.append(rid)
        return self.held.pop(rid, None) is not None

    def detach(self, rid):
        return self.held.pop(rid)


def test_leader_serves_preallocations_in_order_and_quarantines_held_pages():
    sched, outbox = LeaderScheduler(room=1), queue.Queue()
    pages = LeaderPages(1, sched, outbox, quarantine_seconds=0.05)
    sp = SamplingParams(max_new_tokens=4)
    for rid, n in (("x", 5), ("y", 5), ("z", 80)):
        pages.prealloc(Prealloc(rid, tuple(range(1, n + 1)), sp))
    pages.poll()
    assert [(m.rid, m.error) for m in _drain(outbox)] == [("x", None)]  # y waits for room, z behind it
    sched.room = 1
    pages.poll()
    answers = _drain(outbox)
    assert [(m.rid, m.items is None) for m in answers] == [("y", False), ("z", True)]
    assert "too long" in answers[1].error
    pages.activate(Activate("gone", 3))
    assert isinstance(outbox.get_nowait(), Events)  # the node hears of it: its stream ends with an error
    assert pages.abort(Abort("y", hold=True))
    assert pages.quarantined() == {"kv": 1} and sched.resources.pools.kv.freed == []
    time.sleep(0.06)
    pages.poll()
    assert pages.quarantined() == {"kv": 0} and sched.resources.pools.kv.freed == [2]
    pages.prealloc(Prealloc("w", (1, 2), sp))
    assert pages.abort(Abort("w")) and sched.aborted == []  # withdrawn while waiting: nothing to free
    assert pages.abort(Abort("x")) and sched.aborted == ["x"]
