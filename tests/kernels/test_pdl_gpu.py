"""Programmatic dependent launch on a GPU: a decode-layer-shaped chain of dependent kernels captured in a CUDA
graph, launched with PDL (the default on sm_90+), gives the same bits as launched without it, replay after
replay with new inputs. A kernel that read its input before the previous kernel finished would read the
previous replay's values there."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _chain(x, res, p):
    """add+norm -> qkv projection with q/k norm, rope and K/V store (its heads' programs meeting in one
    workspace) -> skinny qkv-sized projection -> add+norm -> gated gate/up -> down -> add+norm -> a wide
    projection (over the prefetch limit) -> decode attention over a paged cache -> SiLU-and-mul."""
    from pdpair.kernels.attention.decode import decode_attention
    from pdpair.kernels.fused.add_rmsnorm import add_rmsnorm
    from pdpair.kernels.fused.silu_mul import silu_and_mul
    from pdpair.kernels.fused.skinny_linear import skinny_linear
    from pdpair.kernels.fused.skinny_qkv import skinny_qkv_rope_store

    h = add_rmsnorm(x, res, p["n1"], 1e-5)
    q2, _ = skinny_qkv_rope_store(h, p["qkv"], None, p["cos"], p["sin"], 9, 3, p["k2"], p["v2"], p["slots"],
                                  qk_norm=(p["qn"], p["kn"], 1e-6), workspace=p["ws"])
    k2 = p["k2"].view(-1, 3, 64)[p["slots"]]
    o = skinny_linear(h, p["o"])
    h = add_rmsnorm(o, res, p["n2"], 1e-5)
    act = skinny_linear(h, p["gu"], gated=True)
    d = skinny_linear(act, p["down"])
    h = add_rmsnorm(d, res, p["n1"], 1e-5)
    wide = skinny_linear(h, p["wide"])  # [rows, heads * 64]: the attention's queries
    q = wide.view(wide.shape[0], -1, 64)
    att = decode_attention(q, p["k"], p["v"], p["indptr"], p["indices"], num_splits=4)
    return silu_and_mul(att.reshape(att.shape[0], -1)), res.clone(), q2, k2


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rows", [1, 7])
def test_pdl_graph_chain_matches_plain_launches_bit_for_bit(rows, monkeypatch):
    from pdpair.kernels.fused.skinny_qkv import qk_norm_workspace
    from pdpair.kernels.triton_utils import PDL_ENV, pdl_launch

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs sm_90+")
    gen = torch.Generator(device="cuda").manual_seed(rows)
    dt, dev, hid = torch.bfloat16, "cuda", 576

    def rand(*shape, scale=0.05):
        return (torch.randn(*shape, generator=gen, device=dev) * scale).to(dt)

    heads, kv_heads, pages, page = 64, 8, 64, 16
    p = dict(n1=rand(hid, scale=1.0), n2=rand(hid, scale=1.0), o=rand(hid, hid), gu=rand(2 * 1536, hid),
             down=rand(hid, 1536), wide=rand(heads * 64, hid),  # 4.7 MB: prefetched; 8B-sized ones are not
             k=rand(pages, page, kv_heads, 64, scale=1.0), v=rand(pages, page, kv_heads, 64, scale=1.0))
    lens = [37 + 91 * i for i in range(rows)]
    p["indptr"] = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    p["indices"] = torch.randint(0, pages * page, (sum(lens),), generator=gen, device=dev, dtype=torch.int32)
    p.update(qkv=rand(15 * 64, hid), qn=rand(64, scale=1.0), kn=rand(64, scale=1.0), cos=rand(rows, 32, scale=1.0),
             sin=rand(rows, 32, scale=1.0), k2=rand(8, page, 3, 64), v2=rand(8, page, 3, 64),
             slots=torch.randperm(8 * page, device=dev)[:rows], ws=qk_norm_workspace(9, 3, 64, dev))
    inputs = [(rand(rows, hid, scale=1.0), rand(rows, hid, scale=1.0)) for _ in range(4)]

    monkeypatch.setenv(PDL_ENV, "0")
    want = [_chain(x.clone(), r.clone(), p) for x, r in inputs]

    monkeypatch.setenv(PDL_ENV, "1")
    assert pdl_launch(inputs[0][0], rows)["PDL"], "PDL is off on an sm_90+ device"
    sx, sr = inputs[0][0].clone(), inputs[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles) off the capture
        _chain(sx.clone(), sr.clone(), p)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = _chain(sx, sr, p)
    for (x, r), w_outs in zip(inputs, want, strict=True):
        sx.copy_(x)
        sr.copy_(r)
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(o, w) for o, w in zip(outs, w_outs, strict=True))
    assert not p["ws"].counters.any()


@pytest.mark.timeout(300)
def test_decode_preload_reads_the_new_token_after_the_wait(monkeypatch):
    """At batch 1 under PDL each split program of decode attention reads its first K/V block before the wait,
    all but the row's own (last) token, which the qkv launch just before it stores, in the same graph. Replay
    after replay with new inputs the graph's attention equals the plain launches' (no PDL, no preload) bit for
    bit; a program that read the own token early would see the previous replay's K/V there."""
    from pdpair.kernels.attention.decode import decode_attention, decode_workspace, default_num_splits
    from pdpair.kernels.fused.skinny_qkv import skinny_qkv_rope_store
    from pdpair.kernels.triton_utils import PDL_ENV

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("PDL needs sm_90+")
    gen = torch.Generator(device="cuda").manual_seed(0)
    dt, dev, hid, heads, kvh, d, page, ctx = torch.bfloat16, "cuda", 1024, 8, 2, 128, 16, 2000

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=dev) * scale).to(dt)

    w = rand((heads + 2 * kvh) * d, hid, scale=hid**-0.5)
    k_cache, v_cache = rand(256, page, kvh, d), rand(256, page, kvh, d)
    indices = torch.randperm(256 * page, generator=gen, device=dev)[:ctx].to(torch.int32)
    indptr = torch.tensor([0, ctx], dtype=torch.int32, device=dev)
    slots = indices[-1:].long()  # the row's own token: stored by the qkv launch, read last
    angles = torch.rand(1, d // 2, generator=gen, device=dev) * 6.28
    cos, sin = angles.cos().to(dt), angles.sin().to(dt)
    splits = default_num_splits(1, kvh)
    ws = decode_workspace(1, heads, d, splits, dev, num_kv_heads=kvh)
    inputs = [rand(1, hid) for _ in range(4)]

    def step(x, **kw):
        q, _ = skinny_qkv_rope_store(x, w, None, cos, sin, heads, kvh, k_cache, v_cache, slots)
        return decode_attention(q, k_cache, v_cache, indptr, indices, num_splits=splits, workspace=ws,
                                fused_merge=True, num_warps=8, **kw)

    monkeypatch.setenv(PDL_ENV, "0")
    want = [step(x, preload=False).clone() for x in inputs]
    monkeypatch.setenv(PDL_ENV, "1")
    sx = inputs[-1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles) off the capture
        step(sx)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(sx)  # preload: batch 1 under PDL
    for x, w_out in zip(inputs, want, strict=True):
        sx.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, w_out), float((out.float() - w_out.float()).abs().max())
