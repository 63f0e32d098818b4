"""DP gather/scatter in both padding modes and per-group symmetric buffers, on two gloo processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pdpair.engine.distributed.dp_gather import DPGather
from pdpair.engine.distributed.dp_plan import GatherMode, gather_info
from pdpair.engine.distributed.groups import init_groups
from pdpair.engine.distributed.processes import free_init_method
from pdpair.engine.distributed.symm_mem import SymmetricBuffers
from pdpair.engine.distributed.topology import RankTopology

REAL = [3, 1]  # real rows of DP ranks 0 and 1
HIDDEN = 4


def _rows(dp_rank: int, n: int) -> torch.Tensor:
    return torch.arange(n * HIDDEN, dtype=torch.float32).view(n, HIDDEN) + 100 * (dp_rank + 1)


def _worker(rank: int, init: str, results) -> None:
    torch.set_num_threads(1)
    groups = init_groups(RankTopology(2, 2, True, rank), init, "cpu")
    buffers = SymmetricBuffers()
    dp = DPGather(groups, buffers)
    out = {}
    for mode in GatherMode:
        dp.info = gather_info(REAL, rank, 1, mode)
        x = _rows(rank, REAL[rank])
        g = dp.gather(x)
        out[mode.value] = (g.clone(), dp.scatter(g * 2))
    # buffers are per group: one for tp, one for a second group, never the same storage
    other = dist.new_group([0, 1], backend="gloo")
    a = buffers.get(groups.tp, 8, HIDDEN, torch.float32, torch.device("cpu"))
    b = buffers.get(other, 8, HIDDEN, torch.float32, torch.device("cpu"))
    a2 = buffers.get(groups.tp, 4, HIDDEN, torch.float32, torch.device("cpu"))
    out["buffers"] = (a.data_ptr() != b.data_ptr(), a2.data_ptr() == a.data_ptr(),
                      buffers.owner(a) is groups.tp, buffers.owner(b) is other)
    try:
        buffers.get(None, 1, 1, torch.float32, torch.device("cpu"))
        out["needs_group"] = False
    except TypeError:
        out["needs_group"] = True
    results.put((rank, out))
    dist.destroy_process_group()


def test_gather_and_scatter_in_both_modes_and_buffers_per_group():
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init = free_init_method()
    procs = [ctx.Process(target=_worker, args=(r, init, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    r0, r1 = _rows(0, 3), _rows(1, 1)
    for rank, out in got.items():
        g, scattered = out["max_len"]
        # every rank padded to the longest (3 rows), concatenated in DP-rank order
        assert torch.equal(g[:3], r0) and torch.equal(g[3:4], r1) and g.shape[0] == 6
        assert torch.equal(scattered, 2 * (r0 if rank == 0 else r1))
        g, scattered = out["offsets"]
        assert g.shape[0] == 4 and torch.equal(g, torch.cat([r0, r1]))
        assert torch.equal(scattered, 2 * (r0 if rank == 0 else r1))
        assert out["buffers"] == (True, True, True, True)
        assert out["needs_group"]
