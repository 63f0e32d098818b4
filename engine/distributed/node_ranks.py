"""A node daemon's ranks: rank 0 is the node process itself (its engine thread drives the scheduler and
broadcasts each batch); ranks 1.. are spawned followers. A follower's death ends the node (exit code 1)."""

from __future__ import annotations

import logging

from pdpair.engine.distributed.processes import RankProcesses, exit_node
from pdpair.engine.distributed.rank_main import RankSpec, build_rank_engine

logger = logging.getLogger(__name__)


def start_node_engine(spec: RankSpec):
    """The rank-0 `Engine` of a tensor-parallel node, its followers started and watched. Call it from a
    thread that outlives the node's serving (a follower dies with the thread that started it)."""
    topo = spec.topo
    if topo.dp_size > 1:
        raise ValueError(f"--dp-size {topo.dp_size}: DP attention runs in pdpair.engine.distributed.RankGroup; "
                         "the node daemons serve tensor parallelism (--tp-size) only so far")
    procs = RankProcesses(spec, list(range(1, topo.world_size)), {}, None)
    try:
        engine, runner, _ = build_rank_engine(spec, 0)
    except BaseException:
        procs.kill()
        raise
    runner.processes = procs
    procs.watch(lambda rank, code: exit_node(rank, code, procs))
    logger.info("tensor-parallel node: rank 0 here, %d follower ranks started", topo.world_size - 1)
    return engine


def node_rank_spec(cfg) -> RankSpec:
    """The RankSpec of a node daemon's `NodeConfig`."""
    from pdpair.engine.distributed.processes import free_init_method
    from pdpair.engine.distributed.topology import RankTopology

    if cfg.dump is not None or cfg.mem_fraction is not None:
        raise ValueError("--dump-dir and --mem-fraction are not supported with --tp-size > 1 yet (use --max-pages)")
    return RankSpec(RankTopology(cfg.tp_size, cfg.dp_size, cfg.enable_dp_attention), free_init_method(),
                    model=cfg.model, device=cfg.device, dtype=cfg.dtype, page_size=cfg.page_size,
                    max_pages=cfg.max_pages, chunk_size=cfg.chunk_size, attention_backend=cfg.attention_backend,
                    log_level=cfg.log_level)
