"""Process groups of a multi-rank node and the tensor collectives the model layers call."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import torch
import torch.distributed as dist
from pdpair.engine.distributed.topology import RankTopology

logger = logging.getLogger(__name__)

# how long a collective waits for a peer; a dead peer usually fails it at once (connection reset)
COLLECTIVE_TIMEOUT = timedelta(seconds=120)

# the rendezvous stores this process hosts, held here so that each lives as long as the process
_HOSTED: list[dist.TCPStore] = []


def host_rendezvous() -> str:
    """The init method (`tcp://127.0.0.1:PORT`) of a rendezvous store this process hosts for one set of ranks:
    bound at once to a port the OS picks and held for the process's life. Every rank joins it as a client
    (`init_groups`, `join_rendezvous`), rank 0 included, so nothing else on the host can take the port between
    its choice and the ranks' joining, as it could a port picked and then released."""
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False, timeout=COLLECTIVE_TIMEOUT)
    _HOSTED.append(store)
    return f"tcp://127.0.0.1:{store.port}"


def join_rendezvous(init_method: str) -> dist.TCPStore:
    """A client of the store `host_rendezvous` returned `init_method` for (it retries until the store answers,
    up to the collective timeout)."""
    url = urlsplit(init_method)
    if url.scheme != "tcp" or not url.hostname or not url.port:
        raise ValueError(f"rendezvous {init_method!r}: expected tcp://HOST:PORT")
    return dist.TCPStore(url.hostname, url.port, None, is_master=False, timeout=COLLECTIVE_TIMEOUT)


@dataclass(frozen=True, eq=False)
class ProcessGroups:
    """`tp`: every rank (dense layers, gathers); `attn`: this rank's attention-TP group (the tp group when
    there is no DP attention). `cpu_attn` (gloo) carries batch metadata from a DP leader to its group;
    `cpu_leaders` (gloo, leaders only, else None) carries the per-step token counts between DP leaders."""

    topo: RankTopology
    tp: dist.ProcessGroup
    attn: dist.ProcessGroup
    cpu_attn: dist.ProcessGroup
    cpu_leaders: dist.ProcessGroup | None
    device: torch.device


def init_groups(topo: RankTopology, init_method: str, device: str) -> ProcessGroups:
    """Join the node's process group (NCCL on CUDA, gloo on CPU) through the rendezvous `init_method` (from
    `host_rendezvous`) and build the sub-groups. Every rank creates every group in the same order, as
    torch.distributed requires."""
    dev = torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, store=join_rendezvous(init_method), world_size=topo.world_size,
                            rank=topo.rank, timeout=COLLECTIVE_TIMEOUT)
    tp = dist.group.WORLD
    attn, cpu_attn = tp, None
    for d in range(topo.dp_size):
        ranks = topo.attn_group_ranks(d)
        dev_group = tp if topo.dp_size == 1 else dist.new_group(ranks, timeout=COLLECTIVE_TIMEOUT)
        cpu_group = dist.new_group(ranks, backend="gloo", timeout=COLLECTIVE_TIMEOUT)
        if d == topo.dp_rank:
            attn, cpu_attn = dev_group, cpu_group
    leaders = dist.new_group(topo.leader_ranks, backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    logger.info("rank %d/%d joined (%s): dp rank %d, attention-TP rank %d of %d", topo.rank, topo.world_size,
                backend, topo.dp_rank, topo.attn_tp_rank, topo.attn_tp_size)
    return ProcessGroups(topo, tp, attn, cpu_attn, leaders if topo.is_dp_leader else None, dev)


def group_size(group: dist.ProcessGroup) -> int:
    return dist.get_world_size(group)


def all_reduce(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Sum `x` over `group` in place (a no-op on a group of one)."""
    if group_size(group) > 1:
        dist.all_reduce(x, group=group)
    return x


def all_gather_rows(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Concatenate equal-shaped `x` of every rank of `group` along dim 0, in group-rank order."""
    n = group_size(group)
    if n == 1:
        return x
    out = torch.empty((n * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    if x.shape[0] == 0:
        return out
    if x.device.type == "cuda":
        dist.all_gather_into_tensor(out, x.contiguous(), group=group)
    else:
        dist.all_gather(list(out.chunk(n)), x.contiguous(), group=group)
    return out
