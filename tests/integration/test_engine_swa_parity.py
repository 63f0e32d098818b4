"""Sliding-window models (Qwen3 `layer_types`, Gemma 3 text) against transformers: teacher-forced logits through
the paged engine with the pages behind the window given back (and poisoned), greedy generation token for token,
window-bounded `swa` pool usage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.swa_models import FAMILIES, VOCAB, save_tiny_swa

pytestmark = pytest.mark.timeout(300)
transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")

PAGE = 4
WINDOWS = (7, 8)  # not page-aligned, page-aligned


def _prompts(window: int) -> list[list[int]]:
    lens = (5, window, window + 1, 4 * PAGE, 29)  # shorter, equal, one past, a page multiple, several chunks
    return [[(97 + 131 * i + 7 * n) % (VOCAB - 3) + 3 for i in range(n)] for n in lens]


@pytest.fixture(scope="module", params=[(f, w) for f in FAMILIES for w in WINDOWS], ids=lambda p: f"{p[0]}-w{p[1]}")
def checkpoint(request, tmp_path_factory):
    family, window = request.param
    path = tmp_path_factory.mktemp(f"swa-{family}-{window}")
    return family, window, save_tiny_swa(family, window, path), path


def _engine(path, **kw):
    from pdpair.engine import Engine

    return Engine.from_model(str(path), device="cpu", dtype="float32", page_size=PAGE, **kw)


def test_loader_reads_the_attention_mix(checkpoint):
    family, window, _, path = checkpoint
    eng = _engine(path, max_pages=64)
    mc = eng.model_config
    assert mc.arch == family and mc.sliding_window == window
    assert mc.swa_layers == (0, 2) and mc.full_layers == (1,)
    assert eng.pools.kinds == ("kv", "swa") and eng.pools.window("swa") == window
    assert [len(eng.pools.pool(k).layer_ids) for k in eng.pools.kinds] == [1, 2]


def _paged_logits(eng, seq: list[int], chunk: int) -> torch.Tensor:
    """Teacher-forced logits of `seq` through the engine's pools, `chunk` tokens per forward; the sliding-window
    pages given back before each chunk are filled with NaN, so reading one would poison the logits."""
    from pdpair.engine.batch import ForwardBatch, ForwardContext, ForwardMode
    from pdpair.engine.request import Request

    res, runner = eng.scheduler.resources, eng.runner
    req = Request("tf", seq)
    assert res.acquire(req, len(seq), 0)
    swa = eng.pools.pool("swa")
    out = []
    try:
        while req.num_cached < len(seq):
            held = set(req.items["swa"].tolist())
            n = min(chunk, len(seq) - req.num_cached)
            res.trim(req)  # what the prefill manager does before each chunk
            assert res.grow(req, req.num_cached + n)
            gone = sorted(held - set(req.items["swa"].tolist()))
            swa.buffer[gone] = float("nan")
            windowed = {"swa": (eng.req_to_token.tables["swa"], swa.window, PAGE)}
            batch = ForwardBatch.build(ForwardMode.EXTEND, np.array([req.row]), np.array([req.num_cached]),
                                       np.array([n]), seq[req.num_cached : req.num_cached + n],
                                       eng.req_to_token.table, windowed)
            with torch.inference_mode():
                runner.backend.prepare(batch)
                out.append(runner.model(batch.input_ids, batch.positions,
                                        ForwardContext(runner.backend, batch, torch.arange(n))))
            req.num_cached += n
    finally:
        res.release(req)
        swa.buffer.zero_()
    return torch.cat(out)


@pytest.mark.parametrize("chunk", [5, 64])
def test_teacher_forced_logits_match_hf(checkpoint, chunk):
    _, window, hf, path = checkpoint
    eng = _engine(path, max_pages=64)
    for seq in _prompts(window) + [list(range(300, 300 + 3 * window + 2))]:
        got = _paged_logits(eng, seq, chunk)
        with torch.inference_mode():
            ref = hf(torch.tensor([seq])).logits[0].float()
        scale = ref.abs().max().item()
        err = (got - ref).abs().max().item()
        assert err < 1e-4 * scale, f"len {len(seq)}: max |diff| {err:.3g} vs logits scale {scale:.3g}"
    eng.pools.check_integrity()
    assert eng.pools.all_free()


def _hf_greedy(hf, seq: list[int], n: int) -> list[int]:
    gen = transformers.GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    hf.generation_config.eos_token_id = None
    with torch.inference_mode():
        return hf.generate(torch.tensor([seq]), generation_config=gen)[0, len(seq) :].tolist()


def test_greedy_generation_matches_hf(checkpoint):
    from pdpair.engine import SamplingParams

    _, window, hf, path = checkpoint
    eng = _engine(path, max_pages=96, chunk_size=6)  # several chunks per prompt, batched with each other
    seqs = _prompts(window)
    outs = eng.generate(seqs, SamplingParams(max_new_tokens=20, temperature=0.0, ignore_eos=True))
    for seq, out in zip(seqs, outs, strict=True):
        assert list(out.token_ids) == _hf_greedy(hf, seq, 20), f"prompt of {len(seq)} tokens"
    eng.pools.check_integrity()
    assert eng.pools.all_free()


def test_swa_pool_usage_stays_bounded_past_several_windows(checkpoint):
    from pdpair.engine import Request, SamplingParams, StepEvent

    _, window, hf, path = checkpoint
    chunk = 8
    eng = _engine(path, max_pages=64, chunk_size=chunk)
    seq, n_new = list(range(40, 40 + 4 * window + 3)), 6 * window  # prefills and decodes past several windows
    eng.scheduler.submit(Request("long", seq, SamplingParams(max_new_tokens=n_new, temperature=0.0,
                                                             ignore_eos=True)))
    swa, kv = eng.pools.allocator("swa"), eng.pools.allocator("kv")
    bound = (window - 1) // PAGE + 2  # decode: pages over [q - window + 1, q] plus the page being filled
    prefill_bound = (window - 1 + chunk) // PAGE + 2  # prefill: the window behind a chunk plus the chunk
    tokens, usage = [], []
    while eng.scheduler.has_work():
        for ev in eng.scheduler.step():
            if isinstance(ev, StepEvent):
                tokens += ev.new_token_ids
        usage.append((swa.num_used, kv.num_used, len(tokens)))
    assert max(u for u, _, t in usage if t <= 1) <= prefill_bound, usage  # t == 1: the last chunk's step
    assert max(u for u, _, t in usage if t > 1) <= bound, usage
    assert max(k for _, k, _ in usage) == -(-(len(seq) + n_new - 1) // PAGE)  # the full-attention pool keeps it all
    assert tokens == _hf_greedy(hf, seq, n_new)
    eng.pools.check_integrity()
    assert eng.pools.all_free()
