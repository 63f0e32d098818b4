"""Idle DP leaders join a step as soon as one of them has work: new work for one DP rank puts a `Wake` in
every other leader's inbox (they wait up to IDLE_WAIT_S for commands otherwise, and the leaders' step gather
waits for the slowest), and a command for the node's engine thread ends DP rank 0's idle wait."""

from __future__ import annotations

import asyncio
import queue

import pytest
from pdpair.engine.distributed import dp_scheduler
from pdpair.engine.distributed.dp_scheduler import DPScheduler
from pdpair.engine.distributed.rank_loop import RankLoop, send_waking
from pdpair.engine.distributed.rank_messages import Activate, Submit, Wake
from pdpair.engine.sampling import SamplingParams
from pdpair.node.engine_thread import EngineThread

from tests.unit.test_dp_remote_prefill import Inner, Runner, _drain, _req


def test_new_work_for_one_leader_wakes_every_other_leader():
    inboxes = {d: queue.Queue() for d in (1, 2, 3)}
    cmd = Submit("r", (1, 2), SamplingParams())
    send_waking(inboxes, 2, cmd)
    assert [_drain(inboxes[d]) for d in (1, 2, 3)] == [[Wake()], [cmd], [Wake()]]
    send_waking(inboxes, 0, cmd)  # DP rank 0 is the caller's own: every remote leader is woken
    assert [_drain(inboxes[d]) for d in (1, 2, 3)] == [[Wake()]] * 3
    every = {0: queue.Queue(), 1: queue.Queue()}  # the launcher's inboxes: every leader's, DP rank 0's too
    send_waking(every, 1, cmd)
    assert [_drain(q) for q in every.values()] == [[Wake()], [cmd]]


def test_dp_scheduler_wakes_the_leaders_that_did_not_get_the_request():
    inner, inboxes = Inner(), {1: queue.Queue(), 2: queue.Queue()}
    inner.submitted = []
    inner.submit = inner.submitted.append
    dp = DPScheduler(inner, Runner(), inboxes, queue.Queue(), 3)
    first = _req("a")
    dp.submit(first)  # all idle: DP rank 0
    assert inner.submitted == [first] and [_drain(inboxes[d]) for d in (1, 2)] == [[Wake()], [Wake()]]
    dp.submit(_req("b"))  # DP rank 1 now has the least load
    got = [_drain(inboxes[d]) for d in (1, 2)]
    assert [type(m) for m in got[0]] == [Submit] and got[0][0].rid == "b" and got[1] == [Wake()]
    dp.activate("b", 5)
    assert _drain(inboxes[1]) == [Activate("b", 5)] and _drain(inboxes[2]) == [Wake()]


def test_a_leader_takes_a_wake_as_no_command():
    sched = type("Sched", (), {"resources": type("Res", (), {"pools": None})()})()
    loop = RankLoop(1, scheduler=sched, runner=None, inbox=queue.Queue(), outbox=queue.Queue())
    loop.inbox.put(Wake())
    loop._drain(timeout=None)
    assert loop.requests == 0 and not loop._stop and loop.outbox.empty()


class _Engine:
    def __init__(self, sched) -> None:
        self.scheduler = sched


@pytest.mark.timeout(60)
def test_a_command_ends_dp_rank_0s_idle_wait(monkeypatch):
    """With an idle wait far longer than the test allows, a command must still run: its arrival ends the
    DPScheduler's wait (without that, every call on an idle DP node waits out IDLE_WAIT_S)."""
    monkeypatch.setattr(dp_scheduler, "IDLE_WAIT_S", 3600.0)
    dp = DPScheduler(Inner(), Runner(), {1: queue.Queue()}, queue.Queue(), 2)
    dp._remote_events = lambda: []

    async def main():
        th = EngineThread(_Engine(dp), asyncio.get_running_loop(), idle_wait=0.005)
        th.start()
        try:
            await asyncio.sleep(0.05)  # the engine thread is now inside an idle step's wait
            for i in range(3):
                assert await asyncio.wait_for(th.call(lambda e, i=i: i), 20) == i
        finally:
            th.stop()
        assert not th._thread.is_alive()  # stop() ends the wait too

    asyncio.run(main())
