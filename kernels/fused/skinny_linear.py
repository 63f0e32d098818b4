"""Linear layers for a few rows (a decode step's batch): `y = x W^T (+ b)` streaming the weight once.

At batch 1-16 a decode step's projections are weight-bandwidth problems: every byte of `W [N, K]` is read for a
handful of rows. cuBLAS picks general tile kernels there (about 3.9 us for SmolLM2's 576-wide projections, 3.1
TB/s for an 8B model's attention projections, plus a split-K reduce). This kernel gives each program
`BLOCK_N` output columns over the whole of K, reads the weight once with coalesced, pipelined loads, and keeps
the rows in one `BLOCK_M = 16` MMA tile. For the SwiGLU MLP's fused gate/up weight (`gated=True`) a program
reads matching gate and up rows and writes `silu(gate) * up` directly, which removes the SiLU-and-mul kernel
and half the projection's output writes from the step. (Folding SiLU-and-mul into the down projection's
input load instead was 5x slower: the elementwise work between load and MMA breaks the load pipeline.)

`skinny_linear_add` adds the projection into the residual stream in its epilogue and can leave the next
RMSNorm's input (`NormedRows`), which the next projection finishes (`rms=`), so a small model's decode step
needs no add+RMSNorm launch between its layers' projections.

Used by the fused decoder forward (`engine/models/fused.py`) for batches of at most `MAX_ROWS` rows on CUDA;
larger batches go to cuBLAS, which is compute-efficient there.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pdpair.kernels.triton_utils import (
    pdl_launch,
    pdl_prologue,
    pdl_release,
    pdl_wait,
    prefetch_l2,
    tl,
    triton,
)

MAX_ROWS = 16  # rows one MMA tile holds; more go to cuBLAS
PREFETCH_MAX_BYTES = 256 << 20  # weights up to this size (not a vocabulary head) prefetch before the PDL wait
PREFETCH_BLOCKS = 1  # how many K blocks of its rows a program prefetches ...
PREFETCH_MIN_K = 256  # ... and at least this many columns (a small model's 128-column blocks: two)


@triton.jit
def prefetch_rows(w, rows, mask_rows, stride_wn, K, offs_l):
    """L2 prefetch of weight `rows` at columns `offs_l` (one per 128-byte line: `tl.arange(0, PREFETCH_K //
    64) * 64` for the first PREFETCH_K columns)."""
    prefetch_l2(w + (rows[:, None].to(tl.int64) * stride_wn + offs_l[None, :]),
                mask_rows[:, None] & (offs_l < K)[None, :])


@triton.jit
def rms_scale(parts, stride_pm, n_parts, offs_m, mask_m, K, eps, PARTS: tl.constexpr):
    """`[BLOCK_M, 1]` RMSNorm factors `rsqrt(mean square + eps)` of rows whose sums of squares over their K
    columns arrive as `n_parts` partial sums per row (`parts [M, n_parts]`, one per program of the kernel that
    wrote the rows; summed in a fixed order, so the result does not depend on which program ran first)."""
    offs_p = tl.arange(0, PARTS)
    pm = mask_m[:, None] & (offs_p < n_parts)[None, :]
    ss = tl.sum(tl.load(parts + offs_m[:, None] * stride_pm + offs_p[None, :], mask=pm, other=0.0), 1)
    return tl.rsqrt(ss / K + eps)[:, None]


@triton.jit
def _skinny_linear_kernel(
    x, w, bias, y, M, N, K, stride_xm, stride_wn, stride_ym,
    parts_in, stride_pin, n_parts_in, eps_in, g_out, xg_out, stride_xgm, parts_out, stride_pout,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
    PREFETCH_K: tl.constexpr = 0, RMS_PARTS: tl.constexpr = 0, RMS_FIRST: tl.constexpr = False,
    ACCUMULATE: tl.constexpr = False, NORM_OUT: tl.constexpr = False, RELEASE_LATE: tl.constexpr = False,
):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if PREFETCH_K > 0:
        offs_l = tl.arange(0, PREFETCH_K // 64) * 64
        prefetch_rows(w, offs_n, offs_n < N, stride_wn, K, offs_l)
        if GATED:
            prefetch_rows(w + N.to(tl.int64) * stride_wn, offs_n, offs_n < N, stride_wn, K, offs_l)
    if RELEASE_LATE:  # the next kernel launches once this one's loops are done (`skinny_linear_add`)
        pdl_wait(PDL)
    else:
        pdl_prologue(PDL)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    y_ptrs = y + offs_m[:, None] * stride_ym + offs_n[None, :]
    ymask = mask_m[:, None] & mask_n[None, :]
    # the epilogue's operands load here, so their latency hides behind the K loop instead of following it
    if RMS_PARTS > 0:
        if RMS_FIRST:
            rstd = rms_scale(parts_in, stride_pin, n_parts_in, offs_m, mask_m, K, eps_in, RMS_PARTS)
    if ACCUMULATE:
        prior = tl.load(y_ptrs, mask=ymask, other=0.0).to(tl.float32)
    if NORM_OUT:
        gw = tl.load(g_out + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    x_ptrs = x + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = w + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    up_off = N.to(tl.int64) * stride_wn  # GATED: the up rows follow the N gate rows
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + offs_k) < K
        xb = tl.load(x_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        wmask = mask_n[:, None] & mask_k[None, :]
        acc += tl.dot(xb, tl.trans(tl.load(w_ptrs + k0, mask=wmask, other=0.0)))
        if GATED:
            acc_up += tl.dot(xb, tl.trans(tl.load(w_ptrs + up_off + k0, mask=wmask, other=0.0)))
    if RELEASE_LATE:
        pdl_release(PDL)
    if RMS_PARTS > 0:  # x held rows times their norm weight (`NormedRows`): scale by the rows' factors
        if not RMS_FIRST:
            rstd = rms_scale(parts_in, stride_pin, n_parts_in, offs_m, mask_m, K, eps_in, RMS_PARTS)
        acc = acc * rstd
        acc_up = acc_up * rstd
    if HAS_BIAS:
        acc += tl.load(bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_up += tl.load(bias + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = acc.to(x.dtype.element_ty)  # the projection's rounding, also into an fp32 `y` (the LM head's logits)
    if GATED:  # silu(gate) * up, each rounded as the unfused projection + silu_and_mul round them
        gate = out.to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(y.dtype.element_ty).to(tl.float32)
        out = (act * acc_up.to(y.dtype.element_ty).to(tl.float32)).to(y.dtype.element_ty)
    if ACCUMULATE:  # the residual add: one fp32 add of the rounded projection, rounded once
        out = (prior + out.to(tl.float32)).to(y.dtype.element_ty)
    tl.store(y_ptrs, out.to(y.dtype.element_ty), mask=ymask)
    if NORM_OUT:  # the next RMSNorm's inputs: this block's sums of squares, and the rows times its weight
        h = tl.where(ymask, out.to(tl.float32), 0.0)
        tl.store(parts_out + offs_m * stride_pout + pid, tl.sum(h * h, 1), mask=mask_m)
        tl.store(xg_out + offs_m[:, None] * stride_xgm + offs_n[None, :], (h * gw[None, :]).to(y.dtype.element_ty),
                 mask=ymask)


def skinny_config(n: int, k: int, gated: bool = False) -> dict:
    """Launch parameters for a weight `[n, k]`, fitted to sweeps on an H200 (`bench/small_batch_gpu.py
    --sweep`) and checked in the decode step (`bench/engine_gpu.py`): wide column blocks for wide weights,
    narrow ones so a small weight still spreads over many SMs, and as many K steps in flight as the pipeline
    holds. A gated weight's programs read a gate and an up block each, so they take half the columns. A
    vocabulary-sized weight (the LM head) streams 64 rows in 128-column steps: 236 us against 245 us at the
    plain rule for Llama-3.1-8B's at batch 1. A square weight of K >= 4096 (the o projection) takes 512-column
    steps: 10.9 against 11.2 us at batch 1, 11.1 against 12.8 us at batch 8 (weights rotated past L2).
    Weights of 4096 rows and more (an 8B model's qkv, o and down projections) take 16 rows, not 32: twice the
    programs, each with half the pipeline; an 8B model's gate/up weight (16 + 16 rows) 128-column steps in 3
    stages. Those two rules were measured in the decode step, not alone (docs/kernels.md): kernels timed
    alone picked configs that did not carry over."""
    if n >= 65536 and not gated:
        return {"BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 2, "num_stages": 3}
    if gated and n >= 16384 and k > 640:
        return {"BLOCK_N": 16, "BLOCK_K": 128, "num_warps": 2, "num_stages": 3}
    if gated:
        block_n = 16 if n >= 4096 else 8
    else:
        block_n = 8 if (n < 960 and k >= 1024) else 16
    block_k = 128 if k <= 640 else 512 if (k >= 8192 or k <= 2048 or (k >= 4096 and n <= k)) else 256
    stages = 5 if k <= 640 else 2 if n >= 16384 else min(4, triton.cdiv(k, block_k))
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": 2, "num_stages": stages}


def launch_extras(weight: torch.Tensor, rows: int, block_k: int) -> dict:
    """PDL keywords (`pdl_launch`), and with PDL on a weight of at most `PREFETCH_MAX_BYTES`, `PREFETCH_K`: the
    kernel prefetches its rows' first `PREFETCH_BLOCKS` K blocks (at least `PREFETCH_MIN_K` columns) to L2
    before it waits for the previous kernel, so the loads after the wait skip the DRAM latency. On an H200
    this took the SmolLM2-shape step at batch 1 from 0.726 to 0.683 ms. At an 8B shape one block of every
    projection, the MLP's included, beats two blocks of the attention projections only (docs/kernels.md); the
    size limit keeps a vocabulary-sized LM head (1 GB at Llama-3.1-8B) from prefetching a column block of it."""
    kw = pdl_launch(weight, rows)
    if kw["PDL"] and weight.numel() * weight.element_size() <= PREFETCH_MAX_BYTES:
        kw["PREFETCH_K"] = max(PREFETCH_BLOCKS * block_k, PREFETCH_MIN_K)
    return kw


class NormedRows(NamedTuple):
    """An RMSNorm's input as the projection that adds into the residual stream leaves it (`skinny_linear_add`
    with `norm`): the new residual rows times the norm weight, not yet scaled, and each writer program's sums
    of squares of its columns. The projection that takes it (`rms=`, its input being `xg`) sums the parts
    and scales its accumulator by each row's `rsqrt(mean square + eps)` before the bias. The norm then costs
    no launch of its own, and no arithmetic sits between the consumer's loads and its MMA (which Triton
    would not software-pipeline: scaling each K block in the loop doubled an 8B model's decode step). With
    `first` the consumer sums the parts before its K loop, not after it (`skinny_linear_add`'s
    `release_late`)."""

    xg: torch.Tensor  # [M, K] residual rows * norm weight, rounded to the model dtype
    parts: torch.Tensor  # fp32 [M, P]: sums of squares of the rows over each writer program's columns
    eps: float
    first: bool = False


def _launch(x, weight, bias, out, gated: bool, config: dict | None, accumulate: bool = False,
            rms: NormedRows | None = None, norm_out: tuple | None = None, release_late: bool = False) -> None:
    m, k = x.shape
    n = weight.shape[0]
    cfg = dict(config or skinny_config(n, k, gated))
    block_n, block_k = cfg.pop("BLOCK_N"), cfg.pop("BLOCK_K")
    n_out = out.shape[1]
    g_out, xg_out, parts_out = norm_out or (weight, out, out)  # unused without NORM_OUT
    if norm_out is not None:
        assert parts_out.shape == (m, triton.cdiv(n_out, block_n)), (parts_out.shape, n_out, block_n)
    parts_in, n_parts = (rms.parts, rms.parts.shape[1]) if rms is not None else (out, 0)
    _skinny_linear_kernel[(triton.cdiv(n_out, block_n),)](
        x, weight, bias if bias is not None else weight, out, m, n_out, k, x.stride(0), weight.stride(0),
        out.stride(0), parts_in, parts_in.stride(0), n_parts, rms.eps if rms is not None else 0.0,
        g_out, xg_out, xg_out.stride(0), parts_out, parts_out.stride(0),
        HAS_BIAS=bias is not None, GATED=gated, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, **cfg,
        RMS_PARTS=triton.next_power_of_2(n_parts) if rms is not None else 0, ACCUMULATE=accumulate,
        RMS_FIRST=rms is not None and rms.first, RELEASE_LATE=release_late,
        NORM_OUT=norm_out is not None, **launch_extras(weight, m, block_k),
    )


def _check(x: torch.Tensor, weight: torch.Tensor, gated: bool, rms: NormedRows | None) -> None:
    m, k = x.shape
    n, kw = weight.shape
    assert m <= MAX_ROWS, f"the skinny linear takes at most {MAX_ROWS} rows, got {m}"
    assert kw == k and (not gated or n % 2 == 0), (x.shape, weight.shape, gated)
    assert x.stride(-1) == 1 and weight.stride(-1) == 1, (x.stride(), weight.stride())
    assert x.dtype == weight.dtype, (x.dtype, weight.dtype)
    if rms is not None:
        assert x is rms.xg, "with `rms`, the input is its `xg`"
        assert rms.parts.dtype == torch.float32 and rms.parts.shape[0] == m and rms.parts.stride(1) == 1, (
            rms.parts.dtype, rms.parts.shape)


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  gated: bool = False, out: torch.Tensor | None = None, config: dict | None = None,
                  rms: NormedRows | None = None) -> torch.Tensor:
    """`x [M, K] @ weight[N, K]^T (+ bias)` for `M <= MAX_ROWS`. With `gated`, `weight` is the SwiGLU MLP's
    fused gate/up projection `[2I, K]` (gate rows first) and the result is `silu(gate) * up` `[M, I]`. With
    `rms` (a `NormedRows`; `x` is then its `xg`), the input is that RMSNorm's output. `out` may be fp32 (not
    gated): the result rounded to `x`'s dtype, then widened, as `F.linear(x, weight).float()`."""
    _check(x, weight, gated, rms)
    m = x.shape[0]
    n_out = weight.shape[0] // 2 if gated else weight.shape[0]
    if out is None:
        out = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    assert out.shape == (m, n_out) and out.stride(-1) == 1, (out.shape, out.stride())
    if m:
        _launch(x, weight, bias, out, gated, config, rms=rms)
    return out


def skinny_linear_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, *,
                      norm: tuple[torch.Tensor, float] | None = None, config: dict | None = None,
                      release_late: bool = False) -> NormedRows | None:
    """`residual [M, N] += x @ weight^T (+ bias)` (the projection rounded, then one fp32 add rounded once, as
    the unfused add). With `norm=(g, eps)`, also leaves the next RMSNorm's input (`NormedRows`) for the
    projection after it.

    `release_late` (under PDL): the next kernel launches when this one's programs have finished their K loops,
    not when they have passed the wait, and the `NormedRows` it leaves are summed first by their consumer
    (`first`). At an 8B shape the next projection's programs, placed on the SMs while this one streams, slow
    it more than the early start gains; placed late, the consumer has the parts' latency to hide in its loop.
    Smaller models gain from the early placement; `engine/models/fused.py` decides (`FOLD_LATE_MIN_HIDDEN`)."""
    _check(x, weight, False, None)
    m, n = x.shape[0], weight.shape[0]
    assert residual.shape == (m, n) and residual.stride(-1) == 1 and residual.dtype == x.dtype, (
        residual.shape, residual.stride(), residual.dtype)
    config = config or skinny_config(n, x.shape[1])
    normed = None
    if norm is not None:
        assert norm[0].shape == (n,) and norm[0].is_contiguous(), (norm[0].shape, n)
        normed = NormedRows(torch.empty_like(residual), torch.empty((m, triton.cdiv(n, config["BLOCK_N"])),
                                                                    dtype=torch.float32, device=x.device), norm[1],
                            first=release_late)
    if m:
        _launch(x, weight, bias, residual, False, config, accumulate=True,
                norm_out=None if normed is None else (norm[0], normed.xg, normed.parts), release_late=release_late)
    return normed


def skinny_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                      gated: bool = False) -> torch.Tensor:
    """Torch twin of `skinny_linear`: the unfused arithmetic (`F.linear`, then silu_and_mul's rounding)."""
    y = torch.nn.functional.linear(x, weight, bias)
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    return y


def skinny_linear_add_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          residual: torch.Tensor, norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor | None:
    """Torch twin of `skinny_linear_add`: `residual += F.linear(...)` in place, and with `norm` the next
    RMSNorm's output `g * rmsnorm(residual)` as `add_rmsnorm_ref` computes it (what a projection taking the
    `NormedRows` sees)."""
    from pdpair.kernels.fused.add_rmsnorm import add_rmsnorm_ref

    residual.copy_(residual + torch.nn.functional.linear(x, weight, bias))
    return None if norm is None else add_rmsnorm_ref(None, residual.clone(), norm[0], norm[1])
