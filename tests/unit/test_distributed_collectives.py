"""DP gather/scatter in both padding modes and per-group symmetric buffers, on two gloo processes."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from pdpair.engine.distributed.dp_gather import DPGather
from pdpair.engine.distributed.dp_plan import GatherMode, gather_info
from pdpair.engine.distributed.groups import host_rendezvous, init_groups, join_rendezvous
from pdpair.engine.distributed.symm_mem import SymmetricBuffers
from pdpair.engine.distributed.topology import RankTopology

from tests.unit._spawn_fixtures import spawn_ranks

REAL = [3, 1]  # real rows of DP ranks 0 and 1
HIDDEN = 4


def _rows(dp_rank: int, n: int) -> torch.Tensor:
    return torch.arange(n * HIDDEN, dtype=torch.float32).view(n, HIDDEN) + 100 * (dp_rank + 1)


def _worker(rank: int, init: str, results, device: str = "cpu") -> None:
    torch.set_num_threads(1)
    device = f"cuda:{rank}" if device == "cuda" else device
    groups = init_groups(RankTopology(2, 2, True, rank), init, device)
    dev = groups.device
    buffers = SymmetricBuffers()
    dp = DPGather(groups, buffers)
    out = {}
    for mode in GatherMode:
        dp.info = gather_info(REAL, rank, 1, mode)
        x = _rows(rank, REAL[rank]).to(dev)
        g = dp.gather(x)
        out[mode.value] = (g.cpu(), dp.scatter(g * 2).cpu())
    # buffers are per group: one for tp, one for a second group, never the same storage
    other = dist.new_group([0, 1])
    a = buffers.get(groups.tp, 8, HIDDEN, torch.float32, dev)
    b = buffers.get(other, 8, HIDDEN, torch.float32, dev)
    a2 = buffers.get(groups.tp, 4, HIDDEN, torch.float32, dev)
    b.fill_(rank + 1)
    dist.all_reduce(b, group=other)  # the buffer works with the collective of the group it was registered on
    out["buffers"] = (a.data_ptr() != b.data_ptr(), a2.data_ptr() == a.data_ptr(),
                      buffers.owner(a) is groups.tp, buffers.owner(b) is other, bool((b == 3).all()))
    try:
        buffers.get(None, 1, 1, torch.float32, dev)
        out["needs_group"] = False
    except TypeError:
        out["needs_group"] = True
    results.put((rank, out))
    dist.destroy_process_group()


def _run_pair(device: str) -> None:
    got = spawn_ranks(_worker, 2, device)
    r0, r1 = _rows(0, 3), _rows(1, 1)
    for rank, out in got.items():
        g, scattered = out["max_len"]
        # every rank padded to the longest (3 rows), concatenated in DP-rank order
        assert torch.equal(g[:3], r0) and torch.equal(g[3:4], r1) and g.shape[0] == 6
        assert torch.equal(scattered, 2 * (r0 if rank == 0 else r1))
        g, scattered = out["offsets"]
        assert g.shape[0] == 4 and torch.equal(g, torch.cat([r0, r1]))
        assert torch.equal(scattered, 2 * (r0 if rank == 0 else r1))
        assert out["buffers"] == (True, True, True, True, True)
        assert out["needs_group"]


def test_gather_and_scatter_in_both_modes_and_buffers_per_group():
    _run_pair("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_nccl_gather_and_symmetric_buffers_on_their_own_groups():
    """NCCL: both gather modes, and symmetric-memory buffers rendezvoused per group (SEEDS.md §5)."""
    _run_pair("cuda")


def test_the_rendezvous_port_stays_bound_until_every_rank_has_joined():
    """`host_rendezvous` keeps its port bound, so no other socket can take it before the ranks join (a port
    picked and released, as before, could be taken in between); every rank, rank 0 included, joins as a
    client of this process's store, which a rank-0 bind of its own would have failed on."""
    init = host_rendezvous()
    port = int(init.rsplit(":", 1)[1])
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", port))
    assert host_rendezvous() != init  # one store per set of ranks
    got = spawn_ranks(_join_worker, 2)
    assert got == {0: [0, 1], 1: [0, 1]}
    with pytest.raises(ValueError, match="expected tcp://HOST:PORT"):
        join_rendezvous("env://")


def _join_worker(rank: int, init: str, results) -> None:
    dist.init_process_group("gloo", store=join_rendezvous(init), world_size=2, rank=rank)
    ranks = [None, None]
    dist.all_gather_object(ranks, rank)
    dist.destroy_process_group()
    results.put((rank, ranks))
