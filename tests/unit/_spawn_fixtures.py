"""Run a test's worker in `n` spawned processes joined by one fresh torch.distributed init method."""

from __future__ import annotations

import pickle

import torch.multiprocessing as mp
from pdpair.engine.distributed.groups import host_rendezvous


class ValueQueue:
    """A spawn-context queue whose items travel by value. A torch tensor put on a plain multiprocessing queue
    travels as a file descriptor its sender serves until it exits, so a worker that puts its result and exits
    can win the race against the parent's read (`FileNotFoundError` in `rebuild_storage_fd`) under load."""

    def __init__(self) -> None:
        self._queue = mp.get_context("spawn").Queue()

    def put(self, item) -> None:
        self._queue.put(pickle.dumps(item))

    def get(self, timeout: float):
        return pickle.loads(self._queue.get(timeout=timeout))


def spawn_ranks(target, n: int, *args) -> dict:
    """`target(rank, init_method, results, *args)` in `n` processes; {rank: what it put on `results`}. Every
    process must exit 0."""
    ctx = mp.get_context("spawn")
    results = ValueQueue()
    init = host_rendezvous()
    procs = [ctx.Process(target=target, args=(r, init, results, *args)) for r in range(n)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return got
