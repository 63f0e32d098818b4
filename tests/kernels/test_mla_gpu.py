"""(GPU) MLA decode, DSA indexer top-k and sparse MLA at DeepSeek-V3.2 sizes (128 heads, latent 512 + rope 64,
indexer 64 heads x 128, top-k 2048, bf16) against float64 references, and one decode step under a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from tests.kernels._mla_cases import decode_case, graph_case, indexer_case, row_topk_case, sparse_case

pytest.importorskip("triton", reason="triton is not installed")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.timeout(600)]

TOL = 1e-2  # bf16 operands against a float64 reference
V32 = dict(heads=128, dl=512, dr=64)


@pytest.mark.parametrize("page_size,block_h", [(16, None), (64, None), (16, 64)])
def test_mla_decode_v32(page_size, block_h):
    res = decode_case(torch.bfloat16, page_size, [4096, 1, 17, 2500, 777, 3000, 64, 1025], splits=(None, 1, 7, 32),
                      block_n=None, seed=page_size, device="cuda", block_h=block_h, **V32)
    assert max(res["kernel_vs_dense"]) < TOL and max(res["kernel_vs_twin"]) < TOL, res
    assert all(res["empty_row_zero"]), res


@pytest.mark.parametrize("page_size,block_h", [(16, None), (64, None), (16, 64)])
def test_sparse_mla_v32(page_size, block_h):
    res = sparse_case(torch.bfloat16, page_size, [8192, 100, 3000, 2048], 2048, splits=(None, 1, 4), block_n=None,
                      seed=page_size, device="cuda", block_h=block_h, **V32)
    assert max(res["kernel_vs_dense"]) < TOL and max(res["kernel_vs_twin"]) < TOL, res
    # same keys, other split order: bf16 outputs may differ by a rounding step, not more
    assert res["sparse_vs_decode"] < TOL and all(res["nothing_selected_zero"]), res


@pytest.mark.parametrize("page_size", [16, 64])
def test_indexer_topk_v32(page_size):
    # bf16 keys and queries; the float64 reference scores the same bf16 values, so only fp32 summation differs
    res = indexer_case(torch.bfloat16, page_size, [8192, 100, 3000, 2049], 2048, heads=64, di=128, block_n=None,
                       chunk=None, seed=page_size, device="cuda", tol=1e-4)
    assert res["inf_pattern_equal"] and res["unfilled_equal_where_visible"] and res["scores_vs_twin"] < 1e-4, res
    assert res["kernel_topk_ok"] and res["triton_topk_ok"] and res["twin_topk_ok"], res


def test_row_topk_v32():
    # decode rows of a 32k context and prefill-sized rows, k = 2048
    res = row_topk_case(64, 32768, 2048, device="cuda", block=None)
    assert all(res["ok"]) and all(res["twin_ok"]), res


def test_decode_step_cuda_graph_v32():
    res = graph_case()
    assert all(res.values()), res
