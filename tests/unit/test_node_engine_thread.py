"""EngineThread with a scripted scheduler: commands run on the engine thread, events reach only their
request's queue, step failures reach every open stream, hooks run."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest
from pdpair.node.engine_thread import EngineFailure, EngineThread


@dataclass
class _Ev:
    rid: str
    n: int


class _Sched:
    def __init__(self) -> None:
        self.todo: list[list] = []
        self.threads: set[str] = set()
        self.fail = False

    def has_work(self) -> bool:
        return bool(self.todo) or self.fail

    def step(self):
        self.threads.add(threading.current_thread().name)
        if self.fail:
            self.fail = False
            raise RuntimeError("boom")
        return self.todo.pop(0)


class _Engine:
    def __init__(self) -> None:
        self.scheduler = _Sched()


def test_calls_events_failures_and_hooks():
    async def main():
        eng = _Engine()
        th = EngineThread(eng, asyncio.get_running_loop(), idle_wait=0.005)
        ticks = []
        th.add_hook(lambda: ticks.append(threading.current_thread().name))
        th.start()
        try:
            assert await th.call(lambda e: threading.current_thread().name) == "engine"
            with pytest.raises(KeyError, match="nope"):
                await th.call(lambda e: {}["nope"])
            qa, qb = th.open_stream("a"), th.open_stream("b")
            with pytest.raises(ValueError, match="already in flight"):
                th.open_stream("a")
            await th.call(lambda e: e.scheduler.todo.extend([[_Ev("a", 1), _Ev("b", 2)], [_Ev("a", 3),
                                                                                         _Ev("gone", 4)]]))
            got_a = [(await qa.get()).n, (await qa.get()).n]
            assert got_a == [1, 3] and (await qb.get()).n == 2 and qb.empty()
            th.close_stream("b")
            await th.call(lambda e: setattr(e.scheduler, "fail", True))
            failure = await asyncio.wait_for(qa.get(), 5)
            assert isinstance(failure, EngineFailure) and "boom" in repr(failure)
            assert await th.call(lambda e: 42) == 42  # the thread survives a failed step
            assert eng.scheduler.threads == {"engine"} and set(ticks) == {"engine"}
            assert th.num_streams == 1 and th.has_stream("a") and not th.has_stream("b")
        finally:
            th.stop()

    asyncio.run(main())


class _BlockingSched:
    """One step that blocks until released: the engine thread is busy for as long as the test wants."""

    def __init__(self) -> None:
        self.entered, self.release, self.work = threading.Event(), threading.Event(), False

    def has_work(self) -> bool:
        return self.work

    def step(self):
        self.work = False
        self.entered.set()
        self.release.wait(30)
        return []


def test_stats_during_a_long_step_carry_the_servicer_counts_of_now():
    """NodeRuntime.stats: while the engine thread is inside a step, the engine's part comes from the last
    snapshot, but the stages in flight (pre-allocations waiting among them), the counters and the draining flag
    are read on the loop at the call, and the snapshot itself is left as it was; idle, the engine's part is
    fresh."""
    from pdpair.node.runtime import Counters, NodeRuntime
    from pdpair.proto import pdpair_pb2 as pb

    async def main():
        eng = _Engine()
        eng.scheduler = _BlockingSched()
        rt = object.__new__(NodeRuntime)  # no transfer engine: only what stats() reads
        rt.thread = EngineThread(eng, asyncio.get_running_loop(), idle_wait=0.005)
        rt._stats = lambda e: pb.NodeStats(prefilling=1)  # the engine's part, as the engine thread builds it
        rt._snapshot = pb.NodeStats(prefilling=9, requests_total=1, waiting=2)
        rt.counters, rt.draining = Counters(), False
        stages = {"transferring": 0, "inflight_transfers": 0, "prealloc_waiting": 0}
        rt.set_stage_counts(lambda: dict(stages))
        rt.thread.start()
        try:
            st = await rt.stats()
            assert (st.prefilling, st.requests_total, st.transferring, st.waiting) == (1, 0, 0, 0)
            await rt.thread.call(lambda e: setattr(e.scheduler, "work", True))
            assert await asyncio.to_thread(eng.scheduler.entered.wait, 10)
            rt.counters.requests_total, rt.counters.transfer_batches_total = 3, 5
            stages.update(transferring=1, inflight_transfers=2, prealloc_waiting=4)
            rt.draining = True
            st = await rt.stats()
            assert st.prefilling == 9  # the snapshot's: the engine thread did not answer in time
            assert (st.requests_total, st.transfer_batches_total, st.transferring, st.inflight_transfers,
                    st.draining) == (3, 5, 1, 2, True)
            assert st.waiting == 2 + 4  # the engine's queue (snapshot) and the pre-allocations waiting now
            assert rt._snapshot.requests_total == 1 and not rt._snapshot.draining and rt._snapshot.waiting == 2
        finally:
            eng.scheduler.release.set()
            rt.thread.stop()

    asyncio.run(main())
