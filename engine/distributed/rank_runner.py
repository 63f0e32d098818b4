"""`RankRunner`: a ModelRunner whose forwards are collective across the node's ranks.

A DP leader (attention-TP rank 0) runs its DP rank's scheduler; before each forward it sends the batch to
the rest of its attention group, which run the same forward (`follow`). With DP attention every scheduler
step has two forward slots (decode, then extend), both planned from one gather of every leader's counts
(step_sync.py); a leader without a batch runs an idle one when another has work, so that collectives always
match.

With decode graphs (`enable_graphs`) the decode slot replays the bucket of the GLOBAL padded batch size on
every rank (graph_plan.py): a leader sends its followers the rows' inputs and its request-table writes
instead of the batch, and an idle DP rank replays the same bucket with no real rows.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import NoReturn

import numpy as np
import torch
import torch.distributed as dist
from pdpair.engine.batch import ForwardBatch, ForwardMode
from pdpair.engine.distributed.dp_gather import DPGather
from pdpair.engine.distributed.dp_plan import GatherInfo, StepPlan
from pdpair.engine.distributed.graph_plan import graph_bucket, graph_info
from pdpair.engine.distributed.groups import ProcessGroups
from pdpair.engine.distributed.padding import idle_batch, pad_batch
from pdpair.engine.distributed.rank_graphs import TableMirror, TableWrite
from pdpair.engine.distributed.step_sync import SLOTS, StepProtocolError, StepSync
from pdpair.engine.runner import ModelRunner

logger = logging.getLogger(__name__)

class RankFailure(BaseException):
    """A collective forward failed: the node's ranks cannot stay in step, so this rank must exit. A
    BaseException so that per-request failure isolation (which re-runs batches) does not swallow it."""


@dataclasses.dataclass(frozen=True)
class EagerForward:
    """Leader -> followers: run this batch eagerly (`table`: the leader's request-table writes since the last
    message, applied first when the followers replay graphs; `logits_rows`: the rows whose logits the
    vocab-parallel head gathers over the group)."""

    fields: dict
    info: GatherInfo | None
    table: list[TableWrite]
    logits_rows: torch.Tensor


@dataclasses.dataclass(frozen=True)
class GraphForward:
    """Leader -> followers: replay decode bucket `bucket` with these real rows (none for an idle batch)."""

    bucket: int
    input_ids: list[int]
    positions: np.ndarray
    rows: np.ndarray
    info: GatherInfo | None
    table: list[TableWrite]


def _to_wire(batch: ForwardBatch) -> dict:
    return {f.name: (v.cpu() if isinstance(v, torch.Tensor) else v)
            for f in dataclasses.fields(batch) for v in [getattr(batch, f.name)]}


def _from_wire(fields: dict, device: torch.device) -> ForwardBatch:
    return ForwardBatch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in fields.items()})


class RankRunner(ModelRunner):
    def __init__(self, base: ModelRunner, groups: ProcessGroups, dp: DPGather | None) -> None:
        super().__init__(base.model, base.backend, base.req_to_token, base.vocab_size)
        self.groups = groups
        self.topo = groups.topo
        self.dp = dp
        self._cursor = 0  # the next forward slot of this scheduler step
        self._leader = self.topo.leader_ranks[self.topo.dp_rank]
        self.idle_forwards = 0
        self.idle_seconds = 0.0
        self.graph_replays = 0
        self.iterations = 0  # `iterate` calls
        self.gather_seconds = 0.0  # host time in the leaders' gathers
        self.processes = None  # RankProcesses of the followers when this leader started them
        self.decode_graphs = None  # RankDecodeGraphs (or its eager stand-in) once enable_graphs ran
        self.mirror: TableMirror | None = None  # a leader's table writes for its followers' graphs
        self._claimed: StepPlan | None = None  # the decode slot's plan, taken by use_graph
        self._bucket: int | None = None
        gather = self._gather_leaders if self.topo.dp_size > 1 and self.topo.is_dp_leader else None
        self.sync = StepSync(self.topo.dp_rank, self.topo.dp_size, self.topo.attn_tp_size, gather)

    def enable_graphs(self, graphs) -> None:
        """Replay decode through `graphs` (every rank of the node calls this at the same point: the capture
        runs collectives)."""
        if self.topo.attn_tp_size > 1 and self.topo.is_dp_leader:
            self.mirror = TableMirror(self.req_to_token)
        self.decode_graphs = graphs
        graphs.capture()

    # ---- leader side --------------------------------------------------------------------------
    def use_graph(self, batch_size: int) -> bool:
        """Claims the decode slot (the DP count gather) and decides graph or eager for every rank alike."""
        if self.decode_graphs is None:
            return False
        plan = self._claim(ForwardMode.DECODE, batch_size)
        self._claimed = plan
        self._bucket = graph_bucket(plan.info if plan is not None else None, batch_size, self.decode_graphs.buckets)
        return self._bucket is not None

    def replay_decode(self, input_ids: list[int], positions: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        plan, bucket = self._claimed, self._bucket
        self._claimed = self._bucket = None
        info = graph_info(plan.info if plan is not None else None, bucket)
        return self._replay(GraphForward(bucket, list(input_ids), np.asarray(positions, dtype=np.int64),
                                         np.asarray(rows, dtype=np.int64), info, self._table()))

    def forward(self, batch: ForwardBatch, logits_rows: torch.Tensor) -> torch.Tensor:
        plan, self._claimed = self._claimed, None  # use_graph already claimed the slot when it said eager
        if self.dp is None:
            return self._run(batch, None, logits_rows)
        if plan is None:
            plan = self._claim(batch.mode, batch.num_tokens)
        padded = pad_batch(batch, plan.info.local_tokens - batch.num_tokens)
        return self._run(padded, plan.info, logits_rows)

    def _claim(self, mode: ForwardMode, local_tokens: int) -> StepPlan | None:
        """Take part in the slots before `mode`'s, then plan its own (None without DP attention)."""
        if self.dp is None:
            return None
        slot = SLOTS.index(mode)
        assert slot >= self._cursor, f"{mode} forward after slot {self._cursor} of this step"
        self.sync.open_at(mode, local_tokens)
        self._skip_until(slot)
        self._cursor = slot + 1
        return self._sync_plan(mode, local_tokens)

    def iterate(self, scheduler, stop: bool) -> tuple[bool, bool, list]:
        """One collective iteration of a DP leader: its scheduler step when it has work (the step gather runs
        at its first forward slot), then the slots it had no batch for. Returns (some leader stops after this
        iteration, some leader had work, this leader's events)."""
        self.iterations += 1
        work = scheduler.has_work()
        self.sync.begin(stop, work, lambda: len(scheduler.prefill) > 0)
        events = scheduler.step() if work else []
        self.end_step()
        rows = self.sync.rows
        return rows.stop, rows.work, events

    def end_step(self) -> None:
        """Call after every Scheduler.step(): takes part in the slots this rank had no batch for."""
        if self.dp is not None:
            self.sync.open_at(None, 0)
            self._skip_until(len(SLOTS))
            self._cursor = 0
        elif not self.sync.opened:
            self.sync.open(0, 0)  # no DP attention: nothing to gather, only this leader's flags

    def stop_followers(self) -> None:
        self._send(None)

    def close(self) -> None:
        """Stop and reap the followers this leader started (after its last forward)."""
        if self.processes is not None and not self.processes.stopping:
            self.processes.stopping = True
            if self.topo.dp_size > 1:  # the other DP leaders stop after this same iteration
                self.sync.begin(True, False, lambda: False)
                self.end_step()
            self.stop_followers()
            self.processes.join(10)
            self.processes.kill()

    def _skip_until(self, slot: int) -> None:
        while self._cursor < slot:
            mode = SLOTS[self._cursor]
            self._cursor += 1
            plan = self._sync_plan(mode, 0)
            if plan.run:
                started = time.perf_counter()
                graphs = self.decode_graphs if mode is ForwardMode.DECODE else None
                bucket = graph_bucket(plan.info, 0, graphs.buckets) if graphs is not None else None
                with torch.inference_mode():
                    if bucket is not None:  # the same bucket as the DP ranks with rows, no real row here
                        none = np.zeros(0, dtype=np.int64)
                        self._replay(GraphForward(bucket, [], none, none, graph_info(plan.info, bucket),
                                                  self._table()))
                    else:
                        batch = idle_batch(mode, plan.info.local_tokens, self.groups.device)
                        self._run(batch, plan.info, torch.zeros(0, dtype=torch.long, device=self.groups.device))
                self.idle_forwards += 1
                self.idle_seconds += time.perf_counter() - started

    def _sync_plan(self, mode: ForwardMode, local_tokens: int) -> StepPlan:
        try:
            return self.sync.plan(mode, local_tokens)
        except StepProtocolError as exc:
            raise RankFailure(f"rank {self.topo.rank}: {exc}") from exc

    def _gather_leaders(self, row: list[int]) -> list[list[int]]:
        """All-gather one int row per DP leader (gloo, `cpu_leaders`)."""
        started = time.perf_counter()
        out = torch.zeros(self.topo.dp_size, len(row), dtype=torch.int64)
        dist.all_gather(list(out), torch.tensor(row, dtype=torch.int64), group=self.groups.cpu_leaders)
        self.gather_seconds += time.perf_counter() - started
        return out.tolist()

    def _send(self, msg: EagerForward | GraphForward | None) -> None:
        if self.topo.attn_tp_size > 1:
            dist.broadcast_object_list([msg], src=self._leader, group=self.groups.cpu_attn)

    def _table(self) -> list[TableWrite]:
        return self.mirror.take() if self.mirror is not None else []

    def _run(self, batch: ForwardBatch, info: GatherInfo | None, logits_rows: torch.Tensor) -> torch.Tensor:
        if self.topo.attn_tp_size > 1:  # the batch goes to the host only when a follower needs it
            self._send(EagerForward(_to_wire(batch), info, self._table(), logits_rows.cpu()))
        return self._forward(batch, info, logits_rows)

    def _replay(self, msg: GraphForward) -> torch.Tensor:
        self._send(msg)
        return self._replay_local(msg)

    def _replay_local(self, msg: GraphForward) -> torch.Tensor:
        if self.dp is not None:
            self.dp.info = msg.info
        self.graph_replays += 1
        try:
            return self.decode_graphs.replay_rows(msg.input_ids, msg.positions, msg.rows, msg.bucket)
        except Exception as exc:
            self._failed(exc)

    def _forward(self, batch: ForwardBatch, info: GatherInfo | None, logits_rows: torch.Tensor) -> torch.Tensor:
        if self.dp is not None:
            self.dp.info = info
        try:
            return ModelRunner.forward(self, batch, logits_rows)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> NoReturn:
        """A collective forward failed: the node's own rank exits the node (its peers wait in a collective
        for it), naming a dead peer when there is one; another rank raises RankFailure."""
        if self.processes is not None:
            from pdpair.engine.distributed.processes import exit_node  # (processes imports this module)

            dead = self.processes.first_dead(2.0)  # most often a peer died: name it
            if dead is not None:
                exit_node(*dead, self.processes)
            exit_node(self.topo.rank, None, self.processes, f"failed a collective forward ({exc!r})")
        raise RankFailure(f"rank {self.topo.rank}: collective forward failed: {exc}") from exc

    # ---- follower side ------------------------------------------------------------------------
    def follow(self) -> None:
        """Run the leader's forwards until it says stop (attention-TP ranks other than 0)."""
        while True:
            box = [None]
            dist.broadcast_object_list(box, src=self._leader, group=self.groups.cpu_attn)
            if box[0] is None:
                return
            msg = box[0]
            TableMirror.apply(self.req_to_token, msg.table)
            with torch.inference_mode():
                if isinstance(msg, GraphForward):
                    self._replay_local(msg)
                else:
                    rows = msg.logits_rows.to(self.groups.device)  # the leader's: the head gathers them
                    self._forward(_from_wire(msg.fields, self.groups.device), msg.info, rows)


