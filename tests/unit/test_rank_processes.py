"""`RankProcesses` names a killed rank's signal while another thread polls the ranks.

A node polls its ranks from more than one thread: the death watchdog (`first_dead`), the engine's liveness check
(`check_alive` / `exitcodes`) and, when a collective forward fails, the engine thread's own `first_dead`. Whichever
reaps a dead rank first must not leave the others reading its exit code as None."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
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


def liveness_checks(rp: RankProcesses, stop: threading.Event, seen: list) -> None:
    """The engine's liveness check, polling as fast as it can."""
    while not stop.is_set():
        rp.exitcodes()


def failed_forward(rp: RankProcesses, stop: threading.Event, seen: list) -> None:
    """The engine thread after a collective failed: it asks which rank died."""
    seen.append(rp.first_dead(30))


@pytest.mark.parametrize("other", [liveness_checks, failed_forward])
def test_a_killed_rank_reads_its_signal_in_every_thread_that_polls(other):
    for _ in range(12):
        rp = sleepers(2)
        stop, seen = threading.Event(), []
        poller = threading.Thread(target=other, args=(rp, stop, seen), daemon=True)
        poller.start()
        try:
            assert rp.first_dead(0.05) is None
            os.kill(rp.procs[1].pid, signal.SIGKILL)
            assert rp.first_dead(30) == (1, -signal.SIGKILL)
        finally:
            stop.set()
            poller.join(30)
            rp.kill()
        assert seen in ([], [(1, -signal.SIGKILL)])
        assert rp.exitcodes()[0] is not None  # kill() stopped the live one too
