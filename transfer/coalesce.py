"""Contiguous-run coalescing of (source id, destination id) pairs.

Both sides are split wherever *either* stops being consecutive, so every run
is one transfer entry: ``run_len`` items from ``src_start`` to ``dst_start``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["contiguous_runs", "group_concurrent_contiguous"]


def _as_ids(ids: np.ndarray | list[int], side: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{side} ids must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{side} ids must be integers, got dtype {arr.dtype}")
    # int64 so that diffs of uint32 or large int32 ids cannot wrap
    return arr.astype(np.int64, copy=False)


def contiguous_runs(
    src: np.ndarray | list[int], dst: np.ndarray | list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs as ``(src_starts, dst_starts, lengths)`` (int64 arrays).

    Either side empty → three empty arrays (nothing to move). Both non-empty
    with different lengths → ``ValueError`` naming both lengths.
    """
    s, d = _as_ids(src, "src"), _as_ids(dst, "dst")
    if s.size == 0 or d.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    if s.size != d.size:
        raise ValueError(f"src and dst differ in length: {s.size} src ids vs {d.size} dst ids")
    breaks = np.flatnonzero((np.diff(s) != 1) | (np.diff(d) != 1)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [s.size]))
    return s[starts], d[starts], ends - starts


def group_concurrent_contiguous(
    src: np.ndarray | list[int], dst: np.ndarray | list[int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split ``src``/``dst`` into equal-length runs, consecutive on both sides.

    Either side empty → ``([], [])``; unequal non-empty lengths → ``ValueError``.
    The runs are maximal: two neighbouring runs could not be merged.
    """
    s, d = np.asarray(src), np.asarray(dst)
    _, _, lengths = contiguous_runs(s, d)
    if lengths.size == 0:
        return [], []
    cuts = np.cumsum(lengths)[:-1]
    return np.split(s, cuts), np.split(d, cuts)
