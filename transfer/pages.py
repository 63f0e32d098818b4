"""Page math and the state-payload selectors (SEEDS.md §2).

Pure functions, numpy in, numpy out. A request's ``page_table`` holds its pool
item ids in request order (page ``i`` covers tokens ``[i*P, (i+1)*P)``).
Every state payload is computed over ``seq_len = state_seq_len(len(fill_ids),
len(origin_input_ids))``: on the last chunk ``fill_ids`` already holds the
sampled token, while the decode side registered over the prompt alone.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "dsa_pages",
    "kv_pages",
    "kv_to_page_indices",
    "mamba_slot",
    "num_pages",
    "registered_pages",
    "state_seq_len",
    "swa_window",
    "swa_window_pages",
]


def _check_page_size(page_size: int) -> None:
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")


def state_seq_len(fill_len: int, origin_len: int) -> int:
    """Tokens a state payload covers: ``min(len(fill_ids), len(origin_input_ids))``."""
    if fill_len < 0 or origin_len < 0:
        raise ValueError(f"lengths must be >= 0, got fill_len={fill_len} origin_len={origin_len}")
    return min(fill_len, origin_len)


def num_pages(num_tokens: int, page_size: int) -> int:
    """Pages that hold ``num_tokens`` tokens (the partial tail page included)."""
    _check_page_size(page_size)
    return -(-num_tokens // page_size)


def kv_to_page_indices(token_slots: np.ndarray, page_size: int) -> np.ndarray:
    """Page ids of a request's token slots (slot = page * page_size + offset).

    The slots start at a page boundary and fill pages in order, so the first
    slot of every page names it.
    """
    _check_page_size(page_size)
    slots = np.asarray(token_slots)
    if slots.ndim != 1:
        raise ValueError(f"token_slots must be one-dimensional, got shape {slots.shape}")
    if slots.size and slots[0] % page_size != 0:
        raise ValueError(
            f"token_slots must start at a page boundary, first slot {slots[0]} (page {page_size})"
        )
    return (slots[::page_size] // page_size).astype(np.int32)


def _take(page_table: np.ndarray, first: int, end: int, what: str) -> np.ndarray:
    table = np.asarray(page_table)
    if end > table.size:
        raise ValueError(f"{what} needs pages [{first}, {end}) but the page table holds {table.size}")
    return table[first:end].astype(np.int32, copy=False)


def kv_pages(
    page_table: np.ndarray, start: int, end: int, page_size: int, *, include_partial: bool = True
) -> np.ndarray:
    """KV pages covering tokens ``[start, end)``; ``start`` is page-aligned.

    ``include_partial=False`` drops a partly written tail page (every chunk
    but the last sends only complete pages).
    """
    _check_page_size(page_size)
    if start % page_size != 0 or not 0 <= start <= end:
        raise ValueError(f"need a page-aligned 0 <= start <= end, got [{start}, {end}) with page {page_size}")
    last = num_pages(end, page_size) if include_partial else end // page_size
    return _take(page_table, start // page_size, max(last, start // page_size), "kv range")


def swa_window(seq_len: int, window: int, page_size: int) -> tuple[int, int]:
    """Page range ``[first, end)`` a query at position ``seq_len`` can still see through a window of ``window``
    tokens (its own included): the pages over ``[floor_to_page(seq_len - (window - 1)), seq_len)``."""
    _check_page_size(page_size)
    if window < 1 or seq_len < 0:
        raise ValueError(f"need window >= 1 and seq_len >= 0, got window={window} seq_len={seq_len}")
    return max(0, seq_len - (window - 1)) // page_size, num_pages(seq_len, page_size)


def swa_window_pages(
    swa_items: np.ndarray, items_first: int, seq_len: int, window: int, page_size: int
) -> np.ndarray:
    """SWA item ids of the window tail (``swa_window``) of a request holding ``swa_items`` for its pages
    ``items_first ..`` (the pages behind its window already given back); every page of the tail must be held."""
    first, end = swa_window(seq_len, window, page_size)
    held = np.asarray(swa_items)
    if first < items_first or end > items_first + held.size:
        raise ValueError(
            f"swa window pages [{first}, {end}) not held: the request holds [{items_first}, {items_first + held.size})"
        )
    return held[first - items_first : end - items_first].astype(np.int32, copy=False)


def registered_pages(seq_len: int, page_size: int, window: int | None = None) -> tuple[int, int]:
    """Pages ``[first, end)`` of a ``seq_len``-token prompt whose state a decode node receives: every page
    for a pool of full context, the window tail (``swa_window``) for a sliding-window pool."""
    if window is None:
        if seq_len < 0:
            raise ValueError(f"seq_len must be >= 0, got {seq_len}")
        return 0, num_pages(seq_len, page_size)
    return swa_window(seq_len, window, page_size)


def dsa_pages(page_table: np.ndarray, seq_len: int, page_size: int) -> np.ndarray:
    """DSA index-K pages over ``[0, seq_len)``."""
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    return _take(page_table, 0, num_pages(seq_len, page_size), "dsa range")


def mamba_slot(slot: int) -> np.ndarray:
    """The request's one mamba state slot as an item-id array."""
    if slot < 0:
        raise ValueError(f"mamba slot must be >= 0, got {slot}")
    return np.array([slot], dtype=np.int32)
