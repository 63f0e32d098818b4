"""Residual add + RMSNorm in one pass: `residual += x` in place, then `out = weight * rmsnorm(residual)`.

Rounds where the unfused torch path rounds (the sum to the residual's dtype, the normalised row before the
weight), so it agrees with `RMSNorm(x + residual)` to within the row reduction's order.
"""

import torch
from pdpair.kernels.triton_utils import pdl_launch, pdl_prologue, tl, triton


@triton.jit
def _add_rmsnorm_kernel(
    x, res, w, out, rows, stride_x, stride_r, stride_o, n_cols, eps,
    HAS_ADD: tl.constexpr, BLOCK: tl.constexpr, HAS_ROWS: tl.constexpr = False, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    i = tl.program_id(0).to(tl.int64)
    row = i
    if HAS_ROWS:
        row = tl.load(rows + i).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    s = tl.load(res + row * stride_r + offs, mask=mask, other=0.0)
    if HAS_ADD:
        s = (s.to(tl.float32) + tl.load(x + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32))
        s = s.to(res.dtype.element_ty)
        tl.store(res + row * stride_r + offs, s, mask=mask)
    h = s.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    h = (h * rstd).to(out.dtype.element_ty).to(tl.float32)
    wt = tl.load(w + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + i * stride_o + offs, (wt * h).to(out.dtype.element_ty), mask=mask)


def add_rmsnorm(x: torch.Tensor | None, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """`residual [T, N] += x [T, N]` (skipped when x is None), returns `weight * rmsnorm(residual)` [T, N].
    `rows` ([R], distinct): only those rows, in that order: `residual[rows] += x[rows]`, and the result
    is [R, N] (the wanted rows of a forward's last norm, without gathering them first)."""
    n = residual.shape[1]
    t = residual.shape[0] if rows is None else rows.shape[0]
    assert weight.shape == (n,) and weight.dtype == residual.dtype, (weight.shape, weight.dtype, residual.dtype)
    assert residual.stride(-1) == 1 and weight.is_contiguous(), (residual.stride(), weight.stride())
    if x is not None:
        assert x.shape == residual.shape and x.dtype == residual.dtype, (x.shape, x.dtype, residual.shape)
        assert x.stride(-1) == 1, x.stride()
    if rows is not None:  # a caller's index tensor may live on the host, as tensor indexing allows
        rows = rows.to(device=residual.device, dtype=torch.int64, non_blocking=True)
    out = torch.empty((t, n), dtype=residual.dtype, device=residual.device)
    if t == 0:
        return out
    xx = residual if x is None else x
    _add_rmsnorm_kernel[(t,)](
        xx, residual, weight, out, residual if rows is None else rows, xx.stride(0), residual.stride(0),
        out.stride(0), n, eps,
        HAS_ADD=x is not None, BLOCK=triton.next_power_of_2(n), HAS_ROWS=rows is not None,
        num_warps=4 if n <= 2048 else 8,
        **pdl_launch(residual, t),
    )
    return out


def add_rmsnorm_ref(x: torch.Tensor | None, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Torch twin of `add_rmsnorm` (the unfused model's arithmetic: `x + residual`, then its RMSNorm)."""
    if x is not None:
        residual.copy_(residual + x)
    h = residual.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(residual.dtype)
