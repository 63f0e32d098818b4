"""MLA decode over the paged latent cache, weight-absorbed: split-KV plus the log-sum-exp merge.

Every head attends to the same latent vector per token (one "kv head" of width Dl + Dr): the latent part
`c = latent[..., :Dl]` is both key (against `q_nope`, already absorbed through W_UK) and value, the rope part
`latent[..., Dl:]` is a key against `q_rope`. Row b reads the token slots
`kv_indices[kv_indptr[b] : kv_indptr[b + 1]]`; a slot s lives at page s // page_size, offset s % page_size of
the per-layer view `latent [P, page_size, Dl + Dr]` (any strides with a unit last one). A slot of -1 is
skipped; a row with no keys gets zeros.

The stage-1 kernel is shared with the sparse form (`sparse.py`): there a query's keys are its `topk_idx`
positions into its row's list instead of the whole list. One program per (head block, split, query); the head
block is the fastest grid axis so the programs reading one key range run together and share it through L2.
With one split the program writes the output itself; otherwise `attention.decode`'s merge kernel combines
the splits.
"""

from __future__ import annotations

import torch
from pdpair.kernels.attention.decode import (
    LOG2E,
    DecodeWorkspace,
    _decode_merge_kernel,
    decode_workspace,
    default_num_splits,
    store_split,
)
from pdpair.kernels.triton_utils import tl, triton


@triton.jit
def _mla_split_kernel(
    q_nope, q_rope, latent, kv_indptr, kv_indices, q_row, topk_idx, o, mid_o, mid_lse,
    stride_nb, stride_nh, stride_rb, stride_rh, stride_lp, stride_ls, stride_tb,
    stride_ob, stride_oh, stride_mb, stride_mh, stride_ms, stride_lb, stride_lh,
    qk_scale, num_heads, topk,
    PAGE_SIZE: tl.constexpr, DL: tl.constexpr, DR: tl.constexpr, BLOCK_DL: tl.constexpr,
    BLOCK_DR: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_BLOCKS: tl.constexpr,
    NUM_SPLITS: tl.constexpr, SPARSE: tl.constexpr,
):
    pid = tl.program_id(0)
    hb = pid % HEAD_BLOCKS
    split = (pid // HEAD_BLOCKS) % NUM_SPLITS
    b = (pid // (HEAD_BLOCKS * NUM_SPLITS)).to(tl.int64)  # 64-bit offsets: long prefill chunks x 128 x 512
    if SPARSE:
        row = tl.load(q_row + b)
    else:
        row = b
    start = tl.load(kv_indptr + row)
    row_len = tl.load(kv_indptr + row + 1) - start
    if SPARSE:
        n = topk
    else:
        n = row_len
    # plain arithmetic, not tl.cdiv: the kernel must not call library jit functions (interpreter reloads)
    per_split = ((n + NUM_SPLITS - 1) // NUM_SPLITS + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(lo + per_split, n)

    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_c = tl.arange(0, BLOCK_DL)
    offs_r = tl.arange(0, BLOCK_DR)
    mask_h = offs_h < num_heads
    mask_c = offs_c < DL
    mask_r = offs_r < DR
    qn = tl.load(q_nope + b * stride_nb + offs_h[:, None] * stride_nh + offs_c[None, :],
                 mask=mask_h[:, None] & mask_c[None, :], other=0.0)
    qr = tl.load(q_rope + b * stride_rb + offs_h[:, None] * stride_rh + offs_r[None, :],
                 mask=mask_h[:, None] & mask_r[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_DL], tl.float32)
    for j in range(lo, hi, BLOCK_N):
        offs_n = j + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        if SPARSE:
            pos = tl.load(topk_idx + b * stride_tb + offs_n, mask=mask_n, other=-1)
            mask_n = mask_n & (pos >= 0) & (pos < row_len)
        else:
            pos = offs_n
        slot = tl.load(kv_indices + start + pos, mask=mask_n, other=-1)
        mask_n = mask_n & (slot >= 0)
        slot = tl.maximum(slot, 0).to(tl.int64)
        base = latent + (slot // PAGE_SIZE) * stride_lp + (slot % PAGE_SIZE) * stride_ls
        c = tl.load(base[:, None] + offs_c[None, :], mask=mask_n[:, None] & mask_c[None, :], other=0.0)
        kr = tl.load(base[:, None] + DL + offs_r[None, :], mask=mask_n[:, None] & mask_r[None, :], other=0.0)
        s = (tl.dot(qn, tl.trans(c)) + tl.dot(qr, tl.trans(kr))) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new > float("-inf"), m_new, 0.0)  # a block with no live key: keep exp2 finite
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    store_split(acc, l_i, m_i, o, mid_o, mid_lse, b, split, offs_h, offs_c, mask_h, mask_c, stride_ob, stride_oh,
                stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, NUM_SPLITS)


def check_mla_inputs(q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, kv_indptr: torch.Tensor,
                     kv_indices: torch.Tensor) -> None:
    """Shapes, dtypes and unit last strides shared by `mla_decode` and `sparse_mla`."""
    rows, heads, dl = q_nope.shape
    assert q_rope.shape[:2] == (rows, heads) and latent.shape[-1] == dl + q_rope.shape[-1], (
        q_nope.shape, q_rope.shape, latent.shape)
    assert latent.dim() == 3, f"latent must be one layer's [P, page_size, Dl + Dr] view, got {tuple(latent.shape)}"
    assert q_nope.dtype == q_rope.dtype == latent.dtype, (q_nope.dtype, q_rope.dtype, latent.dtype)
    assert q_nope.stride(-1) == 1 and q_rope.stride(-1) == 1 and latent.stride(-1) == 1, "unit last stride"
    assert kv_indptr.dtype == kv_indices.dtype == torch.int32, (kv_indptr.dtype, kv_indices.dtype)


def mla_split_attention(q_nope, q_rope, latent, kv_indptr, kv_indices, q_row, topk_idx, o, sm_scale: float,
                        num_splits: int, workspace, block_h: int, block_n: int, num_warps: int | None,
                        num_stages: int) -> torch.Tensor:
    """Launch stage 1 (and the merge when `num_splits > 1`); `topk_idx is None` selects the dense decode form.

    `num_warps=None`: 4 for head blocks of 16, else 8 (the fp32 accumulator is block_h x Dl).
    """
    if num_warps is None:
        num_warps = 4 if block_h <= 16 else 8
    rows, heads, dl = q_nope.shape
    dr = q_rope.shape[-1]
    head_blocks = triton.cdiv(heads, block_h)
    sparse = topk_idx is not None
    if num_splits > 1:
        # the two-launch merge: no arrival counters (a workspace that has them keeps them unused)
        mid_o, mid_lse = (workspace or decode_workspace(rows, heads, dl, num_splits, q_nope.device))[:2]
        assert mid_o.shape[0] >= rows and mid_o.shape[1:] == (heads, num_splits, dl), (mid_o.shape, num_splits)
        assert mid_lse.shape[1:] == (heads, num_splits) and mid_lse.stride(2) == 1 and mid_o.stride(3) == 1
    else:
        mid_o, mid_lse = o, o  # unused: one split writes o directly
    dummy = kv_indptr
    _mla_split_kernel[(head_blocks * num_splits * rows,)](
        q_nope, q_rope, latent, kv_indptr, kv_indices, q_row if sparse else dummy, topk_idx if sparse else dummy,
        o, mid_o, mid_lse,
        q_nope.stride(0), q_nope.stride(1), q_rope.stride(0), q_rope.stride(1), latent.stride(0), latent.stride(1),
        topk_idx.stride(0) if sparse else 0, o.stride(0), o.stride(1),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2) if num_splits > 1 else 0,
        mid_lse.stride(0), mid_lse.stride(1),
        sm_scale * LOG2E, heads, topk_idx.shape[1] if sparse else 0,
        PAGE_SIZE=latent.shape[1], DL=dl, DR=dr, BLOCK_DL=triton.next_power_of_2(dl),
        BLOCK_DR=triton.next_power_of_2(dr), BLOCK_H=block_h, BLOCK_N=block_n, HEAD_BLOCKS=head_blocks,
        NUM_SPLITS=num_splits, SPARSE=sparse, num_warps=num_warps, num_stages=num_stages,
    )
    if num_splits > 1:
        block_d = triton.next_power_of_2(dl)
        _decode_merge_kernel[(rows, heads)](
            mid_o, mid_lse, o,
            mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
            o.stride(0), o.stride(1),
            NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), HEAD_DIM=dl, BLOCK_D=block_d,
            num_warps=4,
        )
    return o


def mla_decode(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
    num_splits: int | None = None,
    *,
    o: torch.Tensor | None = None,
    workspace: DecodeWorkspace | None = None,
    block_h: int = 16,
    block_n: int = 64,  # H200, B64 x 4k x 128 heads: 693 us at 64 keys per block vs 787 us at 32 (bench/mla_rows.py)
    num_warps: int | None = None,
    num_stages: int = 2,
) -> torch.Tensor:
    """q_nope `[B, H, Dl]`, q_rope `[B, H, Dr]`, latent `[P, page_size, Dl + Dr]` -> o `[B, H, Dl]` in q's dtype.

    `num_splits=None` picks a count from the batch shape only (CUDA-graph safe); `workspace` is
    `attention.decode.decode_workspace(B, H, Dl, num_splits, device)` when given (needed only with splits > 1).
    """
    check_mla_inputs(q_nope, q_rope, latent, kv_indptr, kv_indices)
    bsz, heads, dl = q_nope.shape
    assert kv_indptr.shape[0] >= bsz + 1, (kv_indptr.shape, bsz)
    if o is None:
        o = torch.empty_like(q_nope)
    assert o.shape == q_nope.shape and o.stride(-1) == 1, (o.shape, o.stride())
    if bsz == 0:
        return o
    if num_splits is None:
        num_splits = default_num_splits(bsz, triton.cdiv(heads, block_h))
    return mla_split_attention(q_nope, q_rope, latent, kv_indptr, kv_indices, None, None, o, sm_scale,
                               num_splits, workspace, block_h, block_n, num_warps, num_stages)


def mla_attend_ref(q_nope: torch.Tensor, q_rope: torch.Tensor, keys: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """One query's heads `[H, Dl]`, `[H, Dr]` over its latent rows `[n, Dl + Dr]` -> `[H, Dl]` (zeros when n = 0)."""
    dl = q_nope.shape[-1]
    if keys.shape[0] == 0:
        return torch.zeros_like(q_nope)
    c = keys[:, :dl]
    s = (q_nope @ c.T + q_rope @ keys[:, dl:].T) * sm_scale
    return torch.softmax(s, dim=-1) @ c


def gather_latent(latent: torch.Tensor, slots: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """The latent rows of `slots` (slot -1 dropped) in `cdt`."""
    slots = slots[slots >= 0].long()
    page_size = latent.shape[1]
    return latent[slots // page_size, slots % page_size].to(cdt)


def mla_decode_ref(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    latent: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float,
) -> torch.Tensor:
    """Torch twin of `mla_decode`, row by row; computes in fp32 (fp64 when given fp64)."""
    cdt = torch.float64 if q_nope.dtype == torch.float64 else torch.float32
    o = torch.empty_like(q_nope)
    for b in range(q_nope.shape[0]):
        keys = gather_latent(latent, kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])], cdt)
        o[b] = mla_attend_ref(q_nope[b].to(cdt), q_rope[b].to(cdt), keys, sm_scale).to(q_nope.dtype)
    return o

