"""Transfer plans: validated (source address, destination address, length) entries."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .coalesce import contiguous_runs
from .layout import LayoutMismatch, MemoryLayout, MemoryRegion

__all__ = ["InvalidPages", "ProtocolError", "TransferPlan", "build_plan"]


class InvalidPages(ValueError):
    """An item id lies outside its region: ``id`` is not in ``[0, bound)``."""

    def __init__(self, kind: str, id: int, bound: int, side: str = "dst") -> None:
        super().__init__(f"{side} {kind} item id {id} out of range [0, {bound})")
        self.kind, self.id, self.bound, self.side = kind, id, bound, side

    def __reduce__(self):
        return type(self), (self.kind, self.id, self.bound, self.side)


class ProtocolError(ValueError):
    """The two sides disagree about what to move (e.g. pages to send, no destinations)."""


@dataclass(frozen=True, eq=False)
class TransferPlan:
    """One entry per contiguous run; ``entry_items`` counts the items in each entry.

    ``kind_totals`` (plans from ``build_plan`` and their concatenations): per pool kind, the
    (items, bytes, entries) the plan moves; the sub-plans of ``batches`` leave it empty.
    """

    src_addrs: np.ndarray  # uint64
    dst_addrs: np.ndarray  # uint64
    lengths: np.ndarray  # uint64, bytes
    entry_items: np.ndarray  # int64
    kind_totals: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.src_addrs.size
        sizes = (self.dst_addrs.size, self.lengths.size, self.entry_items.size)
        assert all(s == n for s in sizes), f"plan arrays differ in length: {n} vs {sizes}"

    def __len__(self) -> int:
        return int(self.src_addrs.size)

    @property
    def num_items(self) -> int:
        return int(self.entry_items.sum())

    @property
    def nbytes(self) -> int:
        return int(self.lengths.sum())

    @classmethod
    def empty(cls) -> TransferPlan:
        z = np.zeros(0, dtype=np.uint64)
        return cls(z, z.copy(), z.copy(), np.zeros(0, dtype=np.int64))

    @classmethod
    def concat(cls, plans: list[TransferPlan]) -> TransferPlan:
        if not plans:
            return cls.empty()
        totals: dict[str, tuple[int, int, int]] = {}
        for p in plans:
            for kind, fig in p.kind_totals.items():
                totals[kind] = tuple(a + b for a, b in zip(totals.get(kind, (0, 0, 0)), fig, strict=True))
        return cls(*(np.concatenate([getattr(p, f) for p in plans]) for f in _FIELDS), kind_totals=totals)

    def batches(self, max_entries: int) -> list[TransferPlan]:
        """Split into consecutive sub-plans of at most ``max_entries`` entries."""
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        return [
            TransferPlan(*(getattr(self, f)[i : i + max_entries] for f in _FIELDS))
            for i in range(0, len(self), max_entries)
        ]


_FIELDS = ("src_addrs", "dst_addrs", "lengths", "entry_items")


def _ids(ids: np.ndarray, kind: str, side: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{side} {kind} ids must be a 1-d integer array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _check_range(kind: str, ids: np.ndarray, region: MemoryRegion, side: str) -> None:
    if ids.size == 0:
        return
    bad = ids[(ids < 0) | (ids >= region.num_items)]
    if bad.size:
        raise InvalidPages(kind, int(bad[0]), region.num_items, side)


def _region(layout: MemoryLayout, kind: str, side: str) -> MemoryRegion:
    try:
        return layout.region(kind)
    except KeyError:
        raise ProtocolError(f"{side} layout {layout.node_id!r} has no {kind!r} region") from None


def build_plan(
    src: MemoryLayout, dst: MemoryLayout, pairs_by_kind: dict[str, tuple[np.ndarray, np.ndarray]]
) -> TransferPlan:
    """Validate every id of every kind, then coalesce into address runs.

    Non-empty source ids with no destination ids is a ``ProtocolError`` (state
    would be silently dropped); an empty source moves nothing.
    """
    checked: list[tuple[str, MemoryRegion, MemoryRegion, np.ndarray, np.ndarray]] = []
    for kind, (src_ids, dst_ids) in pairs_by_kind.items():
        s_reg, d_reg = _region(src, kind, "src"), _region(dst, kind, "dst")
        if s_reg.item_bytes != d_reg.item_bytes:
            raise LayoutMismatch(f"regions[{kind}].item_bytes", s_reg.item_bytes, d_reg.item_bytes)
        s, d = _ids(src_ids, kind, "src"), _ids(dst_ids, kind, "dst")
        if s.size == 0:
            continue
        if d.size == 0:
            raise ProtocolError(f"{s.size} {kind} items to send but zero destinations registered")
        if s.size != d.size:
            raise ProtocolError(f"{kind}: {s.size} source items vs {d.size} destination items")
        _check_range(kind, s, s_reg, "src")
        _check_range(kind, d, d_reg, "dst")
        if np.unique(d).size != d.size:
            raise ProtocolError(f"{kind}: destination ids repeat")
        checked.append((kind, s_reg, d_reg, s, d))

    parts = []
    for kind, s_reg, d_reg, s, d in checked:
        s_start, d_start, n = contiguous_runs(s, d)
        size = s_reg.item_bytes
        parts.append(
            TransferPlan(
                (s_reg.base_ptr + s_start * size).astype(np.uint64),
                (d_reg.base_ptr + d_start * size).astype(np.uint64),
                (n * size).astype(np.uint64),
                n,
                {kind: (int(s.size), int(s.size) * size, int(n.size))},
            )
        )
    return TransferPlan.concat(parts)
