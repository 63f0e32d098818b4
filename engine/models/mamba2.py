"""The mamba2 mixer: in-projection, causal conv with state, SSD scan (prefill) or recurrent step (decode), gated
RMSNorm, out-projection. Each request's conv and SSM state live in its slot of the `mamba` pool."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pdpair.engine.batch import ForwardBatch
from pdpair.engine.hybrid_config import HybridConfig
from pdpair.engine.memory.mamba_pool import MambaPool
from pdpair.engine.models.layers import Linear
from pdpair.kernels.mamba import (
    causal_conv1d_ref,
    conv_update,
    conv_update_ref,
    mamba_scan,
    selective_state_update,
    selective_state_update_ref,
    ssd_chunk_scan_ref,
)
from pdpair.kernels.triton_utils import HAS_TRITON
from torch import nn


def use_triton(x: torch.Tensor) -> bool:
    """The Triton kernels run on CUDA tensors when Triton is installed; the torch twins everywhere else."""
    return x.is_cuda and HAS_TRITON


@dataclass
class MambaStep:
    """Per-forward state addressing shared by every mamba layer: each row's slot and whether it starts fresh."""

    pool: MambaPool
    decode: bool
    slots: torch.Tensor  # int64 [B] on the device
    slots_cpu: list[int]
    fresh: list[bool]  # the row's first token is position 0: its state starts from zero
    bounds: list[tuple[int, int]]  # token range of each row in the batch
    cu_seqlens: torch.Tensor  # int32 [B + 1] on the device: the same ranges

    @classmethod
    def build(cls, batch: ForwardBatch, pool: MambaPool) -> MambaStep:
        if batch.is_decode:  # no host sync: decode addresses the states through the device tensor only
            slots = batch.state_slots if batch.state_slots is not None else pool.slots_of(batch.req_pool_indices)
            return cls(pool, True, slots, [], [], [], batch.qo_indptr)
        slots = pool.slots_of(batch.req_pool_indices)
        slots_cpu = slots.tolist()
        assert all(s >= pool.reserved_items for s in slots_cpu), f"rows without a mamba slot: {slots_cpu}"
        ext = batch.extend_lens_cpu
        prefix = batch.seq_lens_cpu - ext
        ends = np.cumsum(ext)
        bounds = [(int(e - n), int(e)) for e, n in zip(ends, ext, strict=True)]
        return cls(pool, batch.is_decode, slots, slots_cpu, [bool(p == 0) for p in prefix], bounds, batch.qo_indptr)


class GatedRMSNorm(nn.Module):
    """RMSNorm of `y * silu(gate)` over groups of `group_size` channels, in fp32 (Mamba2's output norm)."""

    def __init__(self, dim: int, group_size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, y: torch.Tensor, gate: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        h = y.float() * F.silu(gate.float())
        g = h.view(*h.shape[:-1], -1, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * g.view(h.shape)).to(out_dtype)


class ConvWeights(nn.Module):
    """The depthwise conv's parameters, named and shaped as Hugging Face's `conv1d` ([C, 1, K], [C])."""

    def __init__(self, channels: int, kernel: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(channels, dtype=dtype), requires_grad=False) if bias else None


class Mamba2Mixer(nn.Module):
    """`forward(x [T, hidden], step) -> [T, hidden]`; reads and writes the states of mamba layer `index`."""

    def __init__(self, hc: HybridConfig, hidden_size: int, eps: float, index: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.hc, self.index = hc, index
        inner, heads = hc.intermediate_size, hc.n_heads
        self.in_proj = Linear(hidden_size, inner + hc.conv_dim + heads, bias=hc.proj_bias, dtype=dtype)
        self.conv1d = ConvWeights(hc.conv_dim, hc.d_conv, hc.conv_bias, dtype)
        self.dt_bias = nn.Parameter(torch.empty(heads, dtype=dtype), requires_grad=False)
        self.A_log = nn.Parameter(torch.empty(heads, dtype=dtype), requires_grad=False)
        self.D = nn.Parameter(torch.empty(heads, dtype=dtype), requires_grad=False)
        self.norm = GatedRMSNorm(inner, inner // hc.n_groups, eps, dtype)
        self.out_proj = Linear(inner, hidden_size, bias=hc.proj_bias, dtype=dtype)

    def forward(self, x: torch.Tensor, step: MambaStep) -> torch.Tensor:
        hc = self.hc
        t = x.shape[0]
        gate, xbc, dt = self.in_proj(x).split([hc.intermediate_size, hc.conv_dim, hc.n_heads], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(hc.dt_min, hc.dt_max)
        A = -torch.exp(self.A_log.float())
        w, b = self.conv1d.weight[:, 0], self.conv1d.bias
        conv, ssm = step.pool.conv[:, self.index], step.pool.ssm[:, self.index]
        if step.decode and use_triton(x):  # in place on the slots: no gather / scatter
            xs, B, C = self._split(conv_update(xbc.contiguous(), conv, step.slots, w, b))
            y = selective_state_update(ssm, step.slots, xs, dt, A, B, C, self.D)
        elif step.decode:
            out, conv_new = conv_update_ref(xbc, conv[step.slots], w, b)
            conv[step.slots] = conv_new.to(conv.dtype)
            xs, B, C = self._split(out)
            y, ssm_new = selective_state_update_ref(ssm[step.slots], xs, dt, A, B, C, self.D)
            ssm[step.slots] = ssm_new.to(ssm.dtype)
        else:
            outs = []
            for (s, e), slot, fresh in zip(step.bounds, step.slots_cpu, step.fresh, strict=True):
                out, conv_new = causal_conv1d_ref(xbc[s:e], None if fresh else conv[slot], w, b)
                conv[slot] = conv_new.to(conv.dtype)
                outs.append(out)
            xs, B, C = self._split(torch.cat(outs))
            if use_triton(x):  # every segment in one launch, states read and written in their slots
                fresh_t = torch.tensor(step.fresh, dtype=torch.int32, device=x.device)
                y = mamba_scan(xs, dt, A, B, C, self.D, step.cu_seqlens, step.slots, fresh_t, ssm)
            else:
                y = torch.empty(t, hc.n_heads, hc.head_dim, dtype=torch.float32, device=x.device)
                for (s, e), slot, fresh in zip(step.bounds, step.slots_cpu, step.fresh, strict=True):
                    y[s:e], final = ssd_chunk_scan_ref(xs[s:e], dt[s:e], A, B[s:e], C[s:e], self.D, hc.chunk_size,
                                                       None if fresh else ssm[slot])
                    ssm[slot] = final.to(ssm.dtype)
        y = self.norm(y.view(t, hc.intermediate_size), gate, x.dtype)
        return self.out_proj(y)

    def _split(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hc = self.hc
        n = xbc.shape[0]
        gn = hc.n_groups * hc.d_state
        xs, B, C = xbc.split([hc.intermediate_size, gn, gn], dim=-1)
        return (xs.reshape(n, hc.n_heads, hc.head_dim), B.reshape(n, hc.n_groups, hc.d_state),
                C.reshape(n, hc.n_groups, hc.d_state))
