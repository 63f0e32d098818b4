"""The request table: one row per resident request mapping token positions to KV token slots."""

from __future__ import annotations

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
        if self.table.device.type == "cuda":  # pinned non-blocking: a pageable copy would wait for the GPU's queue
            from pdpair.engine.staging import stage

            (pages_t,) = stage([pages], self.table.device, torch.int32)
        else:
            pages_t = torch.from_numpy(np.asarray(pages, dtype=np.int32)).to(self.table.device)
        slots = pages_t[:, None] * self.page_size + self._offsets[None, :]
        self.tables[kind][row, start:end] = slots.reshape(-1)
