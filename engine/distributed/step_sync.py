"""One host round trip per DP-attention step: the leaders' step gather, free of any model.

Each leader iteration opens with ONE all-gather over the DP leaders of a row [stop, work, decode tokens,
extend tokens] (`open`), taken at the first forward slot the rank reaches (inside its scheduler step) or at the
end of the step when it ran no forward. A leader knows its decode count there; its extend count is known
exactly when it has no decode batch (the extend batch is the one it is about to run, or none) and otherwise
is either 0 (no prefill chunk can follow this step's decode) or `UNKNOWN`. Both slots are planned from that
one gather; only when some leader said `UNKNOWN` do the leaders all-gather their extend counts once more at
the extend slot. Every leader decides that from the same gathered rows, so all of them run the same
collectives in the same order. Without DP attention (one DP rank) nothing is gathered (SEEDS.md §4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pdpair.engine.batch import ForwardMode
from pdpair.engine.distributed.dp_plan import StepPlan, plan_step

UNKNOWN = -1  # a leader's extend count before its decode batch ran, when a prefill chunk may follow it
SLOTS = (ForwardMode.DECODE, ForwardMode.EXTEND)  # the order Scheduler.step runs its batches in

# all-gather of one int row per DP leader (a list per leader, in DP-rank order)
Gather = Callable[[list[int]], list[list[int]]]


class StepProtocolError(RuntimeError):
    """A leader broke what it told the others in the step gather (e.g. an extend batch after saying none)."""


@dataclass(frozen=True)
class StepRows:
    """The step gather's outcome, the same on every leader."""

    stop: bool  # some leader stops after this iteration
    work: bool  # some leader had work at its start
    decode: tuple[int, ...]  # decode tokens per DP rank
    extend: tuple[int, ...]  # extend tokens per DP rank, UNKNOWN where not known yet

    @staticmethod
    def from_rows(rows: list[list[int]]) -> StepRows:
        return StepRows(any(r[0] for r in rows), any(r[1] for r in rows), tuple(r[2] for r in rows),
                        tuple(r[3] for r in rows))


class StepSync:
    """One leader's side of the per-step protocol. `begin` each iteration, `plan` each forward slot in order,
    `finish` after the scheduler step; `gather` is None with a single DP rank."""

    def __init__(self, dp_rank: int, dp_size: int, attn_tp: int, gather: Gather | None) -> None:
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.attn_tp = attn_tp
        self.gather = gather if dp_size > 1 else None
        self.rows: StepRows | None = None
        self.gathers = 0  # collectives run (for tests and benches)
        self._stop = self._work = False
        self._may_extend: Callable[[], bool] = lambda: True

    def begin(self, stop: bool, work: bool, may_extend: Callable[[], bool]) -> None:
        """A new iteration; `may_extend()` says, once the decode batch is known, whether a prefill chunk may
        follow it in this step (False only when none can)."""
        self.rows = None
        self._stop, self._work, self._may_extend = stop, work, may_extend

    @property
    def opened(self) -> bool:
        return self.rows is not None

    def open(self, decode: int, extend: int) -> StepRows:
        """The step gather (once per iteration): this leader's decode and extend counts (extend may be UNKNOWN)."""
        row = [int(self._stop), int(self._work), decode, extend]
        if self.gather is None:
            self.rows = StepRows.from_rows([row])
        else:
            self.gathers += 1
            self.rows = StepRows.from_rows(self.gather(row))
        return self.rows

    def open_at(self, mode: ForwardMode | None, tokens: int) -> None:
        """Open at the first slot this leader runs (`mode`, `tokens`), or at the end of its step (mode None)."""
        if self.opened:
            return
        if mode is ForwardMode.DECODE:
            self.open(tokens, UNKNOWN if self._may_extend() else 0)
        else:
            self.open(0, tokens if mode is ForwardMode.EXTEND else 0)

    def plan(self, mode: ForwardMode, local_tokens: int) -> StepPlan:
        """The plan of slot `mode` for this leader's `local_tokens` (0: no batch of its own)."""
        rows = self.rows
        assert rows is not None, "plan before the step gather"
        if self.gather is None:
            return plan_step(local_tokens, None, self.dp_rank, self.attn_tp)
        if mode is ForwardMode.DECODE:
            counts = list(rows.decode)
            if counts[self.dp_rank] != local_tokens:
                raise StepProtocolError(f"DP rank {self.dp_rank}: decode batch of {local_tokens} tokens, "
                                        f"{counts[self.dp_rank]} announced in the step gather")
        elif UNKNOWN in rows.extend:
            self.gathers += 1
            counts = [r[0] for r in self.gather([local_tokens])]
        else:
            counts = list(rows.extend)
            if counts[self.dp_rank] != local_tokens:
                raise StepProtocolError(f"DP rank {self.dp_rank}: extend batch of {local_tokens} tokens, "
                                        f"{counts[self.dp_rank]} announced in the step gather")
        return plan_step(local_tokens, counts, self.dp_rank, self.attn_tp)
