"""Forward-batch metadata (what attention backends read) and the context handed to the model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch


class ForwardMode(Enum):
    EXTEND = "extend"  # prefill chunks: new K/V attend to the cached prefix plus themselves, causally
    DECODE = "decode"  # one new token per request


@dataclass
class WindowView:
    """A sliding-window pool's metadata: its own slots for the new K/V and, per row, the keys from the page of
    the first key its first query can see (`kv_starts`, page-aligned) to the end of the prefix (EXTEND) or the
    sequence (DECODE). Keys before a query's window in that span are masked by the attention."""

    window: int
    out_cache_loc: torch.Tensor  # int64 [T]
    kv_indptr: torch.Tensor  # int32 [B + 1]
    kv_indices: torch.Tensor  # int32 [sum kv lens]
    kv_starts: torch.Tensor  # int32 [B], position of each row's first listed key
    kv_starts_cpu: np.ndarray


def _gather_rows(table: torch.Tensor, rows_t: torch.Tensor, starts: np.ndarray, lens: np.ndarray) -> torch.Tensor:
    """Concatenated `table[row, start : start + len]` over the rows."""
    device = table.device
    width = int(lens.max()) if len(lens) else 0
    if not width:
        return torch.zeros(0, dtype=torch.int32, device=device)
    cols = torch.from_numpy(starts).to(device)[:, None] + torch.arange(width, device=device)[None, :]
    valid = torch.arange(width, device=device)[None, :] < torch.from_numpy(lens).to(device)[:, None]
    cols = torch.where(valid, cols, 0).clamp(max=table.shape[1] - 1)
    return table[rows_t[:, None], cols][valid]


def _window_spans(mode: ForwardMode, window: int, page_size: int, prefix: np.ndarray,
                  seq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sliding-window pool's listed keys per row: their first position (page-aligned), count and indptr."""
    first_query = seq - 1 if mode is ForwardMode.DECODE else prefix
    starts = np.maximum(first_query - (window - 1), 0) // page_size * page_size
    ends = seq if mode is ForwardMode.DECODE else prefix
    lens = np.maximum(ends - starts, 0)
    indptr = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    return starts, lens, indptr


def window_view(mode: ForwardMode, table: torch.Tensor, window: int, page_size: int, rows_t: torch.Tensor,
                prefix: np.ndarray, seq: np.ndarray, ext_t: torch.Tensor, positions_t: torch.Tensor) -> WindowView:
    """The `WindowView` of one sliding-window pool (request table `table`) for a batch."""
    starts, lens, indptr = _window_spans(mode, window, page_size, prefix, seq)
    device = table.device
    return WindowView(
        window=window,
        out_cache_loc=table[torch.repeat_interleave(rows_t, ext_t), positions_t].long(),
        kv_indptr=torch.from_numpy(indptr.astype(np.int32)).to(device),
        kv_indices=_gather_rows(table, rows_t, starts, lens),
        kv_starts=torch.from_numpy(starts.astype(np.int32)).to(device),
        kv_starts_cpu=starts,
    )


def _device_kv_indices(table: torch.Tensor, rows_t: torch.Tensor, lens: np.ndarray, lens_t: torch.Tensor,
                       indptr: np.ndarray, indptr_t: torch.Tensor, starts: np.ndarray | None = None,
                       starts_t: torch.Tensor | None = None) -> torch.Tensor:
    """`_gather_rows` on CUDA from staged int32 lens / indptr / starts: one kernel launch and no host sync when
    Triton is there (the total comes from the host `indptr`)."""
    from pdpair.kernels import HAS_TRITON

    total = int(indptr[-1])
    if total == 0:
        return torch.zeros(0, dtype=torch.int32, device=table.device)
    if not HAS_TRITON:  # indexing: host syncs for the output size
        return _gather_rows(table, rows_t, np.zeros_like(lens) if starts is None else starts, lens)
    from pdpair.kernels.attention import build_kv_indices

    out = torch.empty(total, dtype=torch.int32, device=table.device)
    return build_kv_indices(table, rows_t, lens_t, indptr_t, out, kv_starts=starts_t)


@dataclass
class ForwardBatch:
    """Ragged batch metadata, tensors on the device (the shapes CUDA-graph static buffers would hold).

    `seq_lens` INCLUDES the tokens being extended (production convention). For EXTEND, `kv_indptr` /
    `kv_indices` list the token slots of the cached prefix only (`seq_lens - extend_lens`, clamped at 0);
    for DECODE they list every slot including the new token's (written before attending).
    """

    mode: ForwardMode
    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    req_pool_indices: torch.Tensor  # int64 [B]
    seq_lens: torch.Tensor  # int32 [B], prefix + extend
    extend_lens: torch.Tensor  # int32 [B]
    qo_indptr: torch.Tensor  # int32 [B + 1]
    kv_indptr: torch.Tensor  # int32 [B + 1]
    kv_indices: torch.Tensor  # int32 [sum kv lens], token slots
    out_cache_loc: torch.Tensor  # int64 [T], slots where the new K/V go
    seq_lens_cpu: np.ndarray  # host copies for loop bounds and shapes
    extend_lens_cpu: np.ndarray
    windows: dict[str, WindowView] = field(default_factory=dict)  # per sliding-window pool kind
    # per row its mamba state slot (CUDA graphs: a static buffer, the dummy 0 for padding rows);
    # None: hybrid models look it up from the row
    state_slots: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def is_decode(self) -> bool:
        return self.mode is ForwardMode.DECODE

    @classmethod
    def build(cls, mode: ForwardMode, rows: np.ndarray, prefix_lens: np.ndarray, extend_lens: np.ndarray,
              input_ids: list[int], req_to_token: torch.Tensor,
              windowed: Mapping[str, tuple[torch.Tensor, int, int]] | None = None) -> ForwardBatch:
        """Metadata for requests in table `rows`, each extending `extend_lens` tokens after `prefix_lens`.

        `windowed`: sliding-window pool kind -> (its request table, window, page size). On CUDA the host arrays
        travel in one pinned non-blocking copy per dtype and the kv indices are gathered on the device (no host
        sync)."""
        device = req_to_token.device
        prefix = np.asarray(prefix_lens, dtype=np.int64)
        ext = np.asarray(extend_lens, dtype=np.int64)
        seq = prefix + ext
        num_tokens = int(ext.sum())
        assert num_tokens == len(input_ids), f"extend lengths sum to {num_tokens}, got {len(input_ids)} ids"
        assert (ext > 0).all(), f"every request must extend at least one token: {ext.tolist()}"
        qo_indptr = np.zeros(len(ext) + 1, dtype=np.int64)
        np.cumsum(ext, out=qo_indptr[1:])
        positions = np.arange(num_tokens) + np.repeat(prefix - qo_indptr[:-1], ext)
        kv_lens = seq if mode is ForwardMode.DECODE else prefix
        kv_indptr = np.zeros(len(ext) + 1, dtype=np.int64)
        np.cumsum(kv_lens, out=kv_indptr[1:])

        if device.type == "cuda":
            return cls._build_cuda(mode, rows, prefix, ext, positions, qo_indptr, kv_lens, kv_indptr, input_ids,
                                   req_to_token, windowed or {})
        rows_t = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(device)
        positions_t = torch.from_numpy(positions).to(device)
        out_cache_loc = req_to_token[torch.repeat_interleave(rows_t, torch.from_numpy(ext).to(device)),
                                     positions_t].long()
        max_kv = int(kv_lens.max()) if len(kv_lens) else 0
        if max_kv:
            kv_lens_t = torch.from_numpy(kv_lens).to(device)
            table = req_to_token[rows_t, :max_kv]
            kv_indices = table[torch.arange(max_kv, device=device)[None, :] < kv_lens_t[:, None]]
        else:
            kv_indices = torch.zeros(0, dtype=torch.int32, device=device)
        ext_t = torch.from_numpy(ext).to(device)
        windows = {kind: window_view(mode, table, w, ps, rows_t, prefix, seq, ext_t, positions_t)
                   for kind, (table, w, ps) in (windowed or {}).items()}
        return cls(
            mode=mode,
            input_ids=torch.tensor(input_ids, dtype=torch.long).to(device),
            positions=positions_t,
            req_pool_indices=rows_t,
            seq_lens=torch.from_numpy(seq.astype(np.int32)).to(device),
            extend_lens=torch.from_numpy(ext.astype(np.int32)).to(device),
            qo_indptr=torch.from_numpy(qo_indptr.astype(np.int32)).to(device),
            kv_indptr=torch.from_numpy(kv_indptr.astype(np.int32)).to(device),
            kv_indices=kv_indices,
            out_cache_loc=out_cache_loc,
            seq_lens_cpu=seq,
            extend_lens_cpu=ext,
            windows=windows,
        )


    @classmethod
    def _build_cuda(cls, mode: ForwardMode, rows, prefix: np.ndarray, ext: np.ndarray, positions: np.ndarray,
                    qo_indptr: np.ndarray, kv_lens: np.ndarray, kv_indptr: np.ndarray, input_ids: list[int],
                    req_to_token: torch.Tensor,
                    windowed: Mapping[str, tuple[torch.Tensor, int, int]]) -> ForwardBatch:
        from pdpair.engine.staging import stage

        device = req_to_token.device
        rows = np.asarray(rows, dtype=np.int64)
        seq = prefix + ext
        spans = [_window_spans(mode, w, ps, prefix, seq) for _, w, ps in windowed.values()]
        ids_t, pos_t, rows_t, tok_rows_t = stage(
            [np.asarray(input_ids, dtype=np.int64), positions, rows, np.repeat(rows, ext)], device)
        small = stage([seq, ext, qo_indptr, kv_lens, kv_indptr, *(a for span in spans for a in span)], device,
                      torch.int32)
        seq_t, ext_t, qo_t, kvlen_t, kvp_t = small[:5]
        windows = {}
        for i, ((kind, (table, w, _)), (starts, lens, indptr)) in enumerate(zip(windowed.items(), spans, strict=True)):
            starts_t, lens_t, indptr_t = small[5 + 3 * i : 8 + 3 * i]
            windows[kind] = WindowView(
                window=w, out_cache_loc=table[tok_rows_t, pos_t].long(), kv_indptr=indptr_t,
                kv_indices=_device_kv_indices(table, rows_t, lens, lens_t, indptr, indptr_t, starts, starts_t),
                kv_starts=starts_t, kv_starts_cpu=starts)
        kv_indices = _device_kv_indices(req_to_token, rows_t, kv_lens, kvlen_t, kv_indptr, kvp_t)
        return cls(mode=mode, input_ids=ids_t, positions=pos_t, req_pool_indices=rows_t, seq_lens=seq_t,
                   extend_lens=ext_t, qo_indptr=qo_t, kv_indptr=kvp_t, kv_indices=kv_indices,
                   out_cache_loc=req_to_token[tok_rows_t, pos_t].long(), seq_lens_cpu=seq, extend_lens_cpu=ext,
                   windows=windows)


@dataclass
class ForwardContext:
    """What the model's forward receives: the attention backend, the batch and the rows to compute logits for."""

    backend: Any
    batch: ForwardBatch
    logits_indices: torch.Tensor  # int64 rows of the batch's tokens
