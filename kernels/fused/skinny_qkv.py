"""A decode step's qkv projection with the attention prologue in its epilogue: one launch for `x W_qkv^T (+ b)`,
rotary embedding of q and k, and the store of the new K/V into the paged cache.

The skinny linear's rope-paired mode. A program owns `BLOCK_N / 2` rotary pairs of one head: weight rows
`h*D + j` and `h*D + D/2 + j` for `j` in a block of the half-dim, read into two accumulators (as the gated
mode reads matching gate and up rows), so each program holds both halves that rope mixes. The epilogue rounds
each accumulator to the output dtype after the bias (as `F.linear` rounds its output), rotates q and k heads
with the row's `cos`/`sin` in fp32 and rounds once (`qk_rope_store`'s arithmetic), then writes q heads to a
`[M, heads, D]` output and stores k heads (rotated) and v heads (as they are) to the caches at `slots[m]`
(slot < 0, a CUDA-graph padding row, is skipped). Removes `qk_rope_store`'s launch and the qkv round trip
through memory from the step.

q/k RMSNorm (Qwen3) needs a whole head's sum of squares: qk-norm models keep the two-launch path
(`skinny_linear` + `qk_rope_store`); a program covering a whole head would leave too few programs to stream
an 8B model's weight. Used by `engine/models/fused.py` for decode batches of at most `MAX_ROWS` rows.
"""

from __future__ import annotations

import torch
from pdpair.kernels.fused.skinny_linear import (
    MAX_ROWS,
    NormedRows,
    launch_extras,
    prefetch_rows,
    rms_scale,
    skinny_config,
)
from pdpair.kernels.triton_utils import pdl_prologue, tl, triton

MIN_PAIRS = 8  # the smallest pair block: the MMA's N dimension


@triton.jit
def _skinny_qkv_kernel(
    x, w, bias, cos, sin, q_out, k_cache, v_cache, slots, M, K,
    stride_xm, stride_wn, stride_cos, stride_sin, stride_qm,
    stride_kcp, stride_kcs, stride_kch, stride_vcp, stride_vcs, stride_vch, parts_in, stride_pin, n_parts_in,
    eps_in,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, PAGE_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr = False, PREFETCH_K: tl.constexpr = 0, RMS_PARTS: tl.constexpr = 0,
):
    pid = tl.program_id(0)
    head = pid // (HALF // BLOCK_P)  # q heads, then k heads, then v heads (the qkv weight's row order)
    offs_j = (pid % (HALF // BLOCK_P)) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    rows = head * (2 * HALF) + offs_j  # first-half rows; the second half's follow HALF rows later
    if PREFETCH_K > 0:
        offs_l = tl.arange(0, PREFETCH_K // 64) * 64
        prefetch_rows(w, rows, offs_j < HALF, stride_wn, K, offs_l)
        prefetch_rows(w + HALF * stride_wn, rows, offs_j < HALF, stride_wn, K, offs_l)
    pdl_prologue(PDL)
    x_ptrs = x + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = w + rows[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    half_off = HALF * stride_wn
    acc1 = tl.zeros([BLOCK_M, BLOCK_P], tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_P], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + offs_k) < K
        xb = tl.load(x_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc1 += tl.dot(xb, tl.trans(tl.load(w_ptrs + k0, mask=mask_k[None, :], other=0.0)))
        acc2 += tl.dot(xb, tl.trans(tl.load(w_ptrs + half_off + k0, mask=mask_k[None, :], other=0.0)))
    if RMS_PARTS > 0:  # x held rows times their norm weight (`NormedRows`): scale by the rows' factors
        rstd = rms_scale(parts_in, stride_pin, n_parts_in, offs_m, mask_m, K, eps_in, RMS_PARTS)
        acc1 = acc1 * rstd
        acc2 = acc2 * rstd
    if HAS_BIAS:
        acc1 += tl.load(bias + rows).to(tl.float32)[None, :]
        acc2 += tl.load(bias + HALF + rows).to(tl.float32)[None, :]
    dtype = q_out.dtype.element_ty
    x1 = acc1.to(dtype).to(tl.float32)  # the unfused projection's output rounding
    x2 = acc2.to(dtype).to(tl.float32)

    cmask = mask_m[:, None] & (offs_j[None, :] < HALF)
    c = tl.load(cos + offs_m[:, None] * stride_cos + offs_j[None, :], mask=cmask, other=0.0).to(tl.float32)
    s = tl.load(sin + offs_m[:, None] * stride_sin + offs_j[None, :], mask=cmask, other=0.0).to(tl.float32)
    head_t = (offs_j * 0 + head)[None, :]  # masks from the head as tensors (the interpreter rejects a scalar one)
    is_v = head_t >= HEADS + KV_HEADS
    r1 = tl.where(is_v, x1, x1 * c - x2 * s).to(dtype)  # v heads: no rope
    r2 = tl.where(is_v, x2, x2 * c + x1 * s).to(dtype)

    # q heads: the [M, HEADS, D] output
    qh = tl.minimum(head, HEADS - 1)
    qmask = cmask & (head_t < HEADS)
    dst = q_out + offs_m[:, None] * stride_qm + qh * (2 * HALF) + offs_j[None, :]
    tl.store(dst, r1, mask=qmask)
    tl.store(dst + HALF, r2, mask=qmask)

    # k and v heads: the caches at each row's slot
    slot = tl.load(slots + offs_m, mask=mask_m, other=-1).to(tl.int64)
    page = slot // PAGE_SIZE
    off = slot % PAGE_SIZE
    smask = cmask & (slot >= 0)[:, None] & (head_t >= HEADS)
    kvh = tl.maximum(head - HEADS, 0)
    kvh = tl.where(head >= HEADS + KV_HEADS, kvh - KV_HEADS, kvh)
    k_dst = k_cache + (page * stride_kcp + off * stride_kcs)[:, None] + kvh * stride_kch + offs_j[None, :]
    v_dst = v_cache + (page * stride_vcp + off * stride_vcs)[:, None] + kvh * stride_vch + offs_j[None, :]
    kmask = smask & (head_t < HEADS + KV_HEADS)
    vmask = smask & is_v
    tl.store(k_dst, r1, mask=kmask)
    tl.store(k_dst + HALF, r2, mask=kmask)
    tl.store(v_dst, r1, mask=vmask)
    tl.store(v_dst + HALF, r2, mask=vmask)


def skinny_qkv_config(n: int, k: int, head_dim: int) -> dict:
    """Launch parameters for a qkv weight `[n, k]`: the plain skinny config's K block, warps and stages, and
    `BLOCK_N` weight rows (`BLOCK_N / 2` pairs) per program as there, shrunk until the pairs divide the half-dim."""
    cfg = skinny_config(n, k)
    pairs = max(MIN_PAIRS, cfg["BLOCK_N"] // 2)
    while pairs > MIN_PAIRS and (head_dim // 2) % pairs:
        pairs //= 2
    cfg["BLOCK_N"] = 2 * pairs
    return cfg


def skinny_qkv_fits(head_dim: int) -> bool:
    """Whether a head of `head_dim` splits into pair blocks of at least `MIN_PAIRS` (the fused path's condition)."""
    return head_dim % 2 == 0 and (head_dim // 2) % MIN_PAIRS == 0


def skinny_qkv_rope_store(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cos: torch.Tensor,
                          sin: torch.Tensor, heads: int, kv_heads: int, k_cache: torch.Tensor,
                          v_cache: torch.Tensor, slots: torch.Tensor, *, config: dict | None = None,
                          rms: NormedRows | None = None) -> torch.Tensor:
    """`x [M, K]` (M <= MAX_ROWS) through the qkv weight `[(heads + 2 kv_heads) * D, K]` (+ bias): returns the
    rotated q `[M, heads, D]`; the rotated k and the v go to token `slots` of the caches `[pages, page_size,
    kv_heads, D]` (slot < 0: skipped). `cos`/`sin` `[M, D / 2]`: each row's rotary angles. With `rms` (a
    `NormedRows`; `x` is then its `xg`), the input is that RMSNorm's output, as in `skinny_linear`."""
    m, k = x.shape
    n, kw = weight.shape
    d = k_cache.shape[-1]
    assert m <= MAX_ROWS, f"skinny_qkv_rope_store takes at most {MAX_ROWS} rows, got {m}"
    assert kw == k and n == (heads + 2 * kv_heads) * d and d % 2 == 0, (x.shape, weight.shape, heads, kv_heads, d)
    assert cos.shape == sin.shape == (m, d // 2), (cos.shape, sin.shape, m, d)
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (kv_heads, d), (k_cache.shape, v_cache.shape)
    assert x.dtype == weight.dtype == k_cache.dtype == v_cache.dtype, (x.dtype, weight.dtype, k_cache.dtype)
    assert bias is None or (bias.shape == (n,) and bias.is_contiguous()), None if bias is None else bias.shape
    assert slots.shape == (m,), (slots.shape, m)
    assert rms is None or (x is rms.xg and rms.parts.shape[0] == m and rms.parts.stride(1) == 1), "rms: x is its xg"
    for t in (x, weight, cos, sin, k_cache, v_cache):
        assert t.stride(-1) == 1, ("unit last stride", t.shape, t.stride())
    cfg = dict(config or skinny_qkv_config(n, k, d))
    block_n, block_k = cfg.pop("BLOCK_N"), cfg.pop("BLOCK_K")
    pairs = block_n // 2
    assert block_n % 2 == 0 and (d // 2) % pairs == 0, f"head_dim {d} is not a multiple of 2 x {pairs} pairs"
    q = torch.empty((m, heads, d), dtype=x.dtype, device=x.device)
    if m == 0:
        return q
    _skinny_qkv_kernel[((heads + 2 * kv_heads) * (d // 2 // pairs),)](
        x, weight, bias if bias is not None else weight, cos, sin, q, k_cache, v_cache, slots, m, k,
        x.stride(0), weight.stride(0), cos.stride(0), sin.stride(0), q.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), *((rms.parts, rms.parts.stride(0), rms.parts.shape[1], rms.eps) if rms is not None
                             else (q, 0, 0, 0.0)),
        RMS_PARTS=triton.next_power_of_2(rms.parts.shape[1]) if rms is not None else 0,
        HEADS=heads, KV_HEADS=kv_heads, HALF=d // 2, PAGE_SIZE=k_cache.shape[1], HAS_BIAS=bias is not None,
        BLOCK_M=16, BLOCK_P=pairs, BLOCK_K=block_k, **cfg, **launch_extras(weight, m, block_k),
    )
    return q


def skinny_qkv_rope_store_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                              k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Torch twin of `skinny_qkv_rope_store`: the unfused arithmetic (`F.linear`, then `qk_rope_store_ref`)."""
    from pdpair.kernels.fused.qk_rope_store import qk_rope_store_ref

    qkv = torch.nn.functional.linear(x, weight, bias)
    q, _, _ = qk_rope_store_ref(qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slots)
    return q
