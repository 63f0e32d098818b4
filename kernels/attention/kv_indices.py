"""Build `kv_indices` (token slots, ragged by `kv_indptr`) from `req_to_token` rows in one launch."""

import torch
from pdpair.kernels.triton_utils import tl, triton


@triton.jit
def _kv_indices_kernel(
    req_to_token,
    req_pool_indices,
    kv_lens,
    kv_starts,
    kv_indptr,
    kv_indices,
    stride_r2t,
    HAS_START: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    req = tl.load(req_pool_indices + row).to(tl.int64)
    n = tl.load(kv_lens + row)
    out = tl.load(kv_indptr + row)
    start = 0
    if HAS_START:
        start = tl.load(kv_starts + row)
    src = req_to_token + req * stride_r2t + start
    for i in range(0, n, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(kv_indices + out + offs, tl.load(src + offs, mask=mask), mask=mask)


def build_kv_indptr(kv_lens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`[0, cumsum(kv_lens)]` as int32 (written into `out[: len + 1]` when given, e.g. a graph's static buffer)."""
    n = kv_lens.shape[0]
    if out is None:
        out = torch.empty(n + 1, dtype=torch.int32, device=kv_lens.device)
    out[:1].zero_()  # no host scalar: this runs inside CUDA-graph capture
    torch.cumsum(kv_lens, 0, out=out[1 : n + 1])
    return out[: n + 1]


def build_kv_indices(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    kv_lens: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_starts: torch.Tensor | None = None,
    block: int = 512,
) -> torch.Tensor:
    """kv_indices[kv_indptr[i] + j] = req_to_token[req_pool_indices[i], kv_starts[i] + j] for j < kv_lens[i].

    `kv_indices` must hold at least `kv_indptr[-1]` entries (not checked: that would sync with the device).
    `kv_starts` (optional) skips the head of each row, e.g. tokens outside a sliding window.
    """
    b = req_pool_indices.shape[0]
    assert req_to_token.dim() == 2 and req_to_token.stride(1) == 1, (req_to_token.shape, req_to_token.stride())
    assert req_to_token.dtype == torch.int32 and kv_indices.dtype == torch.int32, (req_to_token.dtype, kv_indices.dtype)
    assert kv_lens.shape == (b,) and kv_indptr.shape[0] >= b + 1, (kv_lens.shape, kv_indptr.shape, b)
    assert kv_starts is None or kv_starts.shape == (b,), (kv_starts.shape, b)
    if b == 0:
        return kv_indices
    _kv_indices_kernel[(b,)](
        req_to_token,
        req_pool_indices,
        kv_lens,
        kv_starts if kv_starts is not None else kv_lens,
        kv_indptr,
        kv_indices,
        req_to_token.stride(0),
        HAS_START=kv_starts is not None,
        BLOCK=block,
    )
    return kv_indices


def build_kv_indices_ref(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    kv_lens: torch.Tensor,
    kv_starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Torch twin of `build_kv_indices`: the concatenated rows."""
    rows = []
    for i in range(req_pool_indices.shape[0]):
        s = 0 if kv_starts is None else int(kv_starts[i])
        n = int(kv_lens[i])
        rows.append(req_to_token[int(req_pool_indices[i]), s : s + n])
    if not rows:
        return torch.empty(0, dtype=req_to_token.dtype, device=req_to_token.device)
    return torch.cat(rows)
