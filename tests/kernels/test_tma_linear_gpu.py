"""The batch-1 TMA projections (kernels/fused/tma_linear.py) on a Hopper GPU, at 8B widths: against their torch
twins (bf16 and float64) and the skinny kernel they replace, inside CUDA graphs, and in the decode step."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_fixtures import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

H = 4096
EPS = 1e-6


def _rnd(gen, *shape, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen, device="cuda")).bfloat16()


def _norm_w(gen, n):
    return (1 + 0.5 * torch.randn(n, generator=gen, device="cuda")).bfloat16()


def _normed(rms) -> torch.Tensor:
    """What the projection after it computes from the `NormedRows`: xg times the row's rsqrt(mean square + eps)."""
    return rms.xg.float() * torch.rsqrt(rms.parts.sum(1, keepdim=True) / rms.xg.shape[1] + rms.eps)


def _need(x, w, gated=False):
    from pdpair.kernels.fused.tma_linear import supported

    if not supported(x, w, None, gated):
        pytest.skip("needs Hopper (sm_90+) with Gluon")


def _in_graph(fn):
    """`fn()` captured in a CUDA graph (after a warm-up on a side stream), replayed once."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("k", [4096, 12288, 14336])  # the o projection; Qwen3-8B's and Llama-3.1-8B's down
@pytest.mark.parametrize("norm", [True, False])
def test_tma_linear_add_against_twin_and_skinny(k, norm):
    from pdpair.kernels.fused.skinny_linear import skinny_linear_add, skinny_linear_add_ref
    from pdpair.kernels.fused.tma_linear import tma_linear_add

    gen = torch.Generator(device="cuda").manual_seed(k + norm)
    x, w = _rnd(gen, 1, k), _rnd(gen, H, k, scale=2 / k**0.5)
    residual, g = _rnd(gen, 1, H, scale=3.0), _norm_w(gen, H)
    _need(x, w)
    nrm = (g, EPS) if norm else None
    res = residual.clone()
    rms = tma_linear_add(x, w, res, norm=nrm)
    res_r, res_64 = residual.clone(), residual.double()
    n_r = skinny_linear_add_ref(x, w, None, res_r, nrm)
    n_64 = skinny_linear_add_ref(x.double(), w.double(), None, res_64, None if nrm is None else (g.double(), EPS))
    res_s = residual.clone()
    rms_s = skinny_linear_add(x, w, None, res_s, norm=nrm, release_late=True)
    assert rel_err(res, res_r) < 1e-2 and rel_err(res, res_64) < 1e-2 and rel_err(res, res_s) < 1e-2, (
        rel_err(res, res_r), rel_err(res, res_64), rel_err(res, res_s))
    assert rel_err(residual, res_64) > 0.1  # the projection moved the residual: a launch that wrote nothing fails
    if norm:
        assert rms.first and rms.parts.shape == (1, H // 32)
        got = _normed(rms)
        assert rel_err(got, n_r) < 2e-2 and rel_err(got, n_64) < 2e-2 and rel_err(got, _normed(rms_s)) < 2e-2, (
            rel_err(got, n_r), rel_err(got, n_64), rel_err(got, _normed(rms_s)))
    else:
        assert rms is None

    res_g = residual.clone()

    def step():
        return tma_linear_add(x, w, res_g, norm=nrm)

    graph, rms_g = _in_graph(step)
    for _ in range(2):  # deterministic, and the same replayed
        res_g.copy_(residual)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(res_g, res)
        if norm:
            assert torch.equal(rms_g.xg, rms.xg) and torch.equal(rms_g.parts, rms.parts)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("inter", [12288, 14336])
def test_tma_gate_up_against_twin_and_skinny(inter):
    from pdpair.kernels.fused.skinny_linear import skinny_linear, skinny_linear_add, skinny_linear_ref
    from pdpair.kernels.fused.tma_linear import tma_linear

    gen = torch.Generator(device="cuda").manual_seed(inter)
    o, w_o = _rnd(gen, 1, H), _rnd(gen, H, H, scale=2 / H**0.5)
    residual, g = _rnd(gen, 1, H, scale=3.0), _norm_w(gen, H)
    w_gu = _rnd(gen, 2 * inter, H, scale=2 / H**0.5)
    # the gate/up input as the step leaves it: the o projection's NormedRows
    rms = skinny_linear_add(o, w_o, None, residual.clone(), norm=(g, EPS), release_late=True)
    _need(rms.xg, w_gu, gated=True)
    act = tma_linear(rms.xg, w_gu, gated=True, rms=rms)
    skinny = skinny_linear(rms.xg, w_gu, None, gated=True, rms=rms)
    h = _normed(rms)
    ref = skinny_linear_ref(h.bfloat16(), w_gu, gated=True)
    ref_64 = skinny_linear_ref(h.double(), w_gu.double(), gated=True)
    assert act.shape == (1, inter)
    assert rel_err(act, skinny) < 2e-2 and rel_err(act, ref) < 2e-2 and rel_err(act, ref_64) < 2e-2, (
        rel_err(act, skinny), rel_err(act, ref), rel_err(act, ref_64))
    graph, act_g = _in_graph(lambda: tma_linear(rms.xg, w_gu, gated=True, rms=rms))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(act_g, act)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("qk_norm", [True, False])  # Qwen3-8B (deferred q/k norm), Llama-3.1-8B
@pytest.mark.parametrize("normed_in", [True, False])  # the input as the folded step leaves it, or a plain row
def test_tma_qkv_against_skinny_qkv(qk_norm, normed_in):
    """The qkv form against `skinny_qkv_rope_store(defer_norm=True)` (itself held against the unfused path in
    test_fused_gpu.py): the rotated q, the k and v stored at the row's slot and nowhere else, the deferred norm's
    sums of squares; a padding row (slot -1) stores nothing."""
    from pdpair.kernels.fused.skinny_linear import skinny_linear_add
    from pdpair.kernels.fused.skinny_qkv import qk_norm_workspace, skinny_qkv_rope_store
    from pdpair.kernels.fused.tma_linear import qkv_supported, tma_qkv_rope_store

    heads, kv, d, page = 32, 8, 128, 16
    gen = torch.Generator(device="cuda").manual_seed(7 + 2 * qk_norm + normed_in)
    w = _rnd(gen, (heads + 2 * kv) * d, H, scale=2 / H**0.5)
    if normed_in:
        rms = skinny_linear_add(_rnd(gen, 1, H), _rnd(gen, H, H, scale=2 / H**0.5), None, _rnd(gen, 1, H, scale=3.0),
                                norm=(_norm_w(gen, H), EPS), release_late=True)
        x = rms.xg
    else:
        rms, x = None, _rnd(gen, 1, H)
    if not qkv_supported(x, w, None, d, qk_norm, True):
        pytest.skip("needs Hopper (sm_90+) with Gluon")
    ang = torch.rand(1, d // 2, generator=gen, device="cuda") * 6.28
    cos, sin = ang.cos(), ang.sin()
    norm = (_norm_w(gen, d), _norm_w(gen, d), EPS) if qk_norm else None
    k0, v0 = (torch.randn(8, page, kv, d, generator=gen, device="cuda").bfloat16() for _ in range(2))
    caches = [k0.clone(), v0.clone(), k0.clone(), v0.clone()]
    slot = torch.tensor([37], device="cuda")
    ws_t, ws_s = (qk_norm_workspace(heads, kv, d, x.device) for _ in range(2))
    q_t, sc_t = tma_qkv_rope_store(x, w, cos, sin, heads, kv, caches[0], caches[1], slot, rms=rms, qk_norm=norm,
                                   workspace=ws_t)
    extra = dict(qk_norm=norm, workspace=ws_s, defer_norm=True) if qk_norm else {}
    q_s, sc_s = skinny_qkv_rope_store(x, w, None, cos, sin, heads, kv, caches[2], caches[3], slot, rms=rms, **extra)
    assert rel_err(q_t, q_s) < 2e-2, rel_err(q_t, q_s)
    p, o = divmod(37, page)
    keep = torch.ones(8, page, dtype=torch.bool, device="cuda")
    keep[p, o] = False
    for mine, theirs, before in ((caches[0], caches[2], k0), (caches[1], caches[3], v0)):
        assert rel_err(mine[p, o], theirs[p, o]) < 2e-2, rel_err(mine[p, o], theirs[p, o])
        assert rel_err(mine[p, o], before[p, o]) > 0.5  # the slot was written
        assert torch.equal(mine[keep], before[keep])  # and nothing else
    if qk_norm:
        assert sc_t.per_head == sc_s.per_head and sc_t.eps == sc_s.eps
        width = (heads + kv) * sc_t.per_head
        assert rel_err(sc_t.parts[0, :width], sc_s.parts[0, :width]) < 2e-2
    else:
        assert sc_t is None and sc_s is None
    pad = [c.clone() for c in caches[:2]]
    tma_qkv_rope_store(x, w, cos, sin, heads, kv, caches[0], caches[1], torch.tensor([-1], device="cuda"), rms=rms,
                       qk_norm=norm, workspace=ws_t)
    assert torch.equal(pad[0], caches[0]) and torch.equal(pad[1], caches[1])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch,inter", [("qwen3", 12288), ("llama", 14336)])
def test_tma_linear_in_the_decode_step(arch, inter, monkeypatch):
    """A 2-layer model at an 8B model's widths: with the backend's `tma_linear` switch a batch-1 decode runs its
    qkv, o, gate/up and down projections through the TMA launches (and a batch of 2 does not), its decode graph
    replays the eager logits bit for bit, and the logits match the skinny launches and the unfused forward."""
    import pdpair.kernels.fused.tma_linear as tl_mod

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        decode_graphs,
        eager_logits,
        fill_kv_random,
    )
    from tests.kernels.test_fused_gpu import _tiny_engine

    calls = []
    for name in ("tma_linear", "tma_linear_add", "tma_qkv_rope_store"):
        real = getattr(tl_mod, name)
        monkeypatch.setattr(tl_mod, name, lambda *a, _real=real, **k: calls.append(a[0].shape[0]) or _real(*a, **k))
    eng, cfg = _tiny_engine(arch, hidden_size=H, num_heads=32, num_kv_heads=8, head_dim=128,
                            intermediate_size=inter)
    backend = eng.runner.backend
    w = eng.runner.model.layers[0].self_attn.o_proj.weight
    _need(torch.empty(1, w.shape[1], dtype=w.dtype, device="cuda"), w)
    fill_kv_random(eng, 1)
    backend.tma_linear = True
    graphs = decode_graphs(eng, 2, buckets=(1, 2))
    assert calls and set(calls) == {1}, calls  # captured with the TMA launches at batch 1 only
    gen = torch.Generator().manual_seed(2)
    for bs in (1, 2, 1):
        batch, release = decode_batch(eng, torch.randint(1, 300, (bs,), generator=gen).tolist(), seed=bs)
        try:
            calls.clear()
            replayed = graphs.replay(batch).clone()
            backend.tma_linear = True
            eager = eager_logits(eng, graphs.padded_batch(batch))[:bs]
            assert calls == ([1] * 4 * cfg.num_layers if bs == 1 else []), (bs, calls)
            backend.tma_linear = False
            launches = eager_logits(eng, graphs.padded_batch(batch))[:bs]
            backend.fused_ops = False
            plain = eager_logits(eng, graphs.padded_batch(batch))[:bs]
            backend.fused_ops = True
        finally:
            release()
        assert torch.equal(replayed, eager), (bs, float((replayed - eager).abs().max()))
        assert rel_err(eager, launches) < 2e-2 and rel_err(eager, plain) < 2e-2, (
            bs, rel_err(eager, launches), rel_err(eager, plain))
    eng.pools.check_integrity()
