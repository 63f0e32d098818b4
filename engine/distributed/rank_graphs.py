"""Decode graphs of one rank: captured per bucket of the GLOBAL padded batch size (see graph_plan.py), and
the request-table mirror that lets an attention-TP follower's graph find the leader's token slots.

A graph derives its K/V slots from the rank's own request table, but only a DP leader runs a scheduler.
`TableMirror` records the leader's table writes (`assign_pages`, the only writer) and the leader sends them
with each forward to its followers, which apply them before they run it: the tables stay equal.
`EagerReplay` runs the same padded decode batch eagerly in place of a graph (the CPU stand-in with which
the graph control flow — bucket choice, idle replays, the mirror — is tested on gloo).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from pdpair.engine.batch import ForwardBatch, ForwardMode
from pdpair.engine.cuda_graph import DEFAULT_BUCKETS, DecodeCudaGraphs
from pdpair.engine.distributed.dp_gather import DPGather
from pdpair.engine.distributed.graph_plan import capture_info, rank_buckets
from pdpair.engine.distributed.padding import pad_batch
from pdpair.engine.distributed.topology import RankTopology
from pdpair.engine.memory import FULL_KIND, ReqToTokenPool
from pdpair.engine.runner import ModelRunner

logger = logging.getLogger(__name__)

# a table write: (row, first page index, pages, pool kind)
TableWrite = tuple[int, int, np.ndarray, str]


class TableMirror:
    """Records every `assign_pages` of the leader's request table until `take()`."""

    def __init__(self, pool: ReqToTokenPool) -> None:
        self._log: list[TableWrite] = []
        write = pool.assign_pages

        def assign_pages(row: int, first_page_index: int, pages: np.ndarray, kind: str = FULL_KIND) -> None:
            write(row, first_page_index, pages, kind)
            self._log.append((int(row), int(first_page_index), np.array(pages, dtype=np.int64), kind))

        pool.assign_pages = assign_pages  # the instance's writes now go through the log

    def take(self) -> list[TableWrite]:
        log, self._log = self._log, []
        return log

    @staticmethod
    def apply(pool: ReqToTokenPool, log: list[TableWrite]) -> None:
        for row, first, pages, kind in log:
            pool.assign_pages(row, first, pages, kind)


def decode_buckets(topo: RankTopology, dp_attention: bool, max_batch_size: int) -> tuple[int, ...]:
    """The rank's capture sizes: multiples of the attention-TP size under DP attention (a bucket is split
    evenly over the attention group by the MAX_LEN gather)."""
    top = min(max_batch_size, DEFAULT_BUCKETS[-1])
    return rank_buckets(DEFAULT_BUCKETS, top, topo.attn_tp_size if dp_attention else 1)


class RankDecodeGraphs(DecodeCudaGraphs):
    """Decode CUDA graphs of one rank; every rank captures the same buckets in the same order, so the
    collectives of the warm-up and capture runs line up. Under DP attention each bucket is captured with
    the DP gather at that bucket for every DP rank."""

    def __init__(self, runner, topo: RankTopology, dp: DPGather | None, max_batch_size: int) -> None:
        buckets = decode_buckets(topo, dp is not None, max_batch_size)
        pool = runner.req_to_token
        super().__init__(runner.model, runner.backend, pool.table, buckets[-1], pool.max_context, buckets=buckets)
        self.dp = dp
        self.topo = topo

    def _body(self, bs: int, ctx) -> torch.Tensor:
        if self.dp is not None:
            self.dp.info = capture_info(bs, self.topo.dp_size, self.topo.dp_rank)
        return super()._body(bs, ctx)

    def replay_rows(self, input_ids: list[int], positions: np.ndarray, rows: np.ndarray, bucket: int) -> torch.Tensor:
        return self.replay_staged(input_ids, positions, rows, bucket=bucket)


class EagerReplay:
    """What a graph replay computes, run eagerly: the decode batch of the real rows padded to the bucket."""

    def __init__(self, runner, topo: RankTopology, dp: DPGather | None, max_batch_size: int) -> None:
        self.runner = runner
        self.buckets = decode_buckets(topo, dp is not None, max_batch_size)
        self.dp = dp
        self.topo = topo
        self.num_replays = 0

    def capture(self) -> None:
        logger.info("eager stand-in for decode graphs of batch sizes %s", list(self.buckets))

    def replay_rows(self, input_ids: list[int], positions: np.ndarray, rows: np.ndarray, bucket: int) -> torch.Tensor:
        b = len(input_ids)
        table = self.runner.req_to_token.table
        ones = np.ones(b, dtype=np.int64)
        batch = ForwardBatch.build(ForwardMode.DECODE, np.asarray(rows, dtype=np.int64),
                                   np.asarray(positions, dtype=np.int64), ones, list(input_ids), table)
        padded = pad_batch(batch, bucket - b)
        if self.dp is not None:
            self.dp.info = capture_info(bucket, self.topo.dp_size, self.topo.dp_rank)
        logits_rows = torch.arange(b, dtype=torch.long, device=table.device)
        self.num_replays += 1
        return ModelRunner.forward(self.runner, padded, logits_rows)  # the plain forward, no slot planning
