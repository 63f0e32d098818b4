"""Causal prefill through torch's scaled_dot_product_attention (cuDNN / FlashAttention on CUDA) for extend
batches with no cached prefix: every row attends only to its own new tokens.

The triton backend routes such batches here when `TritonBackend.extend_sdpa` is on and the rows are all one
length (one batched call) or few (one call per row); chunks over a cached prefix (chunked prefill, prefix
reuse) and sliding-window layers stay on the Triton extend kernel, which reads the paged prefix.
K/V heads are repeated to the query heads so the dispatcher may pick cuDNN, its fastest backend here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MAX_RAGGED_ROWS = 8  # unequal rows: one SDPA call each, so only a few


def sdpa_fits(extend_lens: np.ndarray) -> bool:
    """Whether a no-prefix extend batch with these row lengths goes through SDPA."""
    return len(extend_lens) > 0 and (bool((extend_lens == extend_lens[0]).all()) or len(extend_lens) <= MAX_RAGGED_ROWS)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor) -> None:
    """q/out `[B, L, H, D]`, k/v `[B, L, KVH, D]`: causal attention of each row over itself."""
    group = q.shape[2] // k.shape[2]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                       scale=scale)
    out.copy_(o.transpose(1, 2))


def sdpa_extend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extend_lens: np.ndarray, scale: float,
                out: torch.Tensor) -> torch.Tensor:
    """q `[T, H, D]`, k/v `[T, KVH, D]` of rows of `extend_lens` tokens (no cached prefix) -> out `[T, H, D]`."""
    assert q.shape[0] == k.shape[0] == v.shape[0] == int(extend_lens.sum()), (q.shape, k.shape, extend_lens.sum())
    assert q.shape[2] == k.shape[2] and q.shape[1] % k.shape[1] == 0, (q.shape, k.shape)
    if bool((extend_lens == extend_lens[0]).all()):
        b, n = len(extend_lens), int(extend_lens[0])
        _causal(q.view(b, n, *q.shape[1:]), k.view(b, n, *k.shape[1:]), v.view(b, n, *v.shape[1:]), scale,
                out.view(b, n, *out.shape[1:]))
        return out
    start = 0
    for n in extend_lens.tolist():
        s = slice(start, start + n)
        _causal(q[s][None], k[s][None], v[s][None], scale, out[s][None])
        start += n
    return out
