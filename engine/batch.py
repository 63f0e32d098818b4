"""Forward-batch metadata (what attention backends read) and the context handed to the model."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch


class ForwardMode(Enum):
    EXTEND = "extend"  # prefill chunks: new K/V attend to the cached prefix plus themselves, causally
    DECODE = "decode"  # one new token per request


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
              input_ids: list[int], req_to_token: torch.Tensor) -> ForwardBatch:
        """Metadata for requests in table `rows`, each extending `extend_lens` tokens after `prefix_lens`.

        On CUDA the host arrays travel in one pinned non-blocking copy and `kv_indices` is gathered on the device
        (no host sync)."""
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
            return cls._build_cuda(mode, rows, seq, ext, positions, qo_indptr, kv_lens, kv_indptr, input_ids,
                                   req_to_token)
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
        )


    @classmethod
    def _build_cuda(cls, mode: ForwardMode, rows, seq: np.ndarray, ext: np.ndarray, positions: np.ndarray,
                    qo_indptr: np.ndarray, kv_lens: np.ndarray, kv_indptr: np.ndarray, input_ids: list[int],
                    req_to_token: torch.Tensor) -> ForwardBatch:
        from pdpair.engine.staging import stage
        from pdpair.kernels import HAS_TRITON

        device = req_to_token.device
        rows = np.asarray(rows, dtype=np.int64)
        ids_t, pos_t, rows_t, tok_rows_t, kvlen_t = stage(
            [np.asarray(input_ids, dtype=np.int64), positions, rows, np.repeat(rows, ext), kv_lens], device)
        seq_t, ext_t, qo_t, kvp_t = stage([seq, ext, qo_indptr, kv_indptr], device, torch.int32)
        kv_total = int(kv_indptr[-1])
        if kv_total == 0:
            kv_indices = torch.zeros(0, dtype=torch.int32, device=device)
        elif HAS_TRITON:
            from pdpair.kernels.attention import build_kv_indices

            kv_indices = torch.empty(kv_total, dtype=torch.int32, device=device)
            build_kv_indices(req_to_token, rows_t, kvlen_t.int(), kvp_t, kv_indices)
        else:  # boolean indexing: one host sync for the output size
            table = req_to_token[rows_t, : int(kv_lens.max())]
            kv_indices = table[torch.arange(table.shape[1], device=device)[None, :] < kvlen_t[:, None]]
        return cls(mode=mode, input_ids=ids_t, positions=pos_t, req_pool_indices=rows_t, seq_lens=seq_t,
                   extend_lens=ext_t, qo_indptr=qo_t, kv_indptr=kvp_t, kv_indices=kv_indices,
                   out_cache_loc=req_to_token[tok_rows_t, pos_t].long(), seq_lens_cpu=seq, extend_lens_cpu=ext)


@dataclass
class ForwardContext:
    """What the model's forward receives: the attention backend, the batch and the rows to compute logits for."""

    backend: Any
    batch: ForwardBatch
    logits_indices: torch.Tensor  # int64 rows of the batch's tokens
