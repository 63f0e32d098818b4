"""`RankGroup`: the node's front door to its rank processes — start, dispatch, events, death, stop."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence

import torch.multiprocessing as mp
from pdpair.engine.distributed.processes import RankDied, RankProcesses
from pdpair.engine.distributed.rank_loop import send_waking
from pdpair.engine.distributed.rank_main import RankSpec
from pdpair.engine.distributed.rank_messages import Abort, Closed, Events, Ready, Stop, Submit
from pdpair.engine.events import GenerateOutput, StepEvent
from pdpair.engine.sampling import SamplingParams

logger = logging.getLogger(__name__)


class RankGroup:
    """Starts `spec.topo.tp_size` rank processes and talks to the DP leaders through queues. Requests go to
    the DP rank with the fewest outstanding tokens (prompt + max_new_tokens of its unfinished requests)."""

    def __init__(self, spec: RankSpec, start_timeout: float = 300.0) -> None:
        self.spec = spec
        topo = spec.topo
        ctx = mp.get_context("spawn")
        self._outbox = ctx.Queue()
        self._inboxes = {d: ctx.Queue() for d in range(topo.dp_size)}  # DP rank -> its leader's commands
        self.ranks = RankProcesses(spec, list(range(topo.world_size)), self._inboxes,
                                   self._outbox)
        self.procs = list(self.ranks.procs.values())
        self.load = [0] * topo.dp_size  # outstanding tokens per DP rank
        self._owner: dict[str, tuple[int, int]] = {}  # rid -> (dp rank, tokens charged)
        self.closed: list[Closed] = []
        ready, deadline = 0, time.monotonic() + start_timeout
        while ready < topo.dp_size:
            if time.monotonic() > deadline:
                self.ranks.kill()
                raise RankDied(f"ranks not ready after {start_timeout:.0f} s")
            msg = self._get(0.1)
            if isinstance(msg, Ready):
                ready += 1
        logger.info("%d ranks ready: tp %d, dp %d, attention-TP %d", topo.world_size, topo.tp_size, topo.dp_size,
                    topo.attn_tp_size)

    # ---- requests -----------------------------------------------------------------------------
    def submit(self, rid: str, input_ids: Sequence[int], sampling: SamplingParams) -> int:
        if rid in self._owner:
            raise ValueError(f"request id {rid!r} is already in flight")
        d = min(range(len(self.load)), key=lambda i: (self.load[i], i))
        cost = len(input_ids) + sampling.max_new_tokens
        self.load[d] += cost
        self._owner[rid] = (d, cost)
        send_waking(self._inboxes, d, Submit(rid, tuple(input_ids), sampling))
        return d

    def abort(self, rid: str) -> None:
        owner = self._owner.get(rid)
        if owner is not None:
            self._inboxes[owner[0]].put(Abort(rid))

    def poll(self, timeout: float = 0.1) -> list[tuple[int, StepEvent]]:
        """Events as (dp rank, event); raises RankDied when a rank exited."""
        msg = self._get(timeout)
        out: list[tuple[int, StepEvent]] = []
        while msg is not None:
            if isinstance(msg, Events):
                for ev in msg.events:
                    out.append((msg.dp_rank, ev))
                    if getattr(ev, "finish_reason", None) is not None and ev.rid in self._owner:
                        d, cost = self._owner.pop(ev.rid)
                        self.load[d] -= cost
            msg = self._get(0)
        return out

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams,
                 timeout: float = 300.0) -> tuple[list[GenerateOutput], list[int]]:
        """Run `prompts` to completion: (outputs, the DP rank each prompt went to)."""
        rids = [f"gen-{time.monotonic_ns()}-{i}" for i in range(len(prompts))]
        ranks = [self.submit(rid, ids, sampling) for rid, ids in zip(rids, prompts, strict=True)]
        index = {rid: i for i, rid in enumerate(rids)}
        tokens: list[list[int]] = [[] for _ in prompts]
        reasons: list[str | None] = [None] * len(prompts)
        deadline = time.monotonic() + timeout
        while any(r is None for r in reasons):
            if time.monotonic() > deadline:
                raise TimeoutError(f"generate: {sum(r is None for r in reasons)} requests unfinished")
            for _, ev in self.poll():
                i = index.get(ev.rid)
                if i is not None and isinstance(ev, StepEvent):
                    tokens[i].extend(ev.new_token_ids)
                    reasons[i] = ev.finish_reason or reasons[i]
        return [GenerateOutput(t, r) for t, r in zip(tokens, reasons, strict=True)], ranks

    # ---- lifetime -----------------------------------------------------------------------------
    def _get(self, timeout: float):
        try:
            msg = self._outbox.get(timeout=timeout) if timeout else self._outbox.get_nowait()
        except queue.Empty:
            self.ranks.check_alive()
            return None
        if isinstance(msg, Closed):
            self.closed.append(msg)
        return msg

    def close(self, timeout: float = 30.0) -> list[int | None]:
        """Stop every rank (leaders agree on the step to stop at); returns the exit codes."""
        if not self.ranks.stopping:
            self.ranks.stopping = True
            for q in self._inboxes.values():
                q.put(Stop())
            self.ranks.join(timeout)
            while True:  # keep the idle-cost figures the leaders sent on the way out
                try:
                    msg = self._outbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(msg, Closed):
                    self.closed.append(msg)
        self.ranks.kill()
        return self.ranks.exitcodes()

    def __enter__(self) -> RankGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
