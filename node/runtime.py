"""NodeRuntime: what both daemons hold — engine, engine thread, transfer engine and workers, quarantine,
metrics, counters — and the ModelInfo / Stats answers built from them."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pdpair.node.config import NodeConfig
from pdpair.node.engine_thread import EngineThread
from pdpair.node.layout import engine_layout, pool_regions
from pdpair.node.metrics import NodeMetrics
from pdpair.proto import pdpair_pb2 as pb

logger = logging.getLogger(__name__)

STATS_WAIT_S = 0.25


@dataclass(eq=False)
class Counters:
    requests_total: int = 0
    requests_aborted: int = 0
    transfer_bytes_total: int = 0
    transfer_batches_total: int = 0


def load_engine(cfg: NodeConfig) -> Any:
    from pdpair.engine import Engine

    extra = {} if cfg.mem_fraction is None else {"mem_fraction": cfg.mem_fraction}
    if cfg.tp_size > 1:
        from pdpair.engine.distributed.node_ranks import node_rank_spec, start_node_engine

        if cfg.prefix_cache:
            logger.info("prefix cache off: not supported with --tp-size %d yet", cfg.tp_size)
        return start_node_engine(node_rank_spec(cfg))
    return Engine.from_model(cfg.model, device=cfg.device, dtype=cfg.dtype, page_size=cfg.page_size,
                             max_pages=cfg.max_pages, chunk_size=cfg.chunk_size,
                             attention_backend=cfg.attention_backend, disable_cuda_graph=cfg.disable_cuda_graph,
                             fused_ops=not cfg.disable_fused_ops, extend_sdpa=cfg.prefill_attention == "auto",
                             dump=cfg.dump, prefix_cache=cfg.prefix_cache,
                             overlap_schedule=False if cfg.disable_overlap_schedule else None, **extra)


class NodeRuntime:
    """Built once per process; `attach()` and `start()` run on the event loop that serves gRPC."""

    def __init__(self, cfg: NodeConfig, engine: Any) -> None:
        from pdpair.transfer import MooncakeEngine, Quarantine, TransferWorkers

        self.cfg = cfg
        self.engine = engine
        self.metrics = NodeMetrics(cfg.role)
        self.counters = Counters()
        self.draining = False
        self.inflight = 0  # requests inside a servicer call
        self.transfer = MooncakeEngine(host=cfg.advertise_host, protocol=cfg.transfer_protocol,
                                       devices=cfg.rdma_device_list)
        self.layout = engine_layout(engine, cfg.node_id, "", cfg.transfer_protocol)
        if cfg.device.startswith("cuda"):  # a runtime call binds the device's context to this thread, where
            import torch  # Mooncake's CUDA transports look the pools up (nvlink_intra: cuMemGetAddressRange)

            torch.cuda.synchronize(torch.device(cfg.device))
        self.transfer.register(pool_regions(engine.pools))  # this process's pools; rank processes register theirs
        self.layout = engine_layout(engine, cfg.node_id, self.transfer.session_id, cfg.transfer_protocol)
        self.workers = TransferWorkers(self.transfer, num_threads=cfg.transfer_threads)
        self.quarantine = Quarantine(cfg.quarantine_seconds, release=self._release_quarantined)
        self.thread: EngineThread | None = None
        self._integrity_ok = True
        self._abort_hooks: list = []
        self.on_shutdown: list = []  # async callables the server awaits after it stopped serving
        self._stage_fn = lambda: {}
        self._observed_at = 0.0
        self._snapshot = pb.NodeStats(role=cfg.role)
        logger.info("%s node %s: model %s, pools %s, transfer session %s%s", cfg.role, cfg.node_id,
                    engine.model_id, {r.kind: r.num_items for r in self.layout.regions if r.dp_rank == 0},
                    self.transfer.session_id, f" (ranks: {len(self.layout.rank_sets) - 1} more region sets, "
                    f"sessions {list(self.layout.sessions)})" if len(self.layout.rank_sets) > 1 else "")

    # -- lifecycle -----------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop, on_fatal=None) -> EngineThread:
        """Create the engine thread for the serving loop; servicers add their hooks before start().
        on_fatal(exc) runs on the loop when the engine has failed too many steps in a row."""
        self.thread = EngineThread(self.engine, loop, on_fatal=on_fatal)
        self.thread.add_hook(self.quarantine.poll)
        self.thread.add_hook(self._observe)
        return self.thread

    def start(self) -> None:
        self.thread.start()
        self.metrics.serve(self.cfg.metrics_port, self.cfg.host)

    def close(self) -> None:
        if self.thread is not None:
            self.thread.stop()
        self.engine.runner.close()
        self.workers.shutdown(wait=True)
        self.quarantine.flush()
        self.transfer.close()

    def set_stage_counts(self, fn) -> None:
        """fn() -> {stage: count} for the servicer-side stages, read for Stats and metrics."""
        self._stage_fn = fn

    # -- engine-thread helpers -----------------------------------------------------------------
    def _release_quarantined(self, kind: str, ids: np.ndarray) -> None:
        self.engine.pools.allocator(kind).free(np.asarray(ids, dtype=np.int32))

    def add_abort_hook(self, hook) -> None:
        """hook(rid) -> bool runs first in abort_request: a stage outside the scheduler (e.g. waiting for
        preallocation) that forgets rid and answers whether it held it."""
        self._abort_hooks.append(hook)

    def abort_request(self, engine: Any, rid: str, hold: bool = False) -> bool:
        """Engine thread: the one way a request ends early, from whatever stage it is in. Frees what it
        holds, or quarantines it (`hold`) when a failed write may still land in it. False if unknown.

        Commands run in the order they were queued, so an abort queued after the call that created a stage
        (submit, preallocation) always finds it."""
        if any(hook(rid) for hook in self._abort_hooks):
            return True
        if not hold:
            return engine.scheduler.abort(rid)
        try:
            self.hold(engine.scheduler.detach(rid))
        except KeyError:
            return False
        return True

    def hold(self, items: dict[str, np.ndarray]) -> None:
        """Quarantine items (engine thread): a failed transfer may still write into them."""
        for kind, ids in items.items():
            if len(ids):
                self.quarantine.hold(kind, np.asarray(ids, dtype=np.int32))

    def _observe(self) -> None:
        """Engine thread, every iteration: refresh metrics and the Stats snapshot (at most every 50 ms)."""
        now = time.monotonic()
        if now - self._observed_at < 0.05:
            return
        self._observed_at = now
        s = self.engine.scheduler.stats()
        stages = {"waiting": s.waiting, "prefilling": s.prefilling, "running": s.running,
                  "held": s.held, "prealloc": s.prealloc, **self._stage_fn()}
        self.metrics.observe_engine(self.engine, self._quarantined(), stages)
        self.metrics.observe_cache(s.cache_hit_tokens, s.cache_evicted_pages, s.cached_pages)
        self._snapshot = self._stats(self.engine)

    def _quarantined(self) -> dict[str, int]:
        return {kind: self.quarantine.num_held(kind) for kind in self.engine.pools.kinds}

    def _stats(self, engine: Any) -> pb.NodeStats:
        sched = engine.scheduler
        if not sched.has_work() and self.inflight == 0:
            try:
                held = self.quarantine.held_items()
                for kind, ids in getattr(engine, "reserved_items", {}).items():  # a rank engine's padding item
                    held[kind] = held.get(kind, []) + ids
                engine.check_integrity(held)
                self._integrity_ok = True
            except AssertionError as exc:
                logger.error("pool integrity check failed: %s", exc)
                self._integrity_ok = False
        s = sched.stats()
        held = self._quarantined()
        cached = s.cached_pages
        pools = [pb.PoolStats(kind=k, total=engine.pools.allocator(k).num_total,
                              free=engine.pools.allocator(k).num_free, quarantined=held[k],
                              cached=cached if k in engine.pools.paged_kinds else 0)
                 for k in engine.pools.kinds]
        primary = engine.pools.kinds[0]  # DP-attention ranks run full-attention models: one paged pool each
        others = engine.rank_stats()  # the other DP-attention ranks
        held_on = getattr(sched, "rank_quarantined", dict)()  # DP rank -> {kind: items} its quarantine holds
        pools += [pb.PoolStats(kind=primary, total=r.total_pages, free=r.free_pages, dp_rank=d,
                               quarantined=held_on.get(d, {}).get(primary, 0)) for d, r in others]
        landed = getattr(sched, "remote_prefills", None) or [0] * (len(others) + 1)  # per DP rank
        ranks = [pb.RankLoad(dp_rank=d, waiting=r.waiting, prefilling=r.prefilling, running=r.running,
                             remote_prefills=landed[d]) for d, r in others]
        if ranks:  # rank 0's queues: the node-wide sums less the other ranks'
            ranks.insert(0, pb.RankLoad(dp_rank=0, waiting=s.waiting - sum(r.waiting for r in ranks),
                                        prefilling=s.prefilling - sum(r.prefilling for r in ranks),
                                        running=s.running - sum(r.running for r in ranks),
                                        remote_prefills=landed[0]))
        return pb.NodeStats(
            role=self.cfg.role, pools=pools, waiting=s.waiting,
            prefilling=s.prefilling, running=s.running, integrity_ok=self._integrity_ok, ranks=ranks,
            prefix_cache=pb.PrefixCacheStats(enabled=engine.prefix_cache is not None, hit_tokens=s.cache_hit_tokens,
                                             evicted_pages=s.cache_evicted_pages, cached_pages=cached),
        )

    def _with_servicer_fields(self, msg: pb.NodeStats) -> pb.NodeStats:
        """`msg` with what the serving loop keeps, read now on that loop: the servicer-side stages (requests
        waiting for their pre-allocation count as waiting), the counters and the draining flag."""
        stages, c = self._stage_fn(), self.counters
        msg.waiting += stages.get("prealloc_waiting", 0)
        msg.transferring = stages.get("transferring", 0)
        msg.inflight_transfers = stages.get("inflight_transfers", 0)
        msg.requests_total, msg.requests_aborted = c.requests_total, c.requests_aborted
        msg.transfer_bytes_total, msg.transfer_batches_total = c.transfer_bytes_total, c.transfer_batches_total
        msg.draining = self.draining
        return msg

    # -- answers ---------------------------------------------------------------------------------
    async def stats(self) -> pb.NodeStats:
        """The engine's part fresh from the engine thread when it answers within STATS_WAIT_S, else from the
        last snapshot (a long prefill step must not make a health/load poll time out); the servicer's part
        (stages in flight, counters, draining) is always current."""
        fut = self.thread.call(self._stats)
        try:
            msg = await asyncio.wait_for(asyncio.shield(fut), STATS_WAIT_S)
        except TimeoutError:
            msg = pb.NodeStats()
            msg.CopyFrom(self._snapshot)
        return self._with_servicer_fields(msg)

    def model_info(self) -> pb.ModelInfoResponse:
        eng, tok = self.engine, self.engine.tokenizer
        return pb.ModelInfoResponse(
            model_id=eng.model_id, context_length=eng.model_config.context_length,
            vocab_size=tok.vocab_size, tokenizer_json=tok.to_json(), chat_template=tok.chat_template or "",
            bos_token=tok.bos_token or "", eos_token=tok.eos_token or "",
            eos_token_ids=list(tok.eos_token_ids), role=self.cfg.role, page_size=eng.pools.page_size,
        )
