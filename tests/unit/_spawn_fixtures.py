"""Run a test's worker in `n` spawned processes joined by one fresh torch.distributed init method."""

from __future__ import annotations

import torch.multiprocessing as mp
from pdpair.engine.distributed.processes import free_init_method


def spawn_ranks(target, n: int, *args) -> dict:
    """`target(rank, init_method, results, *args)` in `n` processes; {rank: what it put on `results`}. Every
    process must exit 0."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init = free_init_method()
    procs = [ctx.Process(target=target, args=(r, init, results, *args)) for r in range(n)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return got
