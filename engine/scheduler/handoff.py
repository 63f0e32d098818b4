"""Which items of each pool kind a prefill-only request hands over per chunk, and which a decode destination
reserves: full-context kinds every page, sliding-window kinds only the window tail, slot kinds (mamba state)
their one slot, sent after the last chunk's forward (SEEDS.md §2). A companion kind (dsa) goes with the items of
the kind whose ids it shares (kv): its pages with each chunk's, the partial tail page with the last chunk."""

from __future__ import annotations

import numpy as np
from pdpair.engine.request import Request
from pdpair.engine.scheduler.resources import ResourceManager
from pdpair.transfer.pages import registered_pages


def chunk_items(res: ResourceManager, req: Request, last: bool) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(items, destination offsets) per kind that this chunk completes, advancing the per-kind send cursors.

    A full-context kind sends its complete pages per chunk (the partial tail page with the last one); a
    sliding-window kind sends once, with the last chunk, the pages over the window tail. Offsets index the
    destination's registered ids of that kind (which start after `req.peer_cached_pages` for a full-context kind).
    Pages are counted over min(len(fill_ids), len(origin_input_ids)).
    """
    seq = min(req.num_cached, req.prompt_len)
    items: dict[str, np.ndarray] = {}
    starts: dict[str, int] = {}
    if last:
        res.trim(req)
    for kind in res.kinds:
        window = res.windows[kind]
        if window is None:  # pages the destination already holds (its prefix cache) are never sent
            skip = req.peer_cached_pages
            sent = max(req.sent.get(kind, 0), skip)
            upto = max(res.pages_for(seq) if last else seq // res.page_size, sent)
            items[kind], starts[kind] = req.pages(kind, sent, upto).copy(), sent - skip
            req.sent[kind] = upto
        elif last:
            first, end = registered_pages(seq, res.page_size, window)
            items[kind], starts[kind] = req.pages(kind, first, end).copy(), 0
            req.sent[kind] = end - first
    for kind in res.slot_kinds:  # the state slot, once: this chunk's forward has run, the state is final
        if last:
            items[kind], starts[kind] = req.items[kind].copy(), 0
            req.sent[kind] = 1
    _add_companions(res, items, starts)
    return items, starts


def _add_companions(res: ResourceManager, items: dict[str, np.ndarray], starts: dict[str, int] | None) -> None:
    for kind, shared in res.companions.items():
        if shared in items:
            items[kind] = items[shared].copy()
            if starts is not None:
                starts[kind] = starts[shared]


def destination_items(res: ResourceManager, req: Request) -> dict[str, np.ndarray]:
    """A preallocated request's ids per kind, in the order the prefill node's chunks fill them."""
    out = {}
    for kind in res.kinds:  # full-context kinds: not the pages borrowed from the prefix cache
        first, end = registered_pages(req.prompt_len, res.page_size, res.windows[kind])
        first = max(first, req.shared_pages) if res.windows[kind] is None else first
        out[kind] = req.pages(kind, first, end).copy()
    for kind in res.slot_kinds:
        out[kind] = req.items[kind].copy()
    _add_companions(res, out, None)
    return out
