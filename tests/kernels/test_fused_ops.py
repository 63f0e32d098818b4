"""Fused kernels (add + RMSNorm, SiLU-and-mul, q/k norm + rope + K/V store, qkv projection + rope + K/V store) in the Triton interpreter against
their torch twins."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._attention_fixtures import interpreted
from tests.kernels._fused_cases import (
    add_rmsnorm_case,
    deferred_qk_norm_case,
    embed_rope_case,
    folded_norm_case,
    fused_engine_case,
    graph_body_case,
    qk_rope_store_case,
    silu_mul_case,
    skinny_linear_case,
    skinny_qkv_case,
    wrapped_modules_case,
)

pytest.importorskip("triton", reason="triton is not installed")

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_rmsnorm_matches_twin(dtype):
    r = interpreted(add_rmsnorm_case, dtype, 5, 96)  # 96: not a power of two, masked tail
    assert r["residual_exact"] and r["rows_exact"], r
    assert r["out"] < TOL[dtype] and r["plain"] < TOL[dtype], r
    assert r["out64"] < 10 * TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_embed_rope_matches_twin(dtype):
    """Embedding rows exactly; cos/sin within the dtype's last place (numpy's fp32 cos, not torch's, here)."""
    r = interpreted(embed_rope_case, dtype, 9)
    assert r["emb_exact"] and r["dtype"], r
    assert r["cos"] < TOL[dtype] and r["sin"] < TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_silu_and_mul_matches_twin(dtype):
    r = interpreted(silu_mul_case, dtype, 3, 1100)  # two column blocks, the second partial
    assert r["shape"] and r["out"] < TOL[dtype] and r["out64"] < 10 * TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows,gated,bias", [(1, False, True), (5, True, False), (3, True, True)])
def test_skinny_linear_matches_twin(dtype, rows, gated, bias):
    # N = 40: two column blocks of 32, the second partial; K = 200: two K steps of 128, the second partial
    cfg = {"BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 4, "num_stages": 2}
    r = interpreted(skinny_linear_case, dtype, rows, 40, 200, gated, bias, cfg)
    assert r["shape"] and r["tail_untouched"], r
    assert r["out"] < 5 * TOL[dtype] and r["out64"] < 5 * TOL[dtype], r


@pytest.mark.timeout(300)
def test_skinny_linear_into_fp32_logits_rounds_to_the_input_dtype():
    # the LM head of a skinny batch: fp16 rows into fp32 logits, each an fp16 value as `F.linear(...).float()`
    cfg = {"BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 4, "num_stages": 2}
    r = interpreted(skinny_linear_case, torch.float16, 3, 40, 200, False, False, cfg, out_dtype=torch.float32)
    assert r["dtype"] == "torch.float32" and r["shape"] and r["tail_untouched"], r
    assert r["rounded"] and r["out"] < 5 * TOL[torch.float16], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows,consumer,bias,late", [(1, "linear", True, False), (5, "gated", False, False),
                                                    (3, "qkv", True, False), (2, "gated", True, True),
                                                    (3, "qkv", False, True)])
def test_rms_norm_folded_across_two_projections(dtype, rows, consumer, bias, late):
    """`skinny_linear_add` then a projection taking its `NormedRows`, against the residual add, add_rmsnorm's
    twin and the unfused projection. hidden = 40 over column blocks of 16: three writer programs (the last
    partial), whose partial sums the consumer adds; K = 200 ends in a partial block. `late`: the wide models'
    form (the consumer sums the parts before its loop)."""
    cfg1 = {"BLOCK_N": 16, "BLOCK_K": 128, "num_warps": 4, "num_stages": 2}
    cfg2 = {"BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 2, "num_stages": 2}
    r = interpreted(folded_norm_case, dtype, rows, 200, 40, 3, consumer, bias, configs=(cfg1, cfg2),
                    release_late=late)
    assert r["parts"] == (rows, 3) and r["no_norm"] and r["first"] == late, r
    assert max(r["residual"], r["plain_add"], r["out"], r.get("k_cache", 0)) < 5 * TOL[dtype], r
    assert max(r["residual64"], r["out64"]) < 10 * TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_qk_rope_store_matches_twin(dtype, qk_norm):
    r = interpreted(qk_rope_store_case, dtype, 7, 6, 2, 32, qk_norm, 4)  # 6 q heads: not a power of two
    assert r["v_exact"] and r["cache_others_untouched"], r
    # fp16: the twin rounds each rope product, the kernel once
    assert max(r["q"], r["k"], r["cache"]) < 5 * TOL[dtype], r
    assert max(r["q64"], r["k64"]) < 5 * TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows,bias,qk_norm", [(1, True, False), (5, False, False), (5, True, False),
                                               (1, False, True), (5, True, True)])
def test_skinny_qkv_rope_store_matches_twin(dtype, rows, bias, qk_norm):
    # 3 q heads, 1 kv head (not powers of two in total: 5 heads), head_dim 32: 2 pair blocks of 8 per head;
    # K = 200: two K steps of 128, the second partial; 5 rows: row 1 is padding (slot -1). With the q/k norm
    # (Qwen3): each head's two programs meet in one workspace, twice, whose counters end at zero each time.
    cfg = {"BLOCK_N": 16, "BLOCK_K": 128, "num_warps": 2, "num_stages": 2}
    r = interpreted(skinny_qkv_case, dtype, rows, 3, 1, 32, 200, bias, cfg, qk_norm=qk_norm,
                    repeats=2 if qk_norm else 1)
    assert r["shape"] and r["others_untouched"] and r["stored"] == (rows - 1 if rows > 2 else rows), r
    assert r["counters_zero"], r
    assert max(r["q"], r["k_cache"], r["v_cache"]) < 5 * TOL[dtype], r
    assert max(r["q64"], r["k_cache64"], r["v_cache64"]) < 5 * TOL[dtype], r


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("contexts,splits,preload,fused_merge,pad", [
    ([5, 70, 130], 3, False, True, True),  # empty splits; the own key in a later block; a graph's padding row
    ([3, 9], 2, True, True, False),  # the own key in the preloaded first block
    ([40], 1, False, False, True),  # one split: no workspace
    ([17, 66], 2, False, False, False),  # the merge launch
])
def test_deferred_qk_norm_matches_the_met_norm(dtype, contexts, splits, preload, fused_merge, pad):
    """q/k RMSNorm deferred from the qkv launch to decode attention against the norm in the qkv launch's twin:
    3 q heads on 1 kv head of 32 dims (two pair blocks per head: two parts each), K = 200. A padding row (slot
    -1) must not store back the key it attends to (another row's)."""
    cfg = {"BLOCK_N": 16, "BLOCK_K": 128, "num_warps": 2, "num_stages": 2}
    r = interpreted(deferred_qk_norm_case, dtype, contexts, 3, 1, 32, 200, splits, preload, fused_merge, config=cfg,
                    pad=pad)
    assert r["per_head"] == 2 and r["others_untouched"], r
    assert max(r["out"], r["own_k"], r["own_v"]) < 5 * TOL[dtype], r
    assert max(r["out64"], r["own_k64"]) < 5 * TOL[dtype], r


def test_skinny_qkv_config_divides_the_head(monkeypatch):
    """The default launch config's pair block divides the half-dim of common head sizes (64 to 256, 80 and 96
    included) and keeps the plain skinny config's column block where it can (a wider one shrinks until its
    pairs divide the half-dim); odd half-dims are refused."""
    from pdpair.kernels.fused import skinny_qkv
    from pdpair.kernels.fused.skinny_linear import skinny_config
    from pdpair.kernels.fused.skinny_qkv import skinny_qkv_config, skinny_qkv_fits

    for n, k in ((960, 576), (6144, 4096), (4608, 3584), (10240, 8192)):
        for d in (64, 80, 96, 128, 256):
            pairs = skinny_qkv_config(n, k, d)["BLOCK_N"] // 2
            assert skinny_qkv_fits(d) and (d // 2) % pairs == 0 and pairs >= 8, (n, k, d, pairs)
        assert skinny_qkv_config(n, k, 128)["BLOCK_N"] == skinny_config(n, k)["BLOCK_N"], (n, k)
    monkeypatch.setattr(skinny_qkv, "skinny_config", lambda n, k: {**skinny_config(n, k), "BLOCK_N": 32})
    assert skinny_qkv_config(6144, 4096, 128)["BLOCK_N"] == 32
    assert skinny_qkv_config(6144, 4096, 80)["BLOCK_N"] == 16  # half-dim 40: 8 pairs, not 16
    assert not skinny_qkv_fits(36) and not skinny_qkv_fits(24)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_fused_forward_matches_unfused_engine(arch):
    """The model's fused forward (interpreted kernels, fp32, CPU) against its own unfused forward: the fold as
    a small model runs it (releasing after the wait); for Llama and Qwen3 the fold as a wide (hidden 2,560 and
    up) model runs it, whose residual-adding projections release late and whose qkv and gate/up projections
    sum the norm's parts before their loop; for Qwen3 (the attention route is the same for every family) with
    the no-prefix prefill chunks through SDPA."""
    want = {"early"} | ({"late"} if arch != "qwen2" else set()) | ({"sdpa"} if arch == "qwen3" else set())
    r = interpreted(fused_engine_case, arch, sdpa="sdpa" in want, late_fold="late" in want)
    base = r.pop("unfused")
    assert base["fused_calls"] == 0 and all(len(t) == 4 for t in base["tokens"]), base
    assert set(r) == want, set(r)
    for run, got in r.items():
        assert got["fused_calls"] > 0, (run, got)  # the fused path really ran (prefill chunks and decode steps)
        # decode steps run qkv (+ q/k norm) + rope + K/V store as one launch
        assert got["qkv_calls"] > 0, (run, got)
        assert got["tokens_equal"] and got["rel_err"] < 1e-5, (run, got)
        if run == "late":
            assert got["late_adds"] > 0 and got["early_adds"] == 0, (run, got)
        else:
            assert got["early_adds"] > 0 and got["late_adds"] == 0, (run, got)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fused", [False, True])
def test_graph_body_builds_the_metadata(fused):
    r = interpreted(graph_body_case, fused)
    assert r["metadata"] and r["padding"], r
    assert r["rel_err"] < 1e-6, r


@pytest.mark.timeout(300)
def test_fused_forward_runs_wrapped_modules():
    r = interpreted(wrapped_modules_case)
    assert r["rel_err"] < 1e-5, r


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_fused_path_stays_off_for_sliding_window_models(tmp_path, family):
    """The fused prologue stores K/V through the full-attention pool only: models with sliding layers (a Qwen3 with
    `layer_types`, Gemma 3) keep the unfused forward, full-attention Llama/Qwen models take the fused one."""
    import json

    from pdpair.engine.loader.hf_dir import hf_model_config
    from pdpair.engine.models.fused import fused_supported

    from tests.swa_models import save_tiny_swa

    save_tiny_swa(family, 5, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    cfg = hf_model_config(raw, (2,))
    assert cfg.swa_layers and not fused_supported(cfg), (cfg.arch, cfg.swa_layers)
    if family == "qwen3":  # the same checkpoint without sliding layers is a plain Qwen3
        raw.pop("layer_types")
        raw["use_sliding_window"] = False
        full = hf_model_config(raw, (2,))
        assert not full.swa_layers and fused_supported(full), (full.arch, full.swa_layers)


def test_norm_fold_runs_for_small_and_wide_models_built_of_plain_modules():
    """`_folded_layers` runs for a skinny batch of a model of hidden size <= FOLD_MAX_HIDDEN or >=
    FOLD_LATE_MIN_HIDDEN whose layers are the plain modules, with the backend's switch on; a model between the
    two, a wrapped projection (a sharding layer), a batch off the skinny path, or the switch off keep the
    add+RMSNorm launches."""
    import dataclasses
    from types import SimpleNamespace

    from pdpair.engine.model_config import ModelConfig
    from pdpair.engine.models import build_model
    from pdpair.engine.models.fused import FOLD_LATE_MIN_HIDDEN, FOLD_MAX_HIDDEN, _foldable

    from tests.kernels._fused_cases import _Wrapped

    cfg = ModelConfig(arch="llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
                      intermediate_size=128, vocab_size=256, context_length=512)
    model = build_model(cfg, torch.float32, "cpu")
    ctx = SimpleNamespace(backend=SimpleNamespace(fold_norms=True))
    assert _foldable(model, ctx, True)
    assert not _foldable(model, ctx, False)
    assert not _foldable(model, SimpleNamespace(backend=SimpleNamespace(fold_norms=False)), True)
    between = SimpleNamespace(config=dataclasses.replace(cfg, hidden_size=2 * FOLD_MAX_HIDDEN), layers=model.layers)
    assert 2 * FOLD_MAX_HIDDEN < FOLD_LATE_MIN_HIDDEN and not _foldable(between, ctx, True)
    wide = SimpleNamespace(config=dataclasses.replace(cfg, hidden_size=FOLD_LATE_MIN_HIDDEN), layers=model.layers)
    assert _foldable(wide, ctx, True)
    model.layers[1].self_attn.o_proj = _Wrapped(model.layers[1].self_attn.o_proj)
    assert not _foldable(model, ctx, True)
