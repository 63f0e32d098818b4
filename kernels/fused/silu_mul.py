"""SiLU-and-mul: `silu(gate) * up` for the SwiGLU MLP's fused `[T, 2 * I]` gate/up projection, one pass."""

import torch
from pdpair.kernels.triton_utils import pdl_launch, pdl_prologue, tl, triton

_BLOCK = 1024


@triton.jit
def _silu_mul_kernel(gate_up, out, stride_g, stride_o, n_cols, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_cols
    g = tl.load(gate_up + row * stride_g + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gate_up + row * stride_g + n_cols + offs, mask=mask, other=0.0).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(out.dtype.element_ty).to(tl.float32)  # rounded as F.silu's output is
    tl.store(out + row * stride_o + offs, (act * u).to(out.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`gate_up [T, 2 * I]` (gate first, then up) -> `silu(gate) * up` [T, I]."""
    assert gate_up.dim() == 2 and gate_up.shape[1] % 2 == 0, gate_up.shape
    assert gate_up.stride(-1) == 1, gate_up.stride()
    t, n = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((t, n), dtype=gate_up.dtype, device=gate_up.device)
    if t == 0:
        return out
    _silu_mul_kernel[(t, triton.cdiv(n, _BLOCK))](gate_up, out, gate_up.stride(0), out.stride(0), n, BLOCK=_BLOCK,
                                                 num_warps=4, **pdl_launch(gate_up, t))
    return out


def silu_and_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """Torch twin of `silu_and_mul` (the unfused MLP's arithmetic)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up
