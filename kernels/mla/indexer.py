"""DSA lightning indexer: per-query key scores over the paged indexer keys, then the top-k positions.

Query t belongs to request row `q_row[t]` and sees the first `q_visible[t]` slots of that row's list
`kv_indices[kv_indptr[row] : kv_indptr[row + 1]]` (causal: its position + 1). A slot s lives at page
s // page_size, offset s % page_size of the per-layer view `index_k [P, page_size, Di]`.
`score[t, j] = sum_h weights[t, h] * relu(q[t, h] . k_j)` for visible j; invisible positions and slot -1
score -inf. The scores kernel runs one program per (query, chunk of keys) with all heads in one dot per key
block; the top-k is `torch.topk` (default) or the Triton radix select of `topk.py` over the fp32 score buffer
`[T, max_visible]` (graph-capturable when
`max_visible` is given; otherwise it is read back from `q_visible`). Positions come back 0-based into the
row's list, in no particular order, -1 where fewer than `topk` keys are visible.
"""

from __future__ import annotations

import torch
from pdpair.kernels.mla.topk import row_topk, row_topk_ref
from pdpair.kernels.triton_utils import tl, triton


@triton.jit
def _indexer_score_kernel(
    q, weights, index_k, kv_indptr, kv_indices, q_row, q_visible, scores,
    stride_qt, stride_qh, stride_wt, stride_kp, stride_ks, stride_st, width,
    PAGE_SIZE: tl.constexpr, HEADS: tl.constexpr, DIM: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, FILL: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)  # 64-bit offsets into the [T, max_visible] score buffer
    c0 = tl.program_id(1) * CHUNK
    row = tl.load(q_row + t)
    start = tl.load(kv_indptr + row)
    want = tl.load(q_visible + t)
    vis = tl.minimum(want, tl.load(kv_indptr + row + 1) - start)  # keys that exist
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < HEADS
    mask_d = offs_d < DIM
    # a chunk past the visible keys reads nothing (masked loads), and without FILL writes nothing either
    busy_h = mask_h & ((offs_h * 0 + c0) < vis)
    qv = tl.load(q + t * stride_qt + offs_h[:, None] * stride_qh + offs_d[None, :],
                 mask=busy_h[:, None] & mask_d[None, :], other=0.0)
    wv = tl.load(weights + t * stride_wt + offs_h, mask=busy_h, other=0.0).to(tl.float32)
    if FILL:
        hi = c0 + CHUNK
    else:
        hi = tl.minimum(c0 + CHUNK, want)  # up to q_visible: a reader of that many columns sees no garbage
    for j in range(c0, hi, BLOCK_N):
        offs_n = j + tl.arange(0, BLOCK_N)
        if j < vis:
            live = offs_n < vis
            slot = tl.load(kv_indices + start + offs_n, mask=live, other=-1)
            live = live & (slot >= 0)
            slot = tl.maximum(slot, 0).to(tl.int64)
            kb = tl.load(index_k + (slot // PAGE_SIZE)[:, None] * stride_kp + (slot % PAGE_SIZE)[:, None] * stride_ks
                         + offs_d[None, :], mask=live[:, None] & mask_d[None, :], other=0.0)
            s = tl.dot(qv, tl.trans(kb))  # [heads, keys], fp32
            val = tl.sum(tl.maximum(s, 0.0) * wv[:, None], 0)
            val = tl.where(live, val, float("-inf"))
        else:
            val = tl.full([BLOCK_N], float("-inf"), tl.float32)
        tl.store(scores + t * stride_st + offs_n, val, mask=offs_n < width)


def indexer_scores(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    q_row: torch.Tensor,
    q_visible: torch.Tensor,
    max_visible: int,
    *,
    block_n: int = 64,
    chunk: int = 512,
    num_warps: int = 4,
    num_stages: int = 2,
    fill: bool = True,
) -> torch.Tensor:
    """fp32 scores `[T, max_visible]`, -inf past each query's visible keys; see the module docstring.

    `fill=False` leaves the columns past a query's visible keys unwritten (a consumer that reads each row only
    up to `q_visible`, like `topk.row_topk`, then skips writing and reading the whole `max_visible` width).
    """
    t, heads, dim = q.shape
    assert weights.shape == (t, heads) and weights.stride(1) == 1, (weights.shape, q.shape)
    assert index_k.dim() == 3 and index_k.shape[2] == dim, (index_k.shape, q.shape)
    assert q.dtype == index_k.dtype, (q.dtype, index_k.dtype)
    assert q.stride(-1) == 1 and index_k.stride(-1) == 1, "unit last stride"
    assert kv_indptr.dtype == kv_indices.dtype == q_row.dtype == q_visible.dtype == torch.int32
    assert q_row.shape[0] >= t and q_visible.shape[0] >= t, (q_row.shape, q_visible.shape, t)
    assert chunk % block_n == 0, (chunk, block_n)
    scores = torch.empty(t, max_visible, dtype=torch.float32, device=q.device)
    if t == 0 or max_visible == 0:
        return scores
    _indexer_score_kernel[(t, triton.cdiv(max_visible, chunk))](
        q, weights, index_k, kv_indptr, kv_indices, q_row, q_visible, scores,
        q.stride(0), q.stride(1), weights.stride(0), index_k.stride(0), index_k.stride(1), scores.stride(0),
        max_visible,
        PAGE_SIZE=index_k.shape[1], HEADS=heads, DIM=dim, BLOCK_H=max(16, triton.next_power_of_2(heads)),
        BLOCK_D=triton.next_power_of_2(dim), BLOCK_N=block_n, CHUNK=chunk, FILL=fill, num_warps=num_warps,
        num_stages=num_stages,
    )
    return scores


def indexer_topk(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    q_row: torch.Tensor,
    q_visible: torch.Tensor,
    topk: int,
    *,
    max_visible: int | None = None,
    triton_topk: bool = False,
    **launch,
) -> torch.Tensor:
    """q `[T, Hi, Di]` (rope applied), weights fp32 `[T, Hi]` -> int32 `[T, topk]` positions into each row's list.

    `max_visible` bounds `q_visible` (the score buffer's width); pass it under CUDA-graph capture, otherwise
    it is read back from the device. `triton_topk` selects with `topk.row_topk` (radix select) instead of
    `torch.topk`: scores and selection then touch each row only up to its visible count, not the whole
    `max_visible` width (what a CUDA graph sized for the longest context wants). `launch` goes to `indexer_scores` (block_n, chunk,
    num_warps, num_stages).
    """
    if max_visible is None:
        max_visible = int(q_visible[: q.shape[0]].max()) if q.shape[0] else 0
    scores = indexer_scores(q, weights, index_k, kv_indptr, kv_indices, q_row, q_visible, max(max_visible, 0),
                            fill=not triton_topk, **launch)
    return row_topk(scores, topk, q_visible) if triton_topk else row_topk_ref(scores, topk)


def indexer_scores_ref(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    q_row: torch.Tensor,
    q_visible: torch.Tensor,
    max_visible: int,
) -> torch.Tensor:
    """Torch twin of `indexer_scores`, one request row at a time; fp32 (fp64 when given fp64)."""
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    page_size = index_k.shape[1]
    t = q.shape[0]
    scores = torch.full((t, max_visible), float("-inf"), dtype=cdt, device=q.device)
    q_row = q_row[:t].long()
    for row in q_row.unique().tolist():
        ts = (q_row == row).nonzero().squeeze(1)
        start, end = int(kv_indptr[row]), int(kv_indptr[row + 1])
        n = min(end - start, max_visible)
        slots = kv_indices[start : start + n].long()
        keys = index_k[slots.clamp_min(0) // page_size, slots.clamp_min(0) % page_size].to(cdt)  # [n, Di]
        s = torch.einsum("thd,nd->thn", q[ts].to(cdt), keys).relu_()
        s = torch.einsum("thn,th->tn", s, weights[ts].to(cdt))
        live = (torch.arange(n, device=q.device)[None, :] < q_visible[ts].long()[:, None]) & (slots >= 0)[None, :]
        scores[ts, :n] = torch.where(live, s, float("-inf"))
    return scores


def indexer_topk_ref(
    q: torch.Tensor,
    weights: torch.Tensor,
    index_k: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    q_row: torch.Tensor,
    q_visible: torch.Tensor,
    topk: int,
) -> torch.Tensor:
    """Torch twin of `indexer_topk`."""
    width = int(q_visible[: q.shape[0]].max()) if q.shape[0] else 0
    scores = indexer_scores_ref(q, weights, index_k, kv_indptr, kv_indices, q_row, q_visible, max(width, 0))
    return row_topk_ref(scores, topk)
