"""Fused kernels on a GPU at model sizes (bf16/fp16) against their torch twins and float64."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._fused_cases import (
    add_rmsnorm_case,
    deferred_qk_norm_case,
    embed_rope_case,
    folded_norm_case,
    qk_rope_store_case,
    silu_mul_case,
    skinny_linear_case,
    skinny_qkv_case,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.bfloat16, torch.float16]
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 576), (300, 4096), (2048, 4096)])
def test_add_rmsnorm_gpu(dtype, rows, cols):
    r = add_rmsnorm_case(dtype, rows, cols, device="cuda", seed=rows)
    assert r["residual_exact"] and r["rows_exact"], r  # one fp32 add rounded once: torch's own bf16/fp16 add
    assert max(r["out"], r["plain"], r["out64"]) < TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 16, 700])
def test_embed_rope_gpu_equals_torch_bit_for_bit(dtype, tokens):
    """libdevice's cosf/sinf are the functions torch's CUDA kernels call: the same bits, at large angles too."""
    r = embed_rope_case(dtype, tokens, device="cuda", seed=tokens)
    assert r["emb_exact"] and r["cos_exact"] and r["sin_exact"] and r["dtype"], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 1536), (64, 14336), (1024, 12288)])
def test_silu_and_mul_gpu(dtype, rows, cols):
    r = silu_mul_case(dtype, rows, cols, device="cuda", seed=rows)
    assert r["shape"] and max(r["out"], r["out64"]) < TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim,qk_norm", [(9, 3, 64, False), (32, 8, 128, False),
                                                              (32, 8, 128, True)])
@pytest.mark.parametrize("tokens", [1, 5, 4096])
def test_qk_rope_store_gpu(dtype, heads, kv_heads, head_dim, qk_norm, tokens):
    r = qk_rope_store_case(dtype, tokens, heads, kv_heads, head_dim, qk_norm, device="cuda", seed=tokens)
    assert r["v_exact"] and r["cache_others_untouched"], r
    assert max(r["q"], r["k"], r["cache"], r["q64"], r["k64"]) < 2 * TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,gated,bias", [(960, 576, False, False), (576, 1536, False, False),
                                            (1536, 576, True, False), (6144, 4096, False, True),
                                            (4096, 4096, False, False), (4096, 14336, False, False),
                                            (14336, 4096, True, False)])
@pytest.mark.parametrize("rows", [1, 7, 16])
def test_skinny_linear_gpu(dtype, n, k, gated, bias, rows):
    """Model shapes (SmolLM2, an 8B model) at the default launch config against cuBLAS and float64."""
    r = skinny_linear_case(dtype, rows, n, k, gated, bias, device="cuda", seed=rows + n)
    assert r["shape"] and r["tail_untouched"], r
    assert max(r["out"], r["out64"]) < TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("rows", [1, 16])
def test_skinny_lm_head_into_fp32_logits_gpu(rows):
    """Llama-3.1-8B's LM head (the vocabulary-sized config) into fp32 logits: each an input-dtype value, against
    cuBLAS and float64."""
    r = skinny_linear_case(torch.bfloat16, rows, 128256, 4096, device="cuda", seed=rows, out_dtype=torch.float32)
    assert r["shape"] and r["tail_untouched"] and r["rounded"] and r["dtype"] == "torch.float32", r
    assert max(r["out"], r["out64"]) < TOL[torch.bfloat16], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,hidden,n,consumer,head_dim,kv_heads", [
    (576, 576, 1536, "gated", 0, 0), (1536, 576, 9, "qkv", 64, 3),  # SmolLM2: o -> gate/up, down -> qkv
    (4096, 4096, 14336, "gated", 0, 0), (14336, 4096, 32, "qkv", 128, 8),  # Llama-3.1-8B
    (4096, 4096, 4608, "linear", 0, 0),  # a qkv-norm model's plain qkv projection
])
@pytest.mark.parametrize("rows", [1, 7, 16])
def test_rms_norm_folded_across_two_projections_gpu(dtype, k, hidden, n, consumer, head_dim, kv_heads, rows):
    """The residual add + next RMSNorm folded into the projections around it, at model shapes and the default
    launch configs, against the unfused twin chain (cuBLAS) and float64."""
    from pdpair.engine.models.fused import FOLD_LATE_MIN_HIDDEN

    late = hidden >= FOLD_LATE_MIN_HIDDEN  # the form `engine/models/fused.py` runs at this width
    r = folded_norm_case(dtype, rows, k, hidden, n, consumer, device="cuda", seed=rows + k,
                         head_dim=head_dim or 32, kv_heads=kv_heads or 1, release_late=late)
    assert r["no_norm"] and r["first"] == late, r
    assert max(r["residual"], r["plain_add"], r["residual64"]) < TOL[dtype], r
    assert max(r["out"], r["out64"], r.get("k_cache", 0)) < 2 * TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim,k,bias,qk_norm", [
    (9, 3, 64, 576, False, False), (9, 3, 64, 576, True, False), (32, 8, 128, 4096, False, False),
    (28, 4, 128, 3584, True, False), (32, 8, 128, 4096, False, True), (16, 8, 128, 2048, False, True)])
@pytest.mark.parametrize("rows", [1, 7, 16])
def test_skinny_qkv_rope_store_gpu(dtype, heads, kv_heads, head_dim, k, bias, rows, qk_norm):
    """SmolLM2, 8B (Llama), Qwen2-7B (qkv bias), Qwen3-8B and Qwen3-1.7B (q/k norm: each head's programs meet
    in one workspace, over five launches) head shapes at the default launch config against cuBLAS + the
    rope/store twin and float64; the pool's other slots stay untouched, the counters end at zero."""
    r = skinny_qkv_case(dtype, rows, heads, kv_heads, head_dim, k, bias, page_size=16, device="cuda", seed=rows,
                        qk_norm=qk_norm, repeats=5 if qk_norm else 1)
    assert r["shape"] and r["others_untouched"] and r["stored"] == (rows - 1 if rows > 2 else rows), r
    assert r["counters_zero"], r
    assert max(r["q"], r["k_cache"], r["q64"], r["k_cache64"]) < 2 * TOL[dtype], r
    assert max(r["v_cache"], r["v_cache64"]) < TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("contexts,splits,preload,pad", [([2048], 32, True, False), ([300, 1500, 7, 64], 8, False,
                                                                                        True)])
def test_deferred_qk_norm_gpu(dtype, contexts, splits, preload, pad):
    """Qwen3-8B's heads (32 q, 8 kv, 128 dims, K = 4096): the q/k norm deferred to decode attention (the batch-1
    preload and split count of the step, and a mixed batch with a graph's padding row) against the norm met in
    the qkv launch's twin."""
    r = deferred_qk_norm_case(dtype, contexts, 32, 8, 128, 4096, splits, preload, True, page_size=16, device="cuda",
                              seed=len(contexts), pad=pad)
    assert r["others_untouched"], r
    assert max(r["out"], r["own_k"], r["own_v"], r["out64"], r["own_k64"]) < TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_fused_forward_bf16_small_batches_match_unfused(arch):
    """bf16 decode batches of 1, 3 and 16 rows (the skinny linear, gated MLP and LM head included, and for
    the qkv projection with q/k norm (Qwen3), rope and the K/V store) and of 17 rows (cuBLAS) through the fused
    forward against the unfused forward of the same engine."""
    import pdpair.engine.models.fused as fused_mod

    from tests.kernels._attention_engine_fixtures import decode_batch, eager_logits, fill_kv_random
    from tests.kernels._attention_fixtures import rel_err

    eng, cfg = _tiny_engine(arch)
    fill_kv_random(eng, 1)
    calls = []
    patched = {"skinny_linear": lambda *a, **k: k.get("gated", False), "skinny_linear_add": lambda *a, **k: "add",
               "skinny_qkv_rope_store": lambda *a, **k: "qkv", "add_rmsnorm": lambda *a, **k: "norm"}
    real = {name: getattr(fused_mod, name) for name in patched}
    for name, tag in patched.items():
        setattr(fused_mod, name, lambda *a, _n=name, _t=tag, **k: calls.append(_t(*a, **k)) or real[_n](*a, **k))
    try:
        for rows, fold in ((1, True), (1, False), (3, True), (16, True), (16, False), (17, True)):
            batch, release = decode_batch(eng, [5 + 37 * i % 300 for i in range(rows)], seed=rows)
            eng.runner.backend.fused_ops = eng.runner.backend.fused_qkv = True
            eng.runner.backend.fold_norms = fold
            before = len(calls)
            fused = eager_logits(eng, batch)
            ran = calls[before:]
            eng.runner.backend.fused_ops = False
            plain = eager_logits(eng, batch)
            release()
            assert rel_err(fused, plain) < 2e-2, (rows, fold, rel_err(fused, plain))
            # per layer: qkv (fused with rope + store, or plain), o, gated gate/up, down through the skinny
            # kernels at <= 16 rows, and the LM head once; none above. Folded, o and down add into the residual
            # and the only add+RMSNorm launches left are layer 0's input norm and the final norm.
            layers = cfg.num_layers if rows <= 16 else 0
            folded = fold and rows <= 16
            skinny = [c for c in ran if c != "norm"]
            assert len(skinny) == 4 * layers + (rows <= 16) and skinny.count(True) == layers, (rows, ran)
            assert skinny.count("qkv") == layers, (rows, ran)
            assert skinny.count("add") == (2 * layers if folded else 0), (rows, fold, ran)
            assert ran.count("norm") == (2 if folded else 2 * cfg.num_layers + 1), (rows, fold, ran)
    finally:
        for name, fn in real.items():
            setattr(fused_mod, name, fn)
    eng.pools.check_integrity()


def _tiny_engine(arch: str, **sizes):
    """A 2-layer bf16 model of `arch` (Qwen3 with q/k norm, Qwen2 with qkv bias) with seeded random weights, norms
    included, in an engine on the triton backend without CUDA graphs. `sizes`: other widths (ModelConfig's
    fields), whose matrices are then scaled by 0.8 / sqrt(fan-in) instead of 0.05."""
    from types import SimpleNamespace

    from pdpair.engine import Engine
    from pdpair.engine.model_config import ModelConfig
    from pdpair.engine.models import build_model

    widths = {"hidden_size": 256, "num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "intermediate_size": 640,
              **sizes}
    cfg = ModelConfig(arch=arch, num_layers=2, vocab_size=1024, context_length=1024, qk_norm=arch == "qwen3",
                      attention_bias=arch == "qwen2", **widths)
    model = build_model(cfg, torch.bfloat16, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, device="cuda")
            scale = 0.8 / p.shape[-1] ** 0.5 if sizes and p.dim() == 2 else 0.05
            p.copy_(1 + 0.3 * noise if name.endswith("norm.weight") else scale * noise)
    loaded = SimpleNamespace(config=cfg, model=model, tokenizer=None, model_id=f"tiny-{arch}", weights_digest="t")
    eng = Engine.from_loaded(loaded, device="cuda", page_size=16, max_pages=256, attention_backend="triton",
                             max_running_requests=32, disable_cuda_graph=True)
    return eng, cfg


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fold_late,defer", [(False, False), (False, True), (True, True)])
def test_qk_norm_fused_qkv_graph_replay_equals_eager(fold_late, defer, monkeypatch):
    """Qwen3's decode graphs (the qkv projection with the q/k norm, its heads meeting in the backend's static
    workspace, every layer and replay sharing its counters, or with the norm deferred to attention, which
    stores each row's own key back normed) give the eager forward's logits bit for bit, replay after replay on
    new batches, padded buckets included (a padding row must not store back the key it attends to); the
    counters are at zero afterwards. `fold_late`: the norms folded as a wide model folds them (the
    residual-adding projections releasing the next launch after their loop)."""
    import pdpair.engine.models.fused as fused_mod

    if fold_late:  # the limits moved below the tiny model's 256
        monkeypatch.setattr(fused_mod, "FOLD_MAX_HIDDEN", 128)
        monkeypatch.setattr(fused_mod, "FOLD_LATE_MIN_HIDDEN", 256)
    lates = []
    real_add = fused_mod.skinny_linear_add
    monkeypatch.setattr(fused_mod, "skinny_linear_add",
                        lambda *a, **k: lates.append(k.get("release_late")) or real_add(*a, **k))

    from tests.kernels._attention_engine_fixtures import (
        decode_batch,
        decode_graphs,
        eager_logits,
        fill_kv_random,
    )

    eng, _ = _tiny_engine("qwen3")
    eng.runner.backend.defer_qk_norm = defer
    fill_kv_random(eng, 1)
    norms = []
    real = fused_mod.skinny_qkv_rope_store
    fused_mod.skinny_qkv_rope_store = lambda *a, **k: norms.append(
        k.get("qk_norm") is not None and k.get("defer_norm") == defer) or real(*a, **k)
    try:
        graphs = decode_graphs(eng, 16, buckets=(1, 4, 8, 16))
    finally:
        fused_mod.skinny_qkv_rope_store = real
    assert norms and all(norms), norms  # captured with the fused q/k norm, met or deferred as asked
    assert lates and set(lates) == {fold_late}, lates  # folded, in the form asked for
    gen = torch.Generator().manual_seed(1)
    for bs in (1, 3, 8, 13, 16, 1):
        batch, release = decode_batch(eng, torch.randint(1, 200, (bs,), generator=gen).tolist(), seed=bs)
        try:
            replayed = graphs.replay(batch).clone()
            eager = eager_logits(eng, graphs.padded_batch(batch))[:bs]
        finally:
            release()
        assert torch.equal(replayed, eager), (bs, float((replayed - eager).abs().max()))
    ws = eng.runner.backend._qk_ws
    assert ws is not None and not ws.counters.any()
    eng.pools.check_integrity()
