"""The SDPA route of no-prefix extend batches against the extend kernel's twin (shared by CPU and GPU tests)."""

from __future__ import annotations

import numpy as np
import torch

from tests.kernels._attention_fixtures import indptr, rel_err


def sdpa_extend_case(dtype, lens: list[int], heads: int, kv_heads: int, head_dim: int, device: str = "cpu",
                     seed: int = 0) -> dict:
    from pdpair.engine.attention.sdpa_extend import sdpa_extend, sdpa_fits
    from pdpair.kernels.attention import extend_attention_ref

    gen = torch.Generator().manual_seed(seed)
    t = sum(lens)
    q = torch.randn(t, heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(t, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(t, kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    cache = torch.zeros(1, 16, kv_heads, head_dim, device=device, dtype=dtype)
    out = torch.full_like(q, float("nan"))  # every element must be written
    sdpa_extend(q, k, v, np.asarray(lens), head_dim**-0.5, out)
    zeros = torch.zeros(len(lens) + 1, dtype=torch.int32, device=device)
    ref = extend_attention_ref(q.double(), k.double(), v.double(), cache.double(), cache.double(),
                               indptr(lens, device), torch.tensor(lens, dtype=torch.int32, device=device), zeros,
                               torch.zeros(0, dtype=torch.int32, device=device), head_dim**-0.5)
    return {"rel_err": rel_err(out, ref), "fits": sdpa_fits(np.asarray(lens))}
