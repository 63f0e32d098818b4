"""The request table: one row per resident request mapping token positions to KV token slots."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from pdpair.engine.memory.kv_pool import FULL_KIND


class ReqToTokenPool:
    """`table[row, pos]` = KV token slot (`page * page_size + offset`) of token `pos` of the request in `row`.

    One table per pool kind (`tables[kind]`, rows shared); `table` is the first kind's (full attention).
    Rows are written a page at a time when pages are assigned, so a table is valid for every position
    covered by the request's pages of that kind (a sliding-window kind: the positions still in its window).
    """

    def __init__(self, num_rows: int, max_context: int, page_size: int, device: torch.device | str,
                 kinds: tuple[str, ...] = (FULL_KIND,)) -> None:
        self.page_size = page_size
        self.max_context = max_context
        width = -(-max_context // page_size) * page_size
        self.tables = {k: torch.zeros(num_rows, width, dtype=torch.int32, device=device) for k in kinds}
        self.table = self.tables[kinds[0]]
        self._free_rows = list(range(num_rows - 1, -1, -1))
        self._offsets = torch.arange(page_size, dtype=torch.int32, device=device)
        self._queued: list[tuple[int, int, np.ndarray, str]] | None = None  # inside `batched()`

    @property
    def num_free(self) -> int:
        return len(self._free_rows)

    @property
    def num_total(self) -> int:
        return self.table.shape[0]

    def alloc(self) -> int | None:
        return self._free_rows.pop() if self._free_rows else None

    def free(self, row: int) -> None:
        assert 0 <= row < self.num_total and row not in self._free_rows, f"bad request-table row {row}"
        self._free_rows.append(row)

    def assign_pages(self, row: int, first_page_index: int, pages: np.ndarray, kind: str = FULL_KIND) -> None:
        """Map page slots `first_page_index ..` of the request in `row` to `kind` pool pages `pages`."""
        if len(pages) == 0:
            return
        start = first_page_index * self.page_size
        end = start + len(pages) * self.page_size
        assert end <= self.table.shape[1], f"request needs {end} token slots, the table has {self.table.shape[1]}"
        if self._queued is not None:
            self._queued.append((row, start, np.asarray(pages, dtype=np.int64), kind))
        else:
            self._write(row, start, pages, kind)

    def _write(self, row: int, start: int, pages: np.ndarray, kind: str) -> None:
        end = start + len(pages) * self.page_size
        if self.table.device.type == "cuda":  # pinned non-blocking: a pageable copy would wait for the GPU's queue
            from pdpair.engine.staging import stage

            (pages_t,) = stage([pages], self.table.device, torch.int32)
        else:
            pages_t = torch.from_numpy(np.asarray(pages, dtype=np.int32)).to(self.table.device)
        slots = pages_t[:, None] * self.page_size + self._offsets[None, :]
        self.tables[kind][row, start:end] = slots.reshape(-1)

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Page assignments made inside are written on exit, all of a kind in one upload and one scatter (a
        decode step grows many requests by a page each: one pinned copy instead of one per request)."""
        assert self._queued is None, "batched() does not nest"
        self._queued = []
        try:
            yield
        finally:
            queued, self._queued = self._queued, None
            if len(queued) == 1:
                self._write(*queued[0])
            elif queued:
                for kind in dict.fromkeys(q[3] for q in queued):
                    self._scatter(kind, [q for q in queued if q[3] == kind])

    def _scatter(self, kind: str, writes: list[tuple[int, int, np.ndarray, str]]) -> None:
        ps, table = self.page_size, self.tables[kind]
        offsets = np.arange(ps, dtype=np.int64)
        width = table.shape[1]
        flat = np.concatenate([row * width + start + np.arange(len(p) * ps) for row, start, p, _ in writes])
        slots = np.concatenate([(p[:, None] * ps + offsets).reshape(-1) for _, _, p, _ in writes])
        if table.device.type == "cuda":
            from pdpair.engine.staging import stage

            flat_t, slots_t = stage([flat, slots], table.device)
        else:
            flat_t, slots_t = torch.from_numpy(flat), torch.from_numpy(slots)
        table.view(-1).index_copy_(0, flat_t, slots_t.to(torch.int32))
