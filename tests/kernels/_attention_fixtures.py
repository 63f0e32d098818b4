"""Shared pieces of the attention kernel tests: interpreted kernel modules and random paged batches."""

from __future__ import annotations

import atexit
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch

_EXECUTOR: ProcessPoolExecutor | None = None


def _interpret_init() -> None:
    # runs in the fresh worker before anything imports triton: every @triton.jit there is interpreted
    os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(1)


def interpreted(fn, *args, **kwargs):
    """Run `fn(*args, **kwargs)` in a worker process whose Triton runs in the CPU interpreter.

    Triton decides interpreted-or-compiled when it is imported (its own library functions are `@jit`s), so
    the kernels run in one spawned worker started with TRITON_INTERPRET=1, whatever this process imported
    before. The worker is shared by all kernel test modules and lives as long as the test session.
    """
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_interpret_init)
        atexit.register(_EXECUTOR.shutdown)
    return _EXECUTOR.submit(fn, *args, **kwargs).result(timeout=300)


@dataclass
class PagedBatch:
    """A pool `[P, layers, 2, page_size, KVH, D]`, layer 1's strided views, and each row's token slots."""

    pool: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    row_slots: list[torch.Tensor]  # row b's token slots for positions 0..len-1
    page_size: int


def paged_batch(lengths: list[int], page_size: int, kv_heads: int, head_dim: int, dtype, device="cpu",
                gen: torch.Generator | None = None, spare_pages: int = 3, layers: int = 3) -> PagedBatch:
    """Random K/V in a shuffled page pool; row b holds `lengths[b]` tokens in its own pages."""
    pages_per_row = [-(-n // page_size) for n in lengths]
    num_pages = sum(pages_per_row) + spare_pages
    shape = (num_pages, layers, 2, page_size, kv_heads, head_dim)
    pool = torch.randn(shape, generator=gen, device="cpu" if gen is not None else device).to(device=device, dtype=dtype)
    perm = torch.randperm(num_pages, generator=gen)
    rows, used = [], 0
    for n, np_ in zip(lengths, pages_per_row, strict=True):
        pages = perm[used : used + np_]
        used += np_
        pos = torch.arange(n)
        rows.append((pages[pos // page_size] * page_size + pos % page_size).to(torch.int32))
    return PagedBatch(pool, pool[:, 1, 0], pool[:, 1, 1], rows, page_size)


def indptr(lengths: list[int], device="cpu") -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    out[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    return out.to(device)


def cat_slots(slots: list[torch.Tensor], device="cpu") -> torch.Tensor:
    return (torch.cat(slots) if slots else torch.empty(0, dtype=torch.int32)).to(device)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere fails any bound."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))
