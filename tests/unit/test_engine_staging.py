"""The CUDA branch of ForwardBatch.build (staged metadata), run on CPU with the copy replaced by its CPU
equivalent, against the plain CPU build."""

from __future__ import annotations

import numpy as np
import pdpair.engine.staging as staging
import pdpair.kernels as kernels
import pytest
import torch
from pdpair.engine.batch import ForwardBatch, ForwardMode

FIELDS = ("input_ids", "positions", "req_pool_indices", "seq_lens", "extend_lens", "qo_indptr", "kv_indptr",
          "kv_indices", "out_cache_loc")


def _cpu_stage(arrays, device, dtype=torch.int64):
    return [torch.tensor(np.asarray(a).reshape(-1).tolist(), dtype=dtype) for a in arrays]


@pytest.mark.parametrize("windowed", [False, True])
@pytest.mark.parametrize("mode", [ForwardMode.DECODE, ForwardMode.EXTEND])
def test_staged_build_equals_cpu_build(monkeypatch, mode, windowed):
    gen = torch.Generator().manual_seed(0)
    table = torch.randperm(8 * 64, generator=gen).to(torch.int32).view(8, 64)
    # a sliding-window pool's own table: rows 7 and 30 tokens long see only their last pages
    swa = {"swa": (torch.randperm(8 * 64, generator=gen).to(torch.int32).view(8, 64), 5, 4)} if windowed else None
    rows = np.array([5, 0, 3])
    prefix = np.array([7, 0, 30]) if mode is ForwardMode.EXTEND else np.array([7, 1, 30])
    ext = np.array([4, 9, 1]) if mode is ForwardMode.EXTEND else np.ones(3, dtype=np.int64)
    ids = torch.randint(0, 100, (int(ext.sum()),), generator=gen).tolist()
    ref = ForwardBatch.build(mode, rows, prefix, ext, ids, table, swa)
    monkeypatch.setattr(staging, "stage", _cpu_stage)
    monkeypatch.setattr(kernels, "HAS_TRITON", False)  # the device gather falls back to indexing
    got = ForwardBatch._build_cuda(mode, rows, prefix, ext, ref.positions.numpy(), ref.qo_indptr.numpy(),
                                   (prefix + ext) if mode is ForwardMode.DECODE else prefix,
                                   ref.kv_indptr.numpy().astype(np.int64), ids, table, swa or {})
    for name in FIELDS:
        a, b = getattr(got, name), getattr(ref, name)
        assert a.dtype == b.dtype and torch.equal(a, b), (name, a, b)
    assert got.windows.keys() == ref.windows.keys()
    for kind, view in ref.windows.items():
        assert view.kv_indices.numel() < ref.kv_indices.numel()  # window-clipped
        for name in ("out_cache_loc", "kv_indptr", "kv_indices", "kv_starts"):
            a, b = getattr(got.windows[kind], name), getattr(view, name)
            assert a.dtype == b.dtype and torch.equal(a, b), (kind, name, a, b)
        assert got.windows[kind].window == view.window
        assert np.array_equal(got.windows[kind].kv_starts_cpu, view.kv_starts_cpu)
