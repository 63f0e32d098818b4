"""Sparse MLA attention (DSA): each query attends only to the tokens its indexer selected.

Query t (a prefill token or a decode row alike) belongs to request row `q_row[t]`; `topk_idx[t]` holds
positions into that row's slot list `kv_indices[kv_indptr[row] : kv_indptr[row + 1]]` (-1 = skip, order
free). The math is `mla_decode`'s over only those keys, and the kernel is its stage 1 with the key list
gathered through `topk_idx`, so the time tracks K = `topk_idx.shape[1]`, not the context length. Decode
batches split the K keys over several programs (log-sum-exp merge); large prefill batches run one split,
which writes the output directly.
"""

from __future__ import annotations

import torch
from pdpair.kernels.attention.decode import DecodeWorkspace, default_num_splits
from pdpair.kernels.mla.decode import check_mla_inputs, mla_split_attention
from pdpair.kernels.triton_utils import triton


def sparse_mla(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    q_row: torch.Tensor,
    topk_idx: torch.Tensor,
    sm_scale: float,
    *,
    o: torch.Tensor | None = None,
    num_splits: int | None = None,
    workspace: DecodeWorkspace | None = None,
    block_h: int = 16,
    block_n: int = 32,
    num_warps: int | None = None,
    num_stages: int = 2,
) -> torch.Tensor:
    """q_nope `[T, H, Dl]`, q_rope `[T, H, Dr]`, topk_idx int32 `[T, K]` -> o `[T, H, Dl]` in q's dtype.

    `num_splits=None` picks a count from `T` and `K` only (CUDA-graph safe); `workspace` is
    `attention.decode.decode_workspace(T, H, Dl, num_splits, device)` when given (needed only with splits > 1).
    """
    check_mla_inputs(q_nope, q_rope, latent, kv_indptr, kv_indices)
    t, heads, _ = q_nope.shape
    assert topk_idx.dim() == 2 and topk_idx.shape[0] == t and topk_idx.stride(1) == 1, (topk_idx.shape, t)
    assert topk_idx.dtype == q_row.dtype == torch.int32 and q_row.shape[0] >= t, (topk_idx.dtype, q_row.shape)
    if o is None:
        o = torch.empty_like(q_nope)
    assert o.shape == q_nope.shape and o.stride(-1) == 1, (o.shape, o.stride())
    if t == 0:
        return o
    if num_splits is None:
        num_splits = default_num_splits(t, triton.cdiv(heads, block_h))
        num_splits = max(1, min(num_splits, triton.cdiv(topk_idx.shape[1], block_n)))
    return mla_split_attention(q_nope, q_rope, latent, kv_indptr, kv_indices, q_row, topk_idx, o, sm_scale,
                               num_splits, workspace, block_h, block_n, num_warps, num_stages)


def sparse_mla_ref(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    q_row: torch.Tensor,
    topk_idx: torch.Tensor,
    sm_scale: float,
    chunk: int = 64,
) -> torch.Tensor:
    """Torch twin of `sparse_mla`, `chunk` queries at a time; computes in fp32 (fp64 when given fp64)."""
    cdt = torch.float64 if q_nope.dtype == torch.float64 else torch.float32
    t, _, dl = q_nope.shape
    page_size = latent.shape[1]
    o = torch.empty_like(q_nope)
    for lo in range(0, t, chunk):
        hi = min(lo + chunk, t)
        rows = q_row[lo:hi].long()
        start = kv_indptr[rows].long()
        pos = topk_idx[lo:hi].long()
        live = (pos >= 0) & (pos < (kv_indptr[rows + 1].long() - start)[:, None])
        slot = kv_indices[torch.where(live, start[:, None] + pos, 0)].long() if kv_indices.numel() else pos
        live &= slot >= 0
        slot = torch.where(live, slot, 0)
        keys = latent[slot // page_size, slot % page_size].to(cdt)  # [t, K, Dl + Dr]
        s = (torch.einsum("thd,tkd->thk", q_nope[lo:hi].to(cdt), keys[..., :dl])
             + torch.einsum("thd,tkd->thk", q_rope[lo:hi].to(cdt), keys[..., dl:])) * sm_scale
        s = s.masked_fill(~live[:, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a query with nothing selected: zeros
        o[lo:hi] = torch.einsum("thk,tkd->thd", p, keys[..., :dl]).to(q_nope.dtype)
    return o
