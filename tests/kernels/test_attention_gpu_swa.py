"""Sliding-window models on a GPU (both families, seeded weights): the triton backend, eager and through CUDA
graphs, against the torch backend with teacher forcing; CUDA-graph replay equals the eager padded batch."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from tests.kernels._attention_engine_fixtures import (  # noqa: E402
    decode_batch,
    decode_graphs,
    eager_logits,
    fill_kv_random,
    record_sampling,
)
from tests.swa_models import save_tiny_swa  # noqa: E402

WINDOW, PAGE = 100, 16  # not page-aligned; prompts run several windows past it


@pytest.fixture(scope="module", params=["qwen3", "gemma3"])
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"swa-gpu-{request.param}")
    save_tiny_swa(request.param, WINDOW, path, max_positions=2048)
    return str(path)


def _engine(model_dir, backend: str, **kw):
    from pdpair.engine import Engine

    return Engine.from_model(model_dir, device="cuda", dtype="float32", page_size=PAGE, max_pages=1024,
                             chunk_size=128, attention_backend=backend, max_running_requests=32, **kw)


def _run(engine, prompts, forced, record, monkeypatch):
    """Greedy run recording each row's logits by (seed, position); `forced` replaces the argmax."""
    from pdpair.engine import Request, SamplingParams

    record_sampling(monkeypatch, forced, record)
    for i, p in enumerate(prompts):
        engine.scheduler.submit(Request(f"r{i}", p, SamplingParams(max_new_tokens=3 * WINDOW, temperature=0.0,
                                                                   seed=i, ignore_eos=True)))
    while engine.scheduler.has_work():
        engine.scheduler.step()
    engine.pools.check_integrity()
    assert engine.pools.all_free()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_triton_matches_torch_teacher_forced(model_dir, cuda_graph, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (n,), generator=gen).tolist() for n in (1, 50, WINDOW, 333, 700)]
    ref, out = {}, {}
    with pytest.MonkeyPatch.context() as mp:
        _run(_engine(model_dir, "torch"), prompts, None, ref, mp)
    assert len(ref) == 3 * WINDOW * len(prompts), len(ref)  # every position sampled once, under its own key
    eng = _engine(model_dir, "triton", disable_cuda_graph=not cuda_graph)
    _run(eng, prompts, {k: int(v.argmax()) for k, v in ref.items()}, out, monkeypatch)
    assert (eng.runner.graphs is not None and eng.runner.graphs.num_replays > 0) == cuda_graph
    assert out.keys() == ref.keys()
    worst = max(float((out[k] - r).norm() / r.norm()) for k, r in ref.items())
    print(f"swa teacher-forced logits (graphs {cuda_graph}): {len(ref)} rows, worst rel err {worst:.2e}")
    assert worst < 1e-2, worst  # fp32 weights; triton may use tf32 dots


@pytest.mark.timeout(600)
def test_cuda_graph_replay_equals_eager_with_window(model_dir):
    eng = _engine(model_dir, "triton", disable_cuda_graph=True)
    fill_kv_random(eng)
    graphs = decode_graphs(eng, 16, buckets=(1, 4, 8, 16))
    gen = torch.Generator().manual_seed(1)
    for bs in (1, 3, 8, 13):
        lengths = torch.randint(1, 1500, (bs,), generator=gen).tolist()
        lengths[0] = 1
        batch, release = decode_batch(eng, lengths, seed=bs)
        try:
            replayed = graphs.replay(batch).clone()
            eager = eager_logits(eng, graphs.padded_batch(batch))[:bs]
            w = graphs.padded_batch(batch).windows["swa"]
            assert int((w.kv_indptr[1:] - w.kv_indptr[:-1]).max()) < WINDOW + PAGE  # O(window) keys per row
        finally:
            release()
        assert torch.equal(replayed, eager), (bs, float((replayed - eager).abs().max()))
    eng.pools.check_integrity()
