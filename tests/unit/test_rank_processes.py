"""`RankProcesses` names a killed rank's signal while another thread polls the ranks.

The node polls its ranks from two threads: the death watchdog (`first_dead`) and the engine's liveness check
(`check_alive` / `exitcodes`). Whichever reaps a dead rank first must not leave the other reading its exit code
as None."""

from __future__ import annotations

import os
import signal
import threading
import time

import torch.multiprocessing as mp
from pdpair.engine.distributed.processes import RankProcesses


def sleepers(n: int) -> RankProcesses:
    """A RankProcesses over `n` plain sleeping processes (no model, no collectives)."""
    ctx = mp.get_context("spawn")
    rp = RankProcesses.__new__(RankProcesses)
    procs = {r: ctx.Process(target=time.sleep, args=(60,), daemon=True) for r in range(n)}
    for p in procs.values():
        p.start()
    rp._own(procs)
    return rp


def poll_until(rp: RankProcesses, stop: threading.Event) -> None:
    """The engine's liveness check, polling as fast as it can."""
    while not stop.is_set():
        rp.exitcodes()


def test_a_killed_rank_reads_minus_nine_from_the_watchdog_while_the_engine_polls():
    for _ in range(12):
        rp = sleepers(2)
        stop = threading.Event()
        poller = threading.Thread(target=poll_until, args=(rp, stop), daemon=True)
        poller.start()
        try:
            assert rp.first_dead(0.05) is None
            os.kill(rp.procs[1].pid, signal.SIGKILL)
            assert rp.first_dead(30) == (1, -signal.SIGKILL)
        finally:
            stop.set()
            poller.join(5)
            rp.kill()
        assert rp.exitcodes()[0] is not None  # kill() stopped the live one too
