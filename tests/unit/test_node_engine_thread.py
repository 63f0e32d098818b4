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
