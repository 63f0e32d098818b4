"""Padding rows and idle batches: one-token requests whose K/V go to dummy item 0 of the pool."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from pdpair.engine.batch import ForwardBatch, ForwardMode

DUMMY_ITEM = 0  # reserved in every pool of a rank engine; padding rows write and read only here


def pad_batch(batch: ForwardBatch, n: int) -> ForwardBatch:
    """`batch` plus `n` padding rows at the end (one token each at position 0, slot 0 of item 0). In a decode
    batch a padding row attends to that one slot; in an extend batch it has no prefix."""
    if n == 0:
        return batch
    dev = batch.input_ids.device
    ones = torch.ones(n, dtype=torch.int32, device=dev)
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    step = torch.arange(1, n + 1, dtype=torch.int32, device=dev)
    kv_step = step if batch.is_decode else torch.zeros(n, dtype=torch.int32, device=dev)
    slot = 0  # the first token slot of DUMMY_ITEM
    return dataclasses.replace(
        batch,
        input_ids=torch.cat([batch.input_ids, zeros]),
        positions=torch.cat([batch.positions, zeros]),
        req_pool_indices=torch.cat([batch.req_pool_indices, zeros]),
        seq_lens=torch.cat([batch.seq_lens, ones]),
        extend_lens=torch.cat([batch.extend_lens, ones]),
        qo_indptr=torch.cat([batch.qo_indptr, batch.qo_indptr[-1] + step]),
        kv_indptr=torch.cat([batch.kv_indptr, batch.kv_indptr[-1] + kv_step]),
        kv_indices=torch.cat([batch.kv_indices, torch.full((int(kv_step[-1]),), slot, dtype=torch.int32,
                                                           device=dev)]),
        out_cache_loc=torch.cat([batch.out_cache_loc, zeros + slot]),
        seq_lens_cpu=np.concatenate([batch.seq_lens_cpu, np.ones(n, dtype=np.int64)]),
        extend_lens_cpu=np.concatenate([batch.extend_lens_cpu, np.ones(n, dtype=np.int64)]),
    )


def empty_batch(mode: ForwardMode, device: torch.device) -> ForwardBatch:
    """A batch of no requests (pad it to get an idle batch)."""
    i32 = torch.zeros(0, dtype=torch.int32, device=device)
    i64 = torch.zeros(0, dtype=torch.long, device=device)
    indptr = torch.zeros(1, dtype=torch.int32, device=device)
    none = np.zeros(0, dtype=np.int64)
    return ForwardBatch(mode, i64, i64, i64, i32, i32, indptr, indptr.clone(), i32, i64, none, none.copy())


def idle_batch(mode: ForwardMode, rows: int, device: torch.device) -> ForwardBatch:
    return pad_batch(empty_batch(mode, device), rows)
