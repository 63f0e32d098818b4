"""`RankProcesses`: spawned rank processes of one node — start, liveness, stop, and a death watchdog."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import wait

import torch.multiprocessing as mp
from pdpair.engine.distributed.rank_main import RankSpec, rank_main

logger = logging.getLogger(__name__)


class RankDied(RuntimeError):
    """A rank process exited while the node needed it; every other rank has been stopped."""


class RankProcesses:
    """Ranks `ranks` of `spec` as spawned processes (daemonic; each also dies with its parent). A DP leader
    gets its DP rank's inbox, a follower its own from `follower_inboxes` (page writes of a prefill node);
    every rank reports to `outbox`."""

    def __init__(self, spec: RankSpec, ranks: list[int], inboxes: dict[int, object], outbox,
                 follower_inboxes: dict[int, object] | None = None) -> None:
        ctx = mp.get_context("spawn")
        procs: dict[int, mp.Process] = {}
        for r in ranks:
            t = spec.topo.for_rank(r)
            inbox = inboxes.get(t.dp_rank) if t.is_dp_leader else (follower_inboxes or {}).get(r)
            p = ctx.Process(target=rank_main, args=(r, spec, inbox, outbox), name=f"pdpair-rank{r}", daemon=True)
            p.start()
            procs[r] = p
        self._own(procs)

    def _own(self, procs: dict[int, mp.Process]) -> None:
        self.procs = procs
        self.stopping = False
        # Every poll of these processes holds this lock. Several threads poll them (the death watchdog, the engine
        # thread's liveness check and its failed-forward path); without it one that loses the race to reap a dead
        # rank gets ECHILD and reads its exit code as None.
        self._reap = threading.RLock()

    def check_alive(self) -> None:
        """Raise RankDied (after stopping every rank) when a rank exited unasked. When several are gone, name
        the cause: a rank killed by a signal before one that exited on its own after a collective with the
        dead one failed."""
        dead = [(r, code) for r, code in zip(self.procs, self.exitcodes(), strict=True) if code is not None]
        if dead and not self.stopping:
            r, code = min(dead, key=lambda d: (d[1] >= 0, d[0]))
            logger.error("rank %d exited with code %s: stopping every rank of this node", r, code)
            self.kill()
            raise RankDied(f"rank {r} exited with code {code}")

    def join(self, timeout: float) -> None:
        with self._reap:
            for p in self.procs.values():
                p.join(timeout)

    def kill(self) -> None:
        self.stopping = True
        with self._reap:
            for p in self.procs.values():
                if p.is_alive():
                    p.terminate()
            for p in self.procs.values():
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)

    def exitcodes(self) -> list[int | None]:
        with self._reap:
            return [p.exitcode for p in self.procs.values()]

    def first_dead(self, timeout: float) -> tuple[int, int | None] | None:
        """(rank, exit code) of a rank that exited, waiting up to `timeout` for one; None if all live."""
        by_sentinel = {p.sentinel: r for r, p in self.procs.items()}
        ready = wait(list(by_sentinel), timeout)
        if not ready:
            return None
        r = by_sentinel[ready[0]]
        with self._reap:
            self.procs[r].join(1)
            return r, self.procs[r].exitcode

    def watch(self, on_death: Callable[[int, int | None], None]) -> None:
        """A thread that calls on_death(rank, exitcode) when a rank exits unasked."""
        def run() -> None:
            dead = self.first_dead(None)
            if not self.stopping and dead is not None:
                on_death(*dead)

        threading.Thread(target=run, name="rank-watchdog", daemon=True).start()


def exit_node(rank: int, code: int | None, procs: RankProcesses, why: str = "") -> None:
    """The node cannot run without every rank: log it, stop the others, exit non-zero now (a collective
    waiting on the dead rank would otherwise hold the engine thread)."""
    what = why or f"exited with code {code}"
    logger.critical("rank %d %s: the node cannot continue; stopping its ranks and exiting", rank, what)
    procs.kill()
    logging.shutdown()
    os._exit(1)
