"""Store the new tokens' K and V into one layer of the paged cache; rows whose slot is negative are skipped.

Skipping lets CUDA-graph padding rows (slot -1) run the same launch without touching any page.
"""

import torch
from pdpair.kernels.triton_utils import tl, triton


@triton.jit
def _store_kv_kernel(
    k, v, k_cache, v_cache, slots,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcp, stride_kcs, stride_kch, stride_vcp, stride_vcs, stride_vch,
    PAGE_SIZE: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slots + t).to(tl.int64)
    if slot < 0:
        return
    page = slot // PAGE_SIZE
    off = slot % PAGE_SIZE
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
    kv = tl.load(k + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
    tl.store(k_cache + page * stride_kcp + off * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :],
             kv, mask=mask)
    vv = tl.load(v + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(v_cache + page * stride_vcp + off * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :],
             vv, mask=mask)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slots: torch.Tensor) -> None:
    """k, v `[T, KVH, D]` -> token slots `slots` `[T]` of caches `[P, page_size, KVH, D]` (slot < 0: skipped)."""
    t, kv_heads, head_dim = k.shape
    assert v.shape == k.shape and k_cache.shape[2:] == (kv_heads, head_dim), (k.shape, v.shape, k_cache.shape)
    assert v_cache.shape == k_cache.shape and k.dtype == v.dtype == k_cache.dtype == v_cache.dtype
    assert slots.shape == (t,), (slots.shape, t)
    for x in (k, v, k_cache, v_cache):
        assert x.stride(-1) == 1, ("unit last stride", x.shape, x.stride())
    if t == 0:
        return
    _store_kv_kernel[(t,)](
        k, v, k_cache, v_cache, slots,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        PAGE_SIZE=k_cache.shape[1], KV_HEADS=kv_heads, HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
    )


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slots: torch.Tensor) -> None:
    """Torch twin of `store_kv`."""
    keep = slots >= 0
    s = slots[keep].long()
    page_size = k_cache.shape[1]
    k_cache[s // page_size, s % page_size] = k[keep]
    v_cache[s // page_size, s % page_size] = v[keep]
