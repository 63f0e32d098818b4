"""The body of one rank process: join the groups, load and shard the model, build its engine, then lead
(a DP rank's scheduler loop) or follow (its leader's forwards)."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from pdpair.engine.distributed.dp_gather import DPGather
from pdpair.engine.distributed.groups import init_groups
from pdpair.engine.distributed.padding import DUMMY_ITEM
from pdpair.engine.distributed.rank_loop import RankLoop
from pdpair.engine.distributed.rank_messages import Ready
from pdpair.engine.distributed.rank_runner import RankRunner
from pdpair.engine.distributed.rank_sender import serve_writes
from pdpair.engine.distributed.rank_transfer import TransferSpec, start_rank_transfer
from pdpair.engine.distributed.shard import local_config, shard_model
from pdpair.engine.distributed.symm_mem import SymmetricBuffers
from pdpair.engine.distributed.topology import RankTopology
from pdpair.engine.heap import freeze_startup_heap, thaw_heap
from pdpair.engine.streams import use_compute_stream

logger = logging.getLogger(__name__)


DECODE_GRAPHS = ("auto", "off", "eager")


@dataclass(frozen=True)
class RankSpec:
    """What every rank of a node builds: the model, the engine knobs and the node's topology (rank 0's)."""

    topo: RankTopology
    init_method: str  # tcp://127.0.0.1:PORT of the store the node process hosts (`host_rendezvous`)
    model: str = "smollm2-135m"
    device: str = "cpu"  # "cuda": rank r uses cuda:r
    dtype: str | None = None
    page_size: int = 16
    max_pages: int | None = 256  # per rank (None: from free memory)
    chunk_size: int = 512
    max_running_requests: int = 256
    attention_backend: str = "auto"
    seed: int = 0
    threads_per_rank: int = 1  # CPU intra-op threads of each rank process
    log_level: str = "INFO"
    # decode graphs: "auto" (CUDA graphs on CUDA with a backend that supports them), "off", or "eager" (the
    # eager stand-in that runs the graph control flow without capture, for tests on CPU)
    decode_graphs: str = "auto"
    # a disaggregating node: every rank but rank 0 (the node process, which has its own) runs a transfer engine
    # for its pools; None: no rank receives or sends pages
    transfer: TransferSpec | None = None
    send_pages: bool = False  # a prefill node: attention-TP followers write their share of each chunk's pages
    quarantine_seconds: float = 70.0  # how long a DP leader holds the pages of a failed remote prefill

    def __post_init__(self) -> None:
        if self.send_pages and (self.transfer is None or self.topo.dp_size > 1):
            raise ValueError("send_pages needs a transfer spec and one DP rank (DP attention on a prefill node is "
                             "not supported)")
        if self.decode_graphs not in DECODE_GRAPHS:
            raise ValueError(f"decode_graphs must be one of {DECODE_GRAPHS}, got {self.decode_graphs!r}")

    def device_of(self, rank: int) -> str:
        return f"cuda:{rank}" if self.device.startswith("cuda") else self.device


def _die_with_parent() -> None:
    """Linux: the kernel kills this rank when the node process dies, so ranks are never orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        logger.warning("cannot ask to die with the parent process; a killed node may leave rank processes")


def build_rank_engine(spec: RankSpec, rank: int):
    """(engine, runner, topology) of rank `rank`, its model sharded and its runner collective."""
    from pdpair.engine.engine import Engine
    from pdpair.engine.loader import load_model

    topo = spec.topo.for_rank(rank)
    device = spec.device_of(rank)
    groups = init_groups(topo, spec.init_method, device)
    loaded = load_model(spec.model, device=device, dtype=spec.dtype)
    dp = DPGather(groups, SymmetricBuffers()) if topo.enable_dp_attention else None
    shard_model(loaded.model, groups, dp)
    local = dataclasses.replace(loaded, config=local_config(loaded.config, topo.attn_tp_size, topo.attn_tp_rank))
    engine = Engine.from_loaded(local, device=device, page_size=spec.page_size, max_pages=spec.max_pages,
                                chunk_size=spec.chunk_size, attention_backend=spec.attention_backend,
                                max_running_requests=spec.max_running_requests, seed=spec.seed,
                                disable_cuda_graph=True)  # the rank's graphs are captured below, collectively
    engine.reserved_items = {}  # held outside any request: integrity checks count them as accounted for
    for kind in engine.pools.kinds:  # padding rows write here
        held = engine.pools.allocator(kind).alloc(1)
        assert held is not None and int(held[0]) == DUMMY_ITEM, f"{kind}: first item is {held}, not {DUMMY_ITEM}"
        engine.reserved_items[kind] = [held]
    runner = RankRunner(engine.runner, groups, dp)
    engine.runner = engine.scheduler.runner = runner
    graphs = _decode_graphs(spec, runner, topo, dp, device)
    if graphs is not None:
        runner.enable_graphs(graphs)
    return engine, runner, topo


def _decode_graphs(spec: RankSpec, runner: RankRunner, topo: RankTopology, dp: DPGather | None, device: str):
    from pdpair.engine.distributed.rank_graphs import EagerReplay, RankDecodeGraphs

    if spec.decode_graphs == "eager":
        return EagerReplay(runner, topo, dp, spec.max_running_requests)
    if spec.decode_graphs == "auto" and device.startswith("cuda") and runner.backend.supports_cuda_graph:
        return RankDecodeGraphs(runner, topo, dp, spec.max_running_requests)
    return None


def _release_graphs(runner: RankRunner, device: str) -> None:
    """Free the captured decode graphs (they hold collectives of the groups about to be destroyed) once the
    device is idle: a communicator torn down under live graphs can hang the rank's exit."""
    runner.decode_graphs = None
    thaw_heap()  # frozen cycles are never collected
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _exit_after_teardown(outbox) -> None:
    """End a rank process once its process groups are destroyed, without the interpreter's finalization: there
    the C++ side of distributed state (gloo's worker threads, the TCP store's daemon, tensors their pending work
    holds) can be destroyed in any order against the interpreter's own teardown, which once ended a rank with
    "terminate called without an active exception" after a clean run. Logs and the reports still buffered for
    the node (the outbox's feeder thread) are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    outbox.close()
    outbox.join_thread()
    os._exit(0)


def rank_main(rank: int, spec: RankSpec, inbox, outbox) -> None:
    """Process entry. Exits 0 after its teardown (`_exit_after_teardown`), 1 with a log line on any failure (a
    peer's death fails the collectives).

    On CUDA a DP leader and a prefill node's follower compute on a stream of their own, as the node process
    does (engine/streams.py), so Mooncake's blocking copies on the legacy stream neither wait for their queued
    forwards nor hold them back. What orders them instead: a DP leader's scheduler orders an activated request's
    forwards after the receive copies (`Scheduler.activate`); a follower's page writes leave only once the
    node's chunk event has completed, after the all-reduce that the follower joins only once its K/V is
    written (engine/distributed/rank_sender.py). A decode node's attention-TP followers stay on the legacy
    stream: they are told of no activation, and their forwards must follow the copies that land their
    share of a request's pages."""
    _die_with_parent()
    logging.basicConfig(level=spec.log_level, format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
    if not spec.device.startswith("cuda"):
        torch.set_num_threads(spec.threads_per_rank)
    try:
        engine, runner, topo = build_rank_engine(spec, rank)
        transfer, regions = None, ()
        if spec.transfer is not None:  # rank 0's pools are the node process's engine's
            transfer, regions = start_rank_transfer(spec.transfer, engine.pools, spec.device_of(rank), topo.dp_rank,
                                                    topo.attn_tp_rank)
        try:
            if transfer is not None or topo.is_dp_leader:
                outbox.put(Ready(topo.dp_rank, regions, rank))
            frozen = freeze_startup_heap()
            logger.debug("rank %d froze %d startup objects", rank, frozen)
            if topo.is_dp_leader or spec.send_pages:
                use_compute_stream(spec.device_of(rank))  # off the legacy stream Mooncake copies on (below)
            if topo.is_dp_leader:
                RankLoop(topo.dp_rank, engine.scheduler, runner, inbox, outbox, spec.quarantine_seconds).run()
            else:
                if spec.send_pages:  # a prefill node's follower sends its share of the heads itself
                    serve_writes(rank, transfer, inbox, outbox)
                runner.follow()
        finally:
            if transfer is not None:
                transfer.close()
        _release_graphs(runner, spec.device)
        dist.destroy_process_group()
    except BaseException as exc:  # noqa: BLE001 - a rank reports every failure and exits non-zero
        logger.error("rank %d failed: %s: %s", rank, type(exc).__name__, exc, exc_info=True)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(1)
    _exit_after_teardown(outbox)
