"""Extend (prefill) attention: new tokens attend to their cached prefix (paged) and causally to each other.

Rows are ragged: row b's queries are `q[qo_indptr[b] : qo_indptr[b + 1]]` with their own K/V at the same rows
of `k_new`/`v_new` (contiguous, not yet read from the cache). `seq_lens` follows the production convention
(it already counts the extend tokens), so a row's prefix length is `max(seq_lens[b] - extend_len, 0)`; the
clamp keeps padded rows (fill length 1) harmless. The prefix's token slots are the last
`min(kv_indptr[b + 1] - kv_indptr[b], prefix)` entries of the row's `kv_indices` span, the prefix tail in
position order (a row may omit keys that a sliding window hides). Slot s lives at page s // page_size, offset
s % page_size of `k_cache`/`v_cache` `[num_pages, page_size, kv_heads, head_dim]` (any strides, unit last).
With `window > 0`, query position p sees key position k only when p - window < k <= p.
"""

import math

import torch
from pdpair.kernels.triton_utils import tl, triton

LOG2E = 1.4426950408889634


@triton.jit
def _softmax_step(acc, l_i, m_i, qv, kb, vb, qk_scale, valid, MASK: tl.constexpr):
    """One online-softmax step over a key block. MASK: 0 none, 1 additive (every row keeps a finite max),
    2 -inf with a guarded max (a row may have seen no key yet: sliding window)."""
    s = tl.dot(qv, tl.trans(kb))
    if MASK == 0:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
    elif MASK == 1:
        s = s * qk_scale + tl.where(valid, 0.0, -1.0e6)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
    else:
        s = tl.where(valid, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(vb.dtype), vb, acc)
    return acc, l_i, m_new


@triton.jit
def _load_new(x, desc, row0, kvh, offs_n, offs_d, stride_t, stride_h, rows_valid, mask_d,
              USE_TMA: tl.constexpr, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    """A [BLOCK_N, BLOCK_D] tile of the new tokens' K or V: a bulk tensor copy, or a pointer load."""
    if USE_TMA:  # rows past the row's end read the next row (masked by the caller) or zeros past the tensor
        return desc.load([row0, kvh * HEAD_DIM])
    elif MASKED:
        return tl.load(x + (row0 + offs_n)[:, None] * stride_t + kvh * stride_h + offs_d[None, :],
                       mask=rows_valid[:, None] & mask_d[None, :], other=0.0)
    else:
        return tl.load(x + (row0 + offs_n)[:, None] * stride_t + kvh * stride_h + offs_d[None, :],
                       mask=mask_d[None, :], other=0.0)


@triton.jit
def _extend_kernel(
    q, k_new, v_new, desc_k, desc_v, k_cache, v_cache, o,
    qo_indptr, seq_lens, kv_indptr, kv_indices,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_kcp, stride_kcs, stride_kch, stride_vcp, stride_vcs, stride_vch,
    qk_scale, window, num_m_blocks,
    PAGE_SIZE: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_WINDOW: tl.constexpr, USE_TMA: tl.constexpr,
    HAS_PREFIX: tl.constexpr,
):
    mblk = num_m_blocks - 1 - tl.program_id(0)  # the longest (last) query blocks start first
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // GROUP
    q0 = tl.load(qo_indptr + b)
    ext = tl.load(qo_indptr + b + 1) - q0
    m_start = mblk * BLOCK_M
    if m_start >= ext:
        return
    prefix = tl.maximum(tl.load(seq_lens + b) - ext, 0)
    kv_e = tl.load(kv_indptr + b + 1)
    n_idx = tl.minimum(kv_e - tl.load(kv_indptr + b), prefix)
    kv_s = kv_e - n_idx
    first_pos = prefix - n_idx

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < ext
    mask_d = offs_d < HEAD_DIM
    qv = tl.load(q + (q0 + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                 mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    qpos = prefix + offs_m
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # 1) the cached prefix, gathered through kv_indices
    lo = 0
    if HAS_WINDOW:
        lo = (tl.maximum(prefix + m_start - window + 1 - first_pos, 0) // BLOCK_N) * BLOCK_N
    if not HAS_PREFIX:  # the caller knows no row has a cached prefix: compile the gather loop out
        lo = n_idx
    for j in range(lo, n_idx, BLOCK_N):
        cols = j + offs_n
        mask_n = cols < n_idx
        slot = tl.load(kv_indices + kv_s + cols, mask=mask_n, other=0).to(tl.int64)
        page = slot // PAGE_SIZE
        off = slot % PAGE_SIZE
        lmask = mask_n[:, None] & mask_d[None, :]
        kb = tl.load(k_cache + page[:, None] * stride_kcp + off[:, None] * stride_kcs + kvh * stride_kch
                     + offs_d[None, :], mask=lmask, other=0.0)
        vb = tl.load(v_cache + page[:, None] * stride_vcp + off[:, None] * stride_vcs + kvh * stride_vch
                     + offs_d[None, :], mask=lmask, other=0.0)
        valid = mask_n[None, :]
        if HAS_WINDOW:
            valid = valid & ((first_pos + cols)[None, :] > qpos[:, None] - window)
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, qv, kb, vb, qk_scale, valid, 1 + HAS_WINDOW)

    # 2) new tokens strictly before this query block: no causal mask
    lo2 = 0
    if HAS_WINDOW:
        lo2 = (tl.maximum(m_start - window + 1, 0) // BLOCK_N) * BLOCK_N
    for j in range(lo2, m_start, BLOCK_N):
        kb = _load_new(k_new, desc_k, q0 + j, kvh, offs_n, offs_d, stride_kt, stride_kh, mask_m, mask_d,
                       USE_TMA, HEAD_DIM, False)
        vb = _load_new(v_new, desc_v, q0 + j, kvh, offs_n, offs_d, stride_vt, stride_vh, mask_m, mask_d,
                       USE_TMA, HEAD_DIM, False)
        valid = (j + offs_n)[None, :] > offs_m[:, None] - window
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, qv, kb, vb, qk_scale, valid, 2 * HAS_WINDOW)

    # 3) the diagonal blocks: causal mask
    hi = tl.minimum(m_start + BLOCK_M, ext)
    for j in range(m_start, hi, BLOCK_N):
        cols = j + offs_n
        mask_n = cols < ext
        kb = _load_new(k_new, desc_k, q0 + j, kvh, offs_n, offs_d, stride_kt, stride_kh, mask_n, mask_d,
                       USE_TMA, HEAD_DIM, True)
        vb = _load_new(v_new, desc_v, q0 + j, kvh, offs_n, offs_d, stride_vt, stride_vh, mask_n, mask_d,
                       USE_TMA, HEAD_DIM, True)
        valid = mask_n[None, :] & (cols[None, :] <= offs_m[:, None])
        if HAS_WINDOW:
            valid = valid & (cols[None, :] > offs_m[:, None] - window)
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, qv, kb, vb, qk_scale, valid, 1 + HAS_WINDOW)

    if HAS_WINDOW:  # padding rows past the end of a row may see no key at all
        l_i = tl.where(l_i > 0, l_i, 1.0)
    out = acc / l_i[:, None]
    tl.store(o + (q0 + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(o.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def _tma_ok(x: torch.Tensor, head_dim: int) -> bool:
    """A 2-D [T, heads * D] bulk-copy view: heads contiguous, 16-byte aligned base and row stride."""
    es = x.element_size()
    return (x.stride(1) == head_dim and x.data_ptr() % 16 == 0 and (x.stride(0) * es) % 16 == 0
            and (head_dim * es) % 16 == 0)


def _descriptor(x: torch.Tensor, block_n: int, head_dim: int):
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(x, shape=[x.shape[0], x.shape[1] * head_dim], strides=[x.stride(0), 1],
                            block_shape=[block_n, head_dim])


def extend_attention(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qo_indptr: torch.Tensor,
    seq_lens: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    max_extend_len: int,
    o: torch.Tensor | None = None,
    sm_scale: float | None = None,
    window: int = 0,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    use_tma: bool | None = None,
    has_prefix: bool = True,
) -> torch.Tensor:
    """q `[T, H, D]`, k_new/v_new `[T, KVH, D]`, caches `[P, page_size, KVH, D]` -> o `[T, H, D]`.

    `max_extend_len` (a host int, at least the longest row) sizes the grid without a device sync.
    `use_tma` (None: when the GPU and the layout allow) reads the new K/V through bulk tensor copies.
    `has_prefix=False` promises that no row has a cached prefix (the first chunk of every prompt).
    Block sizes default to 128 x 128 with 8 warps for long rows (the best of a sweep on an H100 at head
    dim 128, docs/kernels.md) and 64 x 64 with 4 warps otherwise.
    """
    t, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, cache_dim = k_cache.shape
    bsz = qo_indptr.shape[0] - 1
    assert k_new.shape == v_new.shape == (t, num_kv_heads, head_dim), (q.shape, k_new.shape, v_new.shape)
    assert v_cache.shape == k_cache.shape and cache_dim == head_dim, (k_cache.shape, v_cache.shape, head_dim)
    assert num_heads % num_kv_heads == 0, (num_heads, num_kv_heads)
    assert q.dtype == k_new.dtype == v_new.dtype == k_cache.dtype == v_cache.dtype, (q.dtype, k_cache.dtype)
    for x in (q, k_new, v_new, k_cache, v_cache):
        assert x.stride(-1) == 1, ("unit last stride", x.shape, x.stride())
    assert qo_indptr.dtype == seq_lens.dtype == kv_indptr.dtype == kv_indices.dtype == torch.int32
    assert seq_lens.shape[0] >= bsz and kv_indptr.shape[0] >= bsz + 1, (seq_lens.shape, kv_indptr.shape, bsz)
    big = max_extend_len >= 512 and head_dim <= 128
    block_m = block_m or (128 if big else 64)
    block_n = block_n or (128 if big else 64)
    num_warps = num_warps or (8 if block_m >= 128 else 4)
    num_stages = num_stages or 3
    assert block_m % block_n == 0, (block_m, block_n)
    if o is None:
        o = torch.empty_like(q)
    assert o.shape == q.shape and o.stride(-1) == 1, (o.shape, o.stride())
    if bsz == 0 or t == 0 or max_extend_len <= 0:
        return o
    num_m_blocks = triton.cdiv(max_extend_len, block_m)
    pow2 = head_dim == triton.next_power_of_2(head_dim)
    layout_ok = pow2 and _tma_ok(k_new, head_dim) and _tma_ok(v_new, head_dim)
    if use_tma is None:
        use_tma = layout_ok and q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
    assert not use_tma or layout_ok, ("bulk copies need heads-contiguous, 16-byte aligned K/V", k_new.stride())
    desc_k = _descriptor(k_new, block_n, head_dim) if use_tma else k_new
    desc_v = _descriptor(v_new, block_n, head_dim) if use_tma else v_new
    scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)) * LOG2E
    _extend_kernel[(num_m_blocks, num_heads, bsz)](
        q, k_new, v_new, desc_k, desc_v, k_cache, v_cache, o,
        qo_indptr, seq_lens, kv_indptr, kv_indices,
        q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        o.stride(0), o.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        scale, window, num_m_blocks,
        PAGE_SIZE=page_size, GROUP=num_heads // num_kv_heads, BLOCK_M=block_m, BLOCK_N=block_n,
        HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim), HAS_WINDOW=window > 0, USE_TMA=use_tma,
        HAS_PREFIX=has_prefix, num_warps=num_warps, num_stages=num_stages,
    )
    return o


def extend_attention_ref(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qo_indptr: torch.Tensor,
    seq_lens: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float | None = None,
    window: int = 0,
) -> torch.Tensor:
    """Torch twin of `extend_attention`, row by row; computes in fp32 (fp64 when given fp64)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    o = torch.zeros_like(q)
    for b in range(qo_indptr.shape[0] - 1):
        q0, q1 = int(qo_indptr[b]), int(qo_indptr[b + 1])
        ext = q1 - q0
        if ext == 0:
            continue
        prefix = max(int(seq_lens[b]) - ext, 0)
        kv_e = int(kv_indptr[b + 1])
        n_idx = min(kv_e - int(kv_indptr[b]), prefix)
        slots = kv_indices[kv_e - n_idx : kv_e].long()
        kb = torch.cat([k_cache[slots // page_size, slots % page_size], k_new[q0:q1]]).to(cdt)
        vb = torch.cat([v_cache[slots // page_size, slots % page_size], v_new[q0:q1]]).to(cdt)
        kpos = torch.cat([torch.arange(prefix - n_idx, prefix), torch.arange(prefix, prefix + ext)])
        qpos = torch.arange(prefix, prefix + ext)
        visible = kpos[None, :] <= qpos[:, None]
        if window > 0:
            visible &= kpos[None, :] > qpos[:, None] - window
        kb = kb.repeat_interleave(group, dim=1)
        vb = vb.repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", q[q0:q1].to(cdt), kb) * scale
        s = s.masked_fill(~visible.to(s.device)[None], float("-inf"))
        o[q0:q1] = torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), vb).to(q.dtype)
    return o
