"""The persistent batch-1 o projection + MLP launch (kernels/fused/persistent_mlp.py) on a Hopper GPU, at 8B
widths, against its torch twin (bf16 and float64) and the launch-per-op path it replaces."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_fixtures import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

H, Q = 4096, 4096
EPS = 1e-6


def _layer(inter: int, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, device="cuda")).bfloat16()

    return {"o": rnd(1, Q), "w_o": rnd(H, Q, scale=2 / Q**0.5), "residual": rnd(1, H, scale=3.0),
            "g_post": (1 + 0.5 * torch.randn(H, generator=gen, device="cuda")).bfloat16(),
            "w_gu": rnd(2 * inter, H, scale=2 / H**0.5), "w_d": rnd(H, inter, scale=2 / inter**0.5),
            "g_next": (1 + 0.5 * torch.randn(H, generator=gen, device="cuda")).bfloat16()}


def _normed(rms) -> torch.Tensor:
    """What the qkv launch after it computes from the `NormedRows`: xg times the rows' rsqrt(mean square + eps)."""
    return rms.xg.float() * torch.rsqrt(rms.parts.sum(1, keepdim=True) / H + rms.eps)


def _supported(inter: int) -> bool:
    from pdpair.kernels.fused.persistent_mlp import supported

    return supported(1, H, Q, inter, torch.bfloat16, torch.device("cuda"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("inter", [12288, 14336])  # Qwen3-8B, Llama-3.1-8B
@pytest.mark.parametrize("next_norm", [True, False])
def test_persistent_mlp_against_twin_and_launch_path(inter, next_norm):
    from pdpair.kernels.fused.persistent_mlp import persistent_mlp, persistent_mlp_ref, workspace
    from pdpair.kernels.fused.skinny_linear import skinny_linear, skinny_linear_add

    if not _supported(inter):
        pytest.skip("needs Hopper (sm_90+) with Gluon, 128 SMs and 190 KB of shared memory per block")
    t = _layer(inter, seed=inter + next_norm)
    nxt = (t["g_next"], EPS) if next_norm else None
    ws = workspace(torch.device("cuda"))
    res_k = t["residual"].clone()
    rms = persistent_mlp(t["o"], t["w_o"], res_k, (t["g_post"], EPS), t["w_gu"], t["w_d"], nxt, ws)
    torch.cuda.synchronize()
    assert ws.tolist() == [0, 0, 0, 0], ws  # counters back at zero, no barrier gave up

    res_r, res_64 = t["residual"].clone(), t["residual"].double()
    n_r = persistent_mlp_ref(t["o"], t["w_o"], res_r, (t["g_post"], EPS), t["w_gu"], t["w_d"], nxt)
    n_64 = persistent_mlp_ref(t["o"].double(), t["w_o"].double(), res_64, (t["g_post"].double(), EPS),
                              t["w_gu"].double(), t["w_d"].double(),
                              None if nxt is None else (t["g_next"].double(), EPS))
    # the launch-per-op path this launch replaces (engine/models/fused.py: `_folded_layers`)
    res_l = t["residual"].clone()
    r1 = skinny_linear_add(t["o"], t["w_o"], None, res_l, norm=(t["g_post"], EPS), release_late=True)
    act = skinny_linear(r1.xg, t["w_gu"], None, gated=True, rms=r1)
    r2 = skinny_linear_add(act, t["w_d"], None, res_l, norm=nxt, release_late=True)
    assert rel_err(res_k, res_r) < 1e-2 and rel_err(res_k, res_64) < 1e-2 and rel_err(res_k, res_l) < 1e-2, (
        rel_err(res_k, res_r), rel_err(res_k, res_64), rel_err(res_k, res_l))
    # the residual really moved: a launch that wrote nothing would fail here
    assert rel_err(t["residual"], res_64) > 0.1
    if next_norm:
        assert rms.first and rms.parts.shape == (1, H // 16)
        got = _normed(rms)
        assert rel_err(got, n_r) < 2e-2 and rel_err(got, n_64) < 2e-2 and rel_err(got, _normed(r2)) < 2e-2, (
            rel_err(got, n_r), rel_err(got, n_64))
    else:
        assert rms is None and r2 is None

    # deterministic, and the same inside a CUDA graph replayed on fresh inputs (the counters reset every launch)
    res_g = t["residual"].clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        persistent_mlp(t["o"], t["w_o"], res_g, (t["g_post"], EPS), t["w_gu"], t["w_d"], nxt, ws)
    torch.cuda.current_stream().wait_stream(s)
    assert torch.equal(res_g, res_k)
    g = torch.cuda.CUDAGraph()
    res_g.copy_(t["residual"])
    with torch.cuda.graph(g):
        rms_g = persistent_mlp(t["o"], t["w_o"], res_g, (t["g_post"], EPS), t["w_gu"], t["w_d"], nxt, ws)
    for _ in range(3):
        res_g.copy_(t["residual"])
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(res_g, res_k) and ws.tolist() == [0, 0, 0, 0]
        if next_norm:
            assert torch.equal(rms_g.xg, rms.xg) and torch.equal(rms_g.parts, rms.parts)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch,inter", [("qwen3", 12288), ("llama", 14336)])
def test_persistent_mlp_in_the_decode_step(arch, inter, monkeypatch):
    """A 2-layer model at an 8B model's widths: with the backend's `persistent_mlp` switch a batch-1 decode runs
    each layer's o projection and MLP as the one launch (and a batch of 2 does not), its decode graph replays
    the eager logits bit for bit, the logits match the launch-per-op fused forward and the unfused one, and
    the counters are at zero afterwards."""
    import pdpair.kernels.fused.persistent_mlp as pm_mod

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        decode_graphs,
        eager_logits,
        fill_kv_random,
    )
    from tests.kernels.test_fused_gpu import _tiny_engine

    if not _supported(inter):
        pytest.skip("needs Hopper (sm_90+) with Gluon, 128 SMs and 190 KB of shared memory per block")
    calls = []
    real = pm_mod.persistent_mlp
    monkeypatch.setattr(pm_mod, "persistent_mlp", lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k))
    eng, cfg = _tiny_engine(arch, hidden_size=H, num_heads=32, num_kv_heads=8, head_dim=128,
                            intermediate_size=inter)
    backend = eng.runner.backend
    fill_kv_random(eng, 1)
    backend.persistent_mlp = True
    graphs = decode_graphs(eng, 2, buckets=(1, 2))
    assert calls and set(calls) == {1}, calls  # captured with the launch at batch 1 only
    gen = torch.Generator().manual_seed(2)
    for bs in (1, 2, 1):
        batch, release = decode_batch(eng, torch.randint(1, 300, (bs,), generator=gen).tolist(), seed=bs)
        try:
            calls.clear()
            replayed = graphs.replay(batch).clone()
            backend.persistent_mlp = True
            eager = eager_logits(eng, graphs.padded_batch(batch))[:bs]
            assert calls == ([1] * cfg.num_layers if bs == 1 else []), (bs, calls)
            backend.persistent_mlp = False
            launches = eager_logits(eng, graphs.padded_batch(batch))[:bs]
            backend.fused_ops = False
            plain = eager_logits(eng, graphs.padded_batch(batch))[:bs]
            backend.fused_ops = True
        finally:
            release()
        assert torch.equal(replayed, eager), (bs, float((replayed - eager).abs().max()))
        assert rel_err(eager, launches) < 2e-2 and rel_err(eager, plain) < 2e-2, (
            bs, rel_err(eager, launches), rel_err(eager, plain))
    assert backend.persistent_mlp_workspace().tolist() == [0, 0, 0, 0]
    eng.pools.check_integrity()
