"""The runtime on a CUDA device (torch backend): tiny random model, cache-free reference, invariances and the
disaggregation twin. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from _engine_runtime_fixtures import dense_greedy, run_until_done, tiny_loaded
from pdpair.engine import ChunkEvent, Engine, Request, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [[(7 * i + 3 * j) % 500 + 3 for j in range(n)] for i, n in enumerate((5, 17, 33, 1, 64))]


def _engine(dtype=torch.float32, **kw) -> Engine:
    kw.setdefault("max_pages", 128)
    return Engine.from_loaded(tiny_loaded("cuda", dtype), device="cuda", attention_backend="torch", **kw)


def test_cuda_greedy_matches_reference_and_is_invariant():
    eng = _engine(page_size=16, chunk_size=512)
    assert eng.config.device == "cuda" and eng.pools.kv.buffer.is_cuda
    ref = [dense_greedy(eng.model, p, GREEDY.max_new_tokens, "cuda") for p in PROMPTS]
    assert [o.token_ids for o in eng.generate(PROMPTS, GREEDY)] == ref
    for kw in (dict(page_size=1, chunk_size=7, max_pages=2048), dict(page_size=64, chunk_size=1, max_pages=16)):
        assert [o.token_ids for o in _engine(**kw).generate(PROMPTS, GREEDY)] == ref, kw
    assert [eng.generate([p], GREEDY)[0].token_ids for p in PROMPTS[:2]] == ref[:2]
    eng.pools.check_integrity()
    assert eng.pools.all_free()


def test_cuda_seeded_sampling_alone_vs_batched():
    eng = _engine(page_size=4)
    sps = [SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=s,
                          ignore_eos=True) for s in range(len(PROMPTS))]
    alone = [eng.generate([p], sp)[0].token_ids for p, sp in zip(PROMPTS, sps, strict=True)]
    batched = eng.generate(PROMPTS[::-1], sps[::-1])
    assert [o.token_ids for o in batched][::-1] == alone


def test_cuda_disaggregation_twin():
    prefill, decode, colocated = (_engine(page_size=4, chunk_size=9) for _ in range(3))
    for i, ids in enumerate(PROMPTS):
        rid = f"r{i}"
        expected = colocated.generate([ids], GREEDY)[0].token_ids
        dst = decode.scheduler.preallocate(Request(rid, ids, GREEDY))["kv"]
        prefill.scheduler.submit(Request(rid, ids, GREEDY), prefill_only=True)
        chunks: list[ChunkEvent] = []
        while not chunks or not chunks[-1].is_last:
            chunks += [e for e in prefill.scheduler.step() if isinstance(e, ChunkEvent)]
        src = torch.cat([torch.from_numpy(c.kind_pages["kv"]) for c in chunks]).long().cuda()
        decode.pools.kv.buffer[torch.from_numpy(dst).long().cuda()] = prefill.pools.kv.buffer[src]
        prefill.scheduler.release(rid)
        decode.scheduler.activate(rid, chunks[-1].first_token)
        toks, _, _ = run_until_done(decode, {rid})
        assert toks[rid] == expected, i
    for e in (prefill, decode, colocated):
        assert e.pools.all_free()


def test_cuda_bf16_runs():
    eng = _engine(dtype=torch.bfloat16)
    assert eng.config.dtype == "bfloat16"
    outs = eng.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.8, seed=1, ignore_eos=True))
    assert all(len(o.token_ids) == 8 and o.finish_reason == "length" for o in outs)
    assert eng.pools.all_free()


def test_cuda_kernel_routes_switched_off_give_the_same_tokens():
    """The triton backend with the fused kernels and the SDPA prefill route (defaults) and with both switched
    off (`--disable-fused-ops`, `--prefill-attention triton`) generate the same greedy tokens as the dense
    reference: the switches change kernels, not results."""
    kw = dict(max_pages=128, page_size=16, chunk_size=512, attention_backend="triton")
    on = Engine.from_loaded(tiny_loaded("cuda", torch.float32), device="cuda", **kw)
    off = Engine.from_loaded(tiny_loaded("cuda", torch.float32), device="cuda", fused_ops=False,
                             extend_sdpa=False, **kw)
    assert on.runner.backend.extend_sdpa and not off.runner.backend.extend_sdpa
    assert not off.runner.backend.fused_ops
    ref = [dense_greedy(on.model, p, GREEDY.max_new_tokens, "cuda") for p in PROMPTS]
    assert [o.token_ids for o in off.generate(PROMPTS, GREEDY)] == ref
    assert [o.token_ids for o in on.generate(PROMPTS, GREEDY)] == ref
