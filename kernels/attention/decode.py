"""Decode attention over the paged KV cache: split-KV (flash-decoding) plus a log-sum-exp merge.

One query token per row. Row b attends to the token slots `kv_indices[kv_indptr[b] : kv_indptr[b + 1]]` (the
row's keys in position order, its own token last). A slot s lives at page s // page_size, offset
s % page_size of the per-layer cache views `k_cache`, `v_cache` `[num_pages, page_size, kv_heads, head_dim]`
(any strides with a unit last one, e.g. `kv[:, layer, 0]` of the item-major pool). Stage 1 runs one program
per (row, kv head, split): it loads each KV block once for the whole group of query heads sharing that kv
head. Stage 2 merges the splits. With `window > 0` a row sees only its last `window` keys.
"""

import math

import torch
from pdpair.kernels.triton_utils import tl, triton

LOG2E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
    q, k_cache, v_cache, kv_indptr, kv_indices, mid_o, mid_lse,
    stride_qb, stride_qh,
    stride_kp, stride_ks, stride_kh,
    stride_vp, stride_vs, stride_vh,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh,
    qk_scale, window,
    PAGE_SIZE: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    start = tl.load(kv_indptr + b)
    end = tl.load(kv_indptr + b + 1)
    if window > 0:
        start = tl.maximum(start, end - window)
    n = end - start
    # plain arithmetic, not tl.cdiv: the kernel must not call library jit functions (interpreter reloads)
    per_split = ((n + NUM_SPLITS - 1) // NUM_SPLITS + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(lo + per_split, n)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < GROUP
    mask_d = offs_d < HEAD_DIM
    heads = kvh * GROUP + offs_h
    qv = tl.load(q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                 mask=mask_h[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for j in range(lo, hi, BLOCK_N):
        offs_n = j + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        slot = tl.load(kv_indices + start + offs_n, mask=mask_n, other=0).to(tl.int64)
        page = slot // PAGE_SIZE
        off = slot % PAGE_SIZE
        kmask = mask_n[:, None] & mask_d[None, :]
        kb = tl.load(k_cache + page[:, None] * stride_kp + off[:, None] * stride_ks + kvh * stride_kh
                     + offs_d[None, :], mask=kmask, other=0.0)
        vb = tl.load(v_cache + page[:, None] * stride_vp + off[:, None] * stride_vs + kvh * stride_vh
                     + offs_d[None, :], mask=kmask, other=0.0)
        s = tl.dot(qv, tl.trans(kb)) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    base = b * stride_mb + heads * stride_mh + split * stride_ms
    tl.store(mid_o + base[:, None] + offs_d[None, :], out, mask=mask_h[:, None] & mask_d[None, :])
    tl.store(mid_lse + b * stride_lb + heads * stride_lh + split, lse, mask=mask_h)


@triton.jit
def _decode_merge_kernel(
    mid_o, mid_lse, o,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ob, stride_oh,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_s = offs_s < NUM_SPLITS
    mask_d = offs_d < HEAD_DIM
    lse = tl.load(mid_lse + b * stride_lb + h * stride_lh + offs_s,
                  mask=mask_s, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.where(lse > float("-inf"), tl.exp2(lse - m), 0.0)
    parts = tl.load(mid_o + b * stride_mb + h * stride_mh + offs_s[:, None] * stride_ms + offs_d[None, :],
                    mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.maximum(tl.sum(w, 0), 1e-30)
    tl.store(o + b * stride_ob + h * stride_oh + offs_d, out.to(o.dtype.element_ty), mask=mask_d)


def decode_workspace(batch: int, num_heads: int, head_dim: int, num_splits: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 partial outputs `[B, H, S, D]` and log-sum-exps `[B, H, S]` for `decode_attention`."""
    mid_o = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=device)
    mid_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=device)
    return mid_o, mid_lse


def default_num_splits(batch: int, num_kv_heads: int, num_sms: int = 132, max_splits: int = 32) -> int:
    """Enough splits to give every SM a few programs; a function of the batch shape only (graph-safe)."""
    want = triton.cdiv(4 * num_sms, max(batch * num_kv_heads, 1))
    return int(min(max_splits, triton.next_power_of_2(max(want, 1))))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    o: torch.Tensor | None = None,
    sm_scale: float | None = None,
    window: int = 0,
    num_splits: int | None = None,
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """q `[B, H, D]`, caches `[P, page_size, KVH, D]` -> o `[B, H, D]` (see the module docstring)."""
    bsz, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, cache_dim = k_cache.shape
    assert v_cache.shape == k_cache.shape and cache_dim == head_dim, (q.shape, k_cache.shape, v_cache.shape)
    assert num_heads % num_kv_heads == 0, (num_heads, num_kv_heads)
    assert q.dtype == k_cache.dtype == v_cache.dtype, (q.dtype, k_cache.dtype, v_cache.dtype)
    assert q.stride(-1) == 1 and k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "unit last stride"
    assert kv_indptr.shape[0] >= bsz + 1 and kv_indptr.dtype == kv_indices.dtype == torch.int32
    if o is None:
        o = torch.empty_like(q)
    assert o.shape == q.shape and o.stride(-1) == 1, (o.shape, o.stride())
    if bsz == 0:
        return o
    if num_splits is None:
        num_splits = default_num_splits(bsz, num_kv_heads)
    mid_o, mid_lse = workspace or decode_workspace(bsz, num_heads, head_dim, num_splits, q.device)
    assert mid_o.shape[0] >= bsz and mid_o.shape[1:] == (num_heads, num_splits, head_dim), (mid_o.shape, num_splits)
    assert mid_lse.shape[1:] == (num_heads, num_splits) and mid_lse.stride(2) == 1, (mid_lse.shape, mid_lse.stride())
    assert mid_o.stride(3) == 1, mid_o.stride()
    group = num_heads // num_kv_heads
    scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)) * LOG2E
    block_d = triton.next_power_of_2(head_dim)
    _decode_split_kernel[(bsz, num_kv_heads, num_splits)](
        q, k_cache, v_cache, kv_indptr, kv_indices, mid_o, mid_lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        scale, window,
        PAGE_SIZE=page_size, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=num_splits,
        num_warps=num_warps, num_stages=num_stages,
    )
    _decode_merge_kernel[(bsz, num_heads)](
        mid_o, mid_lse, o,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        o.stride(0), o.stride(1),
        NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), HEAD_DIM=head_dim, BLOCK_D=block_d,
        num_warps=4 if block_d >= 128 else 2,
    )
    return o


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float | None = None,
    window: int = 0,
) -> torch.Tensor:
    """Torch twin of `decode_attention`, row by row; computes in fp32 (fp64 when given fp64)."""
    bsz, num_heads, head_dim = q.shape
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    o = torch.empty_like(q)
    for b in range(bsz):
        start, end = int(kv_indptr[b]), int(kv_indptr[b + 1])
        if window > 0:
            start = max(start, end - window)
        slots = kv_indices[start:end].long()
        kb = k_cache[slots // page_size, slots % page_size].to(cdt)  # [n, KVH, D]
        vb = v_cache[slots // page_size, slots % page_size].to(cdt)
        kb = kb.repeat_interleave(group, dim=1)
        vb = vb.repeat_interleave(group, dim=1)
        s = torch.einsum("hd,nhd->hn", q[b].to(cdt), kb) * scale
        o[b] = torch.einsum("hn,nhd->hd", torch.softmax(s, dim=-1), vb).to(q.dtype)
    return o
