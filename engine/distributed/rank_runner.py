"""`RankRunner`: a ModelRunner whose forwards are collective across the node's ranks.

A DP leader (attention-TP rank 0) runs its DP rank's scheduler; before each forward it sends the batch to
the rest of its attention group, which run the same forward (`follow`). With DP attention every scheduler
step has two forward slots (decode, then extend); in each slot the leaders gather their token counts and a
leader without a batch runs an idle one when another has work, so that collectives always match.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import torch
import torch.distributed as dist
from pdpair.engine.batch import ForwardBatch, ForwardMode
from pdpair.engine.distributed.dp_gather import DPGather
from pdpair.engine.distributed.dp_plan import GatherInfo, StepPlan, plan_step
from pdpair.engine.distributed.groups import ProcessGroups
from pdpair.engine.distributed.padding import idle_batch, pad_batch
from pdpair.engine.runner import ModelRunner

logger = logging.getLogger(__name__)

SLOTS = (ForwardMode.DECODE, ForwardMode.EXTEND)  # the order Scheduler.step runs its batches in


class RankFailure(BaseException):
    """A collective forward failed: the node's ranks cannot stay in step, so this rank must exit. A
    BaseException so that per-request failure isolation (which re-runs batches) does not swallow it."""


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
        self.processes = None  # RankProcesses of the followers when this leader started them

    # ---- leader side --------------------------------------------------------------------------
    def forward(self, batch: ForwardBatch, logits_rows: torch.Tensor) -> torch.Tensor:
        if self.dp is None:
            return self._run(batch, None, logits_rows)
        slot = SLOTS.index(batch.mode)
        assert slot >= self._cursor, f"{batch.mode} forward after slot {self._cursor} of this step"
        self._skip_until(slot)
        self._cursor = slot + 1
        plan = self._plan(batch.num_tokens)
        padded = pad_batch(batch, plan.info.local_tokens - batch.num_tokens)
        return self._run(padded, plan.info, logits_rows)

    def end_step(self) -> None:
        """Call after every Scheduler.step(): takes part in the slots this rank had no batch for."""
        if self.dp is not None:
            self._skip_until(len(SLOTS))
            self._cursor = 0

    def tick(self, stop: bool, has_work: bool) -> tuple[bool, bool]:
        """Start of a loop iteration on every leader: (any leader stopping, any leader with work)."""
        flags = torch.tensor([int(stop), int(has_work)], dtype=torch.int64)
        if self.topo.dp_size > 1:
            out = torch.zeros(self.topo.dp_size, 2, dtype=torch.int64)
            dist.all_gather(list(out), flags, group=self.groups.cpu_leaders)
            flags = out.max(dim=0).values
        return bool(flags[0]), bool(flags[1])

    def stop_followers(self) -> None:
        self._send(None)

    def close(self) -> None:
        """Stop and reap the followers this leader started (after its last forward)."""
        if self.processes is not None and not self.processes.stopping:
            self.processes.stopping = True
            if self.topo.dp_size > 1:
                self.tick(True, False)  # the other DP leaders stop at this same iteration
            self.stop_followers()
            self.processes.join(10)
            self.processes.kill()

    def _skip_until(self, slot: int) -> None:
        while self._cursor < slot:
            mode = SLOTS[self._cursor]
            self._cursor += 1
            plan = self._plan(0)
            if plan.run:
                started = time.perf_counter()
                batch = idle_batch(mode, plan.info.local_tokens, self.groups.device)
                with torch.inference_mode():
                    self._run(batch, plan.info, torch.zeros(0, dtype=torch.long, device=self.groups.device))
                self.idle_forwards += 1
                self.idle_seconds += time.perf_counter() - started

    def _plan(self, local_tokens: int) -> StepPlan:
        counts = None
        if self.topo.dp_size > 1:
            out = torch.zeros(self.topo.dp_size, dtype=torch.int64)
            dist.all_gather(list(out.view(-1, 1)), torch.tensor([local_tokens], dtype=torch.int64),
                            group=self.groups.cpu_leaders)
            counts = out.tolist()
        return plan_step(local_tokens, counts, self.topo.dp_rank, self.topo.attn_tp_size)

    def _send(self, msg: tuple | None) -> None:
        if self.topo.attn_tp_size > 1:
            dist.broadcast_object_list([msg], src=self._leader, group=self.groups.cpu_attn)

    def _run(self, batch: ForwardBatch, info: GatherInfo | None, logits_rows: torch.Tensor) -> torch.Tensor:
        self._send((_to_wire(batch), info))
        return self._forward(batch, info, logits_rows)

    def _forward(self, batch: ForwardBatch, info: GatherInfo | None, logits_rows: torch.Tensor) -> torch.Tensor:
        if self.dp is not None:
            self.dp.info = info
        try:
            return ModelRunner.forward(self, batch, logits_rows)
        except Exception as exc:
            if self.processes is not None:  # the node's own rank: its peers wait in a collective for it
                from pdpair.engine.distributed.processes import exit_node  # (processes imports this module)

                dead = self.processes.first_dead(2.0)  # most often a peer died: name it
                if dead is not None:
                    exit_node(*dead, self.processes)
                exit_node(self.topo.rank, None, self.processes, f"failed a collective forward ({exc!r})")
            raise RankFailure(f"rank {self.topo.rank}: collective forward failed: {exc}") from exc

    # ---- follower side ------------------------------------------------------------------------
    def follow(self) -> None:
        """Run the leader's forwards until it says stop (attention-TP ranks other than 0)."""
        no_rows = torch.zeros(0, dtype=torch.long, device=self.groups.device)
        while True:
            box = [None]
            dist.broadcast_object_list(box, src=self._leader, group=self.groups.cpu_attn)
            if box[0] is None:
                return
            fields, info = box[0]
            with torch.inference_mode():
                self._forward(_from_wire(fields, self.groups.device), info, no_rows)


