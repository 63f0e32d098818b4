"""Fused kernels on a GPU at model sizes (bf16/fp16) against their torch twins and float64."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._fused_cases import add_rmsnorm_case, qk_rope_store_case, silu_mul_case

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.bfloat16, torch.float16]
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 576), (300, 4096), (2048, 4096)])
def test_add_rmsnorm_gpu(dtype, rows, cols):
    r = add_rmsnorm_case(dtype, rows, cols, device="cuda", seed=rows)
    assert r["residual_exact"], r  # one fp32 add rounded once: torch's own bf16/fp16 add
    assert max(r["out"], r["plain"], r["out64"]) < TOL[dtype], r


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
