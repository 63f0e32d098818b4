"""Per-row top-k positions of a score buffer: a Triton radix select and its `torch.topk` twin.

Row t of `scores [T, W]` (fp32, -inf = not selectable) is read over its first `lengths[t]` columns (all W
without `lengths`). The result `[T, k]` int32 holds the positions of the k largest scores in no particular
order, -1 for a position whose score is -inf and past the row's count. The kernel runs one program per row:
four passes of an 8-bit histogram over the scores' order-preserving integer keys find the k-th largest key,
a fifth writes every position above it and the first positions equal to it (a stable tie break), so the
time is about five reads of the row whatever k is.
"""

from __future__ import annotations

import torch
from pdpair.kernels.triton_utils import tl, triton


@triton.jit
def _row_topk_kernel(scores, lengths, out, stride_s, stride_o, width,
                     K: tl.constexpr, BLOCK: tl.constexpr, HAS_LENGTHS: tl.constexpr):
    t = tl.program_id(0)
    n = width
    if HAS_LENGTHS:
        n = tl.maximum(tl.minimum(tl.load(lengths + t), width), 0)
    row = scores + t.to(tl.int64) * stride_s
    orow = out + t.to(tl.int64) * stride_o
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, 256)
    if n <= K:  # everything is selected
        for j in range(0, n, BLOCK):
            p = j + offs
            m = p < n
            x = tl.load(row + p, mask=m, other=float("-inf"))
            tl.store(orow + p, tl.where(x > float("-inf"), p, -1), mask=m)
    else:
        prefix = (t * 0).to(tl.int64)  # the k-th largest key, found 8 bits at a time from the top
        need = t * 0 + K  # how many of the keys matching `prefix` so far are still to take
        for shift in tl.static_range(24, -1, -8):
            hist = tl.zeros([256], tl.int32)
            for j in range(0, n, BLOCK):
                p = j + offs
                m = p < n
                b = tl.load(row + p, mask=m, other=float("-inf")).to(tl.int32, bitcast=True)
                key = tl.where(b >= 0, b, b ^ 0x7FFFFFFF).to(tl.int64) + 2147483647 + 1  # float order, >= 0
                live = m & ((key >> (shift + 8)) == (prefix >> (shift + 8)))
                # dead lanes land in bin 0: that only inflates the lowest bin's at_or_above, never the choice
                digit = tl.where(live, (key >> shift) & 255, 0).to(tl.int32)
                hist += tl.histogram(digit, 256)
            at_or_above = tl.cumsum(hist, 0, reverse=True)
            above = at_or_above - hist
            d = tl.max(tl.where((above < need) & (at_or_above >= need), bins, -1), 0)
            need -= tl.sum(tl.where(bins == d, above, 0), 0)
            prefix += d.to(tl.int64) << shift
        n_gt = K - need
        base_gt = t * 0
        base_eq = t * 0
        for j in range(0, n, BLOCK):
            p = j + offs
            m = p < n
            x = tl.load(row + p, mask=m, other=float("-inf"))
            b = x.to(tl.int32, bitcast=True)
            key = tl.where(b >= 0, b, b ^ 0x7FFFFFFF).to(tl.int64) + 2147483647 + 1
            gt = (m & (key > prefix)).to(tl.int32)
            eq = (m & (key == prefix)).to(tl.int32)
            rank_gt = base_gt + tl.cumsum(gt, 0) - 1
            rank_eq = base_eq + tl.cumsum(eq, 0) - 1
            val = tl.where(x > float("-inf"), p, -1)
            tl.store(orow + rank_gt, val, mask=gt > 0)
            tl.store(orow + n_gt + rank_eq, val, mask=(eq > 0) & (rank_eq < need))
            base_gt += tl.sum(gt, 0)
            base_eq += tl.sum(eq, 0)


def row_topk(scores: torch.Tensor, k: int, lengths: torch.Tensor | None = None, *, block: int = 1024,
             num_warps: int = 8) -> torch.Tensor:
    """int32 `[T, k]`: each row's k largest finite scores' positions (see the module docstring)."""
    t, width = scores.shape
    assert scores.dtype == torch.float32 and scores.stride(1) == 1, (scores.dtype, scores.stride())
    assert lengths is None or (lengths.dtype == torch.int32 and lengths.shape[0] >= t), lengths
    out = torch.full((t, k), -1, dtype=torch.int32, device=scores.device)
    if t == 0 or k == 0 or width == 0:
        return out
    _row_topk_kernel[(t,)](
        scores, lengths if lengths is not None else scores, out, scores.stride(0), out.stride(0), width,
        K=k, BLOCK=block, HAS_LENGTHS=lengths is not None, num_warps=num_warps,
    )
    return out


def row_topk_ref(scores: torch.Tensor, k: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Twin of `row_topk` through `torch.topk` (graph-capturable; ties broken however torch breaks them)."""
    t, width = scores.shape
    if lengths is not None:
        cols = torch.arange(width, device=scores.device)
        scores = scores.masked_fill(cols[None, :] >= lengths[:t, None], float("-inf"))
    out = torch.full((t, k), -1, dtype=torch.int32, device=scores.device)
    kk = min(k, width)
    if kk > 0 and t > 0:
        vals, idx = torch.topk(scores, kk, dim=1, sorted=False)
        out[:, :kk] = torch.where(vals > float("-inf"), idx, -1).to(torch.int32)
    return out
