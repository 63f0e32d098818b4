"""Mamba2 rows of the GPU kernel benchmark: decode-step state update and conv update in GB/s of state moved
(read + write, against the copy ceiling), and the prefill scan in tokens/s, at a Granite 4.0-H-like size."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pdpair.kernels.mamba import conv_update, mamba_scan, mamba_scan_ref, selective_state_update

HEADS, HEAD_DIM, D_STATE, GROUPS, D_CONV = 64, 64, 128, 8, 4


def bench_mamba(ceiling: float, row: Callable[..., None], median_ms: Callable[..., float],
                bsz: int = 64, prompt: int = 4096) -> dict:
    dev = "cuda"
    items = bsz + 1
    ssm = torch.randn(items, HEADS, HEAD_DIM, D_STATE, device=dev)  # fp32 state, one layer
    slots = torch.randperm(bsz, device=dev) + 1
    x = torch.randn(bsz, HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    dt = torch.rand(bsz, HEADS, device=dev) * 0.1
    A, D = -torch.rand(HEADS, device=dev), torch.randn(HEADS, device=dev)
    B = torch.randn(bsz, GROUPS, D_STATE, device=dev, dtype=torch.bfloat16)
    C = torch.randn_like(B)
    ms = median_ms(lambda: selective_state_update(ssm, slots, x, dt, A, B, C, D))
    gbs = 2 * bsz * HEADS * HEAD_DIM * D_STATE * 4 / ms / 1e6
    row(f"mamba state update b{bsz} {HEADS}x{HEAD_DIM}x{D_STATE}", f"{gbs:8.0f} GB/s",
        f"{ms * 1e3:.1f} us, {100 * gbs / ceiling:.0f}% of copy")
    channels = HEADS * HEAD_DIM + 2 * GROUPS * D_STATE
    conv = torch.randn(items, channels, D_CONV - 1, device=dev, dtype=torch.bfloat16)
    xc = torch.randn(bsz, channels, device=dev, dtype=torch.bfloat16)
    w = torch.randn(channels, D_CONV, device=dev, dtype=torch.bfloat16)
    ms_c = median_ms(lambda: conv_update(xc, conv, slots, w, None))
    gbs_c = 2 * bsz * channels * (D_CONV - 1) * 2 / ms_c / 1e6
    row(f"mamba conv update b{bsz} C{channels}", f"{gbs_c:8.0f} GB/s", f"{ms_c * 1e3:.1f} us")
    t = prompt
    xs = torch.randn(t, HEADS, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    dts = torch.rand(t, HEADS, device=dev) * 0.1
    Bs = torch.randn(t, GROUPS, D_STATE, device=dev, dtype=torch.bfloat16)
    Cs = torch.randn_like(Bs)
    cu = torch.tensor([0, t], dtype=torch.int32, device=dev)
    one, fresh = slots[:1], torch.ones(1, dtype=torch.int32, device=dev)
    ms_s = median_ms(lambda: mamba_scan(xs, dts, A, Bs, Cs, D, cu, one, fresh, ssm), warmup=3, rep=20)
    ms_r = median_ms(lambda: mamba_scan_ref(xs, dts, A, Bs, Cs, D, cu, one, fresh, ssm.clone()), warmup=3, rep=20)
    row(f"mamba prefill scan {t} tokens (one sequence)", f"{t / ms_s / 1e3:8.1f} Mtok/s",
        f"{ms_s:.2f} ms; SSD torch twin {ms_r:.2f} ms")
    return {"state_update_gbs": gbs, "conv_update_gbs": gbs_c, "scan_ms": ms_s, "scan_twin_ms": ms_r}
