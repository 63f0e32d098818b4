"""Linear layers for a few rows (a decode step's batch): `y = x W^T (+ b)` streaming the weight once.

At batch 1-16 a decode step's projections are weight-bandwidth problems: every byte of `W [N, K]` is read for a
handful of rows. cuBLAS picks general tile kernels there (about 3.9 us for SmolLM2's 576-wide projections, 3.1
TB/s for an 8B model's attention projections, plus a split-K reduce). This kernel gives each program
`BLOCK_N` output columns over the whole of K, reads the weight once with coalesced, pipelined loads, and keeps
the rows in one `BLOCK_M = 16` MMA tile. For the SwiGLU MLP's fused gate/up weight (`gated=True`) a program
reads matching gate and up rows and writes `silu(gate) * up` directly, which removes the SiLU-and-mul kernel
and half the projection's output writes from the step. (Folding SiLU-and-mul into the down projection's
input load instead was 5x slower: the elementwise work between load and MMA breaks the load pipeline.)

Used by the fused decoder forward (`engine/models/fused.py`) for batches of at most `MAX_ROWS` rows on CUDA;
larger batches go to cuBLAS, which is compute-efficient there.
"""

from __future__ import annotations

import torch
from pdpair.kernels.triton_utils import pdl_launch, pdl_prologue, prefetch_l2, tl, triton

MAX_ROWS = 16  # rows one MMA tile holds; more go to cuBLAS
PREFETCH_MAX_BYTES = 8 << 20  # weights up to this size prefetch their first K blocks before the PDL wait
PREFETCH_BLOCKS = 2


@triton.jit
def prefetch_rows(w, rows, mask_rows, stride_wn, K, offs_l):
    """L2 prefetch of weight `rows` at columns `offs_l` (one per 128-byte line: `tl.arange(0, PREFETCH_K //
    64) * 64` for the first PREFETCH_K columns)."""
    prefetch_l2(w + (rows[:, None].to(tl.int64) * stride_wn + offs_l[None, :]),
                mask_rows[:, None] & (offs_l < K)[None, :])


@triton.jit
def _skinny_linear_kernel(
    x, w, bias, y, M, N, K, stride_xm, stride_wn, stride_ym,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
    PREFETCH_K: tl.constexpr = 0,
):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if PREFETCH_K > 0:
        offs_l = tl.arange(0, PREFETCH_K // 64) * 64
        prefetch_rows(w, offs_n, offs_n < N, stride_wn, K, offs_l)
        if GATED:
            prefetch_rows(w + N.to(tl.int64) * stride_wn, offs_n, offs_n < N, stride_wn, K, offs_l)
    pdl_prologue(PDL)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
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
    if HAS_BIAS:
        acc += tl.load(bias + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_up += tl.load(bias + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = acc.to(y.dtype.element_ty)
    if GATED:  # silu(gate) * up, each rounded as the unfused projection + silu_and_mul round them
        g = out.to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(y.dtype.element_ty).to(tl.float32)
        out = (act * acc_up.to(y.dtype.element_ty).to(tl.float32)).to(y.dtype.element_ty)
    tl.store(y + offs_m[:, None] * stride_ym + offs_n[None, :], out, mask=mask_m[:, None] & mask_n[None, :])


def skinny_config(n: int, k: int, gated: bool = False) -> dict:
    """Launch parameters for a weight `[n, k]`, fitted to a sweep on an H200 (`bench/small_batch_gpu.py
    --sweep`): wide column blocks for wide weights, narrow ones so a small weight still spreads over many
    SMs, and as many K steps in flight as the pipeline holds. A gated weight's programs read a gate and an
    up block each, so they take half the columns."""
    block_n = 32 if n >= 4096 else 8 if (n < 960 and k >= 1024) else 16
    block_k = 128 if k <= 640 else 512 if (k >= 8192 or k <= 2048) else 256
    stages = 5 if k <= 640 else 2 if n >= 16384 else min(4, triton.cdiv(k, block_k))
    if gated:
        block_n = max(8, block_n // 2)
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": 2, "num_stages": stages}


def launch_extras(weight: torch.Tensor, rows: int, block_k: int) -> dict:
    """PDL keywords (`pdl_launch`), and with PDL on a small weight, `PREFETCH_K`: the kernel prefetches its
    rows' first K blocks to L2 before it waits for the previous kernel, so the loads after the wait skip the
    DRAM latency. On an H200 this took the SmolLM2-shape step at batch 1 from 0.726 to 0.683 ms; on an 8B
    model's weights (16-235 MB each) it measured no gain (4.330 vs 4.354 ms), hence the size limit."""
    kw = pdl_launch(weight, rows)
    if kw["PDL"] and weight.numel() * weight.element_size() <= PREFETCH_MAX_BYTES:
        kw["PREFETCH_K"] = PREFETCH_BLOCKS * block_k
    return kw


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                  gated: bool = False, out: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """`x [M, K] @ weight[N, K]^T (+ bias)` for `M <= MAX_ROWS`. With `gated`, `weight` is the SwiGLU MLP's
    fused gate/up projection `[2I, K]` (gate rows first) and the result is `silu(gate) * up` `[M, I]`."""
    m, k = x.shape
    n, kw = weight.shape
    assert m <= MAX_ROWS, f"skinny_linear takes at most {MAX_ROWS} rows, got {m}"
    assert kw == k and (not gated or n % 2 == 0), (x.shape, weight.shape, gated)
    assert x.stride(-1) == 1 and weight.stride(-1) == 1, (x.stride(), weight.stride())
    assert x.dtype == weight.dtype, (x.dtype, weight.dtype)
    n_out = n // 2 if gated else n
    if out is None:
        out = torch.empty((m, n_out), dtype=x.dtype, device=x.device)
    assert out.shape == (m, n_out) and out.stride(-1) == 1, (out.shape, out.stride())
    if m == 0:
        return out
    cfg = dict(config or skinny_config(n, k, gated))
    block_n, block_k = cfg.pop("BLOCK_N"), cfg.pop("BLOCK_K")
    _skinny_linear_kernel[(triton.cdiv(n_out, block_n),)](
        x, weight, bias if bias is not None else weight, out, m, n_out, k, x.stride(0), weight.stride(0),
        out.stride(0), HAS_BIAS=bias is not None, GATED=gated, BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k, **cfg,
        **launch_extras(weight, m, block_k),
    )
    return out


def skinny_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                      gated: bool = False) -> torch.Tensor:
    """Torch twin of `skinny_linear`: the unfused arithmetic (`F.linear`, then silu_and_mul's rounding)."""
    y = torch.nn.functional.linear(x, weight, bias)
    if gated:
        gate, up = y.chunk(2, dim=-1)
        y = torch.nn.functional.silu(gate) * up
    return y
