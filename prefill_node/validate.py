"""Validation of a decode node's page registration: never trust a peer's ids or lengths."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from pdpair.transfer.pages import registered_pages


def cached_prefix_pages(cached_prefix_len: int, prompt_len: int, page_size: int,
                        windows: Mapping[str, int | None]) -> int:
    """Pages the decode node says it holds already (its prefix cache); ValueError unless `cached_prefix_len` is a
    multiple of the page size below the prompt length, and every paged pool keeps the whole context (a
    sliding-window pool's registration is its window tail, never a prefix)."""
    if cached_prefix_len == 0:
        return 0
    if cached_prefix_len % page_size or cached_prefix_len >= prompt_len:
        raise ValueError(f"cached_prefix_len {cached_prefix_len} must be a multiple of the page size {page_size} "
                         f"below the prompt length {prompt_len}")
    windowed = [k for k, w in windows.items() if w is not None]
    if windowed:
        raise ValueError(f"cached_prefix_len {cached_prefix_len}: sliding-window pools {windowed} cannot skip a "
                         "cached prefix")
    return cached_prefix_len // page_size


def expected_items(windows: Mapping[str, int | None], prompt_len: int, page_size: int,
                   slot_kinds: Iterable[str] = (), skip_pages: int = 0) -> dict[str, int]:
    """Destination items a prompt needs per pool kind (`windows`: paged kind -> sliding window or None): one per
    page for a full-context kind (the partial tail included) after the `skip_pages` the destination holds, the
    window tail's pages for a sliding-window kind, exactly one for a slot kind (a request's mamba state)."""
    out = {}
    for kind, window in windows.items():
        first, end = registered_pages(prompt_len, page_size, window)
        out[kind] = end - first - (skip_pages if window is None else 0)
    out.update(dict.fromkeys(slot_kinds, 1))
    return out


def validate_registration(
    pools: Iterable[tuple[str, Iterable[int]]], num_items: Mapping[str, int], expected: Mapping[str, int],
    first_ids: Mapping[str, int] | None = None, companions: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Registration (kind, ids) pairs -> {kind: int64 ids}; ValueError says what is wrong.

    Every kind must be known and given once; ids in [first_ids[kind] (default 0), num_items[kind]), unique;
    exactly expected[kind] ids. A slot kind's first ids are its padding dummies, never a request's. A companion
    kind (`companions`: kind -> the kind whose ids it shares, e.g. dsa -> kv) must list exactly those ids.
    """
    out: dict[str, np.ndarray] = {}
    for kind, ids in pools:
        if kind not in expected:
            raise ValueError(f"unknown pool kind {kind!r} (expected {sorted(expected)})")
        if kind in out:
            raise ValueError(f"pool kind {kind!r} registered twice")
        arr = np.asarray(list(ids), dtype=np.int64)
        if arr.size != expected[kind]:
            raise ValueError(f"{kind}: {arr.size} ids registered, the prompt needs exactly {expected[kind]}")
        bound, low = num_items[kind], (first_ids or {}).get(kind, 0)
        bad = arr[(arr < low) | (arr >= bound)]
        if bad.size:
            raise ValueError(f"{kind}: id {int(bad[0])} out of range [{low}, {bound})")
        if np.unique(arr).size != arr.size:
            vals, counts = np.unique(arr, return_counts=True)
            raise ValueError(f"{kind}: id {int(vals[counts > 1][0])} registered more than once")
        out[kind] = arr
    missing = [k for k in expected if k not in out]
    if missing:
        raise ValueError(f"registration lacks pool kinds {missing}")
    for kind, shared in (companions or {}).items():
        if kind in out and shared in out and not np.array_equal(out[kind], out[shared]):
            at = int(np.flatnonzero(out[kind] != out[shared])[0])
            raise ValueError(f"{kind}: ids must equal the {shared} ids (one allocator), differ at page {at}: "
                             f"{int(out[kind][at])} != {int(out[shared][at])}")
    return out
