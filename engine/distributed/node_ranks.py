"""A node daemon's ranks: rank 0 is the node process itself (its engine thread drives DP rank 0's scheduler
and broadcasts each batch); ranks 1.. are spawned (attention-TP followers, and under DP attention the other
DP leaders with their own schedulers). Any rank's death ends the node (exit code 1)."""

from __future__ import annotations

import logging

import torch.multiprocessing as mp
from pdpair.engine.distributed.dp_scheduler import DPScheduler
from pdpair.engine.distributed.processes import RankProcesses, exit_node
from pdpair.engine.distributed.rank_main import RankSpec, build_rank_engine
from pdpair.engine.distributed.rank_messages import Ready
from pdpair.engine.distributed.rank_sender import RankWriters

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0


def start_node_engine(spec: RankSpec):
    """The rank-0 `Engine` of a tensor-parallel node, its followers started and watched. Call it from a
    thread that outlives the node's serving (a follower dies with the thread that started it)."""
    topo = spec.topo
    ctx = mp.get_context("spawn")
    inboxes = {d: ctx.Queue() for d in range(1, topo.dp_size)}
    followers = [r for r in range(1, topo.world_size) if not topo.for_rank(r).is_dp_leader]
    writes = {r: ctx.Queue() for r in followers} if spec.send_pages else {}  # a prefill node's followers
    outbox = ctx.Queue() if topo.dp_size > 1 or spec.transfer is not None else None
    procs = RankProcesses(spec, list(range(1, topo.world_size)), inboxes, outbox, writes)
    try:
        engine, runner, _ = build_rank_engine(spec, 0)
        rank_regions = []  # the pools the other ranks registered with their own transfer engines
        # the other DP leaders (and, disaggregating, every other rank) have built their engines
        for _ in range(topo.world_size - 1 if spec.transfer is not None else topo.dp_size - 1):
            msg = outbox.get(timeout=START_TIMEOUT_S)
            assert isinstance(msg, Ready), f"expected Ready from a rank, got {msg!r}"
            rank_regions.extend(msg.regions)
    except BaseException:
        procs.kill()
        raise
    runner.processes = procs
    procs.watch(lambda rank, code: exit_node(rank, code, procs))
    engine.attn_tp_size = topo.attn_tp_size  # the node's layout says it: a peer's KV-head split must match
    engine.rank_regions = tuple(sorted(rank_regions, key=lambda r: (r.dp_rank, r.attn_tp_rank, r.kind)))
    if writes:  # the prefill node's front door hands each follower its share of a chunk's pages
        engine.rank_writers = RankWriters(writes, outbox)
    if topo.dp_size > 1:
        engine.scheduler = DPScheduler(engine.scheduler, runner, inboxes, outbox, topo.dp_size)
        engine.rank_stats = engine.scheduler.rank_stats
    logger.info("node ranks: tp %d, dp %d, attention-TP %d; rank 0 here, %d more started", topo.tp_size,
                topo.dp_size, topo.attn_tp_size, topo.world_size - 1)
    return engine


def node_rank_spec(cfg) -> RankSpec:
    """The RankSpec of a node daemon's `NodeConfig`."""
    from pdpair.engine.distributed.groups import host_rendezvous
    from pdpair.engine.distributed.rank_transfer import TransferSpec
    from pdpair.engine.distributed.topology import RankTopology

    transfer = TransferSpec(cfg.transfer_protocol, cfg.advertise_host, tuple(cfg.rdma_device_list or ()))
    return RankSpec(RankTopology(cfg.tp_size, cfg.dp_size, cfg.enable_dp_attention), host_rendezvous(),
                    model=cfg.model, device=cfg.device, dtype=cfg.dtype, page_size=cfg.page_size,
                    max_pages=cfg.max_pages, chunk_size=cfg.chunk_size, attention_backend=cfg.attention_backend,
                    log_level=cfg.log_level, decode_graphs="off" if cfg.disable_cuda_graph else "auto",
                    transfer=transfer, send_pages=cfg.role == "prefill", quarantine_seconds=cfg.quarantine_seconds)
