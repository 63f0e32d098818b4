"""Build `kv_indices` (token slots, ragged by `kv_indptr`) from `req_to_token` rows in one launch."""

import torch
from pdpair.kernels.triton_utils import tl, triton


@triton.jit
def _copy_slots(src, dst, n, BLOCK: tl.constexpr):
    """dst[:n] = src[:n]: one row's token slots into its span of kv_indices."""
    for i in range(0, n, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)


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
    _copy_slots(req_to_token + req * stride_r2t + start, kv_indices + out, n, BLOCK)


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


@triton.jit
def _decode_metadata_kernel(
    inputs,
    n,
    table,
    stride_table,
    token_source,
    state_rows,
    seq_lens,
    out_cache_loc,
    kv_indptr,
    kv_indices,
    state_slots,
    kv_starts,
    kv_lens,
    WINDOW: tl.constexpr,
    PAGE: tl.constexpr,
    HAS_SEQ: tl.constexpr,
    HAS_TOKENS: tl.constexpr,
    HAS_STATE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    num_real = tl.load(inputs + 3 * n)
    pos = tl.load(inputs + n + row)
    req = tl.load(inputs + 2 * n + row)
    real = row < num_real
    seq = tl.where(real, pos + 1, 1)
    start = seq * 0
    if WINDOW > 0:  # keys from the page of seq - window on
        start = (tl.maximum(seq - WINDOW, 0) // PAGE) * PAGE
    length = seq - start
    # this row's first index: the lengths of the rows before it, from their positions (no other program's output)
    offs = tl.arange(0, ROWS)
    before = offs < row
    lens = tl.where(offs < num_real, tl.load(inputs + n + offs, mask=before, other=0) + 1, 1)
    if WINDOW > 0:
        lens = lens - (tl.maximum(lens - WINDOW, 0) // PAGE) * PAGE
    first = tl.sum(tl.where(before, lens, 0), axis=0)
    tl.store(kv_indptr + row + 1, (first + length).to(tl.int32))
    if row == 0:
        tl.store(kv_indptr, first.to(tl.int32))  # 0: no rows before row 0
    src = table + req * stride_table
    slot = tl.load(src + pos, mask=real, other=0).to(tl.int64)
    tl.store(out_cache_loc + row, tl.where(real, slot, -1))
    if HAS_SEQ:
        tl.store(seq_lens + row, seq.to(tl.int32))
    if HAS_TOKENS:  # an id the host has not read yet: the previous step's sampled token of this row
        tok = tl.load(inputs + row)
        if tok < 0:
            tl.store(inputs + row, tl.load(token_source + req))
    if HAS_STATE:
        tl.store(state_slots + row, tl.where(real, tl.load(state_rows + req), 0))
    if WINDOW > 0:
        tl.store(kv_starts + row, start.to(tl.int32))
        tl.store(kv_lens + row, length.to(tl.int32))
    _copy_slots(src + start, kv_indices + first, length, BLOCK)


def derive_decode_metadata(
    inputs: torch.Tensor,
    batch_size: int,
    table: torch.Tensor,
    out_cache_loc: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    seq_lens: torch.Tensor | None = None,
    token_source: torch.Tensor | None = None,
    state_rows: torch.Tensor | None = None,
    state_slots: torch.Tensor | None = None,
    window: int = 0,
    page_size: int = 1,
    kv_starts: torch.Tensor | None = None,
    kv_lens: torch.Tensor | None = None,
    block: int = 512,
) -> None:
    """A decode batch's metadata from its staged inputs, in one launch (a CUDA graph's first kernel).

    `inputs` (int64) is `[ids | positions | table rows | number of real rows]`, each of the first three
    `n = (len(inputs) - 1) // 3` long; the first `batch_size` rows are derived. Real rows: `seq_len =
    position + 1`, K/V slot `table[row, position]`; the others (padding): `seq_len` 1, slot -1. Writes
    `out_cache_loc`, `kv_indptr[: batch_size + 1]` and `kv_indices` (each row's keys, ragged), and where given:
    `seq_lens` (int32); ids < 0 replaced in `inputs` by `token_source[row]`; `state_slots` = `state_rows[row]`
    for real rows, 0 (the dummy slot) for padding. `window > 0`: a sliding-window pool's view, keys from the
    page of `seq_len - window` on (`page_size`), with each row's `kv_starts` and `kv_lens`."""
    n = (inputs.shape[0] - 1) // 3
    assert inputs.dtype == torch.int64 and inputs.shape[0] == 3 * n + 1 and 0 < batch_size <= n, (inputs.shape, batch_size)
    assert table.dim() == 2 and table.stride(1) == 1 and table.dtype == torch.int32, (table.shape, table.dtype)
    assert kv_indices.dtype == torch.int32 and kv_indptr.dtype == torch.int32, (kv_indices.dtype, kv_indptr.dtype)
    assert (state_rows is None) == (state_slots is None), "state_rows and state_slots go together"
    assert window == 0 or (kv_starts is not None and kv_lens is not None), "a window view writes kv_starts, kv_lens"
    _decode_metadata_kernel[(batch_size,)](
        inputs,
        n,
        table,
        table.stride(0),
        token_source if token_source is not None else inputs,
        state_rows if state_rows is not None else inputs,
        seq_lens if seq_lens is not None else kv_indptr,
        out_cache_loc,
        kv_indptr,
        kv_indices,
        state_slots if state_slots is not None else out_cache_loc,
        kv_starts if kv_starts is not None else kv_indptr,
        kv_lens if kv_lens is not None else kv_indptr,
        WINDOW=window,
        PAGE=page_size,
        HAS_SEQ=seq_lens is not None,
        HAS_TOKENS=token_source is not None,
        HAS_STATE=state_rows is not None,
        ROWS=max(16, triton.next_power_of_2(batch_size)),
        BLOCK=block,
    )
