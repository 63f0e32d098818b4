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

q/k RMSNorm (Qwen3, `qk_norm=`) needs a whole head's sum of squares, and a program covering a whole head would
leave too few programs to stream an 8B model's weight (48 for Qwen3-8B's qkv). So the heads' programs meet
once, as decode attention's one-launch merge does (kernels/attention/decode.py has the memory-ordering
argument): each q/k program stores its rounded projection rows to an fp32 workspace (`QKNormWorkspace`),
`tl.debug_barrier()`, one `atomic_add(counter[head], 1, sem="acq_rel", scope="gpu")`; the program that reads
`programs per head - 1` arrived last, loads the whole head back with `.cg`, norms it (`qk_rope_store`'s
arithmetic and rounding), rotates it, writes q or stores k, and stores 0 back to the counter, so every layer
and every CUDA-graph replay finds the counters at zero. v heads store their own pairs as without the norm. No
program waits for another, so the scheme needs no co-residency. A workspace serves one launch at a time (one
stream). Used by `engine/models/fused.py` for decode batches of at most `MAX_ROWS` rows.

Or the norm is deferred to decode attention (`defer_norm=True`, the triton backend's `defer_qk_norm`, on by
default): rope is linear and a head's RMSNorm factor is one scalar, so `rope(x * w) * r` is the normed, rotated
head. Each q/k program multiplies its columns by the norm weight, rotates and stores them like any other, and
leaves its rows' sums of squares in the workspace (`QKScale`); no program meets another, and the launch ends
as Llama's does. `decode_attention(qk_norm=...)` scales each head's scores by the q factor and the row's own
key's by the k factor, and stores that key back normed (kernels/attention/decode.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pdpair.kernels.fused.qk_rope_store import head_rmsnorm
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
    eps_in, qn_w, kn_w, raw, stride_raw, counters, eps_qk,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, PAGE_SIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr = False, PREFETCH_K: tl.constexpr = 0, RMS_PARTS: tl.constexpr = 0,
    RMS_FIRST: tl.constexpr = False, QK_NORM: tl.constexpr = False, BLOCK_HALF: tl.constexpr = 1,
    QK_DEFER: tl.constexpr = False,
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
    if RMS_PARTS > 0:
        if RMS_FIRST:
            rstd = rms_scale(parts_in, stride_pin, n_parts_in, offs_m, mask_m, K, eps_in, RMS_PARTS)
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
        if not RMS_FIRST:
            rstd = rms_scale(parts_in, stride_pin, n_parts_in, offs_m, mask_m, K, eps_in, RMS_PARTS)
        acc1 = acc1 * rstd
        acc2 = acc2 * rstd
    if HAS_BIAS:
        acc1 += tl.load(bias + rows).to(tl.float32)[None, :]
        acc2 += tl.load(bias + HALF + rows).to(tl.float32)[None, :]
    dtype = q_out.dtype.element_ty
    x1 = acc1.to(dtype).to(tl.float32)  # the unfused projection's output rounding
    x2 = acc2.to(dtype).to(tl.float32)

    own = True  # this program's columns go straight through the epilogue (all, without the q/k norm)
    if QK_DEFER:  # q/k heads: the norm weight now, the norm's factor in decode attention (`QKScale`)
        if head < HEADS + KV_HEADS:
            if head < HEADS:
                norm_w = qn_w
            else:
                norm_w = kn_w
            per_head = HALF // BLOCK_P
            tl.store(raw + offs_m * stride_raw + head * per_head + pid % per_head, tl.sum(x1 * x1 + x2 * x2, 1),
                     mask=mask_m)
            x1 = x1 * tl.load(norm_w + offs_j).to(tl.float32)[None, :]
            x2 = x2 * tl.load(norm_w + HALF + offs_j).to(tl.float32)[None, :]
    elif QK_NORM:
        own = head >= HEADS + KV_HEADS  # v heads; q and k heads meet, and the last of a head's programs finishes it
        if not own:
            hmask = mask_m[:, None] & (offs_j[None, :] < HALF)
            stash = raw + offs_m[:, None] * stride_raw + head * (2 * HALF) + offs_j[None, :]
            tl.store(stash, x1, mask=hmask)
            tl.store(stash + HALF, x2, mask=hmask)
            tl.debug_barrier()
            arrived = tl.atomic_add(counters + head, 1, sem="acq_rel", scope="gpu")
            if arrived == HALF // BLOCK_P - 1:
                tl.debug_barrier()
                offs_h = tl.arange(0, BLOCK_HALF)
                fmask = mask_m[:, None] & (offs_h[None, :] < HALF)
                src = raw + offs_m[:, None] * stride_raw + head * (2 * HALF) + offs_h[None, :]
                h1 = tl.load(src, mask=fmask, other=0.0, cache_modifier=".cg")
                h2 = tl.load(src + HALF, mask=fmask, other=0.0, cache_modifier=".cg")
                if head < HEADS:
                    norm_w = qn_w
                else:
                    norm_w = kn_w
                h1, h2 = head_rmsnorm(h1, h2, norm_w, offs_h, offs_h < HALF, eps_qk, HALF)
                _rope_store(h1, h2, offs_h, head, offs_m, mask_m, cos, sin, stride_cos, stride_sin, q_out, stride_qm,
                            slots, k_cache, v_cache, stride_kcp, stride_kcs, stride_kch, stride_vcp, stride_vcs,
                            stride_vch, HEADS, KV_HEADS, HALF, PAGE_SIZE)
                tl.store(counters + head, 0)
    if own:
        _rope_store(x1, x2, offs_j, head, offs_m, mask_m, cos, sin, stride_cos, stride_sin, q_out, stride_qm, slots,
                    k_cache, v_cache, stride_kcp, stride_kcs, stride_kch, stride_vcp, stride_vcs, stride_vch, HEADS,
                    KV_HEADS, HALF, PAGE_SIZE)


@triton.jit
def _rope_store(x1, x2, offs_j, head, offs_m, mask_m, cos, sin, stride_cos, stride_sin, q_out, stride_qm, slots,
                k_cache, v_cache, stride_kcp, stride_kcs, stride_kch, stride_vcp, stride_vcs, stride_vch,
                HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, PAGE_SIZE: tl.constexpr):
    """The epilogue on columns `offs_j` of one head's halves (fp32 values of the output dtype): rope for q and k
    heads, then q to its output, k and v to the caches at each row's slot."""
    dtype = q_out.dtype.element_ty
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


class QKNormWorkspace(NamedTuple):
    """Where the q/k heads' programs of `skinny_qkv_rope_store(qk_norm=...)` meet (or, deferred, leave the
    norm's sums of squares)."""

    raw: torch.Tensor  # fp32 [MAX_ROWS, (heads + kv_heads) * D]: the projection's q/k rows, before the norm
    counters: torch.Tensor  # int32 [heads + kv_heads] arrivals, zero at rest (every launch leaves them at zero)


class QKScale(NamedTuple):
    """The q/k RMSNorm a deferred launch (`skinny_qkv_rope_store(defer_norm=True)`) leaves to decode attention:
    per row and head, `per_head` partial sums of squares (fp32, `parts[m, head * per_head + j]`, q heads then
    k heads) of the projection's rounded values, whose `rsqrt(mean + eps)` scales the head's scores (q) and
    the row's own key (k), which attention also stores back scaled at the row's slot (none for a slot < 0:
    a CUDA-graph padding row stored no key, and the last key it attends to is another row's)."""

    parts: torch.Tensor  # fp32 [>= M, >= (heads + kv_heads) * per_head], unit last stride
    per_head: int
    eps: float
    slots: torch.Tensor  # [M] the launch's K/V slots


def qk_norm_workspace(heads: int, kv_heads: int, head_dim: int, device) -> QKNormWorkspace:
    """A workspace for up to `heads` q and `kv_heads` k heads of `head_dim` (its counters zeroed: one launch)."""
    return QKNormWorkspace(torch.empty(MAX_ROWS, (heads + kv_heads) * head_dim, dtype=torch.float32, device=device),
                           torch.zeros(heads + kv_heads, dtype=torch.int32, device=device))


def skinny_qkv_rope_store(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cos: torch.Tensor,
                          sin: torch.Tensor, heads: int, kv_heads: int, k_cache: torch.Tensor,
                          v_cache: torch.Tensor, slots: torch.Tensor, *, config: dict | None = None,
                          rms: NormedRows | None = None,
                          qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                          workspace: QKNormWorkspace | None = None,
                          defer_norm: bool = False) -> tuple[torch.Tensor, QKScale | None]:
    """`x [M, K]` (M <= MAX_ROWS) through the qkv weight `[(heads + 2 kv_heads) * D, K]` (+ bias): returns the
    rotated q `[M, heads, D]` and the deferred norm (None unless `defer_norm`); the rotated k and the v go to token `slots` of the caches `[pages, page_size,
    kv_heads, D]` (slot < 0: skipped). `cos`/`sin` `[M, D / 2]`: each row's rotary angles. With `rms` (a
    `NormedRows`; `x` is then its `xg`), the input is that RMSNorm's output, as in `skinny_linear`. With
    `qk_norm=(q_weight, k_weight, eps)` each q and k head is RMS-normed (weights `[D]`) before rope, through
    `workspace` (a fresh one when None; one launch at a time per workspace).

    `defer_norm` (with `qk_norm`): no meeting; each q/k program multiplies its columns by the norm weight,
    rotates and stores them, and leaves its sums of squares in the workspace, which the returned `QKScale`
    hands to `decode_attention(qk_norm=...)`, which applies the factors. rope is linear, so `rope(x * w) * r` is the normed,
    rotated head up to rounding; the q and the stored key are not normed until then."""
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
    norm_args = None
    if qk_norm is not None:
        q_w, k_w, eps_qk = qk_norm
        assert q_w.shape == k_w.shape == (d,) and q_w.is_contiguous() and k_w.is_contiguous(), (q_w.shape, k_w.shape)
        assert q_w.dtype == k_w.dtype == x.dtype, (q_w.dtype, k_w.dtype, x.dtype)
        ws = workspace or qk_norm_workspace(heads, kv_heads, d, x.device)
        assert ws.raw.dtype == torch.float32 and ws.raw.shape[0] >= m and ws.raw.shape[1] >= (heads + kv_heads) * d
        assert ws.raw.stride(1) == 1 and ws.counters.dtype == torch.int32 and ws.counters.numel() >= heads + kv_heads
        norm_args = (q_w, k_w, ws.raw, ws.raw.stride(0), ws.counters, eps_qk)
    defer = defer_norm and qk_norm is not None
    assert defer == defer_norm, "defer_norm needs qk_norm"
    q = torch.empty((m, heads, d), dtype=x.dtype, device=x.device)
    scale = QKScale(ws.raw, d // 2 // pairs, eps_qk, slots) if defer else None
    if m == 0:
        return q, scale
    _skinny_qkv_kernel[((heads + 2 * kv_heads) * (d // 2 // pairs),)](
        x, weight, bias if bias is not None else weight, cos, sin, q, k_cache, v_cache, slots, m, k,
        x.stride(0), weight.stride(0), cos.stride(0), sin.stride(0), q.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), *((rms.parts, rms.parts.stride(0), rms.parts.shape[1], rms.eps) if rms is not None
                             else (q, 0, 0, 0.0)), *(norm_args or (q, q, q, 0, q, 0.0)),
        QK_NORM=qk_norm is not None, BLOCK_HALF=triton.next_power_of_2(d // 2), QK_DEFER=defer,
        RMS_PARTS=triton.next_power_of_2(rms.parts.shape[1]) if rms is not None else 0,
        RMS_FIRST=rms is not None and rms.first,
        HEADS=heads, KV_HEADS=kv_heads, HALF=d // 2, PAGE_SIZE=k_cache.shape[1], HAS_BIAS=bias is not None,
        BLOCK_M=16, BLOCK_P=pairs, BLOCK_K=block_k, **cfg, **launch_extras(weight, m, block_k),
    )
    return q, scale


def skinny_qkv_rope_store_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
                              k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                              qk_norm: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> torch.Tensor:
    """Torch twin of `skinny_qkv_rope_store`: the unfused arithmetic (`F.linear`, then `qk_rope_store_ref`)."""
    from pdpair.kernels.fused.qk_rope_store import qk_rope_store_ref

    qkv = torch.nn.functional.linear(x, weight, bias)
    q, _, _ = qk_rope_store_ref(qkv, cos, sin, heads, kv_heads, k_cache, v_cache, slots, *(qk_norm or ()))
    return q
