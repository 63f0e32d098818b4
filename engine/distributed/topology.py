"""`RankTopology`: the sizes of a multi-rank node (tp, dp, attention-TP) and where one rank sits in them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankTopology:
    """Rank `rank` of a node with `tp_size` ranks. Ranks are ordered (dp_rank, attn_tp_rank):
    rank = dp_rank * attn_tp_size + attn_tp_rank. Without DP attention, dp_size is 1 and attention is
    tensor-parallel over every rank; with it, attention runs on groups of `attn_tp_size = tp / dp` ranks,
    each group with its own requests, and the dense layers stay tensor-parallel over all `tp_size` ranks."""

    tp_size: int = 1
    dp_size: int = 1
    enable_dp_attention: bool = False
    rank: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.tp_size, int) or self.tp_size < 1:
            raise ValueError(f"tp_size must be a positive int, got {self.tp_size!r}")
        if not isinstance(self.dp_size, int) or self.dp_size < 1:
            raise ValueError(f"dp_size must be a positive int, got {self.dp_size!r}")
        if self.dp_size > 1 and not self.enable_dp_attention:
            raise ValueError(f"dp_size {self.dp_size} needs --enable-dp-attention (DP ranks inside a node "
                             "exist only for attention); run independent replicas for plain data parallelism")
        if self.tp_size % self.dp_size != 0:
            raise ValueError(f"tp_size ({self.tp_size}) must be a multiple of dp_size ({self.dp_size})")
        if not 0 <= self.rank < self.tp_size:
            raise ValueError(f"rank {self.rank} outside [0, {self.tp_size})")

    @property
    def world_size(self) -> int:
        return self.tp_size

    @property
    def attn_tp_size(self) -> int:
        return self.tp_size // self.dp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.attn_tp_size

    @property
    def attn_tp_rank(self) -> int:
        return self.rank % self.attn_tp_size

    @property
    def is_dp_leader(self) -> bool:
        """Rank 0 of its attention group: runs that DP rank's scheduler and broadcasts its batches."""
        return self.attn_tp_rank == 0

    def attn_group_ranks(self, dp_rank: int) -> list[int]:
        return list(range(dp_rank * self.attn_tp_size, (dp_rank + 1) * self.attn_tp_size))

    @property
    def leader_ranks(self) -> list[int]:
        return [d * self.attn_tp_size for d in range(self.dp_size)]

    def for_rank(self, rank: int) -> RankTopology:
        return RankTopology(self.tp_size, self.dp_size, self.enable_dp_attention, rank)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def split_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """[start, end) of part `index` when `total` units are split into `parts` contiguous parts whose sizes
    differ by at most one (the first `total % parts` parts get the extra unit)."""
    if not 0 < parts <= total:
        raise ValueError(f"cannot split {total} units into {parts} parts")
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)
