"""The host path on a GPU: staged batch metadata and sampling tensors equal the plain CPU builds."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["decode", "extend"])
def test_cuda_build_equals_cpu_build(mode):
    from pdpair.engine.batch import ForwardBatch, ForwardMode

    m = ForwardMode.DECODE if mode == "decode" else ForwardMode.EXTEND
    gen = np.random.default_rng(0)
    table = torch.from_numpy(gen.permutation(64 * 4096).astype(np.int32)).view(64, 4096)
    rows = gen.choice(64, 40, replace=False)
    prefix = gen.integers(0 if m is ForwardMode.EXTEND else 1, 3000, 40)
    prefix[3] = 0 if m is ForwardMode.EXTEND else 1
    ext = np.ones(40, dtype=np.int64) if m is ForwardMode.DECODE else gen.integers(1, 300, 40)
    ids = gen.integers(0, 1000, int(ext.sum())).tolist()
    ref = ForwardBatch.build(m, rows, prefix, ext, ids, table)
    got = ForwardBatch.build(m, rows, prefix, ext, ids, table.cuda())
    for name in ("input_ids", "positions", "req_pool_indices", "seq_lens", "extend_lens", "qo_indptr", "kv_indptr",
                 "out_cache_loc", "kv_indices"):
        a, b = getattr(got, name), getattr(ref, name)
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b), name


@pytest.mark.timeout(120)
def test_cuda_sampling_batch_equals_cpu():
    from pdpair.engine.sampler import SamplingBatch, sample
    from pdpair.engine.sampling import SamplingParams

    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=0.7, top_k=20),
              SamplingParams(temperature=1.0, top_p=0.9, min_p=0.05), SamplingParams(temperature=1.3)] * 16
    seeds = [(1 << 64) - 1 - i for i in range(len(params))]
    positions = list(range(100, 100 + len(params)))
    cpu = SamplingBatch.build(params, seeds, positions, 32000, "cpu")
    gpu = SamplingBatch.build(params, seeds, positions, 32000, "cuda")
    for name in ("temperatures", "top_ks", "top_ps", "min_ps", "seeds", "positions"):
        a, b = getattr(gpu, name), getattr(cpu, name)
        assert a.dtype == b.dtype and torch.equal(a.cpu(), b), name
    logits = torch.randn(len(params), 32000, generator=torch.Generator().manual_seed(0))
    assert sample(logits.cuda(), gpu).tolist() == sample(logits, cpu).tolist()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("batched", [False, True])
def test_cuda_request_table_pages_equal_cpu(batched):
    """Page writes into the request table on CUDA (one by one, or gathered by `batched()` into one upload and
    one scatter) leave the same table as on the CPU."""
    from pdpair.engine.memory import ReqToTokenPool

    cpu, gpu = ReqToTokenPool(4, 256, 16, "cpu"), ReqToTokenPool(4, 256, 16, "cuda")
    gen = np.random.default_rng(3)
    with gpu.batched() if batched else contextlib.nullcontext():
        for row, first, n in ((0, 0, 3), (2, 1, 5), (0, 3, 2), (3, 0, 16), (1, 4, 1)):
            pages = gen.integers(0, 10_000, n)
            cpu.assign_pages(row, first, pages)
            gpu.assign_pages(row, first, pages)
    assert torch.equal(gpu.table.cpu(), cpu.table)


@pytest.mark.timeout(60)
def test_sampled_tokens_through_a_pinned_ring():
    """Each launch's tokens come back right through a ring of pinned buffers, read one turn later, for more
    turns than the ring has buffers; a read after the ring came round to its buffer again is refused."""
    from pdpair.engine.sampled_tokens import SampledTokens
    from pdpair.engine.staging import HostRing

    ring = HostRing(64, torch.long, 3, cuda=True)
    assert ring.buffers[0].is_pinned()
    prev, prev_ref = None, None
    for k in range(8):
        toks = torch.arange(k, k + 40, device="cuda") * 3
        cur = SampledTokens.start(toks, ring)
        if prev is not None:
            assert prev.read() == prev_ref
        prev, prev_ref = cur, (torch.arange(k, k + 40) * 3).tolist()
    stale = SampledTokens.start(torch.zeros(4, dtype=torch.long, device="cuda"), ring)
    for _ in range(3):
        SampledTokens.start(torch.ones(4, dtype=torch.long, device="cuda"), ring)
    with pytest.raises(AssertionError):
        stale.read()
