"""Per-step decisions of DP attention, free of any model: idle batches, token padding, gather info.

SEEDS.md §4: "need an idle batch" and "update the gather info" are separate decisions. A rank with no
tokens runs an idle batch when another DP rank has work; with a single DP rank the count gather is
skipped and no idle batch is ever needed, but every batch still carries the global (padded) counts so
that its tokens are padded to a multiple of the attention-TP size.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pdpair.engine.distributed.topology import ceil_div

# all-gather with every rank padded to the longest when that wastes at most this share of the rows
MAX_LEN_WASTE = 0.25


class GatherMode(Enum):
    MAX_LEN = "max_len"  # pad every DP rank to the longest, then all-gather
    OFFSETS = "offsets"  # write each DP rank's rows at its offset in a zeroed buffer, then all-reduce


@dataclass(frozen=True)
class GatherInfo:
    """What the dense layers need to gather this step's tokens from every DP rank and scatter them back."""

    global_num_tokens: tuple[int, ...]  # padded rows per DP rank (multiples of attn_tp)
    real_num_tokens: tuple[int, ...]  # rows before padding (0 for an idle rank)
    dp_rank: int
    mode: GatherMode

    @property
    def local_tokens(self) -> int:
        return self.global_num_tokens[self.dp_rank]

    @property
    def offset(self) -> int:
        return sum(self.global_num_tokens[: self.dp_rank])

    @property
    def total(self) -> int:
        return sum(self.global_num_tokens)

    @property
    def max_len(self) -> int:
        return max(self.global_num_tokens)


@dataclass(frozen=True)
class StepPlan:
    """`run`: this rank takes part in a forward (its own batch or an idle one); `idle`: the batch is idle."""

    run: bool
    idle: bool
    info: GatherInfo | None


def padded_tokens(num_tokens: int, attn_tp: int) -> int:
    """Rows a rank's batch has once padded: a multiple of attn_tp, and at least attn_tp rows (an idle batch
    is attn_tp padding rows, so that every attention rank has one row of the scattered layout)."""
    return max(1, ceil_div(num_tokens, attn_tp)) * attn_tp


def need_idle_batch(local_tokens: int, global_tokens: list[int] | None) -> bool:
    """True when this rank has nothing to run but another DP rank does; never when the gather was skipped."""
    if global_tokens is None:
        return False
    return local_tokens == 0 and any(n > 0 for n in global_tokens)


def choose_mode(padded: list[int]) -> GatherMode:
    if len(padded) == 1:
        return GatherMode.MAX_LEN
    waste = max(padded) * len(padded) - sum(padded)
    return GatherMode.MAX_LEN if waste <= MAX_LEN_WASTE * max(padded) * len(padded) else GatherMode.OFFSETS


def gather_info(real: list[int], dp_rank: int, attn_tp: int, mode: GatherMode | None = None) -> GatherInfo:
    padded = [padded_tokens(n, attn_tp) for n in real]
    return GatherInfo(tuple(padded), tuple(real), dp_rank, mode or choose_mode(padded))


def plan_step(local_tokens: int, global_tokens: list[int] | None, dp_rank: int, attn_tp: int,
              mode: GatherMode | None = None) -> StepPlan:
    """`global_tokens`: every DP rank's real token count for this forward slot, or None when the gather was
    skipped (a single DP rank). The gather info is updated whenever there is a batch, idle or not."""
    idle = need_idle_batch(local_tokens, global_tokens)
    run = local_tokens > 0 or idle
    if not run:
        return StepPlan(False, False, None)
    counts = [local_tokens] if global_tokens is None else list(global_tokens)
    rank = 0 if global_tokens is None else dp_rank
    return StepPlan(True, idle, gather_info(counts, rank, attn_tp, mode))
