"""Decode attention over the paged KV cache: split-KV (flash-decoding) with a log-sum-exp merge of the splits.

One query token per row. Row b attends to the token slots `kv_indices[kv_indptr[b] : kv_indptr[b + 1]]` (the
row's keys in position order, its own token last). A slot s lives at page s // page_size, offset
s % page_size of the per-layer cache views `k_cache`, `v_cache` `[num_pages, page_size, kv_heads, head_dim]`
(any strides with a unit last one, e.g. `kv[:, layer, 0]` of the item-major pool). One program per
(row, kv head, split) loads each KV block once for the whole group of query heads sharing that kv head and
leaves a partial output + log-sum-exp in an fp32 workspace. With `window > 0` a row sees only its last
`window` keys. One split writes `o` directly. With several, the splits are merged either by a second launch
(`_decode_merge_kernel`, one program per (row, q head)) or inside the same launch (`fused_merge`); the
attention backend picks by head size (engine/attention/triton_backend.py, `FUSED_MERGE_MIN_HEAD_DIM`). Both
merge through `_merge_heads`, which issues the loads of all its heads' partials at once: the one-launch form
merged the group's heads one after another until then, and measured slower than two launches everywhere.

One-launch merge (`fused_merge=True`). The workspace holds an int32 arrival counter per (row, kv head), zero
at rest. A split program stores its partials, then `tl.debug_barrier()` (every thread's stores happen before
the next step) and one `atomic_add(counter, 1, sem="acq_rel", scope="gpu")`. Triton performs a scalar atomic
once per program (one thread) and broadcasts the old value to all its threads, so the branch is uniform. The
program that reads `NUM_SPLITS - 1` arrived last: every other program of its group has already released its
stores, and its acquire makes them visible to it; after a second barrier (extending the acquire to the whole
program) it loads the group's partials with `.cg` (from L2, never from a stale L1 line), merges the `GROUP`
query heads, writes `o`, and stores 0 back to the counter. Nobody else touches that counter again in this
launch, and the kernel boundary publishes the reset to the next launch: the next call, every CUDA-graph
replay, and the next layer sharing the workspace on the same stream all start from zero. The release costs
every split program a round trip to L2 before it exits; the second launch it saves costs more at 128-wide
heads, less at 64. Programs of one group never wait for each other (no spinning), so the scheme needs no
co-residency and cannot deadlock whatever the grid order. A split with no keys (short row, window) still
stores lse = -inf and arrives. A workspace must not be used by two launches running at the same time (two
streams).

Deferred q/k RMSNorm (`qk_norm=`, a `QKScale` from kernels/fused/skinny_qkv.py): q and the row's own key
arrive weighted and rotated but not normed, with each head's sums of squares. Each program sums its heads' and
its kv head's parts after the wait, scales each head's scores by its factor and the own key's scores by the
k factor, and the split holding the own key stores it back normed at the row's slot after its loop (the only
program that reads that key; a row of slot < 0 stores nothing).

Under the Triton interpreter programs run one after another (the last split of a group is also the last to
run), so the CPU tests check the arithmetic and the counter reset, not the memory ordering above.
"""

import math
from typing import NamedTuple

import torch
from pdpair.kernels.fused.skinny_qkv import QKScale
from pdpair.kernels.triton_utils import pdl_launch, pdl_prologue, tl, triton

LOG2E = 1.4426950408889634
# decode batches of at most this many rows read their first K/V block before the PDL wait (`preload`)
PRELOAD_MAX_ROWS = 1


@triton.jit
def _merge_heads(mid_o, mid_lse, o, b, h0, stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ob,
                 stride_oh, HEADS: tl.constexpr, BLOCK_G: tl.constexpr, NUM_SPLITS: tl.constexpr,
                 BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CACHE: tl.constexpr):
    """Merge row b's split partials of heads h0 .. h0 + HEADS - 1 into `o`, every head's loads issued at once
    (a row whose splits are all empty gets zeros)."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    heads = h0 + offs_g
    mask_gs = (offs_g < HEADS)[:, None] & (offs_s < NUM_SPLITS)[None, :]
    mask_gd = (offs_g < HEADS)[:, None] & (offs_d < HEAD_DIM)[None, :]
    lse = tl.load(mid_lse + b * stride_lb + heads[:, None] * stride_lh + offs_s[None, :], mask=mask_gs,
                  other=float("-inf"), cache_modifier=CACHE)
    parts = tl.load(mid_o + b * stride_mb + heads[:, None, None] * stride_mh
                    + offs_s[None, :, None] * stride_ms + offs_d[None, None, :],
                    mask=mask_gs[:, :, None] & (offs_d < HEAD_DIM)[None, None, :], other=0.0, cache_modifier=CACHE)
    m = tl.max(lse, 1)
    w = tl.where(lse > float("-inf"), tl.exp2(lse - m[:, None]), 0.0)
    out = tl.sum(parts * w[:, :, None], 1) / tl.maximum(tl.sum(w, 1), 1e-30)[:, None]
    tl.store(o + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], out.to(o.dtype.element_ty),
             mask=mask_gd)


@triton.jit
def store_split(acc, l_i, m_i, o, mid_o, mid_lse, b, split, heads, offs_d, mask_h, mask_d, stride_ob, stride_oh,
                stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, NUM_SPLITS: tl.constexpr):
    """A split program's epilogue for query heads `heads` of row b (`acc [H, D]`, running sum `l_i` and max
    `m_i`, base 2): with one split the normalised output straight into `o`, else the fp32 partial and its
    log-sum-exp into the workspace, lse -inf for a split that saw no key. Shared with MLA decode."""
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    if NUM_SPLITS == 1:  # the only split: no workspace, no merge
        tl.store(o + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], out.to(o.dtype.element_ty),
                 mask=mask_h[:, None] & mask_d[None, :])
    else:
        lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        base = b * stride_mb + heads * stride_mh + split * stride_ms
        tl.store(mid_o + base[:, None] + offs_d[None, :], out, mask=mask_h[:, None] & mask_d[None, :])
        tl.store(mid_lse + b * stride_lb + heads * stride_lh + split, lse, mask=mask_h)


@triton.jit
def _attend_block(qv, kb, vb, mask_n, m_i, l_i, acc, qk_scale, key_scale, KEY_SCALE: tl.constexpr):
    """One block of keys into the running (max, sum, output) of the group's query heads (base 2). `qk_scale`: a
    scalar or a `[H, 1]` column; with `KEY_SCALE`, each key's scores also times `key_scale [N]`."""
    s = tl.dot(qv, tl.trans(kb)) * qk_scale
    if KEY_SCALE:
        s = s * key_scale[None, :]
    s = tl.where(mask_n[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, acc


@triton.jit
def _attend_blocks(qv, k_cache, v_cache, kv_indices, start, j0, lo, hi, n, first, kvh, offs_d, mask_d, m_i, l_i, acc,
                   head_scale, r_k, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
                   PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr, QK_DEFER: tl.constexpr):
    """Key blocks `j0`, `j0 + BLOCK_N`, ... below `hi` of a split starting at `lo` into the running (max, sum,
    output); under PDL the block at `lo` takes its slots from `first`, read before the wait."""
    for j in range(j0, hi, BLOCK_N):
        offs_n = j + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        if PDL:  # the first block's slots were read before the wait
            later = offs_n >= lo + BLOCK_N
            slot = tl.where(later, tl.load(kv_indices + start + offs_n, mask=mask_n & later, other=0), first)
        else:
            slot = tl.load(kv_indices + start + offs_n, mask=mask_n, other=0)
        slot = slot.to(tl.int64)
        page = slot // PAGE_SIZE
        off = slot % PAGE_SIZE
        kmask = mask_n[:, None] & mask_d[None, :]
        kb = tl.load(k_cache + page[:, None] * stride_kp + off[:, None] * stride_ks + kvh * stride_kh
                     + offs_d[None, :], mask=kmask, other=0.0)
        vb = tl.load(v_cache + page[:, None] * stride_vp + off[:, None] * stride_vs + kvh * stride_vh
                     + offs_d[None, :], mask=kmask, other=0.0)
        key_scale = tl.where(offs_n == n - 1, r_k, 1.0)
        m_i, l_i, acc = _attend_block(qv, kb, vb, mask_n, m_i, l_i, acc, head_scale, key_scale, QK_DEFER)
    return m_i, l_i, acc


@triton.jit
def _decode_split_kernel(
    q, k_cache, v_cache, kv_indptr, kv_indices, mid_o, mid_lse, o, counters,
    stride_qb, stride_qh,
    stride_kp, stride_ks, stride_kh,
    stride_vp, stride_vs, stride_vh,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ob, stride_oh, stride_cb,
    qk_scale, window, qk_parts, stride_pb, per_head, n_heads, qk_eps, qk_slots,
    PAGE_SIZE: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr, FUSED_MERGE: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr, PDL: tl.constexpr = False, PRELOAD: tl.constexpr = False,
    QK_DEFER: tl.constexpr = False, BLOCK_PP: tl.constexpr = 1,
):
    # Under PDL the row's kv_indptr pair and first block of kv_indices are read before the wait, so these
    # dependent loads overlap the previous kernel. The step's metadata is written before its first layer, and a
    # PDL kernel starts only once the kernel before it has passed its own wait: every kernel two or more back,
    # the metadata's writers among them, has finished (docs/kernels.md). Without PDL the loop reads them all.
    # With PRELOAD the first block's K/V are read there too, all but the row's own token (its last key), which
    # the kernel before stores: that one is read after the wait. The other slots hold keys of earlier steps.
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
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    if PDL or PRELOAD:
        first_n = lo + tl.arange(0, BLOCK_N)
        first = tl.load(kv_indices + start + first_n, mask=first_n < hi, other=0)
    else:
        first = start  # unused without PDL
    if PRELOAD:
        own = first_n == n - 1
        page0 = first.to(tl.int64) // PAGE_SIZE
        off0 = first.to(tl.int64) % PAGE_SIZE
        m0 = ((first_n < hi) & ~own)[:, None] & mask_d[None, :]
        k_at = k_cache + page0[:, None] * stride_kp + off0[:, None] * stride_ks + kvh * stride_kh + offs_d[None, :]
        v_at = v_cache + page0[:, None] * stride_vp + off0[:, None] * stride_vs + kvh * stride_vh + offs_d[None, :]
        kb0 = tl.load(k_at, mask=m0, other=0.0)
        vb0 = tl.load(v_at, mask=m0, other=0.0)
    pdl_prologue(PDL)

    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < GROUP
    heads = kvh * GROUP + offs_h
    qv = tl.load(q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                 mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    head_scale = qk_scale
    r_k = qk_scale  # QK_DEFER: the row's own key's norm factor
    if QK_DEFER:  # the q/k RMSNorm the qkv launch deferred (`QKScale`): its factors from the sums of squares
        offs_p = tl.arange(0, BLOCK_PP)
        pmask = offs_p < per_head
        qss = tl.load(qk_parts + b * stride_pb + heads[:, None] * per_head + offs_p[None, :],
                      mask=mask_h[:, None] & pmask[None, :], other=0.0)
        head_scale = (qk_scale * tl.rsqrt(tl.sum(qss, 1) / HEAD_DIM + qk_eps))[:, None]
        kss = tl.load(qk_parts + b * stride_pb + (n_heads + kvh) * per_head + offs_p, mask=pmask, other=0.0)
        r_k = tl.rsqrt(tl.sum(kss, 0) / HEAD_DIM + qk_eps)
        own_slot = tl.load(qk_slots + b).to(tl.int64)  # < 0: a padding row, which stored no key

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    if PRELOAD:  # the first block, its own token (if in it) read now
        if lo < hi:
            m1 = own[:, None] & mask_d[None, :]
            kb = tl.where(own[:, None], tl.load(k_at, mask=m1, other=0.0), kb0)
            vb = tl.where(own[:, None], tl.load(v_at, mask=m1, other=0.0), vb0)
            key_scale = tl.where(own, r_k, 1.0)
            m_i, l_i, acc = _attend_block(qv, kb, vb, first_n < hi, m_i, l_i, acc, head_scale, key_scale, QK_DEFER)
        # The split's later blocks. At short contexts the preloaded block is its only one, and the branch skips
        # the pipelined loop's prologue with the loop (the next block's addresses, its predicated copies and
        # the wait after the loop): 20-30 us of the 8B step at batch 1 (docs/kernels.md).
        if lo + BLOCK_N < hi:
            m_i, l_i, acc = _attend_blocks(qv, k_cache, v_cache, kv_indices, start, lo + BLOCK_N, lo, hi, n, first,
                                           kvh, offs_d, mask_d, m_i, l_i, acc, head_scale, r_k, stride_kp,
                                           stride_ks, stride_kh, stride_vp, stride_vs, stride_vh, PAGE_SIZE, BLOCK_N,
                                           PDL, QK_DEFER)
    else:
        m_i, l_i, acc = _attend_blocks(qv, k_cache, v_cache, kv_indices, start, lo, lo, hi, n, first, kvh, offs_d,
                                       mask_d, m_i, l_i, acc, head_scale, r_k, stride_kp, stride_ks, stride_kh,
                                       stride_vp, stride_vs, stride_vh, PAGE_SIZE, BLOCK_N, PDL, QK_DEFER)
    if QK_DEFER:  # the split holding the row's own key stores it back normed (it was read above as stored)
        if (hi == n) & (lo < hi) & (own_slot >= 0):
            own_k = (k_cache + (own_slot // PAGE_SIZE) * stride_kp + (own_slot % PAGE_SIZE) * stride_ks
                     + kvh * stride_kh + offs_d)
            tl.store(own_k, (tl.load(own_k, mask=mask_d, other=0.0).to(tl.float32) * r_k).to(
                k_cache.dtype.element_ty), mask=mask_d)

    store_split(acc, l_i, m_i, o, mid_o, mid_lse, b, split, heads, offs_d, mask_h, mask_d, stride_ob, stride_oh,
                stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, NUM_SPLITS)
    if FUSED_MERGE and NUM_SPLITS > 1:  # the memory ordering is argued in the module docstring
        tl.debug_barrier()
        counter = counters + b * stride_cb + kvh
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == NUM_SPLITS - 1:
            tl.debug_barrier()
            _merge_heads(mid_o, mid_lse, o, b, kvh * GROUP, stride_mb, stride_mh, stride_ms, stride_lb,
                         stride_lh, stride_ob, stride_oh, GROUP, BLOCK_G, NUM_SPLITS, BLOCK_S, HEAD_DIM, BLOCK_D,
                         ".cg")
            tl.store(counter, 0)


@triton.jit
def _decode_merge_kernel(
    mid_o, mid_lse, o,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ob, stride_oh,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    _merge_heads(mid_o, mid_lse, o, tl.program_id(0), tl.program_id(1), stride_mb, stride_mh, stride_ms,
                 stride_lb, stride_lh, stride_ob, stride_oh, 1, 1, NUM_SPLITS, BLOCK_S, HEAD_DIM, BLOCK_D, "")


class DecodeWorkspace(NamedTuple):
    """Split partials for `decode_attention` (and MLA decode, which uses the first two)."""

    mid_o: torch.Tensor  # fp32 [B, H, S, D]
    mid_lse: torch.Tensor  # fp32 [B, H, S]
    counters: torch.Tensor | None  # int32 [B, KVH] arrivals for the one-launch merge, zero at rest


def decode_workspace(batch: int, num_heads: int, head_dim: int, num_splits: int, device,
                     num_kv_heads: int | None = None) -> DecodeWorkspace:
    """fp32 partial outputs `[B, H, S, D]` and log-sum-exps `[B, H, S]`; with `num_kv_heads`, also the zeroed
    int32 arrival counters `[B, KVH]` that the one-launch merge needs (`None`: none, for the two-launch merge)."""
    mid_o = torch.empty(batch, num_heads, num_splits, head_dim, dtype=torch.float32, device=device)
    mid_lse = torch.empty(batch, num_heads, num_splits, dtype=torch.float32, device=device)
    counters = None
    if num_kv_heads is not None:
        counters = torch.zeros(batch, num_kv_heads, dtype=torch.int32, device=device)
    return DecodeWorkspace(mid_o, mid_lse, counters)


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
    workspace: DecodeWorkspace | None = None,
    block_n: int = 64,
    num_warps: int | None = None,
    num_stages: int = 2,
    fused_merge: bool = False,
    preload: bool | None = None,
    qk_norm: QKScale | None = None,
) -> torch.Tensor:
    """q `[B, H, D]`, caches `[P, page_size, KVH, D]` -> o `[B, H, D]` (see the module docstring).

    `fused_merge`: with several splits, merge them inside the split launch (one launch; the workspace needs
    its counters, `decode_workspace(..., num_kv_heads=KVH)`) instead of a second merge launch. One split
    writes `o` directly either way and needs no workspace.

    `preload`: each split program reads its first block's K/V before the PDL wait, all but the row's own
    (last) token, which the kernel before stores. None: at batch 1 under PDL (`PRELOAD_MAX_ROWS`), with 8 warps
    (`num_warps` None: 8 with it, else 4).

    `qk_norm`: the q/k RMSNorm a deferred qkv launch left (kernels/fused/skinny_qkv.py): q and each row's own
    key arrive weighted and rotated but not normed; each head's scores are scaled by its q factor, the own
    key's by its k factor, and the split holding the own key stores it back normed at the row's slot
    (`k_cache` is written; a row of slot < 0, a graph's padding row, stores nothing).
    """
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
    fused = fused_merge and num_splits > 1
    if num_splits == 1:
        mid_o, mid_lse, counters = o, o, kv_indptr  # unused: the one split writes o directly
        strides_m = (0,) * 5
    else:
        mid_o, mid_lse, counters = workspace or decode_workspace(bsz, num_heads, head_dim, num_splits, q.device,
                                                                 num_kv_heads if fused else None)
        assert mid_o.shape[0] >= bsz and mid_o.shape[1:] == (num_heads, num_splits, head_dim), (
            mid_o.shape, num_splits)
        assert mid_lse.shape[1:] == (num_heads, num_splits) and mid_lse.stride(2) == 1, (
            mid_lse.shape, mid_lse.stride())
        assert mid_o.stride(3) == 1, mid_o.stride()
        strides_m = (mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1))
        if fused:
            assert counters is not None, "the one-launch merge needs decode_workspace(..., num_kv_heads=KVH)"
            assert counters.dtype == torch.int32 and counters.shape[0] >= bsz and counters.stride(1) == 1, (
                counters.dtype, counters.shape, counters.stride())
            assert counters.shape[1] >= num_kv_heads, (counters.shape, num_kv_heads)
        else:
            counters = kv_indptr  # unused
    group = num_heads // num_kv_heads
    scale = (sm_scale if sm_scale is not None else 1.0 / math.sqrt(head_dim)) * LOG2E
    block_d = triton.next_power_of_2(head_dim)
    block_s = triton.next_power_of_2(num_splits)
    pdl = pdl_launch(q, bsz)  # the split and the merge launch alike
    if preload is None:
        preload = pdl["PDL"] and bsz <= PRELOAD_MAX_ROWS
    if num_warps is None:
        num_warps = 8 if preload else 4
    if qk_norm is not None:
        parts = qk_norm.parts
        assert parts.dtype == torch.float32 and parts.shape[0] >= bsz and parts.stride(1) == 1, (
            parts.dtype, parts.shape, parts.stride())
        assert parts.shape[1] >= (num_heads + num_kv_heads) * qk_norm.per_head, (parts.shape, qk_norm.per_head)
        assert qk_norm.slots.shape[0] >= bsz, (qk_norm.slots.shape, bsz)
    _decode_split_kernel[(bsz, num_kv_heads, num_splits)](
        q, k_cache, v_cache, kv_indptr, kv_indices, mid_o, mid_lse, o, counters,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        *strides_m, o.stride(0), o.stride(1), counters.stride(0) if fused else 0,
        scale, window,
        *((qk_norm.parts, qk_norm.parts.stride(0), qk_norm.per_head, num_heads, qk_norm.eps, qk_norm.slots)
          if qk_norm is not None else (o, 0, 0, 0, 0.0, o)),
        QK_DEFER=qk_norm is not None,
        BLOCK_PP=triton.next_power_of_2(qk_norm.per_head) if qk_norm is not None else 1,
        PAGE_SIZE=page_size, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=num_splits, FUSED_MERGE=fused, BLOCK_S=block_s,
        BLOCK_G=triton.next_power_of_2(group), PRELOAD=preload, num_warps=num_warps, num_stages=num_stages, **pdl,
    )
    if num_splits > 1 and not fused:
        _decode_merge_kernel[(bsz, num_heads)](
            mid_o, mid_lse, o, *strides_m, o.stride(0), o.stride(1),
            NUM_SPLITS=num_splits, BLOCK_S=block_s, HEAD_DIM=head_dim, BLOCK_D=block_d,
            num_warps=4 if block_d >= 128 else 2, **pdl,
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
